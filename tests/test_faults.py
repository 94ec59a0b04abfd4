"""Faults injected into real sweeps (worker processes, journal file, mlflow.db): the sweep goes on or a rerun
finishes it, nothing is lost, and the user is told. NaN losses are tested in test_sweep.py.

Exceptions in a trial come from tests/faults/sitecustomize.py, which the worker processes import at
start-up when PYTHONPATH points at it; see its docstring.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cvae import checkpoint
from experiments.launcher import STOP_GRACE_ENV, configure
from experiments.plan import group_key, trial_plan
from experiments.spec_loader import load_spec
from experiments.study import open_study
from experiments.tracking import EPOCH_METRICS
from test_sweep import (ROOT, complete_cells, live_processes, mlflow_runs, parent_pid, run_launch, run_sweep,
                        write_spec)

FAULTS = Path(__file__).resolve().parent / "faults"


def journal_study(folder: Path, spec_path: Path):
    spec = load_spec(spec_path)
    return open_study(configure(spec, storage=str(folder / "runs" / spec.name / "optuna.journal")))


def every_cell_once(spec_path: Path) -> Counter:
    return Counter((group_key(cell), seed) for cell, seed in trial_plan(load_spec(spec_path)))


def test_out_of_memory_and_an_exception_fail_their_trials_and_the_sweep_goes_on(small_dataset, tmp_path,
                                                                                monkeypatch):
    spec_path = write_spec(tmp_path, small_dataset, "faulty", extra="parameters: {F_dim: [16, 40, 48]}")
    spec_path.write_text(spec_path.read_text().replace("seeds: [1, 2]", "seeds: [1]").replace("F_dim: 16, ", ""))
    # a launcher of its own: its workers, forks of its forkserver, get the faults the environment names
    faulty = run_sweep(tmp_path, spec_path.name, env={"PYTHONPATH": str(FAULTS), "CVAE_TEST_OOM_CHANNELS": "40",
                                                      "CVAE_TEST_ERROR_CHANNELS": "48"})

    assert faulty.returncode == 1, faulty.stderr[-2000:]
    errors = {
        "F_dim=40": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB "
                    "(injected by tests/faults for a 40-channel layer)",
        "F_dim=48": "RuntimeError: injected by tests/faults for a 48-channel layer"}
    for configuration, error in errors.items():
        assert f"({configuration}, seed 1) FAILED: {error}" in faulty.stderr
        assert f"({configuration}, seed 1): {error}" in faulty.stdout
    assert "2 trials failed in this launch:" in faulty.stdout and "2 trials still to run" in faulty.stdout

    study = journal_study(tmp_path, spec_path)
    client, parents, children = mlflow_runs(tmp_path, "faulty")
    by_f_dim = {run.data.params["F_dim"]: run for run in children}
    assert {f: (run.info.status, run.data.tags["sweep.status"]) for f, run in by_f_dim.items()} == {
        "16": ("FINISHED", "COMPLETE"), "40": ("FAILED", "FAILED"), "48": ("FAILED", "FAILED")}
    assert by_f_dim["40"].data.tags["sweep.error"] == errors["F_dim=40"]
    # an unexpected exception keeps its traceback; running out of memory is no bug of ours
    assert [a.path for a in client.list_artifacts(by_f_dim["48"].info.run_id)] == ["traceback.txt"]
    assert client.list_artifacts(by_f_dim["40"].info.run_id) == []
    assert Counter(t.state for t in study.trials) == {TrialState.COMPLETE: 1, TrialState.FAIL: 2}

    rerun = run_launch(tmp_path, spec_path, monkeypatch)  # the GPU has memory again, the bug is fixed: rerun
    assert (rerun.progress.done, rerun.exit_code, rerun.failed) == (3, 0, ())
    assert complete_cells(journal_study(tmp_path, spec_path)) == every_cell_once(spec_path)
    _, parents, children = mlflow_runs(tmp_path, "faulty")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert Counter(run.data.tags["sweep.status"] for run in children) == {"COMPLETE": 3, "FAILED": 2}
    for run in children:
        if run.data.tags["sweep.status"] == "COMPLETE":
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr")] == [0, 1]


# ---------------------------------------------------------------- interrupted trials resume


EPOCHS = 6  # the faults come after epoch 1 or 2: the epochs after it keep the trial mid-training as they reach it
INTERRUPTED = "interrupted (Ctrl-C, or the launcher stopped)"


def start_sweep(folder: Path, spec_path: Path) -> subprocess.Popen:
    """`python run_sweep.py SPEC` in `folder`, in its own session so that a signal reaches it alone, which passes
    a SIGINT on to its workers at once: in the default 3 s a tiny trial runs to its end."""
    with open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
        return subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), spec_path.name], cwd=folder, stdout=out,
                                stderr=err, start_new_session=True, env={**os.environ, STOP_GRACE_ENV: "0"})


def wait_for_checkpoint(folder: Path, launcher: subprocess.Popen, epoch: int) -> Path:
    """The first trial folder to hold `epoch_<epoch>.ckpt`: a trial in the middle of its training."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and launcher.poll() is None:
        found = sorted(folder.glob(f"runs/*/trials/*/checkpoints/epoch_{epoch:04d}.ckpt"))
        if found:
            return found[0].parents[1]
        time.sleep(0.2)
    raise AssertionError(f"no trial reached epoch {epoch}: {(folder / 'err.txt').read_text()[-2000:]}")


