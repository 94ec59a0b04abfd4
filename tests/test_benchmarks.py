import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_train_throughput_quick_prints_well_formed_json():
    results = json.loads(run_benchmark("train_throughput.py", "--quick", "--json", "--device", "cpu"))
    assert [(r["preset"], r["path"], r["batch_size"]) for r in results] == [
        ("small", "ours", 4), ("small", "fp32", 4), ("small", "lab-style", 2)]
    for r in results:
        assert r["train_frames_per_s"] > 0 and r["rollout_seconds"] > 0 and r["model_tflops"] > 0
        assert r["rollout_frames"] == 40 and r["peak_host_mb"] > 0 and r["device_peak_tflops"] is None


@pytest.mark.slow
def test_sweep_throughput_quick_prints_well_formed_json():
    rows = json.loads(run_benchmark("sweep_throughput.py", "--quick", "--json"))
    assert [row["concurrency"] for row in rows] == [1, 2]
    for row in rows:
        assert row["trials"] == 2 and row["wall_seconds"] > 0 and row["gpu_util_percent"] is None
        assert row["trials_per_hour"] == pytest.approx(2 / row["wall_seconds"] * 3600)


@pytest.mark.slow
def test_quality_check_quick_compares_every_setting_with_the_plain_path():
    report = json.loads(run_benchmark("quality_check.py", "--quick", "--json", "--device", "cpu"))
    assert [(row["configuration"], row["seed"]) for row in report["trials"]] == [
        ("kl_anneal_type=Cyclical", 1), ("kl_anneal_type=Monotonic", 1)]
    assert list(report["summary"]) == ["plain", "ours", "fp32"]
    plain = report["summary"]["plain"]
    assert plain["best_minus_plain_db"] == 0 and plain["largest_trial_difference_db"] == 0
    for setting, figures in report["summary"].items():
        best = max(row[setting] for row in report["trials"])
        assert figures["best_val_psnr"] == best and 5 < best < 60
        assert figures["within_tolerance"] == (abs(figures["best_minus_plain_db"]) <= 0.3)


def test_benchmarks_refuse_unknown_options_in_one_line():
    for script, option in (("train_throughput.py", "--variants=+turbo"), ("quality_check.py", "--settings=plain,+turbo")):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), option], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0 and "'+turbo'" in done.stderr


def test_a_measurement_whose_worker_dies_is_one_line_naming_how(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from train_throughput import WorkerDied, run_alone

    with pytest.raises(WorkerDied, match=r"^the worker was killed by SIGKILL, out of memory\?$"):
        run_alone(signal.raise_signal, signal.SIGKILL)  # what the OOM killer does; Pool waited forever
    with pytest.raises(WorkerDied, match="^the worker exited with code 1$"):
        run_alone(math.sqrt, -1)  # a ValueError in the worker: its traceback goes to stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="GPU 0 exists here")
def test_sweep_throughput_on_a_missing_gpu_says_so_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_throughput.py"), "--gpus", "0", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: execution.gpus: the worker for GPU 0 sees 0")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_learning_curve_quick_prints_every_epoch_beside_its_baselines_and_writes_the_curve(tmp_path):
    out = run_benchmark("learning_curve.py", "configs/cpu.yaml", "--quick", "--out", str(tmp_path))
    epochs = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in epochs] == [1, 2]
    for row in epochs:  # val PSNR, one-step, copy-first, copy-previous, then the loss terms
        val_psnr, one_step, copy_first, copy_previous = map(float, row[2:6])
        assert 5 < val_psnr < 60 and 5 < one_step < 60 and copy_first < copy_previous
    assert "gain" in out.splitlines()[-2]
    header, *rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert header.startswith("epoch,minutes,val_psnr,val_psnr_1step,copy_first,copy_previous") and len(rows) == 2
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
