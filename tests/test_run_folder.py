"""A run folder belongs to one run (cvae/folders.py, through `python -m cvae train`): no command writes over
an earlier run's files, a refused one changes nothing, and read-only folders stop a run before it trains."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cvae import checkpoint
from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.errors import CheckpointError
from cvae.folders import aside_name
from cvae.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--F_dim", "16", "--L_dim", "8", "--N_dim", "4", "--D_out_dim", "24", "--batch_size", "2",
        "--train_vi_len", "4", "--val_vi_len", "40", "--partial", "0.5", "--device", "cpu", "--channels_last", "false"]


def train(data: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvae", "train", "--DR", str(data), *TINY, *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The one `error:` line a refused command ends with (exit code 2, no traceback)."""
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and done.stderr.endswith(errors[0] + "\n"), done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its relative path, as a SHA-256: equal dicts mean byte-identical folders."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only even for root: a read-only bind mount as root (chmod does not stop root), else chmod."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (no CAP_SYS_ADMIN) to make a folder read-only for root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def first_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 epochs with a checkpoint each (epoch_0002, epoch_0003 and best.ckpt kept); treat it as read-only."""
    folder = tmp_path_factory.mktemp("first") / "r"
    done = train(small_dataset, "--num_epoch", 3, "--per_save", 1, "--save_root", folder)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def run_folder(first_run: Path, tmp_path: Path) -> Path:
    """A private copy of `first_run`, which the checkpoints' configs still name as their save_root."""
    return Path(shutil.copytree(first_run, tmp_path / "r"))


def test_training_into_a_folder_that_holds_a_run_is_refused_and_changes_nothing(small_dataset, run_folder):
    before = hashes(run_folder)
    done = train(small_dataset, "--num_epoch", 1, "--lr", 0.01, "--save_root", run_folder)
    assert one_line_error(done) == (
        f"error: save_root {run_folder} already holds a run (config.yaml, val_psnr_per_frame.csv, "
        f"checkpoints/best.ckpt, 2 epoch checkpoints up to epoch_0003.ckpt); pass --resume to continue it, "
        f"--overwrite to move it aside to {run_folder}.old-1, or another --save_root")
    assert hashes(run_folder) == before


def test_overwrite_moves_the_earlier_run_aside_whole(small_dataset, run_folder):
    before = hashes(run_folder)
    done = train(small_dataset, "--num_epoch", 1, "--overwrite", "--save_root", run_folder)
    assert done.returncode == 0, done.stderr
    assert f"moved the earlier run in {run_folder} aside to {run_folder}.old-1" in done.stdout.splitlines()
    assert hashes(run_folder.with_name("r.old-1")) == before
    assert sorted(hashes(run_folder)) == ["checkpoints/best.ckpt", "checkpoints/epoch_0001.ckpt", "config.yaml",
                                          "val_psnr_per_frame.csv"]
    assert yaml.safe_load((run_folder / "config.yaml").read_text())["num_epoch"] == 1
    assert aside_name(run_folder) == run_folder.with_name("r.old-2")  # the next one never reuses a name


def test_resume_continues_the_newest_checkpoint_and_then_records_its_config(small_dataset, run_folder):
    before = checkpoint.load(run_folder / "checkpoints/epoch_0003.ckpt")
    done = train(small_dataset, "--resume", "--num_epoch", 4, "--save_root", run_folder)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {run_folder}/checkpoints/epoch_0003.ckpt at epoch 3" in done.stderr
    assert [path.name for path in checkpoint.epoch_files(run_folder / "checkpoints")] == \
        ["epoch_0003.ckpt", "epoch_0004.ckpt"]
    assert yaml.safe_load((run_folder / "config.yaml").read_text()) == \
        {**before["config"], "num_epoch": 4, "save_root": str(run_folder)}


@pytest.mark.parametrize("args, message", [
    (["--ckpt_path", "checkpoints/epoch_0003.ckpt", "--num_epoch", 4, "--F_dim", 32],
     "error: checkpoint {r}/checkpoints/epoch_0003.ckpt holds weights of another shape than the resumed run's "
     "model (F_dim=32, L_dim=8, N_dim=4, D_out_dim=24): frame_transformation.0.body.0.weight is [2, 3, 3, 3] "
     "where the config needs [4, 3, 3, 3]; a resumed run keeps the checkpoint's model fields"),
    (["--resume"],
     "error: checkpoint {r}/checkpoints/epoch_0003.ckpt has completed 3 epochs, and num_epoch=3: nothing is "
     "left to train; pass --num_epoch 4 or more to train on"),
    (["--ckpt_path", "checkpoints/epoch_0002.ckpt", "--num_epoch", 5],
     "error: checkpoint {r}/checkpoints/epoch_0002.ckpt (epoch 2) is older than epoch_0003.ckpt beside it, which "
     "the resumed run would overwrite; continue the newest with --resume, or copy {r} and resume in the copy"),
], ids=["another model", "nothing to train", "older checkpoint"])
def test_a_refused_resume_changes_nothing_in_its_folder(small_dataset, run_folder, args, message):
    before = hashes(run_folder)
    args = [run_folder / arg if str(arg).startswith("checkpoints/") else arg for arg in args]
    done = train(small_dataset, *args, "--save_root", run_folder)
    assert one_line_error(done) == message.format(r=run_folder)
    assert hashes(run_folder) == before


