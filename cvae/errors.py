"""The errors `cvae` raises for bad input: scripts print them as one line and exit 2."""


class CVAEError(Exception):
    """Base of every user-facing error of the `cvae` package."""


class ConfigError(CVAEError):
    """A TrainConfig key or value is wrong."""


class DataError(CVAEError):
    """A data set on disk is missing, incomplete or unreadable."""


class CheckpointError(CVAEError):
    """A checkpoint file is corrupt or belongs to another configuration."""


class TrainingDiverged(CVAEError):
    """The training loss became NaN or infinite."""


class OutputError(CVAEError):
    """An output folder cannot be written, or holds another run."""
