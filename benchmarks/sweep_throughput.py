"""Trials completed per hour by the real sweep driver at several concurrencies.

    python benchmarks/sweep_throughput.py [--gpus 0,1|none] [--trials-per-gpu 1,2,4,8] [--trials N]
                                          [--quick] [--json]

Each concurrency runs the same fixed short grid (a small model on a small synthetic data set) as a
fresh sweep in a temporary folder, through `experiments.launcher.launch`, with its own journal
storage and MLflow database. On the CPU the concurrency is the number of worker processes. Where
`nvidia-smi` exists, GPU utilisation is sampled every second during each sweep.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from cvae.synthetic import generate
from experiments.errors import SpecError, SweepError
from experiments.launcher import configure, launch, parse_gpus
from experiments.spec_loader import parse_spec

SMALL_MODEL = dict(F_dim=32, L_dim=16, N_dim=4, D_out_dim=48, train_vi_len=8, batch_size=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="none", help="none (CPU workers), auto, or indices like 0,1")
    parser.add_argument("--trials-per-gpu", default="1,2", help="concurrencies to compare, comma-separated")
    parser.add_argument("--trials", type=int, default=8, help="trials in the fixed grid")
    parser.add_argument("--quick", action="store_true", help="2 trials of 1 epoch at concurrency 1 and 2: for CI")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    concurrencies = [1, 2] if args.quick else [int(c) for c in args.trials_per_gpu.split(",")]
    trials, epochs = (2, 1) if args.quick else (args.trials, 2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(Path(tmp) / "data", seed=0, small=True)
            rows = [measure(Path(tmp), data, parse_gpus(args.gpus), concurrency, trials, epochs)
                    for concurrency in concurrencies]
    except (SpecError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'per GPU / workers':>17} {'trials':>6} {'wall s':>8} {'trials/hour':>12} {'GPU util %':>10}")
        for row in rows:
            util = "n/a" if row["gpu_util_percent"] is None else f"{row['gpu_util_percent']:.0f}"
            print(f"{row['concurrency']:17d} {row['trials']:6d} {row['wall_seconds']:8.1f} "
                  f"{row['trials_per_hour']:12.1f} {util:>10}")
        base = rows[0]["trials_per_hour"]
        print("throughput vs the first: " + ", ".join(
            f"{row['concurrency']}: {row['trials_per_hour'] / base:.2f}x" for row in rows))
    return 0


def measure(tmp: Path, data: Path, gpus, concurrency: int, trials: int, epochs: int) -> dict:
    """One fresh sweep of `trials` single-seed trials at `concurrency`: wall time, trials/hour, GPU use."""
    folder = tmp / f"sweep_{concurrency}"
    folder.mkdir()
    raw = {
        "name": f"throughput_{concurrency}",
        "base": {**SMALL_MODEL, "DR": str(data), "num_epoch": epochs, "val_vi_len": 40, "per_save": epochs},
        "parameters": {"lr": {"values": [round(1e-3 * (1 + i / trials), 6) for i in range(trials)]}},
        "seeds": [1],
        "sampler": "grid",
        "storage": str(folder / "optuna.journal"),
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    spec = configure(parse_spec(raw, source="sweep_throughput"), gpus=gpus, workers=concurrency)
    with _inside(folder), _GpuSampler() as sampler:
        outcome = launch(spec)
    shutil.rmtree(folder / "runs", ignore_errors=True)
    return {"concurrency": concurrency, "trials": outcome.progress.done, "wall_seconds": outcome.seconds,
            "trials_per_hour": outcome.progress.done / outcome.seconds * 3600,
            "gpu_util_percent": sampler.mean()}


@contextlib.contextmanager
def _inside(folder: Path):
    """The launcher writes runs/ under the working directory."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


class _GpuSampler:
    """Mean utilisation over all GPUs from `nvidia-smi`, sampled every second; None without it."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_GpuSampler":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.samples.extend(float(value) for value in out.split())

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


if __name__ == "__main__":
    raise SystemExit(main())
