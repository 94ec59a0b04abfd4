"""The light model (`model: light`): the five modules, fully convolutional at frame resolution.

The cost is kept low by doing the wide layers as depthwise-separable blocks
(a 3x3 depthwise conv between 1x1 convs) and using full 3x3 convs only where few channels run.
"""
from __future__ import annotations

import torch
from torch import nn

NEGATIVE_SLOPE = 0.01


class ResidualBlock(nn.Module):
    """Two 3x3 convs with batch norm around a (1x1-adapted) identity path."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class DepthConvBlock(nn.Module):
    """1x1 to `out_ch`, then a residual depthwise 3x3 + 1x1 on top of it."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.project = nn.Conv2d(in_ch, out_ch, 1)
        self.body = nn.Sequential(
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Conv2d(out_ch, out_ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.project(x)
        return projected + self.body(projected)


class RGB_Encoder(nn.Sequential):
    """(B, 3, H, W) frame -> (B, out_ch, H, W) appearance features."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            ResidualBlock(in_ch, out_ch // 8),
            DepthConvBlock(out_ch // 8, out_ch // 4),
            DepthConvBlock(out_ch // 4, out_ch // 2),
            DepthConvBlock(out_ch // 2, out_ch),
        )


class Label_Encoder(nn.Sequential):
    """(B, 3, H, W) pose map -> (B, out_ch, H, W) pose features."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, out_ch // 2, 7, bias=False),
            nn.BatchNorm2d(out_ch // 2),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            ResidualBlock(out_ch // 2, out_ch),
        )


class Gaussian_Predictor(nn.Module):
    """Posterior q(z | frame_t, pose_t): features -> z, mu, logvar, each (B, N_dim, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        hidden = 4 * out_ch
        self.body = nn.Sequential(
            DepthConvBlock(in_ch, hidden),
            DepthConvBlock(hidden, hidden),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(hidden, 2 * out_ch, 1),
        )

    def forward(self, frame_feat: torch.Tensor, pose_feat: torch.Tensor,
                eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """eps: (B, N_dim, H, W) standard normal noise, drawn by the caller: a module without random
        state is one graph for torch.compile and replays the same under a CUDA graph."""
        mu, logvar = self.body(torch.cat([frame_feat, pose_feat], dim=1)).chunk(2, dim=1)
        z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation: gradients flow to mu and logvar
        return z, mu, logvar


class Decoder_Fusion(nn.Sequential):
    """Previous-frame features (B, F, H, W), pose features (B, L, H, W) and z (B, N, H, W) -> (B, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            DepthConvBlock(in_ch, out_ch // 2),
            DepthConvBlock(out_ch // 2, out_ch // 2),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(out_ch // 2, out_ch, 1),
        )

    def forward(self, prev_feat: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([prev_feat, pose_feat, z], dim=1))  # (B, F+L+N, H, W) in


class Generator(nn.Module):
    """Fused features (B, in_ch, H, W) -> (B, out_ch, H, W) raw output, before `frame_output` makes it a frame.

    The last layer starts at zero: under `frame_output: residual` an untrained model copies the
    previous frame, and training only has to learn what moves.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            DepthConvBlock(in_ch, in_ch // 2),
            DepthConvBlock(in_ch // 2, in_ch // 4),
            DepthConvBlock(in_ch // 4, in_ch // 8),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        )
        self.head = nn.Conv2d(in_ch // 8, out_ch, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features))
