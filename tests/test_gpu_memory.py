"""experiments/gpu_memory.py: how many trials fit on a GPU, which configurations are measured, the measurement."""
from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import torch

from cvae.config import TrainConfig
from experiments.errors import SweepError
from experiments.gpu_memory import (
    CONTEXT_BYTES,
    auto_trials_per_gpu,
    free_gpu_bytes,
    largest_configs,
    measure_trial_peak,
    trials_that_fit,
)
from experiments.spec_loader import load_spec, parse_spec

GIB = 2**30
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="measuring a trial needs a CUDA GPU")


# ---------------------------------------------------------------- how many fit


def test_trials_that_fit():
    # 139 GiB less 10% headroom is 125.1 GiB; a trial and its context take 2.5 GiB: 50 would fit
    assert trials_that_fit(2 * GIB, 139 * GIB, GIB // 2, 0.1, 8) == 8
    assert trials_that_fit(2 * GIB, 139 * GIB, GIB // 2, 0.1, 64) == 50
    assert trials_that_fit(30 * GIB, 80 * GIB, GIB // 2, 0.1, 8) == 2  # 72 GiB // 30.5 GiB
    assert trials_that_fit(75 * GIB, 80 * GIB, GIB // 2, 0.1, 8) == 1  # fits alone, not within the headroom
    assert trials_that_fit(2 * GIB, 139 * GIB) == 8  # the defaults: 500 MiB context, 10% headroom, cap 8
    assert CONTEXT_BYTES == 500 * 2**20


def test_a_trial_bigger_than_the_gpu_is_an_error():
    with pytest.raises(SweepError) as caught:
        trials_that_fit(80 * GIB, 80 * GIB, GIB // 2, 0.1, 8)
    assert str(caught.value) == ("execution.trials_per_gpu: auto: one trial needs 80.5 GiB with its CUDA context "
                                 "but the GPU has 80.0 GiB free; lower batch_size, val_vi_len or the model's dims")


# ---------------------------------------------------------------- which configurations are measured


def sizes(configs) -> list[tuple]:
    return [(cfg.batch_size, cfg.F_dim, cfg.bf16) for cfg in configs]


def test_a_grid_measures_only_the_configurations_no_other_outgrows():
    spec = parse_spec({"name": "x", "parameters": {"batch_size": [2, 16], "kl_anneal_type": ["Cyclical", "None"]}})
    assert sizes(largest_configs(spec)) == [(16, 128, True)]
    spec = parse_spec({"name": "x", "parameters": {"batch_size": [2, 4], "bf16": [True, False]}})
    assert sizes(largest_configs(spec)) == [(4, 128, True), (4, 128, False)]  # bf16 is a kind, not a size
    spec = parse_spec({"name": "x", "grid": [{"F_dim": 256, "batch_size": 2}, {"F_dim": 64, "batch_size": [4, 8]}]})
    assert sizes(largest_configs(spec)) == [(2, 256, True), (8, 64, True)]  # neither is smaller in every size


def test_a_sampled_sweep_measures_its_distributions_at_their_max():
    spec = parse_spec({"name": "x", "sampler": "random", "n_trials": 5, "parameters": {
        "batch_size": {"distribution": "int_uniform", "min": 2, "max": 12, "q": 2},
        "F_dim": {"values": [64, 128]},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}})
    assert sizes(largest_configs(spec)) == [(12, 128, True)]


def test_shipped_specs():
    assert sizes(largest_configs(load_spec(SWEEPS / "lab_experiments.yaml"))) == [(16, 128, True)]
    assert sizes(largest_configs(load_spec(SWEEPS / "kl_ablation.yaml"))) == [(2, 128, True)]
    assert sizes(largest_configs(load_spec(SWEEPS / "lr_schedule.yaml"))) == [(2, 128, True)]


# ---------------------------------------------------------------- free memory and the measurement


def install_nvidia_smi(folder: Path, monkeypatch: pytest.MonkeyPatch, output: str, code: int = 0) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(folder))


def test_free_memory_from_nvidia_smi(tmp_path, monkeypatch):
    install_nvidia_smi(tmp_path, monkeypatch, "143000\n70000\n")
    assert free_gpu_bytes([0, 1]) == [143000 * 2**20, 70000 * 2**20]
    install_nvidia_smi(tmp_path, monkeypatch, "No devices were found", code=6)
    with pytest.raises(SweepError, match=r"^execution.trials_per_gpu: auto: nvidia-smi gave no free memory for "
                                         r"GPUs \[3\] \(No devices were found\)$"):
        free_gpu_bytes([3])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SweepError, match="^execution.trials_per_gpu: auto needs nvidia-smi to read free memory"):
        free_gpu_bytes([0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure without CUDA")
def test_without_cuda_the_measurement_fails_in_one_line():
    with pytest.raises(SweepError) as caught:
        measure_trial_peak(TrainConfig(), 0)
    assert str(caught.value).startswith("execution.gpus: the worker for GPU 0 sees 0 CUDA devices instead of 1")
    assert "\n" not in str(caught.value)


@needs_cuda
def test_the_peak_grows_with_the_batch(small_dataset):
    cfg = TrainConfig(DR=str(small_dataset), train_vi_len=8, val_vi_len=40, batch_size=2)  # 12 clips of 8 frames
    small, large = measure_trial_peak(cfg, 0), measure_trial_peak(cfg.replace(batch_size=12), 0)
    assert 0 < small < large < 40 * GIB


@needs_cuda
def test_auto_sizes_from_a_measured_trial(small_dataset):
    spec = parse_spec({"name": "x", "base": {"DR": str(small_dataset), "train_vi_len": 8, "val_vi_len": 40},
                       "execution": {"gpus": [0], "trials_per_gpu": "auto"}})
    per_gpu, sizing = auto_trials_per_gpu(spec, [0])
    assert re.fullmatch(rf"trials_per_gpu auto: one trial peaks at \d+\.\d GiB of \d+\.\d GiB free on GPU 0 "
                        rf"-> {per_gpu} per GPU \(cap 8\)", sizing), sizing
    assert 1 <= per_gpu <= 8