def stop_leftovers(launcher: subprocess.Popen) -> None:
    """SIGKILL whatever of the launcher's session is still alive, so a failing test leaves no process behind."""
    for pid in live_processes(launcher.pid):
        os.kill(pid, signal.SIGKILL)


def check_finished_and_whole(folder: Path, spec_path: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """Every cell COMPLETE exactly once, each its own MLflow run with one value per epoch and frame;
    returns the COMPLETE trials by MLflow run id."""
    study = journal_study(folder, spec_path)
    assert complete_cells(study) == every_cell_once(spec_path)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = {t.user_attrs["mlflow_run_id"]: t for t in study.trials if t.state == TrialState.COMPLETE}
    client, parents, children = mlflow_runs(folder, load_spec(spec_path).name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [run for run in children if run.info.status == "RUNNING"]
    assert {run.info.run_id for run in children if run.data.tags["sweep.status"] == "COMPLETE"} == set(complete)
    for run_id, trial in complete.items():
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(EPOCHS)), key
        assert [m.step for m in client.get_metric_history(run_id, "val/psnr_frame")] == list(range(1, 8))
        assert client.get_metric_history(run_id, "val/psnr")[-1].value == pytest.approx(trial.value)
    return complete


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_of_the_launcher_stops_cleanly_and_the_rerun_resumes_each_trial_from_its_checkpoint(
        small_dataset, tmp_path, monkeypatch):
    # one seed: two trials, both in the two workers when Ctrl-C comes, so the rerun trains only what resumes
    spec_path = write_spec(tmp_path, small_dataset, "sigint", num_epoch=EPOCHS, seeds="[1]")
    launcher = start_sweep(tmp_path, spec_path)
    try:
        wait_for_checkpoint(tmp_path, launcher, 1)
        os.kill(launcher.pid, signal.SIGINT)  # the launcher alone, as `kill -INT`; it stops its workers
        assert launcher.wait(timeout=60) == 130
    finally:
        stop_leftovers(launcher)
    out = (tmp_path / "out.txt").read_text()
    assert "interrupted. Completed trials are kept; resume with: python run_sweep.py sigint.yaml" in out
    assert "Traceback" not in (tmp_path / "err.txt").read_text()
    study = journal_study(tmp_path, spec_path)
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert interrupted and not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert {t.user_attrs["error"] for t in interrupted} == {INTERRUPTED}
    _, parents, children = mlflow_runs(tmp_path, "sigint")
    assert parents[0].info.status == "KILLED" and not [r for r in children if r.info.status == "RUNNING"]
    resumable = {t.user_attrs["mlflow_run_id"]: checkpoint.epoch_files(Path(t.user_attrs["trial_dir"]) / "checkpoints")
                 for t in interrupted}
    assert any(resumable.values())

    rerun = run_launch(tmp_path, spec_path, monkeypatch)
    assert (rerun.progress.done, rerun.exit_code, rerun.failed) == (2, 0, ())
    complete = check_finished_and_whole(tmp_path, spec_path)
    for run_id, files in resumable.items():
        if files:  # resumed in the same run from its newest checkpoint, not started over
            assert complete[run_id].user_attrs["resumed_from"] == str(files[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_killed_mid_epoch_and_a_truncated_checkpoint_lose_nothing(small_dataset, tmp_path):
    # one seed: two trials, both in the two workers when one is killed, so the rerun trains only what resumes
    spec_path = write_spec(tmp_path, small_dataset, "sigkill", num_epoch=EPOCHS, seeds="[1]")
    launcher = start_sweep(tmp_path, spec_path)
    try:
        trial_dir = wait_for_checkpoint(tmp_path, launcher, 2)
        # the workers are forks of the launcher's forkserver, the launcher's child
        workers = [pid for pid in live_processes(launcher.pid) if parent_pid(parent_pid(pid)) == launcher.pid]
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        assert launcher.wait(timeout=60) == 2
    finally:
        stop_leftovers(launcher)
    err = (tmp_path / "err.txt").read_text()
    assert "error: a worker process died (exit codes" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    study = journal_study(tmp_path, spec_path)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]

    files = checkpoint.epoch_files(trial_dir / "checkpoints")
    assert len(files) == 2  # the newest two are kept
    newest = files[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # as a full disk or a crash mid-write could leave it
    rerun = run_sweep(tmp_path, spec_path.name)  # a launcher of its own: its workers write to its stderr
    assert rerun.returncode == 0 and "2 of 2 trials done" in rerun.stdout, rerun.stderr[-2000:]
    assert f"checkpoint {newest} is corrupt or not a checkpoint" in rerun.stderr
    complete = check_finished_and_whole(tmp_path, spec_path)
    [resumed] = [t for t in complete.values() if t.user_attrs["trial_dir"] == str(trial_dir)]
    assert resumed.user_attrs["resumed_from"] == str(files[0])
