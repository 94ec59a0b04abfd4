"""Where a run came from: the code's git commit, the package versions, the machine and its device, the data.

The commit is that of the checkout `experiments` is imported from, not of the working directory, so a sweep
started from elsewhere still records the code that trained. The tree is dirty when a tracked file differs
from that commit or an untracked file git does not ignore is there: either may be code the run imported.
The data's digest is of the decoded frames a trial trains and validates on, so two data sets differ in it
even when their folders share a name, and the same frames copied elsewhere keep it.
"""
from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
import torch
from mlflow.entities import Dataset

from cvae.config import TrainConfig
from cvae.data import VideoData

CPU_INFO = Path("/proc/cpuinfo")
GIT_TIMEOUT_S = 10.0
DIGEST_CHARS = 16  # of the sha256's hex digits; MLflow stores at most 36
DATA_SOURCE_TYPE = "local"  # MLflow's name for a dataset in a local folder


@dataclass(frozen=True)
class Provenance:
    """What made a run, as the process that logs it sees it."""

    source: str  # the entry point, named as MLflow names it: the script's path
    commit: str | None  # None outside a git checkout (or without git)
    branch: str | None  # None on a detached HEAD
    dirty: bool | None  # None when the commit is unknown
    versions: dict[str, str]  # python, torch, cuda, optuna, mlflow
    host: str
    device: str | None  # the GPU's or the CPU's model; None for the launcher, which trains on none


def collect(device: torch.device | None = None) -> Provenance:
    """This process's provenance; `device` is the one it trains on (a CUDA device is queried, so CUDA starts)."""
    commit, branch, dirty = git_state(Path(__file__))
    return Provenance(source=entry_point(), commit=commit, branch=branch, dirty=dirty, versions=versions(),
                      host=socket.gethostname(), device=None if device is None else device_name(device))


def git_state(code: Path) -> tuple[str | None, str | None, bool | None]:
    """(commit, branch, dirty) of the checkout the file `code` is in: branch None on a detached HEAD; all None
    without git, outside a checkout, or where the checkout ignores `code` (a virtualenv inside another project)."""
    folder = code.parent
    if _git(folder, "check-ignore", "-q", str(code)) is not None:
        return None, None, None
    commit = _git(folder, "rev-parse", "HEAD")
    status = None if commit is None else _git(folder, "status", "--porcelain")
    if status is None:
        return None, None, None
    return commit, _git(folder, "symbolic-ref", "--short", "-q", "HEAD"), bool(status)


def entry_point() -> str:
    """The running script's absolute path, as `sys.argv[0]` names it (a worker process keeps its launcher's)."""
    script = sys.argv[0] if sys.argv else ""
    return str(Path(script).resolve()) if script and Path(script).is_file() else "<console>"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda or "none", "optuna": optuna.__version__, "mlflow": mlflow.__version__}


def device_name(device: torch.device) -> str:
    """The GPU's model (`NVIDIA H200`), or the CPU's as /proc/cpuinfo names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in CPU_INFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def data_set(cfg: TrainConfig, data: VideoData) -> Dataset:
    """The trial's data as MLflow's Dataset: its folder's name and path, a digest of its frames, their counts."""
    root = Path(cfg.DR).resolve()
    n_clips, clip_len, _, height, width = data.train_images.shape  # (n_clips, T, 3, H, W) uint8
    profile = {"frame_size": f"{height}x{width}", "train_clips": n_clips, "frames_per_clip": clip_len,
               "train_frames": n_clips * clip_len, "val_frames": len(data.val_images)}
    return Dataset(name=root.name, digest=data_digest(data), source_type=DATA_SOURCE_TYPE,
                   source=json.dumps({"uri": str(root)}), profile=json.dumps(profile))


def data_digest(data: VideoData) -> str:
    """sha256 of the training clips, the validation video and their pose maps, shapes included."""
    digest = hashlib.sha256()
    for frames in (data.train_images, data.train_labels, data.val_images, data.val_labels):
        digest.update(f"{tuple(frames.shape)}\n".encode())
        digest.update(np.ascontiguousarray(frames.numpy()).data)
    return digest.hexdigest()[:DIGEST_CHARS]


def _git(folder: Path, *args: str) -> str | None:
    """git's output in `folder`; None when git is missing or fails."""
    try:
        answer = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip() if answer.returncode == 0 else None
