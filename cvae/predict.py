"""Roll a trained checkpoint out on the test (or validation) sequences: PNG frames, GIFs, the leaderboard CSV, PSNR."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cvae import checkpoint
from cvae.config import TrainConfig
from cvae.data import TestSequence, load_frames, load_test_sequences
from cvae.errors import ConfigError, DataError
from cvae.folders import PSNR_FILE, writable_folder
from cvae.metrics import CopyBaselines, copy_baselines, psnr, save_psnr_csv
from cvae.model import VideoCVAE
from cvae.train import build_model, resolve_device, sample_rollouts, to_unit
from cvae.video import save_gif, side_by_side, to_uint8

SPLITS = ("test", "val")
SUBMISSION_CSV = "submission.csv"
PSNR_PLOT = "val_psnr_per_frame.png"
PIXEL_TEXT = np.array([str(value) for value in range(256)], dtype=object)  # uint8 -> its CSV text, by lookup


@dataclass(frozen=True)
class SequenceResult:
    """What was predicted for one sequence."""

    name: str
    frames: int  # T, frame 0 (the given first frame) included
    psnr_per_frame: np.ndarray | None  # (samples, T-1) dB of frames 1..T-1; None without ground truth


@dataclass(frozen=True)
class PredictResult:
    out: Path
    split: str
    seed: int
    samples: int
    sequences: list[SequenceResult]
    seconds: float
    baselines: CopyBaselines | None  # of the validation video, with --split val


def predict(ckpt: str | Path, out: str | Path, root: str | Path | None = None, split: str = "test",
            seed: int | None = None, samples: int = 1, device: str | None = None,
            progress: bool = True) -> PredictResult:
    """Predict every sequence of `split` with the checkpoint `ckpt` and write the results into `out`.

    root: the data set (default: the one the checkpoint was trained on). seed: the noise seed (default:
    the checkpoint's, so sample 0 of `val` is the rollout the trainer scored). device: cpu, cuda or
    cuda:N (default: the checkpoint's setting).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    if samples < 1:
        raise ValueError(f"samples={samples}: must be >= 1")
    started = time.perf_counter()
    model, cfg = load_model(ckpt, device)
    seed = cfg.seed if seed is None else cfg.replace(seed=seed).seed  # checked as the trainer's seed is
    sequences = load_sequences(Path(cfg.DR if root is None else root), split, cfg)
    out = writable_folder(Path(out), "--out")
    results = []
    with SubmissionWriter(out / SUBMISSION_CSV, pixels=3 * cfg.frame_H * cfg.frame_W) as submission:
        for name, sequence in tqdm(sequences.items(), desc=f"predicting {split}", unit="sequence",
                                   disable=not progress):
            # (K, T, 3, H, W) float
            videos = sample_rollouts(model, sequence.first_frame, sequence.labels, cfg, seed, samples)
            per_frame = None
            if sequence.images is not None:
                truth = to_unit(sequence.images[1:].to(videos.device))  # (T-1, 3, H, W)
                per_frame = np.stack([psnr(video[1:], truth).cpu().numpy().astype(np.float64) for video in videos])
            frames = to_uint8(videos).cpu()  # (K, T, 3, H, W) uint8
            for sample, video in enumerate(frames):
                write_pngs(out / sample_folder(name, sample), video)
            reference = [] if sequence.images is None else [sequence.images]
            save_gif(out / f"{name}.gif", side_by_side(*frames, *reference, sequence.labels))
            submission.write(frames[0])
            results.append(SequenceResult(name, len(sequence.labels), per_frame))
    if split == "val":
        scores = results[0].psnr_per_frame  # (K, T-1)
        save_psnr_csv(out / PSNR_FILE, scores[0])
        figure = psnr_figure(scores, title=f"validation video, {Path(ckpt).name}, seed {seed}")
        figure.savefig(out / PSNR_PLOT, dpi=120)
    baselines = copy_baselines(sequences["val"].images) if split == "val" else None
    return PredictResult(out, split, seed, samples, results, time.perf_counter() - started, baselines)


def load_model(path: str | Path, device: str | None = None) -> tuple[VideoCVAE, TrainConfig]:
    """A checkpoint's model, in eval mode on `device` (default: the checkpoint's setting), and its config."""
    state = checkpoint.load(path)
    cfg = checkpoint.config_of(state, path)
    if device is not None:
        cfg = cfg.replace(device=device)
    try:
        target = resolve_device(cfg)
    except ConfigError as err:
        raise ConfigError(f"{err} (from {'--device' if device is not None else f'checkpoint {path}'})") from None
    # the model as the trainer built it (memory format, compiled modules): each rounds its own way,
    # and the validation PSNR must match the trainer's
    model = build_model(cfg, target)
    checkpoint.load_weights(model, state, path)
    return model.eval(), cfg


def load_sequences(root: Path, split: str, cfg: TrainConfig) -> dict[str, TestSequence]:
    """`test`: every test sequence; `val`: the validation video as the trainer scores it (val_vi_len frames)."""
    if split == "test":
        return load_test_sequences(root, cfg.frame_H, cfg.frame_W)
    val = load_frames(root, "val", cfg.frame_H, cfg.frame_W)
    if len(val.images) < cfg.val_vi_len:
        raise DataError(f"val video in {root / 'val'} has {len(val.images)} frames but the checkpoint was "
                        f"validated on val_vi_len={cfg.val_vi_len}; pass the data set it was trained on with --DR")
    images, labels = val.images[: cfg.val_vi_len], val.labels[: cfg.val_vi_len]  # (T, 3, H, W) uint8
    return {"val": TestSequence(first_frame=images[0], labels=labels, images=images)}


def sample_folder(name: str, sample: int) -> str:
    """Sample 0 keeps the sequence's name, so `out` has the test split's layout; others are `<name>_sample<k>`."""
    return name if sample == 0 else f"{name}_sample{sample}"


def write_pngs(folder: Path, video: torch.Tensor) -> None:
    """(T, 3, H, W) uint8 -> folder/frame0.png ... frame<T-1>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    frames_hwc = video.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
    for index, pixels in enumerate(frames_hwc):
        Image.fromarray(pixels).save(folder / f"frame{index}.png")


class SubmissionWriter:
    """submission.csv in the lab's leaderboard layout, written one sequence at a time.

    A header `id,0,1,...,3HW-1`, then one row per frame: `id` counts 0, 1, 2, ... across all sequences,
    then the frame's pixels rint(x * 255) in C, H, W order. The file appears under its name only when
    complete; until then it is `<name>.partial`, and an error deletes that.
    """

    def __init__(self, path: Path, pixels: int):
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.pixels = pixels
        self.next_id = 0
        self.file = open(self.partial, "w")
        self.file.write(",".join(["id", *map(str, range(pixels))]) + "\n")

    def write(self, frames: torch.Tensor) -> None:
        """frames: (T, 3, H, W) uint8, one row each."""
        rows = frames.reshape(len(frames), -1).numpy()  # (T, 3*H*W) in C, H, W order
        if rows.shape[1] != self.pixels:
            raise ValueError(f"frames of {rows.shape[1]} values in a submission of {self.pixels}")
        ids = range(self.next_id, self.next_id + len(rows))
        self.file.write("".join(f"{i}," + ",".join(text) + "\n" for i, text in zip(ids, PIXEL_TEXT[rows])))
        self.next_id += len(rows)

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, error_type: Any, error: Any, traceback: Any) -> None:
        self.file.close()
        if error_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def psnr_figure(per_frame: np.ndarray, title: str):
    """PSNR against frame index, one line per sample: per_frame (K, T-1) dB of frames 1..T-1."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.5), layout="constrained")
    axes = figure.add_subplot()
    frame_numbers = np.arange(1, per_frame.shape[1] + 1)
    for sample, scores in enumerate(per_frame):
        axes.plot(frame_numbers, scores, linewidth=1, label=f"sample {sample}: mean {scores.mean():.2f} dB")
    axes.set(xlabel="frame", ylabel="PSNR (dB)", title=title, xlim=(1, max(2, per_frame.shape[1])))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    return figure


if __name__ == "__main__":  # the command moved to `python -m cvae predict`; this module is the library
    import sys

    print("error: `python -m cvae.predict` is now `python -m cvae predict` (same flags)", file=sys.stderr)
    raise SystemExit(2)
