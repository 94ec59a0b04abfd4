"""Image-quality metrics for predicted frames."""
from __future__ import annotations

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


def copy_first_frame_psnr(video: torch.Tensor) -> float:
    """Mean PSNR of predicting every frame as the first one: the floor a model must beat.

    video: (T, 3, H, W) uint8.
    """
    frames = video.float() / 255.0
    return psnr(frames[:1].expand_as(frames[1:]), frames[1:]).mean().item()


def save_psnr_csv(path: Path, psnr_per_frame: np.ndarray) -> Path:
    """CSV of `frame,psnr` for predicted frames 1..T-1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["frame,psnr"] + [f"{index},{value:.6f}" for index, value in enumerate(psnr_per_frame, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path
