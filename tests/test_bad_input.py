"""Bad input never gives a traceback: fuzzed configs, broken data sets through the scripts, an MLflow server that is not there."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvae.config import TrainConfig
from cvae.errors import ConfigError
from mlflow_ui_check import free_port

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [field.name for field in dataclasses.fields(TrainConfig)]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=12),
                 st.lists(st.one_of(st.integers(-5, 50), st.text(max_size=3)), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
TINY = ("{F_dim: 8, L_dim: 4, N_dim: 2, D_out_dim: 8, train_vi_len: 4, val_vi_len: 8, batch_size: 4, "
        "num_epoch: 1, DR: %s}")


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), JUNK, max_size=4))
def test_any_config_mapping_builds_or_is_one_line_config_error(values):
    try:
        TrainConfig.from_dict(values, source="fuzz.yaml")
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def break_dataset(data: Path, damage: str) -> Path:
    """Damage a copy of the small data set; returns the file or folder the error must name."""
    train_img, train_label = data / "train/train_img", data / "train/train_label"
    if damage == "truncated png":
        frame = train_img / "frame3.png"
        frame.write_bytes(frame.read_bytes()[:60])
        return frame
    if damage == "missing label":
        (train_label / "frame5.png").unlink()
        return train_label / "frame5.png"
    if damage == "wrong count":  # one more label than images
        (train_label / "frame5.png").rename(train_label / "frame999.png")
        return train_label
    for png in (data / "val/val_img").glob("*.png"):  # an empty folder
        png.unlink()
    return data / "val/val_img"


@pytest.mark.parametrize("damage, script", [("truncated png", "run_sweep.py"), ("missing label", "cvae.train"),
                                            ("wrong count", "run_sweep.py"), ("empty folder", "cvae.train")])
def test_a_broken_data_set_is_one_line_and_exit_code_2(small_dataset_copy, tmp_path, damage, script):
    named = break_dataset(small_dataset_copy, damage)
    if script == "run_sweep.py":
        spec = tmp_path / "broken.yaml"
        spec.write_text(f"name: broken\nbase: {TINY % small_dataset_copy}\nparameters: {{tfr: [0.0, 1.0]}}\n")
        done = run_script([str(ROOT / "run_sweep.py"), str(spec)], tmp_path)
    else:
        done = run_script(["-m", "cvae.train", "--DR", str(small_dataset_copy), "--save_root", str(tmp_path / "run"),
                           "--num_epoch", "1"], ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and done.stderr.endswith(errors[0] + "\n"), done.stderr  # after progress bars and logs
    assert str(named) in errors[0] and "Traceback" not in done.stderr, errors[0]
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_tracking_server_stops_the_sweep_before_its_first_trial(small_dataset, tmp_path):
    spec = tmp_path / "lonely.yaml"
    spec.write_text(f"name: lonely\nbase: {TINY % small_dataset}\nparameters: {{tfr: [0.0, 1.0]}}\n")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there now
    done = run_script([str(ROOT / "run_sweep.py"), str(spec), "--tracking-uri", uri], tmp_path)
    assert done.returncode == 2
    assert done.stderr == (f"error: mlflow.tracking_uri: nothing answers at {uri} ([Errno 111] Connection refused); "
                           "is `mlflow server` running there, on that port?\n")
    assert not (tmp_path / "runs").exists()  # no study, no trial folder
