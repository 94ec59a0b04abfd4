"""Image-quality metrics for predicted frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MIN_MSE = 1e-10  # caps PSNR at 100 dB for a perfect frame instead of returning inf


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of every frame separately: (..., C, H, W) -> (...).

    Each frame gets its own MSE, so one bad sample cannot hide behind a good one
    (the lab code averaged the MSE over the batch before taking the log).
    """
    mse = (prediction.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(MIN_MSE))


@dataclass(frozen=True)
class CopyBaselines:
    """The PSNR of the two trivial predictors on a video, per frame: the floors a model must beat.

    copy-first predicts every frame as the first one, as a rollout with no model would;
    copy-previous predicts frame t as the true frame t-1, the floor of a one-step prediction.
    """

    first: np.ndarray  # (T-1,) dB of frames 1..T-1
    previous: np.ndarray  # (T-1,) dB of frames 1..T-1

    @property
    def first_mean(self) -> float:
        return float(self.first.mean())

    @property
    def previous_mean(self) -> float:
        return float(self.previous.mean())

    def upto(self, length: int) -> "CopyBaselines":
        """The baselines of the video's first `length` frames."""
        return CopyBaselines(self.first[: length - 1], self.previous[: length - 1])

    def to_state(self) -> dict:
        return {"first": torch.from_numpy(self.first), "previous": torch.from_numpy(self.previous)}

    @classmethod
    def from_state(cls, state: dict) -> "CopyBaselines":
        return cls(state["first"].numpy(), state["previous"].numpy())


def copy_baselines(video: torch.Tensor) -> CopyBaselines:
    """Copy-first and copy-previous PSNR of every frame of `video` (T, 3, H, W) uint8."""
    frames = video.float() / 255.0  # (T, 3, H, W)
    first = psnr(frames[:1].expand_as(frames[1:]), frames[1:])
    previous = psnr(frames[:-1], frames[1:])
    return CopyBaselines(first.double().numpy(), previous.double().numpy())



def save_psnr_csv(path: Path, psnr_per_frame: np.ndarray) -> Path:
    """CSV of `frame,psnr` for predicted frames 1..T-1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["frame,psnr"] + [f"{index},{value:.6f}" for index, value in enumerate(psnr_per_frame, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path
