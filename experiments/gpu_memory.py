"""How many trials fit on one GPU: `execution.trials_per_gpu: auto`, sized from a measured trial.

Which trial is measured. A trial's memory grows with each of its sizes (MEMORY_SIZES: the model's
dims, batch_size, clip and validation lengths, frame size, the share of the data set held on the
device) and depends on the speed options and the data set (MEMORY_KINDS). The candidates are every
combination of those fields the plan can produce: each cell of a grid; for a sampled sweep, base
with each categorical parameter at each of its values and each distribution at its max. A candidate
that another one dominates (no size smaller, the kinds equal) is dropped, since it cannot need more;
the rest (usually one) are each measured, and the largest peak counts.

How it is measured. In a spawned process that sees only that GPU (the launcher never initialises
CUDA): the data set on the device as `fit` holds it, the model and optimizer `fit` builds
(`cvae.train.setup`, compiled where cfg.compile asks), one teacher-forced and one free-running
`train_step` on a batch of clips, one `validate` rollout and one `validate_one_step` pass. The peak is torch's
max_memory_reserved: freed blocks stay in the caching allocator, so what a process takes from the
GPU, and the other trials on it cannot have, is what it reserved, not the smaller
max_memory_allocated.

The measurement runs on the first GPU and applies to all; the free memory is the least that any of
the launch's GPUs has, as nvidia-smi reports it before the measurement.
"""
from __future__ import annotations

import itertools
import multiprocessing
import subprocess
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.errors import CVAEError
from cvae.train import setup, train_step, validate, validate_one_step
from experiments.errors import SweepError, one_line
from experiments.plan import group_label, train_config
from experiments.spec import SweepSpec
from experiments.workers import bind_device, cpu_count

MEMORY_SIZES = ("F_dim", "L_dim", "N_dim", "D_out_dim", "batch_size", "train_vi_len", "val_vi_len",
                "frame_H", "frame_W", "partial")
MEMORY_KINDS = ("bf16", "channels_last", "compile", "cuda_graphs", "fused_optimizer", "DR")
CONTEXT_BYTES = 500 * 2**20  # one process's CUDA context with cuBLAS and cuDNN loaded
HEADROOM = 0.1
MAX_TRIALS_PER_GPU = 8  # until benchmarks/sweep_throughput.py shows where a GPU's throughput stops growing
GIB = 2**30


