"""Training and rollout speed of our trainer next to a lab-style baseline, in one process each.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--model light|lab] [--preset lab|small]
                                          [--batch-size N[,N...]]
                                          [--variants ours,fp32,...] [--steps N] [--profile] [--quick] [--json]

`--model` picks the five modules (TrainConfig.model) for every path, so both sides run one model.
The lab-style path is the lab code's way of running the same model: fp32, NCHW, batch 2, a
DataLoader rebuilt every epoch that decodes PNGs for every clip, one time step after another,
a host sync (`loss.item()`) after every step, and pose features computed one frame at a time in
the rollout. Ours: the uint8 frame cache in device memory, teacher-forced steps batched over time,
channels_last, bf16 autocast where the device has bf16 units, the fused optimizer on CUDA, no host
sync inside the loop: TrainConfig's defaults.
The variants (benchmarks/variants.py) switch on the optimisations that are off by default
(torch.compile, CUDA graphs for the rollout), one at a time or together, switch bf16 off ("fp32"),
or switch everything off ("plain"). Every measurement runs in its own spawned process
so peak memory is that path's alone; a process that dies (out of memory, most often) is one line
naming its path, and the other paths still run. `--profile` prints the PyTorch profiler's busiest
operators for each path's training steps.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cvae.config import MODEL_NAMES, TrainConfig
from cvae.data import load_video_data
from cvae.model import VideoCVAE, kl_divergence
from cvae.synthetic import generate
from cvae.train import setup, to_unit, train_step, validate
from variants import VARIANTS, parse_variants

PRESETS = {
    "lab": dict(F_dim=128, L_dim=32, N_dim=12, D_out_dim=192),
    "small": dict(F_dim=32, L_dim=16, N_dim=4, D_out_dim=48),
}
# dense bf16 tensor-core peak, TFLOP/s, by the GPU's name
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
LAB_BATCH_SIZE = 2
LAB_STYLE = "lab-style"
DEFAULT_VARIANTS = {"cpu": "ours,fp32", "cuda": "ours,fp32,+compile,+cuda_graphs,+all"}
DEFAULT_BATCH_SIZES = {"cpu": "4,16", "cuda": "16,64"}
LAB_MODEL_BATCH_SIZES = "2,16"  # --model lab on the CPU: the lab's own batch and a large one
PROFILE_ROWS = 12


@dataclass(frozen=True)
class Measurement:
    model: str
    preset: str
    path: str
    batch_size: int
    train_frames_per_s: float
    rollout_seconds: float
    rollout_frames: int
    peak_host_mb: float
    peak_gpu_mb: float
    model_tflops: float
    device_peak_tflops: float | None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=MODEL_NAMES, default="light", help="the five modules every path runs")
    parser.add_argument("--preset", choices=(*PRESETS, "both"), default=None,
                        help="default: both, lab with --model lab, small with --quick")
    parser.add_argument("--batch-size", default=None,
                        help="our batch sizes, comma-separated (default 4,16 on the CPU, 2,16 there with --model lab, "
                             "16,64 on CUDA; the lab-style path uses 2)")
    parser.add_argument("--variants", default=None,
                        help=f"our paths, comma-separated from {', '.join(VARIANTS)} "
                             f"(default {DEFAULT_VARIANTS['cpu']} on the CPU, {DEFAULT_VARIANTS['cuda']} on CUDA)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per path")
    parser.add_argument("--profile", action="store_true", help="print the profiler's busiest operators per path")
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 step of batch 4, a 40-frame rollout: for CI")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    try:
        variants = parse_variants(args.variants or DEFAULT_VARIANTS[args.device], "--variants")
        default_sizes = LAB_MODEL_BATCH_SIZES if args.model == "lab" and args.device == "cpu" else \
            DEFAULT_BATCH_SIZES[args.device]
        batch_sizes = [int(size) for size in (args.batch_size or default_sizes).split(",")]
    except ValueError as err:
        what = err if "--variants" in str(err) else f"--batch-size: expected integers like 4,16, got {args.batch_size!r}"
        print(f"error: {what}", file=sys.stderr)
        return 2
    preset = args.preset or ("small" if args.quick else "lab" if args.model == "lab" else "both")
    presets = list(PRESETS) if preset == "both" else [preset]
    steps, batch_sizes = (1, [4]) if args.quick else (args.steps, batch_sizes)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = dict(small=True) if args.quick else dict(train_videos=2, train_frames=160, test_seqs=1, test_frames=16)
        root = generate(Path(tmp) / "data", seed=0, **sizes)
        rollout_frames = 40 if args.quick else 630
        results, died = [], 0
        for preset in presets:
            paths = [(variant, batch) for batch in batch_sizes for variant in variants]
            for path, batch in [*paths, (LAB_STYLE, LAB_BATCH_SIZE)]:
                job = (args.model, preset, path, batch, steps, rollout_frames, str(root), args.device, args.profile)
                try:
                    results.append(run_alone(measure, *job))
                except WorkerDied as err:
                    print(f"error: {args.model} {preset} {path} batch {batch}: {err}; measuring the other paths",
                          file=sys.stderr, flush=True)
                    died += 1
    print(json.dumps([r.__dict__ for r in results], indent=2) if args.json else table(results))
    return 1 if died else 0


class WorkerDied(Exception):
    """The process running one measurement ended without a result."""


def run_alone(function, *args):
    """function(*args) in a fresh spawned process; WorkerDied naming its signal or exit code if it dies.

    Not multiprocessing.Pool: when its worker is killed (the kernel's OOM killer sends SIGKILL), Pool
    starts another and waits for the lost result forever.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_send_result, args=(sender, function, args))
    worker.start()
    sender.close()  # the worker's copy is the only writer left: its death ends the pipe
    try:
        result = receiver.recv()
    except EOFError:
        worker.join()
        code = worker.exitcode
        if code < 0:
            hint = ", out of memory?" if code == -signal.SIGKILL else ""
            raise WorkerDied(f"the worker was killed by {signal.Signals(-code).name}{hint}") from None
        raise WorkerDied(f"the worker exited with code {code}") from None  # its traceback is on stderr above
    worker.join()
    return result


