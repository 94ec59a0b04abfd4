"""fit(cfg, data, callbacks) -> History: batched CVAE training with validation rollouts and checkpoints."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from cvae import checkpoint
from cvae.augment import augment_clips
from cvae.config import TrainConfig
from cvae.data import VideoData
from cvae.errors import ConfigError, TrainingDiverged
from cvae.folders import writable_folder
from cvae.metrics import FrameScores, frame_scores, psnr
from cvae.model import VideoCVAE
from cvae.schedules import kl_beta, make_lr_scheduler, make_optimizer, teacher_forcing_ratio

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 10  # batches between host syncs that look for a NaN loss and refresh the bar
VAL_NOISE_SEED_OFFSET = 7919  # validation z is drawn from its own stream, the same at every epoch
ONE_STEP_NOISE_SEED_OFFSET = 104729  # and the one-step prediction's from another


@dataclass(frozen=True)
class EpochReport:
    """What one epoch produced; handed to every callback and kept in the History."""

    epoch: int  # 0-based
    train_loss: float
    train_recon: float
    train_kl: float
    kl_beta: float
    tfr: float
    lr: float
    val_psnr: float  # mean of val_psnr_per_frame
    val_psnr_per_frame: np.ndarray  # (val_vi_len - 1,) dB of predicted frames 1..T-1
    epoch_seconds: float
    # fields added later keep a default, so checkpoints written before them still load
    val_psnr_1step: float = math.nan  # mean PSNR of each frame predicted from the true frame before it
    val_ssim: float = math.nan  # mean of val_ssim_per_frame
    val_ssim_per_frame: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (val_vi_len - 1,) SSIM; (0,) before

    def to_state(self) -> dict:
        """Plain values, storable in a weights_only checkpoint: the per-frame arrays as lists."""
        return {name: value.tolist() if isinstance(value, np.ndarray) else value for name, value in asdict(self).items()}

    @classmethod
    def from_state(cls, state: dict) -> "EpochReport":
        """The report `to_state` stored. A field the state lacks (it was written before the field existed) keeps its
        default; one this code does not know (written by a newer one) is left out."""
        known = {report_field.name for report_field in fields(cls)}
        return cls(**{name: np.asarray(value) if isinstance(value, list) else value
                      for name, value in state.items() if name in known})


Callback = Callable[[EpochReport], "bool | None"]  # returns True to stop training


@dataclass
class History:
    epochs: list[EpochReport] = field(default_factory=list)
    stopped_early: bool = False
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None

    @property
    def best_val_psnr(self) -> float:
        return max((report.val_psnr for report in self.epochs), default=float("nan"))


def resolve_device(cfg: TrainConfig) -> torch.device:
    """cfg.device as a torch.device; a ConfigError when it names a GPU this machine does not have."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r}: needs CUDA, which is not available here; pass --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={cfg.device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def sample_rollouts(model: VideoCVAE, first_frame: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                    seed: int, samples: int = 1) -> torch.Tensor:
    """`samples` rollouts of one sequence with z ~ N(0, I): (K, T, 3, H, W) float in [0, 1] on the model's device.

    first_frame: (3, H, W) uint8; labels: (T, 3, H, W) uint8, every pose map of the sequence.

    Each sequence's noise starts from the stream `cvae.train.validate` draws for `seed`, so sample 0 of
    the validation video is the rollout the trainer scored; later samples draw on from the same stream.
    The samples run one at a time: as one batch they would draw their noise in another order.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed + VAL_NOISE_SEED_OFFSET)
    start = to_unit(first_frame.to(device)).unsqueeze(0)  # (1, 3, H, W)
    poses = to_unit(labels.to(device)).unsqueeze(0)  # (1, T, 3, H, W)
    cuda_graph = cfg.cuda_graphs and device.type == "cuda"
    # a graph must not keep cast weights that autocast frees when it exits
    with compile_fallback(cfg), autocast(cfg, device, weight_cache=not cuda_graph):
        videos = [model.rollout(start, poses, generator, cuda_graph=cuda_graph)[0] for _ in range(samples)]
    return torch.stack(videos)  # (K, T, 3, H, W)


def validate(model: VideoCVAE, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
             seed: int) -> FrameScores:
    """Autoregressive rollout of the validation video from its first frame, z ~ N(0, I).

    images, labels: (T, 3, H, W) uint8 on the model's device. Returns the PSNR and SSIM of frames 1..T-1.
    """
    with evaluating(model):
        frames = sample_rollouts(model, images[0], labels, cfg, seed)[0]  # (T, 3, H, W)
    return frame_scores(frames[1:], to_unit(images[1:]))


def validate_one_step(model: VideoCVAE, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                      seed: int) -> np.ndarray:
    """Each validation frame predicted from the true frame before it, z ~ N(0, I), in batches.

    images, labels: (T, 3, H, W) uint8 on the model's device. Returns (T-1,) PSNR of frames 1..T-1:
    below copy-previous, the model has not learnt motion; above it but with a poor rollout, it drifts.
    """
    generator = torch.Generator(images.device).manual_seed(seed + ONE_STEP_NOISE_SEED_OFFSET)
    with evaluating(model), compile_fallback(cfg), autocast(cfg, images.device):
        frames = model.one_step(to_unit(images[:-1]), to_unit(labels[1:]), generator)  # (T-1, 3, H, W)
    return psnr(frames, to_unit(images[1:])).cpu().numpy().astype(np.float64)


@contextlib.contextmanager
def evaluating(model: VideoCVAE):
    """The model in eval mode (batch norm uses its running statistics, not the batch's), then back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    return frames_uint8.float().div_(255.0)


def autocast(cfg: TrainConfig, device: torch.device, weight_cache: bool = True):
    """bf16 autocast where cfg.bf16 asks for it and the device has bf16 units; weights and optimizer stay fp32."""
    if uses_bf16(cfg, device):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=weight_cache)
    return contextlib.nullcontext()


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a run of `cfg` on `device` computes in bf16: cfg.bf16 asks, and the hardware has it."""
    return cfg.bf16 and native_bf16(device.type)


def precision(cfg: TrainConfig, device: torch.device) -> str:
    """"bf16" or "fp32": what a run of `cfg` on `device` computes in, recorded with every run."""
    return "bf16" if uses_bf16(cfg, device) else "fp32"


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine's `device_type` computes bf16 in hardware, where bf16 autocast is the faster path.

    CUDA: compute capability 8.0 or later. CPU: AVX512-BF16 or AMX instructions (torch's own
    probes; elsewhere bf16 is emulated and slower than fp32, so cfg.bf16 leaves such a run in fp32).
    """
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def build_model(cfg: TrainConfig, device: torch.device) -> VideoCVAE:
    """The model in the config's memory format on `device`, its modules compiled if cfg.compile."""
    model = VideoCVAE(cfg).to(device, memory_format=memory_format(cfg))
    if cfg.compile:
        compile_modules(model)
    return model


