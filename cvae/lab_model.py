"""The lab model (`model: lab`): the five modules of the NYCU DLP lab 4 starter, rewritten, at stride 1.

The structure, layer for layer, is the starter's `Lab4_template/modules/modules.py` and
`modules/layers.py`, as kept in kkennethwu/NYCU_DLP2023 at lab4/modules/{modules,layers}.py
(modules.py is the same in jayin92/NYCU-deep-learning at lab04/src/modules/modules.py).
Attribute names and `nn.Sequential` positions are the starter's, so state-dict keys are too;
at the default dims the five modules hold 1,585,620 parameters, as the lab's do.

What differs from the starter: everything runs at stride 1 (the lab never strides, so the
stride arguments and the stride-2 adaptor are gone); the Gaussian predictor takes its noise
from the caller; the Generator draws `output_nc` channels (the starter hard-codes 3).
Kept from the starter on purpose: `nn.LeakyReLU(True)` (see IDENTITY_SLOPE) and a Generator
without an output activation (`VideoCVAE.decode` applies the sigmoid).
"""
from __future__ import annotations

import torch
from torch import nn

# The starter writes `nn.LeakyReLU(True)` in Label_Encoder and Gaussian_Predictor. The first
# positional argument is negative_slope, and True == 1, so those layers are the identity, not a
# ReLU; we keep the lab's behaviour, spelled out, so the lab's model is what is measured.
IDENTITY_SLOPE = 1.0
RESIDUAL_SLOPE = 0.01  # nn.LeakyReLU's default, as the starter's ResidualBlock uses it
DEPTH_CONV_SLOPE = 0.01
FFN_SLOPE = 0.1  # the starter's ConvFFN overrides its `slope` argument with 0.1 whatever is passed
FFN_EXPANSION = 2


class ResidualBlock(nn.Module):
    """Two 3x3 convs, each followed by a leaky ReLU, around a (1x1-adapted) identity path."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.leaky_relu = nn.LeakyReLU(RESIDUAL_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))  # (B, out_ch, H, W)
        identity = x if self.skip is None else self.skip(x)  # (B, out_ch, H, W)
        return out + identity


class DepthConv(nn.Module):
    """1x1 conv and leaky ReLU, 3x3 depthwise conv, 1x1 conv to `out_ch`, around a (1x1-adapted) identity path."""

    def __init__(self, in_ch: int, out_ch: int, depth_kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 1),
            nn.LeakyReLU(DEPTH_CONV_SLOPE),
        )
        self.depth_conv = nn.Conv2d(in_ch, in_ch, depth_kernel, padding=depth_kernel // 2, groups=in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        self.adaptor = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.depth_conv(self.conv1(x)))  # (B, out_ch, H, W)
        identity = x if self.adaptor is None else self.adaptor(x)  # (B, out_ch, H, W)
        return out + identity


class ConvFFN(nn.Module):
    """Gated 1x1 feed-forward block with a residual: value * leaky_relu(gate), back to `in_ch`."""

    def __init__(self, in_ch: int):
        super().__init__()
        internal_ch = in_ch * FFN_EXPANSION
        self.conv = nn.Conv2d(in_ch, internal_ch * 2, 1)
        self.conv_out = nn.Conv2d(internal_ch, in_ch, 1)
        self.relu = nn.LeakyReLU(negative_slope=FFN_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)  # each (B, 2 * in_ch, H, W)
        return x + self.conv_out(value * self.relu(gate))


class DepthConvBlock(nn.Module):
    """A DepthConv to `out_ch` followed by a ConvFFN."""

    def __init__(self, in_ch: int, out_ch: int, depth_kernel: int = 3):
        super().__init__()
        self.block = nn.Sequential(
            DepthConv(in_ch, out_ch, depth_kernel),
            ConvFFN(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class RGB_Encoder(nn.Sequential):
    """(B, 3, H, W) frame -> (B, out_chans, H, W) appearance features."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(
            ResidualBlock(in_chans, out_chans // 8),
            DepthConvBlock(out_chans // 8, out_chans // 8),
            ResidualBlock(out_chans // 8, out_chans // 4),
            DepthConvBlock(out_chans // 4, out_chans // 4),
            ResidualBlock(out_chans // 4, out_chans // 2),
            DepthConvBlock(out_chans // 2, out_chans // 2),
            nn.Conv2d(out_chans // 2, out_chans, 3, padding=1),
        )


class Label_Encoder(nn.Sequential):
    """(B, 3, H, W) pose map -> (B, out_chans, H, W) pose features."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(
            nn.ReflectionPad2d(3),  # (B, in_chans, H+6, W+6): the 7x7 conv below keeps H, W
            nn.Conv2d(in_chans, out_chans // 2, kernel_size=7),
            nn.BatchNorm2d(out_chans // 2),
            nn.LeakyReLU(IDENTITY_SLOPE),  # the lab's LeakyReLU(True): the identity
            ResidualBlock(out_chans // 2, out_chans),
        )


class Gaussian_Predictor(nn.Sequential):
    """Posterior q(z | frame_t, pose_t): features -> z, mu, logvar, each (B, out_chans, H, W)."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(
            ResidualBlock(in_chans, out_chans // 4),
            DepthConvBlock(out_chans // 4, out_chans // 4),
            ResidualBlock(out_chans // 4, out_chans // 2),
            DepthConvBlock(out_chans // 2, out_chans // 2),
            ResidualBlock(out_chans // 2, out_chans),
            nn.LeakyReLU(IDENTITY_SLOPE),  # the lab's LeakyReLU(True): the identity
            nn.Conv2d(out_chans, out_chans * 2, kernel_size=1),
        )

    def forward(self, frame_feat: torch.Tensor, pose_feat: torch.Tensor,
                eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """eps: (B, N, H, W) standard normal noise, drawn by the caller (the lab draws it here with
        randn_like): a module without random state is one graph for torch.compile and a CUDA graph."""
        params = super().forward(torch.cat([frame_feat, pose_feat], dim=1))  # (B, 2N, H, W)
        mu, logvar = params.chunk(2, dim=1)  # each (B, N, H, W)
        z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation: gradients flow to mu and logvar
        return z, mu, logvar


class Decoder_Fusion(nn.Sequential):
    """Previous-frame features (B, F, H, W), pose features (B, L, H, W) and z (B, N, H, W) -> (B, out_chans, H, W)."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(
            DepthConvBlock(in_chans, in_chans),
            ResidualBlock(in_chans, in_chans // 4),
            DepthConvBlock(in_chans // 4, in_chans // 2),
            ResidualBlock(in_chans // 2, in_chans // 2),
            DepthConvBlock(in_chans // 2, out_chans // 2),
            nn.Conv2d(out_chans // 2, out_chans, 1),
        )

    def forward(self, prev_feat: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([prev_feat, pose_feat, z], dim=1))  # (B, F+L+N, H, W) in


class Generator(nn.Sequential):
    """Fused features (B, input_nc, H, W) -> (B, output_nc, H, W) raw output, no activation."""

    def __init__(self, input_nc: int, output_nc: int):
        super().__init__(
            DepthConvBlock(input_nc, input_nc),
            ResidualBlock(input_nc, input_nc // 2),
            DepthConvBlock(input_nc // 2, input_nc // 2),
            ResidualBlock(input_nc // 2, input_nc // 4),
            DepthConvBlock(input_nc // 4, input_nc // 4),
            ResidualBlock(input_nc // 4, input_nc // 8),
            DepthConvBlock(input_nc // 8, input_nc // 8),
            nn.Conv2d(input_nc // 8, output_nc, 1),
        )
