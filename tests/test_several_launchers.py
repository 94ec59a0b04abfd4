"""Two launchers on one sweep through real servers: a throwaway PostgreSQL (Optuna and MLflow) and `mlflow server`.

One launcher is killed with SIGKILL (its workers with it) in the middle of a trial; the other, and a
rerun once the dead trials' heartbeat is stale, finish the grid: each cell x seed COMPLETE once, under
one parent run, each COMPLETE trial's run FINISHED with one value per epoch. Two launchers of a sweep with
adaptive seeds run its rounds together, each cell x seed COMPLETE once, and a launch that looks for the next
round just before another launcher's last trial of the round ends finds that round.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from tqdm import tqdm

import experiments.launcher as launcher_module
from experiments.launcher import configure
from experiments.plan import group_key
from experiments.spec_loader import load_spec
from experiments.study import (GRACE_ENV, HEARTBEAT_ENV, launch_id, open_study, progress, start_launch,
                               suggest)
from experiments.tracking import EPOCH_METRICS
from mlflow_ui_check import free_port, mlflow_server
from test_adaptive_seeds import GRID, SEEDS
from test_faults import every_cell_once, stop_leftovers
from test_sweep import ROOT, complete_cells, write_spec

EPOCHS = 2
HEARTBEAT_S, GRACE_S = 1, 4
WAIT_S = 600  # how long a launcher may take to start and train an epoch: minutes on a busy 2-core machine
PG_BIN = next((str(Path(found).resolve().parent) for found in [shutil.which("initdb"),
                                                     *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))]
               if found and Path(found).resolve().with_name("pg_ctl").exists()), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL's initdb and pg_ctl are not in PATH or "
                                              "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None,
                       reason="psycopg2 is missing (pip install psycopg2-binary)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with databases optuna and mlflow, shared by this module's tests (each
    its own sweep name); yields its base URL.

    Its folder is made with mkdtemp, not in tmp_path: as root, initdb must run as `postgres`, which
    cannot enter pytest's private temp folders.
    """
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    pg_ctl = [*as_owner, f"{PG_BIN}/pg_ctl", "-D", str(data)]
    subprocess.run([*as_owner, f"{PG_BIN}/initdb", "-D", str(data), "-U", "postgres", "--auth", "trust"],
                   check=True, capture_output=True)
    # a throwaway server: no waiting on the disk at each commit (the launchers commit for every trial step)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    subprocess.run([*pg_ctl, "-o", options, "-l",
                    str(folder / "log.txt"), "-w", "start"], check=True, capture_output=True)
    try:
        for name in ("optuna", "mlflow"):
            subprocess.run([f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                           check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_uri(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL database mlflow, shared by this module's tests; yields its URL."""
    with mlflow_server(f"{postgres}/mlflow", artifacts=tmp_path_factory.mktemp("mlflow") / "artifacts") as url:
        yield url


def start_launcher(folder: Path, spec_path: Path, storage: str, tracking_uri: str, name: str,
                   quick_to_go_stale: bool = True) -> subprocess.Popen:
    """`python run_sweep.py SPEC --storage ... --tracking-uri ...` in its own session, output in `name`.txt.

    `quick_to_go_stale`: heartbeats every HEARTBEAT_S, stale after GRACE_S, so that a killed launcher's trials are
    taken over in seconds; else the defaults, which no stall of a busy CPU outlasts.
    """
    env = {key: value for key, value in os.environ.items() if key not in (HEARTBEAT_ENV, GRACE_ENV)}
    if quick_to_go_stale:
        env.update({HEARTBEAT_ENV: str(HEARTBEAT_S), GRACE_ENV: str(GRACE_S)})
    with open(folder / f"{name}.txt", "w") as output:
        return subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), spec_path.name, "--storage", storage,
                                 "--tracking-uri", tracking_uri], cwd=folder, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_mid_trial(study: optuna.Study, launcher: subprocess.Popen, folder: Path) -> optuna.trial.FrozenTrial:
    """A RUNNING trial of `launcher` that has checkpointed its first epoch."""
    launch, deadline = launch_id(launcher.pid), time.monotonic() + WAIT_S
    while time.monotonic() < deadline and launcher.poll() is None:
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("launch") == launch and "trial_dir" in trial.user_attrs and \
                    (Path(trial.user_attrs["trial_dir"]) / "checkpoints" / "epoch_0001.ckpt").exists():
                return trial
        time.sleep(0.2)
    raise AssertionError(f"launcher {launch} ran no trial to epoch 1: {(folder / 'a.txt').read_text()[-2000:]}")


def test_two_launchers_share_a_sweep_and_the_survivor_takes_over_the_killed_ones_trials(
        small_dataset, tmp_path, postgres, tracking_uri):
    assert socket.gethostname()  # launch ids are host:pid
    spec_path = write_spec(tmp_path, small_dataset, "shared", num_epoch=EPOCHS, workers=1,
                           extra="parameters: {tfr: [0.0, 1.0]}")
    storage = f"{postgres}/optuna"
    first = start_launcher(tmp_path, spec_path, storage, tracking_uri, "a")
    second = start_launcher(tmp_path, spec_path, storage, tracking_uri, "b")
    try:
        study = wait_for_study(storage, "shared")
        killed = wait_mid_trial(study, first, tmp_path)
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert second.wait(timeout=WAIT_S) in (0, 1), (tmp_path / "b.txt").read_text()[-3000:]
        if complete_cells(study) != every_cell_once(spec_path):
            # the survivor ran dry before the killed trial's heartbeat went stale: a rerun takes it over
            time.sleep(max(0.0, killed_at + GRACE_S + HEARTBEAT_S - time.monotonic()))
            rerun = start_launcher(tmp_path, spec_path, storage, tracking_uri, "c")
            assert rerun.wait(timeout=WAIT_S) == 0, (tmp_path / "c.txt").read_text()[-3000:]
    finally:
        for launcher in (first, second):
            stop_leftovers(launcher)

    trials = study.get_trials()
    assert complete_cells(study) == every_cell_once(spec_path)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    # The retry trains the cell, unless the launchers queued it twice as they prepared at once and the
    # other copy finished it first.
    assert retry.state == TrialState.COMPLETE or retry.user_attrs["error"].startswith(
        "DuplicateCell: cell already COMPLETE"), retry.user_attrs
    assert retry.user_attrs["launch"] != launch_id(first.pid)
    [done] = [t for t in trials if t.state == TrialState.COMPLETE and
              all(t.user_attrs[key] == killed.user_attrs[key] for key in ("group", "seed"))]
    assert done.user_attrs["launch"] != launch_id(first.pid)

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    complete = {t.user_attrs["mlflow_run_id"]: t for t in trials if t.state == TrialState.COMPLETE}
    assert {run.info.run_id for run in children if run.info.status == "FINISHED"} == set(complete)
    for run_id in complete:
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(EPOCHS)), key