def test_a_copied_run_folder_is_resumed_in_the_copy(small_dataset, run_folder, tmp_path):
    copy = Path(shutil.copytree(run_folder, tmp_path / "copy"))
    before = hashes(run_folder)
    done = train(small_dataset, "--ckpt_path", copy / "checkpoints/epoch_0003.ckpt", "--num_epoch", 4)
    assert done.returncode == 0, done.stderr
    assert hashes(run_folder) == before  # the folder the checkpoint's config names
    assert (copy / "checkpoints/epoch_0004.ckpt").is_file()
    assert yaml.safe_load((copy / "config.yaml").read_text())["save_root"] == str(copy)


def test_a_resume_into_a_folder_that_holds_another_run_is_refused(small_dataset, first_run, run_folder):
    before = hashes(run_folder)
    done = train(small_dataset, "--ckpt_path", first_run / "checkpoints/epoch_0003.ckpt", "--num_epoch", 4,
                 "--save_root", run_folder)
    assert one_line_error(done) == (
        f"error: save_root {run_folder} holds another run (config.yaml, val_psnr_per_frame.csv, checkpoints/best.ckpt, "
        f"2 epoch checkpoints up to epoch_0003.ckpt) than checkpoint {first_run}/checkpoints/epoch_0003.ckpt; "
        f"pass another --save_root for the resumed run")
    assert hashes(run_folder) == before


def test_resume_where_there_is_no_checkpoint_says_so(small_dataset, tmp_path):
    done = train(small_dataset, "--resume", "--save_root", tmp_path / "none")
    assert one_line_error(done) == (f"error: --resume: save_root {tmp_path / 'none'} holds no checkpoint to continue "
                                    f"(checkpoints/epoch_NNNN.ckpt); train without --resume to start a run")
    assert not (tmp_path / "none").exists()


def test_a_read_only_save_root_is_one_line_before_any_training(small_dataset, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        done = train(small_dataset, "--num_epoch", 1, "--save_root", folder)
    assert re.fullmatch(rf"error: cannot write into save_root {folder} \((Read-only file system|Permission denied)\); "
                        r"give a folder you can write to", one_line_error(done))
    assert "epoch   1/1" not in done.stdout
    assert not any(folder.iterdir())


def test_a_read_only_checkpoint_folder_stops_a_resume_before_it_trains_or_writes(small_dataset, run_folder):
    before = hashes(run_folder)
    with read_only(run_folder / "checkpoints"):
        done = train(small_dataset, "--resume", "--num_epoch", 4, "--save_root", run_folder)
    assert re.fullmatch(rf"error: cannot write into the checkpoint folder {run_folder}/checkpoints "
                        r"\((Read-only file system|Permission denied)\); give a folder you can write to",
                        one_line_error(done))
    assert hashes(run_folder) == before  # config.yaml too: the resume was not accepted


def test_a_checkpoint_folder_that_turns_read_only_mid_run_keeps_the_epoch(small_dataset, tmp_path):
    cfg = TrainConfig(DR=str(small_dataset), save_root=str(tmp_path / "run"), F_dim=16, L_dim=8, N_dim=4,
                      D_out_dim=24, batch_size=2, train_vi_len=4, val_vi_len=40, partial=0.5, num_epoch=3,
                      per_save=1, device="cpu", channels_last=False)
    folder = tmp_path / "run/checkpoints"
    with contextlib.ExitStack() as locks:
        def lock_after_the_first_epoch(report) -> None:
            if report.epoch == 1:  # before epoch 2 is saved
                locks.enter_context(read_only(folder))

        with pytest.raises(CheckpointError) as refused:
            fit(cfg, load_video_data(cfg), callbacks=[lock_after_the_first_epoch], progress=False)
        kept = hashes(folder)
    match = re.fullmatch(rf"cannot write checkpoints into {folder} \((Read-only file system|Permission denied)\); "
                         rf"epoch 2 was saved to (\S+) instead: move it into {folder} once that can be written, "
                         r"and resume from there", str(refused.value))
    assert match, refused.value
    rescued = Path(match.group(2))
    try:
        assert rescued.name == "epoch_0002.ckpt" and checkpoint.load(rescued)["epoch"] == 2
    finally:
        shutil.rmtree(rescued.parent)
    assert sorted(kept) == ["best.ckpt", "epoch_0001.ckpt"]
    assert checkpoint.load(folder / "epoch_0001.ckpt")["epoch"] == 1
