"""Videos people look at: panels side by side, written as GIFs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GIF_FPS = 20
PANEL_GAP = 2  # black pixels between panels


def side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """Panels of equal length and height, left to right: each (T, 3, H, W) uint8 -> (T, 3, H, sum W + gaps)."""
    length, _, height, _ = videos[0].shape
    gap = torch.zeros((length, 3, height, PANEL_GAP), dtype=torch.uint8, device=videos[0].device)
    panels = [piece for video in videos for piece in (video, gap)][:-1]
    return torch.cat(panels, dim=3)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8, rounded as the leaderboard does."""
    return torch.round(frames.clamp(0, 1) * 255).to(torch.uint8)


def save_gif(path: str | Path, video: torch.Tensor, fps: int = GIF_FPS, zoom: int = 3) -> Path:
    """(T, 3, H, W) uint8 -> animated GIF, enlarged `zoom` times with nearest neighbour so pixels stay sharp."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video.cpu().repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    frames_hwc = np.ascontiguousarray(frames.permute(0, 2, 3, 1).numpy())  # (T, H, W, 3)
    iio.imwrite(path, frames_hwc, extension=".gif", duration=1000 / fps, loop=0)
    return path