def compile_modules(model: VideoCVAE) -> None:
    """torch.compile each of the five modules in place; the state dict keeps its keys.

    Each module is one graph (the noise comes in as an argument), reused by the batched
    teacher-forced pass, the free-running steps and the rollout. Compilation happens at the first
    call, under `compile_fallback`.
    """
    for module in model.parts():
        module.compile()


def compile_fallback(cfg: TrainConfig):
    """Where cfg.compile asks: a module whose compilation fails (no C++ compiler, an unsupported op)
    runs eagerly, dynamo logging why, instead of failing the run."""
    return torch._dynamo.config.patch(suppress_errors=True) if cfg.compile else contextlib.nullcontext()


def kl_term(cfg: TrainConfig, kl_per_frame: torch.Tensor, frame_elements: int) -> torch.Tensor:
    """The KL as the loss weighs it against the MSE, which is a mean over a frame's 3*H*W elements.

    lab: the KL summed over a frame's latent elements, as the lab code has it. elbo: that sum
    divided by 3*H*W, so both terms are per pixel element and their sum is the negative ELBO of a
    Gaussian decoder (variance 1/2) divided by the pixel count.
    """
    return kl_per_frame / frame_elements if cfg.loss == "elbo" else kl_per_frame


def train_step(model: VideoCVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               teacher_forced: bool, beta: float, noise_rng: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """One optimizer step on a batch of clips (B, T, 3, H, W) uint8; returns (loss, recon, kl) without a host sync."""
    with compile_fallback(cfg), autocast(cfg, images.device):
        recon, kl = model.clip_losses(to_unit(images), to_unit(labels), teacher_forced, noise_rng)
    kl = kl_term(cfg, kl, images[0, 0].numel())
    loss = recon + beta * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return torch.stack([loss.detach(), recon.detach(), kl.detach()])


@dataclass
class Training:
    """What a run of `cfg` trains with, before the first step: built by `setup` for `fit` and everyone who measures it."""

    device: torch.device
    model: VideoCVAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data_rng: torch.Generator  # clip order and teacher-forcing draws
    noise_rng: torch.Generator  # posterior samples, on the device


def setup(cfg: TrainConfig, device: torch.device | None = None) -> Training:
    """The seeded model of cfg.model, its optimizer, LR scheduler and random generators on `device` (default: cfg's)."""
    device = resolve_device(cfg) if device is None else device
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg, device)
    optimizer = make_optimizer(cfg, model.parameters())
    return Training(device=device, model=model, optimizer=optimizer, scheduler=make_lr_scheduler(cfg, optimizer),
                    data_rng=torch.Generator().manual_seed(cfg.seed),
                    noise_rng=torch.Generator(device).manual_seed(cfg.seed + 1))


