"""The errors `experiments` raises for bad input: scripts print them as one line and exit 2."""


class SpecError(Exception):
    """A sweep spec, or the study it names, is wrong; the message names the file and the key path."""
