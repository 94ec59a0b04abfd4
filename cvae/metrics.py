"""Image-quality metrics for predicted frames: PSNR and SSIM per frame, the copy baselines."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MIN_MSE = 1e-10  # caps PSNR at 100 dB for a perfect frame instead of returning inf
SSIM_MODULE = "torchmetrics.functional.image"  # imported at the first `ssim`, not with this module


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of every frame separately: (..., C, H, W) -> (...).

    Each frame gets its own MSE, so one bad sample cannot hide behind a good one
    (the lab code averaged the MSE over the batch before taking the log). Not torchmetrics' PSNR, though it
    agrees with ours to 2e-5 dB, two float32 steps at 80 dB (tests/test_metrics.py): importing torchmetrics
    takes about 5 s (it loads torchvision's models, torch._dynamo and scipy.signal), and every process
    computes PSNR, the copy baselines of every data set it loads included, while only validation needs SSIM.
    """
    mse = (prediction.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(MIN_MSE))


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of every frame separately: (..., C, H, W) -> (...), torchmetrics' (11 x 11 Gaussian window, sigma 1.5).

    torchmetrics is imported at the first call (see `psnr` for its cost).
    """
    structural_similarity_index_measure = importlib.import_module(SSIM_MODULE).structural_similarity_index_measure
    frames = prediction.float().reshape(-1, *prediction.shape[-3:])  # (N, C, H, W)
    truth = target.float().reshape(-1, *target.shape[-3:])
    values = structural_similarity_index_measure(frames, truth, data_range=data_range, reduction="none")  # (N,)
    return values.reshape(prediction.shape[:-3])


@dataclass(frozen=True)
class FrameScores:
    """How close each predicted frame of a video is to the true one."""

    psnr: np.ndarray  # (T-1,) dB of frames 1..T-1
    ssim: np.ndarray  # (T-1,) of frames 1..T-1, 1 for a perfect frame


def frame_scores(prediction: torch.Tensor, target: torch.Tensor) -> FrameScores:
    """PSNR and SSIM of every frame: prediction, target (T-1, 3, H, W) float in [0, 1]."""
    return FrameScores(psnr=_on_host(psnr(prediction, target)), ssim=_on_host(ssim(prediction, target)))


def _on_host(values: torch.Tensor) -> np.ndarray:
    return values.cpu().numpy().astype(np.float64)


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

    def describe(self) -> str:
        """The two trivial predictors' PSNR on the validation video, the floors every figure is read against."""
        return (f"baselines on the validation video: copy first frame {self.first_mean:.2f} dB, "
                f"copy previous true frame {self.previous_mean:.2f} dB (one step)")

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
