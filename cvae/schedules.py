"""What changes from epoch to epoch: KL beta and teacher forcing ratio, the optimizer and its learning rate scheduler.

KL beta and teacher forcing are pure functions of the epoch, tabulated and plotted without training; the
learning rate is torch's scheduler, stepped once per epoch by the trainer.
"""
from __future__ import annotations

import math

import torch

from cvae.config import TrainConfig


def kl_beta(cfg: TrainConfig, epoch: int) -> float:
    """Weight of the KL term during `epoch` (0-based): the annealing curve's value at the epoch's end.

    Cyclical: `kl_anneal_cycle` equal cycles over `num_epoch`; in each, beta rises linearly
    from 0 over the first `kl_anneal_ratio` of the cycle, then stays at 1. Monotonic is one cycle.
    Taking the value at the end of the epoch keeps beta above 0 even when there are as many
    cycles as epochs (the lab code's beta stayed at 0 for the whole run then).
    """
    if cfg.kl_anneal_type == "None":
        return 1.0
    cycles = cfg.kl_anneal_cycle if cfg.kl_anneal_type == "Cyclical" else 1
    progress = (epoch + 1) * cycles / cfg.num_epoch  # cycles completed at the end of this epoch
    position = progress - math.ceil(progress) + 1.0  # in (0, 1]: how far into its cycle
    return min(1.0, position / cfg.kl_anneal_ratio)


def teacher_forcing_ratio(cfg: TrainConfig, epoch: int) -> float:
    """Probability that a training batch of `epoch` is teacher-forced.

    `tfr` up to and including epoch `tfr_sde`, then `tfr_d_step` less each epoch, never below 0.
    """
    decays = max(0, epoch - cfg.tfr_sde)
    return max(0.0, round(cfg.tfr - decays * cfg.tfr_d_step, 12))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    optimizer_class = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[cfg.optim]
    params = list(params)
    fused = cfg.fused_optimizer and all(param.is_cuda for param in params)
    return optimizer_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def make_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per epoch."""
    if cfg.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.num_epoch, eta_min=cfg.lr_min)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