def _send_result(sender, function, args) -> None:
    sender.send(function(*args))


def measure(model_name: str, preset: str, path: str, batch_size: int, steps: int, rollout_frames: int, root: str,
            device_name: str, profile: bool) -> Measurement:
    device = torch.device(device_name)
    ours = path != LAB_STYLE
    options = VARIANTS[path if ours else "plain"]
    cfg = TrainConfig(DR=root, model=model_name, batch_size=batch_size, val_vi_len=rollout_frames,
                      device=device_name, seed=0, **options, **PRESETS[preset])
    data = load_video_data(cfg)
    training = setup(cfg, device)  # the lab-style path's "plain" options: NCHW, fp32, plain Adam
    model, optimizer = training.model, training.optimizer
    run_steps = (_our_steps if ours else _lab_steps)(model, optimizer, cfg, data, device)
    run_steps(2)  # warm-up: allocator, kernels, caches, compilation
    _sync(device)
    if profile:
        _print_profile(f"{preset} {path} batch {batch_size}", run_steps, device)
    started = time.perf_counter()
    frames = run_steps(steps)
    _sync(device)
    train_seconds = time.perf_counter() - started
    val_images, val_labels = data.val_images.to(device), data.val_labels.to(device)
    rollout = validate if ours else _lab_rollout
    rollout(model, val_images, val_labels, cfg, 0)  # warm-up: every shape the timed rollout meets
    _sync(device)
    started = time.perf_counter()
    rollout(model, val_images, val_labels, cfg, 0)
    _sync(device)
    rollout_seconds = time.perf_counter() - started
    flops_per_frame = _flops_per_frame(cfg, data, device)
    frames_per_s = frames / train_seconds
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((tflops for name, tflops in GPU_PEAK_TFLOPS.items() if name in gpu_name), None)
    return Measurement(model_name, preset, path, batch_size, frames_per_s, rollout_seconds, rollout_frames,
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
                       flops_per_frame * frames_per_s / 1e12, peak)


def _our_steps(model, optimizer, cfg, data, device):
    images, labels = data.train_images.to(device), data.train_labels.to(device)  # (n_clips, T, 3, H, W) uint8
    noise = torch.Generator(device).manual_seed(1)

    def run(steps: int) -> int:
        for step in range(steps):
            clip_ids = torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size, device=device) % len(images)
            train_step(model, optimizer, images[clip_ids], labels[clip_ids], True, 1.0, noise, cfg)
        return steps * cfg.batch_size * cfg.train_vi_len
    return run


