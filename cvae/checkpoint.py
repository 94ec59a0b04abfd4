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
EPOCH_FILE = re.compile(r"epoch_(\d+)\.ckpt$")
KEEP_EPOCH_FILES = 2  # the newest and one before it, to fall back on if the newest is corrupt


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
    return state


def config_of(state: dict[str, Any], path: str | Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with."""
    try:
        return TrainConfig.from_dict({**LEGACY_VALUES, **state["config"]}, source=f"checkpoint {path}")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


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


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load state['model'] into `model`; a CheckpointError names the first weight that does not fit."""
    cfg, weights = config_of(state, path), state["model"]
    described = (f"the model its config describes (F_dim={cfg.F_dim}, L_dim={cfg.L_dim}, N_dim={cfg.N_dim}, "
                 f"D_out_dim={cfg.D_out_dim})")
    hint = "was its config edited, or the file written by another version of cvae/model.py?"
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
    model.load_state_dict(weights)
