"""experiments/workers.py: GPU slots without CUDA, and binding a worker process to its device."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from experiments.errors import SpecError
from experiments.spec import Execution
from experiments.workers import bind_device, cpu_count, resolve_gpus, worker_gpus



def fake_nvidia_smi(folder: Path, output: str) -> str:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\n")  # printf: a builtin, PATH holds only this
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(folder)


SMI = ("GPU 0: NVIDIA H200 (UUID: GPU-aaaa1111)\n"
       "GPU 1: NVIDIA H200 (UUID: GPU-bbbb2222)\n"
       "  MIG 1g.18gb     Device  0: (UUID: MIG-cccc3333)\n")


def test_resolve_gpus(tmp_path, monkeypatch):
    auto = Execution(gpus="auto", trials_per_gpu=2)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, SMI))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_gpus(auto) == [0, 1]
    assert worker_gpus(auto, [0, 1]) == [0, 1, 0, 1]
    for visible, gpus in {"1": [1], "3,2": [3, 2], "": [], "-1": [], "0,-1,1": [0], "GPU-bbbb": [1]}.items():
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert resolve_gpus(auto) == gpus, visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccc3333")
    with pytest.raises(SpecError, match="execution.gpus: auto cannot map CUDA_VISIBLE_DEVICES entry 'MIG-cccc3333'"):
        resolve_gpus(auto)
    assert resolve_gpus(Execution(gpus=(2, 5))) == [2, 5]


def test_resolve_gpus_without_a_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_gpus(Execution()) == []




def test_a_cpu_worker_sees_no_gpu_and_its_share_of_threads(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    threads = torch.get_num_threads()
    try:
        bind_device(None, 1)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert torch.get_num_threads() == 1
        assert not torch.cuda.is_available() and not torch.cuda.is_initialized()
    finally:
        torch.set_num_threads(threads)
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("limit, expected", [("1", 1), ("100000", None), ("0", None), ("four", None), ("", None)])
def test_omp_num_threads_caps_the_threads_a_launcher_hands_out(monkeypatch, limit, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = cpu_count()
    monkeypatch.setenv("OMP_NUM_THREADS", limit)
    assert cpu_count() == (expected or cores)  # a cap above the cores, or none torch would read, leaves the cores
