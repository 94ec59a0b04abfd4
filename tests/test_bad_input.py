"""Bad input never gives a traceback: fuzzed configs, broken data sets through the scripts, an MLflow server that is not there."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cvae.train_cli import build_parser, config_from_args, main as train_main
from cvae.config import TrainConfig, read_yaml_overrides
from cvae.data import load_video_data
from cvae.errors import ConfigError
from cvae.train import fit
from mlflow_ui_check import free_port
from test_run_folder import hashes

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


# what a config file may hold: mappings of keys and junk, lines that repeat a key or give an impossible date, any text
CONFIG_LINES = st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(
    ["1", "0.5", "inf", "-1", "''", "[1, 2]", "{a: 1}", "true", "2001-02-30", "[[[[", "&a x", "*b", "!!python/none"])),
    max_size=5).map(lambda pairs: "".join(f"{key}: {value}\n" for key, value in pairs))
CONFIG_FILES = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), JUNK, max_size=5).map(yaml.safe_dump),
    CONFIG_LINES, st.text(max_size=60)).map(str.encode) | st.binary(max_size=60)


@settings(max_examples=50, deadline=None)
@given(content=CONFIG_FILES)
def test_any_config_file_builds_or_is_one_line_naming_it(content, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(content)
    args = build_parser().parse_args(["--config", str(path)])
    try:
        config_from_args(args, read_yaml_overrides(path), None)  # as `python -m cvae train --config fuzz.yaml`
    except ConfigError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err), str(err)


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


@pytest.mark.parametrize("damage, script", [("truncated png", "run_sweep.py"), ("missing label", "cvae train"),
                                            ("wrong count", "run_sweep.py"), ("empty folder", "cvae train")])
def test_a_broken_data_set_is_one_line_and_exit_code_2(small_dataset_copy, tmp_path, damage, script):
    named = break_dataset(small_dataset_copy, damage)
    if script == "run_sweep.py":
        spec = tmp_path / "broken.yaml"
        spec.write_text(f"name: broken\nbase: {TINY % small_dataset_copy}\nparameters: {{tfr: [0.0, 1.0]}}\n")
        done = run_script([str(ROOT / "run_sweep.py"), str(spec)], tmp_path)
    else:
        done = run_script(["-m", "cvae", "train", "--DR", str(small_dataset_copy), "--save_root", str(tmp_path / "run"),
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


@pytest.fixture(scope="module")
def tiny_checkpoint(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(DR=str(small_dataset), save_root=str(tmp_path_factory.mktemp("trained")), F_dim=8, L_dim=4,
                      N_dim=2, D_out_dim=8, train_vi_len=4, val_vi_len=8, batch_size=4, partial=0.25, num_epoch=1,
                      device="cpu")
    return fit(cfg, load_video_data(cfg), progress=False).last_checkpoint


def written(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def edited(checkpoint: Path, path: Path, edit) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


# name: (the arguments given files in a folder and a checkpoint, the one line expected, a regex where marked ~)
BAD_TRAIN_INPUTS = {
    "no GPU": (lambda tmp, ckpt: ["--device", "cuda"],
               "error: device='cuda': needs CUDA, which is not available here; pass --device cpu"),
    "seed beyond 64 bits": (lambda tmp, ckpt: ["--seed", str(2**64)],
                            "error: seed=18446744073709551616: must be between 0 and 2**63-1 (9223372036854775807)"),
    "frames too large": (lambda tmp, ckpt: ["--frame_H", "1000000", "--frame_W", "1000000"],
                         r"~error: the train split's 192 images and pose maps at 1000000x1000000 need [\d,.]+ GiB, "
                         r"more than the [\d,.]+ GiB of memory available; pass a smaller --frame_H/--frame_W"),
    "binary config": (lambda tmp, ckpt: ["--config", written(tmp / "binary.yaml", bytes(range(256)))],
                      "error: {tmp}/binary.yaml: is not UTF-8 text (byte 0x80 at offset 128); is it a binary file?"),
    "UTF-16 config": (lambda tmp, ckpt: ["--config", written(tmp / "utf16.yaml", "lr: 0.1\n".encode("utf-16"))],
                      "error: {tmp}/utf16.yaml: is UTF-16 text; save it as UTF-8"),
    "config folder": (lambda tmp, ckpt: ["--config", tmp],
                      "error: {tmp}: is a folder; give a YAML file of TrainConfig keys"),
    "duplicate key": (lambda tmp, ckpt: ["--config", written(tmp / "twice.yaml", "lr: 0.1\nnum_epoch: 1\nlr: 0.2\n")],
                      "error: {tmp}/twice.yaml: not valid YAML (line 3, column 1: key 'lr' given twice)"),
    "wrong type in config": (lambda tmp, ckpt: ["--config", written(tmp / "type.yaml", "num_epoch: many\n")],
                             "error: {tmp}/type.yaml: num_epoch: expected an integer, got 'many'"),
    "invalid value in config": (lambda tmp, ckpt: ["--config", written(tmp / "value.yaml", "lr: -1\n")],
                                "error: {tmp}/value.yaml: lr=-1.0: must be positive"),
    "checkpoint without config": (
        lambda tmp, ckpt: ["--ckpt_path", edited(ckpt, tmp / "bare.ckpt", lambda state: state.pop("config"))],
        "error: checkpoint {tmp}/bare.ckpt holds no 'config', the TrainConfig its model was trained with, so that "
        "model cannot be built; it was edited, or not written by this trainer"),
    "invalid value in a checkpoint's config": (
        lambda tmp, ckpt: ["--ckpt_path", edited(ckpt, tmp / "odd.ckpt", lambda state: state["config"].update(lr=-1))],
        "error: checkpoint {tmp}/odd.ckpt: lr=-1.0: must be positive"),
    "lr inf": (lambda tmp, ckpt: ["--lr", "inf"], "error: lr=inf: must be finite"),
    "weight_decay inf": (lambda tmp, ckpt: ["--weight_decay", "inf"], "error: weight_decay=inf: must be finite"),
    "empty save_root": (lambda tmp, ckpt: ["--save_root", ""], "error: save_root='': must name a folder"),
}


@pytest.mark.parametrize("case", BAD_TRAIN_INPUTS)
def test_bad_training_input_is_one_line_exit_code_2_and_writes_nothing(small_dataset, tiny_checkpoint, tmp_path,
                                                                      capsys, case):
    if case == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_args, expected = BAD_TRAIN_INPUTS[case]
    args = [str(arg) for arg in make_args(inputs, tiny_checkpoint)]
    before = hashes(tmp_path)
    capsys.readouterr()
    # the entry point in this process: a torch import per case would cost more than the case
    exit_code = train_main(["--DR", str(small_dataset), "--save_root", str(tmp_path / "run"), "--num_epoch", "1",
                            "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert exit_code == 2 and err.count("\n") == 1, err
    line = err.rstrip("\n")
    if expected.startswith("~"):
        assert re.fullmatch(expected[1:], line), line
    else:
        assert line == expected.format(tmp=inputs)
    assert hashes(tmp_path) == before  # the inputs as they were, and no run folder
