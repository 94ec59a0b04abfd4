"""Checkpoint files: written atomically, loaded with weights_only=True, the newest good one found."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from cvae.config import LEGACY_VALUES, TrainConfig
from cvae.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"  # in a run's save_root
BEST_FILE = "best.ckpt"  # the epoch of the best validation PSNR, beside the epoch files
EPOCH_FILE = re.compile(r"epoch_(\d+)\.ckpt$")
KEEP_EPOCH_FILES = 2  # the newest and one before it, to fall back on if the newest is corrupt
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "data_rng", "noise_rng", "history")  # what fit restores


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with _interrupt_after():
        try:
            with os.fdopen(handle, "wb") as tmp_file:
                torch.save(state, tmp_file)
                tmp_file.flush()
                os.fsync(tmp_file.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _interrupt_after():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until it ends, then deliver it.

    torch.save turns an interrupt inside its zip writer into a RuntimeError about the stream, so an
    interrupted run would be reported as crashed. Signal handlers belong to the main thread; in any
    other thread the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there before


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint of ours; CheckpointError names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"checkpoint {path} was not written by this trainer (format {FORMAT_VERSION})")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} holds no 'config', the TrainConfig its model was trained with, "
                              f"so that model cannot be built; it was edited, or not written by this trainer")
    return state


def config_of(state: dict[str, Any], path: str | Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with."""
    try:
        return TrainConfig.from_dict({**LEGACY_VALUES, **state["config"]}, source=f"checkpoint {path}")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def check_resumable(state: dict[str, Any], path: str | Path, cfg: TrainConfig, model: torch.nn.Module) -> None:
    """Refuse, naming the file, a checkpoint a run of `cfg` cannot continue: `model` is a fresh model of `cfg`."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it holds no {', '.join(missing)}")
    load_weights(model, state, path, resumed_as=cfg)
    if state["epoch"] >= cfg.num_epoch:
        raise CheckpointError(f"checkpoint {path} has completed {state['epoch']} epochs, and num_epoch="
                              f"{cfg.num_epoch}: nothing is left to train; pass --num_epoch {state['epoch'] + 1} "
                              f"or more to train on")


@contextlib.contextmanager
def rescued_on_failure(state: dict[str, Any], folder: Path, epoch: int):
    """A save inside that fails (a read-only folder, a full disk) still keeps the epoch: `state` goes into a
    temporary folder, and a CheckpointError says where and how to resume from it."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        try:
            rescued = Path(tempfile.mkdtemp(prefix="cvae-rescued-")) / f"epoch_{epoch:04d}.ckpt"
            save_atomic(state, rescued)
        except (OSError, RuntimeError) as also:
            raise CheckpointError(f"cannot write checkpoints into {folder} ({reason}), nor into a temporary "
                                  f"folder ({also}): epoch {epoch} is lost") from None
        raise CheckpointError(f"cannot write checkpoints into {folder} ({reason}); epoch {epoch} was saved to "
                              f"{rescued} instead: move it into {folder} once that can be written, and "
                              f"resume from there") from None


def save_epoch(state: dict[str, Any], folder: Path, epoch: int) -> Path:
    """Save `epoch_NNNN.ckpt` and drop all but the newest KEEP_EPOCH_FILES."""
    path = folder / f"epoch_{epoch:04d}.ckpt"
    save_atomic(state, path)
    for old in epoch_files(folder)[:-KEEP_EPOCH_FILES]:
        old.unlink(missing_ok=True)
    return path


def epoch_files(folder: Path) -> list[Path]:
    """Epoch checkpoints in `folder`, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.ckpt") if (m := EPOCH_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_good(folder: str | Path) -> Path | None:
    """The newest epoch checkpoint that loads; corrupt ones are reported and skipped."""
    for path in reversed(epoch_files(Path(folder))):
        try:
            load(path)
            return path
        except CheckpointError as err:
            log.warning("%s; falling back to an older checkpoint", err)
    return None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path,
                 resumed_as: TrainConfig | None = None) -> None:
    """Load state['model'] into `model`, a model of the checkpoint's config or of `resumed_as` (the run
    continuing it); a CheckpointError names the first weight that does not fit, or is not finite."""
    cfg, weights = resumed_as or config_of(state, path), state["model"]
    whose = "the resumed run's model" if resumed_as else "the model its config describes"
    described = f"{whose} (F_dim={cfg.F_dim}, L_dim={cfg.L_dim}, N_dim={cfg.N_dim}, D_out_dim={cfg.D_out_dim})"
    hint = ("a resumed run keeps the checkpoint's model fields" if resumed_as else
            "was its config edited, or the file written by another version of cvae/model.py?")
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path} holds no state dict under 'model'")
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} holds weights of another model than {described}: "
                              f"{len(missing)} missing (first {missing[:1]}), {len(unexpected)} unexpected "
                              f"(first {unexpected[:1]}); {hint}")
    for name, tensor in expected.items():
        stored = weights[name]
        if not isinstance(stored, torch.Tensor) or stored.shape != tensor.shape:
            shape = list(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
            raise CheckpointError(f"checkpoint {path} holds weights of another shape than {described}: "
                                  f"{name} is {shape} where the config needs {list(tensor.shape)}; {hint}")
    broken = [name for name, stored in weights.items() if stored.is_floating_point() and not stored.isfinite().all()]
    if broken:
        first = weights[broken[0]]
        raise CheckpointError(f"checkpoint {path} holds non-finite weights: {len(broken)} tensors, first {broken[0]} "
                              f"with {int(first.isnan().sum())} NaN and {int(first.isinf().sum())} infinite values; "
                              f"the file is damaged, or was saved after training diverged")
    model.load_state_dict(weights)
