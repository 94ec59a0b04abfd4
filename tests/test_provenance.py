"""experiments/provenance.py: git state of real repositories, the machine, and digests of real data sets."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cvae.config import TrainConfig
from cvae.data import load_video_data
from experiments.provenance import collect, data_digest, data_set, device_name, entry_point, git_state


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with one commit of code.py and a .gitignore that ignores venv/."""
    folder = tmp_path / "repo"
    folder.mkdir()
    git(folder, "init", "-q", "-b", "trunk")
    (folder / "code.py").write_text("x = 1\n")
    (folder / ".gitignore").write_text("venv/\n")
    git(folder, "add", "code.py", ".gitignore")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return folder


def test_git_state_of_a_clean_then_changed_checkout(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "code.py") == (head, "trunk", False)
    (repo / "notes.txt").write_text("an untracked file may be code the run imported\n")
    assert git_state(repo / "code.py") == (head, "trunk", True)
    (repo / "notes.txt").unlink()
    (repo / "code.py").write_text("x = 2\n")
    assert git_state(repo / "code.py") == (head, "trunk", True)
    git(repo, "checkout", "-q", "--detach")
    assert git_state(repo / "code.py") == (head, None, True)


def test_no_git_state_outside_a_checkout_or_in_an_ignored_folder(repo, tmp_path):
    (repo / "venv").mkdir()
    (repo / "venv" / "installed.py").write_text("")
    assert git_state(repo / "venv" / "installed.py") == (None, None, None)
    (tmp_path / "loose.py").write_text("")
    assert git_state(tmp_path / "loose.py") == (None, None, None)


def test_this_process_and_its_cpu():
    found = collect(torch.device("cpu"))
    assert found.commit == git(Path(__file__).parent, "rev-parse", "HEAD")
    assert found.dirty == bool(git(Path(__file__).parent, "status", "--porcelain"))
    assert found.versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert found.versions["torch"] == torch.__version__
    assert found.source == entry_point()
    assert collect().device is None


def test_the_entry_point_is_the_script_run_or_the_console(monkeypatch, tmp_path):
    script = tmp_path / "run_sweep.py"
    script.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_sweep.py", "sweeps/quick.yaml"])
    assert entry_point() == str(script.resolve())
    for argv in (["-c"], [""], []):  # python -c (a pytest-xdist worker), the interactive console, no argv
        monkeypatch.setattr(sys, "argv", argv)
        assert entry_point() == "<console>"


def test_a_cpu_is_named_as_proc_cpuinfo_names_it():
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    if not models:
        pytest.skip("this machine's /proc/cpuinfo names no CPU model")
    assert device_name(torch.device("cpu")) == models[0]


def test_a_data_set_is_named_by_its_folder_and_told_apart_by_its_frames(small_dataset, tmp_path):
    cfg = TrainConfig(DR=str(small_dataset), train_vi_len=4, val_vi_len=8, partial=0.5)
    data = load_video_data(cfg)
    described = data_set(cfg, data)
    n_clips, clip_len, _, height, width = data.train_images.shape
    assert (described.name, described.source_type) == ("dance", "local")
    assert json.loads(described.source) == {"uri": str(small_dataset.resolve())}
    assert json.loads(described.profile) == {
        "frame_size": f"{height}x{width}", "train_clips": n_clips, "frames_per_clip": 4,
        "train_frames": n_clips * 4, "val_frames": 8}
    assert len(described.digest) == 16 and described.digest == data_digest(load_video_data(cfg))

    brighter = replace(data, val_images=data.val_images.clone())
    brighter.val_images[0, 0, 0, 0] ^= 1  # one bit of one pixel
    assert data_digest(brighter) != described.digest
    fewer = load_video_data(cfg.replace(val_vi_len=7))
    assert data_digest(fewer) != described.digest
