"""The pose-conditioned video CVAE: five modules from the registry, one step, a clip's losses, a rollout.

Frame t is generated from frame t-1 and the pose map of frame t; during training a latent z
comes from the posterior of the true frame t, at generation time from N(0, I).
`model` in the config picks the five modules (`MODELS`); `frame_output` how the Generator's raw
output becomes a frame. Every way of running the model (training, validation, prediction, the
benchmarks, the memory probe) goes through `VideoCVAE`.
"""
from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from cvae import lab_model, light_model
from cvae.config import TrainConfig
from cvae.graphs import captured

# each file defines RGB_Encoder, Label_Encoder, Gaussian_Predictor, Decoder_Fusion and Generator,
# each built as Module(in_channels, out_channels); keys are TrainConfig.model's values
MODELS: dict[str, ModuleType] = {"light": light_model, "lab": lab_model}
LOGIT_EPS = 1e-3  # keeps logit(prev_frame) finite for black and white pixels
MASK_OFFSET = -4.0  # added to the mask's logit: an untrained model's mask is 0.018, so it nearly copies
# what the Generator draws for each frame_output: colour (3), then the mask's logit (1), then a flow (2: x, y)
OUTPUT_CHANNELS = {"residual": 3, "sigmoid": 3, "mask": 4, "warp": 6}
MAX_NORM_GROUPS = 8  # norm: group normalises groups of channels, at most this many groups per layer