def wait_for_study(storage: str, name: str) -> optuna.Study:
    """The study `name` once a launcher has created it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if name in [summary.study_name for summary in optuna.get_all_study_summaries(storage)]:
            return optuna.load_study(study_name=name, storage=storage)
        time.sleep(0.5)
    raise AssertionError(f"no launcher created study {name!r} within {WAIT_S} s")


def test_two_launchers_run_the_rounds_of_adaptive_seeds_together(small_dataset, tmp_path, postgres, tracking_uri):
    spec_path = write_spec(tmp_path, small_dataset, "adaptive", num_epoch=1, workers=1, extra=GRID, seeds=SEEDS)
    sigmoid, warp, twin = (group_key(cell) for cell in load_spec(spec_path).cells)
    storage = f"{postgres}/optuna"
    # no launcher dies here, so the default heartbeat: with 4 s to go stale, one run under load ended with a FAIL
    # trial that had no error, most likely a running trial whose worker was starved of the CPU that long, failed as
    # stale by the other launcher preparing its next round
    launchers = [start_launcher(tmp_path, spec_path, storage, tracking_uri, "a", quick_to_go_stale=False)]
    try:
        study = wait_for_study(storage, "adaptive")  # the second finds the first's queue, not an empty study
        launchers.append(start_launcher(tmp_path, spec_path, storage, tracking_uri, "b", quick_to_go_stale=False))
        # each waits for the other's trials of a round before the next is decided, so both see it finished
        for launcher, name in zip(launchers, "ab"):
            assert launcher.wait(timeout=WAIT_S) == 0, (tmp_path / f"{name}.txt").read_text()[-3000:]
    finally:
        for launcher in launchers:
            stop_leftovers(launcher)
    depths = {sigmoid: 3, warp: 4, twin: 4}  # sigmoid separated after its initial seeds, the twins run to max
    assert complete_cells(study) == Counter({(group, seed): 1 for group, depth in depths.items()
                                             for seed in range(1, depth + 1)})
    # a copy queued by both launchers at once fails as a duplicate; nothing else fails
    assert {t.user_attrs["error"].split(":")[0] for t in study.get_trials() if t.state != TrialState.COMPLETE} <= {
        "DuplicateCell"}
    assert {t.user_attrs["launch"] for t in study.get_trials()} <= {launch_id(launcher.pid) for launcher in launchers}
    assert study.user_attrs["adaptive_seeds"]["saved"] == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # by hand here
def test_a_round_completed_by_another_launchers_trial_as_this_launch_looks_is_run_not_left(
        small_dataset, tmp_path, postgres, monkeypatch):
    # round 0 is done but for a trial another launcher runs, which ends just after this launch looked for round 1
    # and found none: this launch finds round 1 at its next look instead of ending with it "still to run"
    spec_path = write_spec(tmp_path, small_dataset, "race", num_epoch=1, extra=GRID, seeds=SEEDS)
    spec = configure(load_spec(spec_path), storage=f"{postgres}/optuna")
    study = open_study(spec)
    assert start_launch(spec, study).budget == 9  # the initial 3 seeds of 3 configurations
    for left in reversed(range(9)):
        trial = study.ask()
        overrides, seed = suggest(spec, trial)
        value = 14.0 if overrides["frame_output"] == "sigmoid" else 24.0 + 0.1 * seed  # the warps never separate
        if left:
            study.tell(trial, value)
    others_last = (trial.number, value)  # left RUNNING, without a heartbeat: never stale
    looks = []

    def the_other_trial_ends_after_the_look(spec, study):
        share = start_launch(spec, study)
        if not looks:
            study.tell(*others_last)
        looks.append(share.budget)
        return share

    monkeypatch.setattr(launcher_module, "start_launch", the_other_trial_ends_after_the_look)
    monkeypatch.setattr(launcher_module, "POLL_S", 0.0)
    watcher = launcher_module._Watcher(spec, study, progress(spec, study))
    with tqdm(disable=True) as bar:
        share = launcher_module._next_round(spec, study, watcher, bar)
    assert looks == [0, 2] and share.budget == 2  # round 1: seed 4 of both warps