def fit(cfg: TrainConfig, data: VideoData, callbacks: Iterable[Callback] = (),
        resume_from: str | Path | None = None, progress: bool = True) -> History:
    """Train `cfg` on `data`; call every callback after each epoch; checkpoint into cfg.save_root."""
    callbacks = list(callbacks)
    ckpt_dir = writable_folder(Path(cfg.save_root) / checkpoint.CHECKPOINT_DIR, "the checkpoint folder")
    training = setup(cfg)
    device, model, optimizer, scheduler = training.device, training.model, training.optimizer, training.scheduler
    data_rng, noise_rng = training.data_rng, training.noise_rng
    log.info("computing in %s on %s", precision(cfg, device), device)
    history = History()
    start_epoch = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, map_location=device)
        checkpoint.load_weights(model, state, resume_from, resumed_as=cfg)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_rng.set_state(state["data_rng"])
        noise_rng.set_state(state["noise_rng"].to(noise_rng.get_state().device))
        history.epochs = [EpochReport.from_state(report) for report in state["history"]]
        start_epoch = state["epoch"]
        if (ckpt_dir / checkpoint.BEST_FILE).is_file():
            history.best_checkpoint = ckpt_dir / checkpoint.BEST_FILE
        log.info("resumed from %s at epoch %d", resume_from, start_epoch)

    train_images = data.train_images.to(device)  # (n_clips, T, 3, H, W) uint8, read once
    train_labels = data.train_labels.to(device)
    val_images, val_labels = data.val_images.to(device), data.val_labels.to(device)  # (T_val, 3, H, W)
    best_psnr = history.best_val_psnr if history.epochs else -math.inf

    for epoch in range(start_epoch, cfg.num_epoch):
        started = time.perf_counter()
        beta, tfr = kl_beta(cfg, epoch), teacher_forcing_ratio(cfg, epoch)
        lr = scheduler.get_last_lr()[0]
        model.train()
        n_clips = len(train_images)
        if cfg.fast_train and epoch < cfg.fast_train_epoch:
            n_clips = max(1, int(n_clips * cfg.fast_partial))
        order = torch.randperm(len(train_images), generator=data_rng)[:n_clips]
        batches = order.split(cfg.batch_size)
        forced = (torch.rand(len(batches), generator=data_rng) < tfr).tolist()
        sums = torch.zeros(3, device=device)  # loss, recon, kl summed over batches
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.num_epoch}", leave=False, disable=not progress)
        for index, clip_ids in enumerate(bar):
            clip_ids = clip_ids.to(device)
            images, labels = train_images[clip_ids], train_labels[clip_ids]  # (B, T, 3, H, W) uint8
            if cfg.augment:
                images, labels = augment_clips(images, labels, data_rng)
            sums += train_step(model, optimizer, images, labels, forced[index], beta, noise_rng, cfg)
            if (index + 1) % NAN_CHECK_EVERY == 0 or index + 1 == len(batches):
                means = (sums / (index + 1)).tolist()
                _check_finite(means, epoch, index)
                bar.set_postfix(loss=f"{means[0]:.4g}", recon=f"{means[1]:.4g}", kl=f"{means[2]:.4g}")
        scheduler.step()
        mean_loss, mean_recon, mean_kl = (sums / len(batches)).tolist()
        scores = validate(model, val_images, val_labels, cfg, cfg.seed)
        one_step = validate_one_step(model, val_images, val_labels, cfg, cfg.seed)
        report = EpochReport(epoch=epoch, train_loss=mean_loss, train_recon=mean_recon, train_kl=mean_kl,
                             kl_beta=beta, tfr=tfr, lr=lr, val_psnr=float(scores.psnr.mean()),
                             val_psnr_per_frame=scores.psnr, epoch_seconds=time.perf_counter() - started,
                             val_psnr_1step=float(one_step.mean()), val_ssim=float(scores.ssim.mean()),
                             val_ssim_per_frame=scores.ssim)
        history.epochs.append(report)
        stop = any([bool(callback(report)) for callback in callbacks])  # a list: every callback sees every epoch
        last_epoch = epoch + 1 == cfg.num_epoch or stop
        improved = report.val_psnr > best_psnr
        save_epoch = (epoch + 1) % cfg.per_save == 0 or last_epoch
        if improved or save_epoch:  # built once when both files are written
            state = _state(cfg, epoch + 1, model, optimizer, scheduler, data_rng, noise_rng, history)
            with checkpoint.rescued_on_failure(state, ckpt_dir, epoch + 1):
                if improved:
                    best_psnr = report.val_psnr
                    history.best_checkpoint = ckpt_dir / checkpoint.BEST_FILE
                    checkpoint.save_atomic(state, history.best_checkpoint)
                if save_epoch:
                    history.last_checkpoint = checkpoint.save_epoch(state, ckpt_dir, epoch + 1)
        if stop:
            history.stopped_early = epoch + 1 < cfg.num_epoch
            break
    return history


def _check_finite(means: list[float], epoch: int, batch: int) -> None:
    if not all(math.isfinite(value) for value in means):
        raise TrainingDiverged(f"training loss became {means[0]} in epoch {epoch + 1} "
                               f"by batch {batch + 1} (recon {means[1]}, kl {means[2]})")


def _state(cfg, epoch, model, optimizer, scheduler, data_rng, noise_rng, history) -> dict:
    return {
        "format": checkpoint.FORMAT_VERSION,
        "config": cfg.to_dict(),
        "epoch": epoch,  # epochs completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data_rng": data_rng.get_state(),
        "noise_rng": noise_rng.get_state(),
        "history": [report.to_state() for report in history.epochs],
        "precision": precision(cfg, next(model.parameters()).device),
    }


if __name__ == "__main__":  # the command moved to `python -m cvae train`; this module is the library
    import sys

    print("error: `python -m cvae.train` is now `python -m cvae train` (same flags)", file=sys.stderr)
    raise SystemExit(2)