class VideoCVAE(nn.Module):
    """The five modules of `cfg.model` and the ways of running them: one step, a clip's losses, a rollout."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        modules = MODELS[cfg.model]
        self.N_dim = cfg.N_dim
        self.frame_output = cfg.frame_output
        # the lab's attribute names, so state-dict keys read like the lab's
        self.frame_transformation = modules.RGB_Encoder(3, cfg.F_dim)
        self.label_transformation = modules.Label_Encoder(3, cfg.L_dim)
        self.Gaussian_Predictor = modules.Gaussian_Predictor(cfg.F_dim + cfg.L_dim, cfg.N_dim)
        self.Decoder_Fusion = modules.Decoder_Fusion(cfg.F_dim + cfg.L_dim + cfg.N_dim, cfg.D_out_dim)
        self.Generator = modules.Generator(cfg.D_out_dim, OUTPUT_CHANNELS[cfg.frame_output])
        start_posterior_at_prior(self.Gaussian_Predictor)
        if cfg.norm == "group":
            for part in self.parts():
                batch_norm_to_group_norm(part)

    def parts(self) -> tuple[nn.Module, ...]:
        """The five modules, in the order a step runs them."""
        return (self.frame_transformation, self.label_transformation, self.Gaussian_Predictor,
                self.Decoder_Fusion, self.Generator)

    def decode(self, prev_frame: torch.Tensor, prev_feat: torch.Tensor, pose_feat: torch.Tensor,
               z: torch.Tensor) -> torch.Tensor:
        """One step: frame t-1 (B, 3, H, W), its features, pose t's features and z -> frame t (B, 3, H, W) in [0, 1]."""
        raw = self.Generator(self.Decoder_Fusion(prev_feat, pose_feat, z))  # (B, 3 or 4, H, W) unbounded
        if self.frame_output == "residual":
            # as SVG's skip from the last frame: a change in logit space on top of the previous frame
            return torch.sigmoid(torch.logit(prev_frame, eps=LOGIT_EPS) + raw)
        if self.frame_output in ("mask", "warp"):
            # where the mask is shut the previous frame (under warp: moved by the flow) passes exactly;
            # elsewhere a newly drawn colour
            base = warp(prev_frame, raw[:, 4:6]) if self.frame_output == "warp" else prev_frame  # (B, 3, H, W)
            mask = torch.sigmoid(raw[:, 3:4] + MASK_OFFSET)  # (B, 1, H, W)
            return base + mask * (torch.sigmoid(raw[:, :3]) - base)  # dtypes promote under autocast
        return torch.sigmoid(raw)  # the lab's: the Generator draws the whole frame

    def sample_prior(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise shaped (B, N_dim, H, W) for a batch of frames or features `like` (B, C, H, W)."""
        batch, _, height, width = like.shape
        return torch.randn((batch, self.N_dim, height, width), generator=generator,
                           device=like.device, dtype=torch.float32)

    def step(self, prev_frame: torch.Tensor, pose_feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One rollout step: frame t-1 (B, 3, H, W), pose t's features and z -> frame t (B, 3, H, W)."""
        return self.decode(prev_frame, self.frame_transformation(prev_frame), pose_feat, z)

    def clip_losses(self, images: torch.Tensor, labels: torch.Tensor, teacher_forced: bool,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction MSE (mean over pixels) and KL (summed over a frame's latent elements), each
        averaged over the batch's predicted frames.

        images, labels: (B, T, 3, H, W) float in [0, 1]. With teacher forcing every step's previous
        frame is the true one, so all steps run as one batch; without, the predictions are fed back.
        """
        batch, length = images.shape[:2]
        frame_feat = self.frame_transformation(images.flatten(0, 1)).unflatten(0, (batch, length))  # (B, T, F, H, W)
        pose_feat = self.label_transformation(labels[:, 1:].flatten(0, 1))  # (B*(T-1), L, H, W)
        eps = self.sample_prior(pose_feat, generator)  # (B*(T-1), N, H, W)
        z, mu, logvar = self.Gaussian_Predictor(frame_feat[:, 1:].flatten(0, 1), pose_feat, eps)
        targets = images[:, 1:].flatten(0, 1)  # (B*(T-1), 3, H, W)
        if teacher_forced:
            predictions = self.decode(images[:, :-1].flatten(0, 1), frame_feat[:, :-1].flatten(0, 1), pose_feat, z)
        else:
            pose_feat, z = pose_feat.unflatten(0, (batch, length - 1)), z.unflatten(0, (batch, length - 1))
            prev_frame, prev_feat, steps = images[:, 0], frame_feat[:, 0], []
            for step in range(length - 1):
                prediction = self.decode(prev_frame, prev_feat, pose_feat[:, step], z[:, step])  # (B, 3, H, W)
                steps.append(prediction)
                if step < length - 2:
                    prev_frame, prev_feat = prediction, self.frame_transformation(prediction)
            predictions = torch.stack(steps, dim=1).flatten(0, 1)  # (B*(T-1), 3, H, W)
        recon = F.mse_loss(predictions.float(), targets.float())
        # mu: (B*(T-1), N, H, W); the mean over clips and steps equals the per-step KL averaged over steps
        return recon, kl_divergence(mu.float(), logvar.float())

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
        pose_feats = self.pose_features(poses[:, 1:].flatten(0, 1), pose_chunk) \
            .unflatten(0, (batch, length - 1))  # (B, T-1, L, H, W)
        video = torch.empty(poses.shape, device=poses.device, dtype=torch.float32)  # (B, T, 3, H, W)
        video[:, 0] = first_frame
        z = self.sample_prior(first_frame, generator)  # (B, N, H, W) for frame 1
        step = captured(self.step, first_frame, pose_feats[:, 0], z) if cuda_graph else self.step
        for t in range(1, length):
            video[:, t] = step(video[:, t - 1], pose_feats[:, t - 1], z)
            if t + 1 < length:
                z = self.sample_prior(first_frame, generator)
        return video

    @torch.no_grad()
    def one_step(self, prev_frames: torch.Tensor, poses: torch.Tensor, generator: torch.Generator | None = None,
                 chunk: int = 128) -> torch.Tensor:
        """Each frame predicted from the true frame before it, z from the prior, in batches of `chunk`.

        prev_frames: (T-1, 3, H, W) float, frames 0..T-2; poses: (T-1, 3, H, W) float, the pose maps of
        frames 1..T-1. Returns (T-1, 3, H, W) float32: frames 1..T-1.
        """
        pose_feats = self.pose_features(poses, chunk)  # (T-1, L, H, W)
        return torch.cat([self.step(prev_frame, pose_feat, self.sample_prior(prev_frame, generator)).float()
                          for prev_frame, pose_feat in zip(prev_frames.split(chunk), pose_feats.split(chunk))])

    def pose_features(self, poses: torch.Tensor, chunk: int) -> torch.Tensor:
        """(N, 3, H, W) pose maps -> (N, L, H, W), `chunk` at a time: they do not depend on the rollout."""
        return torch.cat([self.label_transformation(part) for part in poses.split(chunk)])


def warp(frame: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: frame (B, 3, H, W), flow (B, 2, H, W) in pixels (x, y) -> (B, 3, H, W) float32,
    output pixel p read bilinearly at p + flow(p), the border repeated outside the frame.

    A warp moves whatever colours the previous frame has, so it does not have to know a dancer's look.
    """
    height, width = frame.shape[-2:]
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=frame.device)  # pixel centres
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=frame.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as grid_sample reads (x, y)
    per_pixel = torch.tensor([2 / width, 2 / height], device=frame.device)  # pixels -> normalised units
    grid = base + flow.float().permute(0, 2, 3, 1) * per_pixel  # (B, H, W, 2)
    return F.grid_sample(frame.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def start_posterior_at_prior(posterior: nn.Module) -> None:
    """Zero the posterior's last layer, so mu = logvar = 0 and the KL starts at 0.

    With the default initialisation the KL of a frame's N_dim x H x W latent map starts in the
    thousands while the MSE is about 1e-3: its gradient drowns the reconstruction's (and the
    gradient clipping scales the rest down with it) until the posterior collapses onto the prior
    (benchmarks/README.md, c0 against c1).
    """
    last = [module for module in posterior.modules() if isinstance(module, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


def batch_norm_to_group_norm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below `module` by a GroupNorm of the same channels, in place.

    Group norm normalises each frame by itself: no running statistics, so no gap between training
    and evaluation, and nothing for a free-running step (a batch of B frames, T-1 times per clip)
    to drag away from the teacher-forced batches (benchmarks/README.md, "Models that learn").
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(channels, MAX_NORM_GROUPS), channels))
        else:
            batch_norm_to_group_norm(child)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) summed over latent dims, averaged over the batch: (B, ...) -> scalar."""
    per_sample = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)
    return per_sample.mean()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
