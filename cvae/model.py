"""The pose-conditioned video CVAE: five fully convolutional modules working at frame resolution.

Frame t is generated from frame t-1 and the pose map of frame t; during training a latent z
comes from the posterior of the true frame t, at generation time from N(0, I).
The cost is kept low by doing the wide layers as depthwise-separable blocks
(a 3x3 depthwise conv between 1x1 convs) and using full 3x3 convs only where few channels run.
"""
from __future__ import annotations

import torch
from torch import nn

from cvae.config import TrainConfig
from cvae.graphs import captured

NEGATIVE_SLOPE = 0.01
LOGIT_EPS = 1e-3  # keeps logit(prev_frame) finite for black and white pixels


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
    """(B, F+L+N, H, W) previous-frame features, pose features and z -> (B, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            DepthConvBlock(in_ch, out_ch // 2),
            DepthConvBlock(out_ch // 2, out_ch // 2),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(out_ch // 2, out_ch, 1),
        )


class Generator(nn.Module):
    """Fused features (B, in_ch, H, W) and the previous frame (B, 3, H, W) -> frame t in [0, 1].

    Like SVG's skip connections from the last frame: the network predicts a change in logit
    space on top of the previous frame, and its last layer starts at zero, so an untrained
    model copies the previous frame and training only has to learn what moves.
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

    def forward(self, features: torch.Tensor, prev_frame: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.logit(prev_frame, eps=LOGIT_EPS) + self.head(self.body(features)))


class VideoCVAE(nn.Module):
    """The five modules and the two ways of running them: one step, and a whole rollout."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.N_dim = cfg.N_dim
        self.frame_transformation = RGB_Encoder(3, cfg.F_dim)
        self.label_transformation = Label_Encoder(3, cfg.L_dim)
        self.Gaussian_Predictor = Gaussian_Predictor(cfg.F_dim + cfg.L_dim, cfg.N_dim)
        self.Decoder_Fusion = Decoder_Fusion(cfg.F_dim + cfg.L_dim + cfg.N_dim, cfg.D_out_dim)
        self.Generator = Generator(cfg.D_out_dim, 3)

    def decode(self, prev_frame: torch.Tensor, prev_feat: torch.Tensor, pose_feat: torch.Tensor,
               z: torch.Tensor) -> torch.Tensor:
        """One step: frame t-1 (B, 3, H, W), its features, pose t's features and z -> frame t (B, 3, H, W)."""
        return self.Generator(self.Decoder_Fusion(torch.cat([prev_feat, pose_feat, z], dim=1)), prev_frame)

    def sample_prior(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise shaped (B, N_dim, H, W) for a batch of frames or features `like` (B, C, H, W)."""
        batch, _, height, width = like.shape
        return torch.randn((batch, self.N_dim, height, width), generator=generator,
                           device=like.device, dtype=torch.float32)

    def step(self, prev_frame: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One rollout step: frame t-1 (B, 3, H, W), pose t's features and z -> frame t (B, 3, H, W)."""
        return self.decode(prev_frame, self.frame_transformation(prev_frame), pose_feat, z)

    @torch.no_grad()
    def rollout(self, first_frame: torch.Tensor, poses: torch.Tensor, generator: torch.Generator | None = None,
                pose_chunk: int = 128, cuda_graph: bool = False) -> torch.Tensor:
        """Generate a video from its first frame and all its pose maps, z from the prior.

        first_frame (B, 3, H, W) float in [0, 1]; poses (B, T, 3, H, W) float, pose 0 unused.
        Returns (B, T, 3, H, W) float32: frame 0 is `first_frame`, each later frame is fed back.
        With `cuda_graph` (CUDA tensors only) the step runs as one captured graph replayed T-1
        times; z is drawn outside it, one step at a time, so both ways draw the same noise.
        """
        if cuda_graph and not first_frame.is_cuda:
            raise ValueError(f"rollout: cuda_graph needs CUDA tensors, got them on {first_frame.device}")
        batch, length = poses.shape[:2]
        pose_feats = torch.cat([  # all pose features at once: they do not depend on the rollout
            self.label_transformation(chunk)
            for chunk in poses[:, 1:].flatten(0, 1).split(pose_chunk)
        ]).unflatten(0, (batch, length - 1))  # (B, T-1, L, H, W)
        video = torch.empty(poses.shape, device=poses.device, dtype=torch.float32)  # (B, T, 3, H, W)
        video[:, 0] = first_frame
        z = self.sample_prior(first_frame, generator)  # (B, N, H, W) for frame 1
        step = captured(self.step, first_frame, pose_feats[:, 0], z) if cuda_graph else self.step
        for t in range(1, length):
            video[:, t] = step(video[:, t - 1], pose_feats[:, t - 1], z)
            if t + 1 < length:
                z = self.sample_prior(first_frame, generator)
        return video


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
