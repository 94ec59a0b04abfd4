"""Output folders: a run folder belongs to one run, and a folder is proven writable before work goes into it."""
from __future__ import annotations

import tempfile
from pathlib import Path

from cvae import checkpoint
from cvae.errors import OutputError

CONFIG_FILE = "config.yaml"  # the TrainConfig of the run in a save_root
PSNR_FILE = "val_psnr_per_frame.csv"  # the per-frame PSNR of its last validation
RUN_FILES = (CONFIG_FILE, PSNR_FILE)  # what `python -m cvae train` writes beside checkpoints/


def writable_folder(folder: Path, what: str) -> Path:
    """Make `folder` and its parents and write a file there; an OutputError naming `what` if that fails."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"cannot write into {what} {folder} ({err.strerror or err}); "
                          f"give a folder you can write to") from None
    return folder


def earlier_run(folder: Path) -> str | None:
    """What `folder` holds of a training run, in words ("config.yaml, 2 epoch checkpoints up to ..."), or None."""
    found = [name for name in RUN_FILES if (folder / name).exists()]
    checkpoints = folder / checkpoint.CHECKPOINT_DIR
    if (checkpoints / checkpoint.BEST_FILE).exists():
        found.append(f"{checkpoint.CHECKPOINT_DIR}/{checkpoint.BEST_FILE}")
    epochs = checkpoint.epoch_files(checkpoints)
    if epochs:
        found.append(f"{len(epochs)} epoch checkpoint{'s' * (len(epochs) > 1)} up to {epochs[-1].name}")
    return ", ".join(found) or None


def check_claim(folder: Path, resumed: tuple[Path, int] | None, overwrite: bool) -> None:
    """Refuse a run that would write over another run in `folder`, before anything is written.

    resumed: the checkpoint a resume continues and the epochs it completed; None for a new run, which
    may take a folder holding a run only with `overwrite` (the caller then moves that run aside).
    """
    held = earlier_run(folder)
    if held is None or (resumed is None and overwrite):
        return
    if resumed is None:
        raise OutputError(f"save_root {folder} already holds a run ({held}); pass --resume to continue it, "
                          f"--overwrite to move it aside to {aside_name(folder)}, or another --save_root")
    path, epoch = resumed
    checkpoints = folder / checkpoint.CHECKPOINT_DIR
    if path.resolve().parent != checkpoints.resolve():
        raise OutputError(f"save_root {folder} holds another run ({held}) than checkpoint {path}; "
                          f"pass another --save_root for the resumed run")
    newest = checkpoint.latest_good(checkpoints)
    newest_epoch = int(checkpoint.EPOCH_FILE.search(newest.name).group(1)) if newest else 0
    if newest_epoch > epoch:
        raise OutputError(f"checkpoint {path} (epoch {epoch}) is older than {newest.name} beside it, which the "
                          f"resumed run would overwrite; continue the newest with --resume, or copy {folder} "
                          f"and resume in the copy")


def aside_name(folder: Path) -> Path:
    """`<folder>.old-N` with the smallest N not taken: where --overwrite moves an earlier run."""
    named = folder if folder.name not in ("", ".", "..") else folder.resolve()  # "." has no name to extend
    if not named.name:
        raise OutputError(f"save_root {folder} is the file system's root; give a folder inside it")
    number = 1
    while (candidate := named.with_name(f"{named.name}.old-{number}")).exists():
        number += 1
    return candidate


def move_aside(folder: Path) -> Path:
    """Rename `folder` to `aside_name(folder)`; nothing is deleted."""
    target = aside_name(folder)
    try:
        folder.rename(target)
    except OSError as err:
        raise OutputError(f"cannot move the run in {folder} aside to {target} ({err.strerror}); "
                          f"move it yourself, or give another --save_root") from None
    return target