def trials_that_fit(peak_trial_bytes: int, gpu_bytes: int, per_process_overhead_bytes: int = CONTEXT_BYTES,
                    headroom: float = HEADROOM, cap: int = MAX_TRIALS_PER_GPU) -> int:
    """How many trials of `peak_trial_bytes` fit side by side in `gpu_bytes` of free GPU memory, 1 to `cap`.

    Each trial runs in its own worker process, which also holds a CUDA context of about
    `per_process_overhead_bytes` that torch's allocator statistics do not count. `headroom` of the
    GPU is left out of the plan: a trial of many epochs fragments its cache further than one
    measured step does. A trial that fits alone but not within the headroom still gets the GPU to
    itself, as trials_per_gpu: 1 would; one that does not fit even alone is a SweepError, since it
    could only fail out of memory.
    """
    need = peak_trial_bytes + per_process_overhead_bytes
    if need > gpu_bytes:
        raise SweepError(f"execution.trials_per_gpu: auto: one trial needs {need / GIB:.1f} GiB with its CUDA "
                         f"context but the GPU has {gpu_bytes / GIB:.1f} GiB free; lower batch_size, "
                         "val_vi_len or the model's dims")
    return max(1, min(cap, int(gpu_bytes * (1 - headroom)) // need))


def largest_configs(spec: SweepSpec) -> list[TrainConfig]:
    """The trial configurations whose memory must be measured: see the module docstring."""
    if spec.is_grid:
        plans = spec.cells
    else:
        swept = [p for p in spec.parameters if p.name in MEMORY_SIZES + MEMORY_KINDS]
        choices = [p.values or (p.high,) for p in swept]
        plans = [dict(zip([p.name for p in swept], combo)) for combo in itertools.product(*choices)]
    distinct = {}
    for overrides in plans:
        cfg = train_config(spec, overrides, spec.seeds[0])
        distinct.setdefault(_memory_key(cfg), cfg)
    return [cfg for key, cfg in distinct.items()
            if not any(other != key and _dominates(other, key) for other in distinct)]


def measure_trial_peak(cfg: TrainConfig, gpu: int) -> int:
    """The bytes one trial of `cfg` reserves on `gpu` at its peak, measured in a spawned process."""
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_trial_peak, cfg, gpu).result()
    except BrokenProcessPool:
        raise SweepError(f"execution.trials_per_gpu: auto: the process measuring a trial on GPU {gpu} died "
                         "(killed for host memory?); give trials_per_gpu as a number") from None
    except SweepError:
        raise
    except (RuntimeError, OSError, CVAEError) as err:  # CUDA, the data set: what a user can act on
        raise SweepError(f"execution.trials_per_gpu: auto: measuring a trial on GPU {gpu} failed "
                         f"({type(err).__name__}: {one_line(err)})") from None


def free_gpu_bytes(gpus: list[int]) -> list[int]:
    """Each GPU's free memory as nvidia-smi reports it (nvidia-smi's numbering, as `resolve_gpus`)."""
    command = ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits",
               "-i", ",".join(str(gpu) for gpu in gpus)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise SweepError(f"execution.trials_per_gpu: auto needs nvidia-smi to read free memory ({one_line(err)}); "
                         "give trials_per_gpu as a number") from None
    mib = done.stdout.split()
    if done.returncode != 0 or len(mib) != len(gpus) or not all(value.isdigit() for value in mib):
        raise SweepError(f"execution.trials_per_gpu: auto: nvidia-smi gave no free memory for GPUs {gpus} "
                         f"({one_line(done.stdout + done.stderr) or f'exit code {done.returncode}'})")
    return [int(value) * 2**20 for value in mib]


def auto_trials_per_gpu(spec: SweepSpec, gpus: list[int]) -> tuple[int, str]:
    """trials_per_gpu for `auto` on `gpus`, and the one line that says how it was sized."""
    free = free_gpu_bytes(gpus)
    tightest = min(range(len(gpus)), key=free.__getitem__)
    configs = largest_configs(spec)
    peaks = [measure_trial_peak(cfg, gpus[0]) for cfg in configs]
    peak = max(peaks)
    try:
        per_gpu = trials_that_fit(peak, free[tightest])
    except SweepError as err:
        raise SweepError(f"{err} (GPU {gpus[tightest]})") from None
    largest = "" if len(configs) == 1 else \
        f" (the largest of {len(configs)} configurations: {_label(spec, configs[peaks.index(peak)])})"
    where = f"on GPU {gpus[0]}" if len(gpus) == 1 else \
        f"on GPU {gpus[tightest]} (the least free of GPUs {gpus}; measured on GPU {gpus[0]})"
    return per_gpu, (f"trials_per_gpu auto: one trial peaks at {peak / GIB:.1f} GiB{largest} of "
                     f"{free[tightest] / GIB:.1f} GiB free {where} -> {per_gpu} per GPU (cap {MAX_TRIALS_PER_GPU})")


def _trial_peak(cfg: TrainConfig, gpu: int) -> int:
    """In the spawned process: what `fit` puts on the device, one step of each kind and a rollout."""
    bind_device(gpu, cpu_count())
    try:
        device = torch.device("cuda")
        data = load_video_data(cfg)
        train_images = data.train_images.to(device)  # (n_clips, T, 3, H, W) uint8, all of it, as fit holds it
        train_labels = data.train_labels.to(device)
        val_images, val_labels = data.val_images.to(device), data.val_labels.to(device)  # (T_val, 3, H, W)
        training = setup(cfg, device)
        clips = slice(0, cfg.batch_size)  # a full batch, or every clip when there are fewer
        for teacher_forced in (True, False):
            train_step(training.model, training.optimizer, train_images[clips], train_labels[clips], teacher_forced,
                       1.0, training.noise_rng, cfg)
        validate(training.model, val_images, val_labels, cfg, cfg.seed)
        validate_one_step(training.model, val_images, val_labels, cfg, cfg.seed)
        return torch.cuda.max_memory_reserved(device)
    except torch.cuda.OutOfMemoryError as err:
        # torch's own message runs to several sentences about the allocator; its first says enough
        raise SweepError(f"execution.trials_per_gpu: auto: one trial does not fit on GPU {gpu} even alone "
                         f"({one_line(err).split('. ')[0]}); lower batch_size, val_vi_len or the model's dims") \
            from None


def _memory_key(cfg: TrainConfig) -> tuple:
    return tuple(getattr(cfg, name) for name in MEMORY_SIZES + MEMORY_KINDS)


def _dominates(big: tuple, small: tuple) -> bool:
    sizes = len(MEMORY_SIZES)
    return all(b >= s for b, s in zip(big[:sizes], small[:sizes])) and big[sizes:] == small[sizes:]


def _label(spec: SweepSpec, cfg: TrainConfig) -> str:
    changed = {name: getattr(cfg, name) for name in MEMORY_SIZES + MEMORY_KINDS
               if getattr(cfg, name) != getattr(train_config(spec, {}, cfg.seed), name)}
    return group_label(changed)
