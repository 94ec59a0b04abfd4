import json
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
    assert [(r["preset"], r["path"], r["batch_size"]) for r in results] == [("small", "ours", 4),
                                                                              ("small", "lab-style", 2)]
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
