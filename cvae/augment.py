"""Training-clip augmentation: one random change of look per clip, the same for all its frames.

The model has to carry a dancer's appearance forward from the previous frame, not remember the
few looks of the training videos; permuting the colour channels of a clip's frames (never of its
pose maps, whose colours name the limbs) gives it six looks per clip. A horizontal flip of frames
and pose maps together mirrors the motion.
"""
from __future__ import annotations

import torch

FLIP_PROBABILITY = 0.5


def augment_clips(images: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images, labels: (B, T, 3, H, W) uint8 -> the same shapes, each clip with its own draw from `generator` (CPU)."""
    batch = images.shape[0]
    channel_order = torch.stack([torch.randperm(3, generator=generator) for _ in range(batch)])  # (B, 3)
    flipped = (torch.rand(batch, generator=generator) < FLIP_PROBABILITY).to(images.device)  # (B,)
    index = channel_order.to(images.device).view(batch, 1, 3, 1, 1).expand_as(images)
    images = torch.gather(images, 2, index)  # (B, T, 3, H, W), channels permuted per clip
    mirror = flipped.view(batch, 1, 1, 1, 1)
    return torch.where(mirror, images.flip(-1), images), torch.where(mirror, labels.flip(-1), labels)