class PngClips(torch.utils.data.Dataset):
    """The lab's dataset: every item decodes its clip's PNGs again."""

    def __init__(self, root: Path, cfg: TrainConfig):
        from cvae.data import natural_key  # the same file order as the cache

        self.cfg = cfg
        self.images = sorted((root / "train/train_img").glob("*.png"), key=lambda p: natural_key(p.name))
        self.labels = [root / "train/train_label" / p.name for p in self.images]

    def __len__(self) -> int:
        return len(self.images) // self.cfg.train_vi_len

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        span = range(index * self.cfg.train_vi_len, (index + 1) * self.cfg.train_vi_len)
        size = (self.cfg.frame_W, self.cfg.frame_H)
        read = lambda path: pil_to_tensor(Image.open(path).convert("RGB").resize(size)).float() / 255  # noqa: E731
        return (torch.stack([read(self.images[i]) for i in span]),  # (T, 3, H, W)
                torch.stack([read(self.labels[i]) for i in span]))


def _lab_steps(model, optimizer, cfg, data, device):
    dataset = PngClips(Path(cfg.DR), cfg)

    def run(steps: int) -> int:
        done = 0
        while done < steps:  # a new DataLoader per epoch, as the lab code built one
            for images, labels in torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                                              drop_last=True):
                images, labels = images.to(device), labels.to(device)  # (B, T, 3, H, W) float
                loss = 0.0
                for t in range(1, cfg.train_vi_len):
                    prev_feat = model.frame_transformation(images[:, t - 1])
                    frame_feat = model.frame_transformation(images[:, t])
                    pose_feat = model.label_transformation(labels[:, t])
                    eps = model.sample_prior(pose_feat, None)
                    z, mu, logvar = model.Gaussian_Predictor(frame_feat, pose_feat, eps)
                    prediction = model.decode(images[:, t - 1], prev_feat, pose_feat, z)
                    step_loss = F.mse_loss(prediction, images[:, t]) + kl_divergence(mu, logvar)
                    loss = loss + step_loss
                    step_loss.item()  # the lab logged every step: a host sync
                optimizer.zero_grad()
                (loss / (cfg.train_vi_len - 1)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                done += 1
                if done == steps:
                    break
        return steps * cfg.batch_size * cfg.train_vi_len
    return run


@torch.no_grad()
def _lab_rollout(model, images, labels, cfg, seed):
    """The lab's validation loop: one frame at a time, pose features included."""
    model.eval()
    frames, prev = to_unit(images), to_unit(images[:1])
    generator = torch.Generator(images.device).manual_seed(seed)
    for t in range(1, len(frames)):
        pose_feat = model.label_transformation(to_unit(labels[t:t + 1]))
        prev = model.decode(prev, model.frame_transformation(prev), pose_feat, model.sample_prior(prev, generator))
        F.mse_loss(prev, frames[t:t + 1]).item()
    model.train()


def _flops_per_frame(cfg, data, device) -> float:
    """FLOPs of one of our teacher-forced training steps (forward + backward), per frame.

    Counted on an uncompiled copy of the model: the same arithmetic, without tracing the counter.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = VideoCVAE(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    images, labels = data.train_images[:1].to(device), data.train_labels[:1].to(device)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, images, labels, True, 1.0, None, cfg)
    return counter.get_total_flops() / cfg.train_vi_len


def _print_profile(title: str, run_steps, device: torch.device) -> None:
    """The busiest operators of two training steps, by time spent in the operator itself."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as profiler:
        run_steps(2)
        _sync(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile: {title}, 2 steps\n"
          f"{profiler.key_averages().table(sort_by=sort_by, row_limit=PROFILE_ROWS, max_name_column_width=40)}",
          file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(results: list[Measurement]) -> str:
    header = (f"{'model':6} {'preset':7} {'path':13} {'batch':>5} {'train frames/s':>15} {'rollout s':>10} {'frames':>6} "
              f"{'host MB':>8} {'GPU MB':>8} {'TFLOP/s':>8} {'peak':>6}")
    lines = [header, "-" * len(header)]
    for r in results:
        peak = f"{r.device_peak_tflops:.0f}" if r.device_peak_tflops else "n/a"
        lines.append(f"{r.model:6} {r.preset:7} {r.path:13} {r.batch_size:5d} {r.train_frames_per_s:15.1f} "
                     f"{r.rollout_seconds:10.2f} {r.rollout_frames:6d} {r.peak_host_mb:8.0f} {r.peak_gpu_mb:8.0f} "
                     f"{r.model_tflops:8.4f} {peak:>6}")
    for lab in (r for r in results if r.path == LAB_STYLE):
        for ours in (r for r in results if r.preset == lab.preset and r.path != LAB_STYLE):
            lines.append(f"{ours.preset} {ours.path} batch {ours.batch_size} / lab-style: "
                         f"{ours.train_frames_per_s / lab.train_frames_per_s:.1f}x training frames/s, "
                         f"{lab.rollout_seconds / ours.rollout_seconds:.1f}x rollout speed")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
