"""experiments/launch_files.py: the storage lock and the file checks, alone and through real `run_sweep.py` processes.

A refused launch exits 2 with one line and leaves the journal and mlflow.db byte for byte as they were.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from experiments.errors import SpecError, SweepError
from experiments.launch_files import (LOCK_SUFFIX, check_journal, check_tracking_db, check_tracking_kept,
                                      hold_storage, storage_file)
from experiments.launcher import configure
from experiments.spec_loader import load_spec
from experiments.study import open_study
from test_run_folder import read_only
from test_sweep import ROOT, run_launch, run_sweep, write_spec

ONE_TRIAL = "parameters: {kl_anneal_type: [Cyclical]}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refusal(done: subprocess.CompletedProcess) -> str:
    """The one line a refused launch ends with (after the data's progress bars), checked to be its only error."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: ") and done.stderr.count("error: ") == 1, done.stderr[-3000:]
    return last


# ---------------------------------------------------------------- alone


def test_storage_file_is_the_journal_or_the_sqlite_file_and_none_for_a_server():
    assert storage_file("/r/x/optuna.journal") == Path("/r/x/optuna.journal")
    assert storage_file("sqlite:////r/x.db?timeout=10") == Path("/r/x.db")
    assert storage_file("sqlite:///:memory:") is None
    assert storage_file("postgresql+psycopg2://u@h/optuna") is None


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_held_storage_refuses_a_second_holder_by_pid_and_is_free_again_after(tmp_path, kind):
    path = tmp_path / ("optuna.journal" if kind == "journal" else "optuna.db")
    storage = str(path) if kind == "journal" else f"sqlite:///{path}"
    lock = tmp_path / (path.name + ".launcher.lock")
    with hold_storage(storage, "x.yaml"):
        assert f'"pid": {os.getpid()}' in lock.read_text()
        with pytest.raises(SweepError) as refused:
            with hold_storage(storage, "x.yaml"):
                pass  # a second open file description of the lock file conflicts, as a second process's does
    assert str(refused.value).startswith(f"{path} is in use by the launcher with pid {os.getpid()} on host ")
    assert not lock.exists()
    with hold_storage(storage, "x.yaml"):
        pass


def test_a_lock_file_left_by_a_killed_launcher_does_not_block(tmp_path):
    journal = tmp_path / "optuna.journal"
    lock = journal.with_name(journal.name + LOCK_SUFFIX)
    lock.write_text('{"host": "gone", "pid": 1, "since": "yesterday"}\n')  # kill -9 leaves the file, not the lock
    with hold_storage(str(journal), "x.yaml"):
        assert f'"pid": {os.getpid()}' in lock.read_text()


def test_a_storage_that_cannot_be_created_is_one_spec_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecError) as refused:
        with hold_storage(str(blocker / "sub" / "optuna.journal"), "x.yaml"):
            pass
    assert str(refused.value) == f"x.yaml: storage: cannot create {blocker}/sub/optuna.journal ({blocker} is a " \
                                 "file, not a folder)"
    with pytest.raises(SpecError) as refused:
        with hold_storage(str(tmp_path), "x.yaml"):
            pass
    assert str(refused.value) == f"x.yaml: storage: {tmp_path} is a folder; give a file path such as " \
                                 "runs/<name>/optuna.journal"


RECORD = b'{"op_code":0,"worker_id":"w","study_name":"x","directions":[1]}\n'


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder with a journal in it, read-only even for root (a read-only bind mount; chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "optuna.journal").write_bytes(RECORD)
    with read_only(folder):
        yield folder


def test_a_storage_in_a_read_only_folder_is_one_spec_error_naming_what_cannot_be_made(read_only_folder):
    journal, lock, new = (read_only_folder / name for name in ("optuna.journal", "optuna.journal.launcher.lock", "new"))
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    for storage, named, culprit in [(journal, lock, lock), (new / "optuna.journal", new / "optuna.journal", new)]:
        with pytest.raises(SpecError) as refused:
            with hold_storage(str(storage), "x.yaml"):
                pass
        assert str(refused.value) == f"x.yaml: storage: cannot create {named} ({reason}: {culprit})"
    assert journal.read_bytes() == RECORD


@pytest.mark.parametrize("content, message", [
    (RECORD + b"garbage\n" + RECORD, "line 2 is not an Optuna journal record ('garbage')"),
    (RECORD + b"\n", "line 2 is not an Optuna journal record ('')"),
    (RECORD + b"[1, 2]\n", "line 2 is not an Optuna journal record ('[1, 2]')"),
    (RECORD + RECORD[:20], "line 2, the last, is cut short (a write interrupted?)"),
])
def test_check_journal_names_the_first_line_that_is_no_whole_record(tmp_path, content, message):
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(content)
    with pytest.raises(SweepError) as refused:
        check_journal(str(journal))
    assert str(refused.value).startswith(f"{journal}: {message}; the launch changed nothing: ")
    assert journal.read_bytes() == content


def test_check_journal_passes_whole_records_a_missing_file_and_a_server(tmp_path):
    journal = tmp_path / "optuna.journal"
    check_journal(str(journal))
    journal.write_bytes(RECORD * 3)
    check_journal(str(journal))
    check_journal("postgresql+psycopg2://u@h/optuna")


def test_check_tracking_db_refuses_garbage_and_another_programs_database(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not SQLite\n" * 10)
    with pytest.raises(SweepError) as refused:
        check_tracking_db(f"sqlite:///{garbage}")
    assert str(refused.value) == f"mlflow.tracking_uri: {garbage} is not an SQLite database (file is not a " \
                                 "database); move it aside or point --tracking-uri elsewhere"
    foreign = tmp_path / "optuna.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE studies (id INTEGER)")
    with pytest.raises(SweepError) as refused:
        check_tracking_db(f"sqlite:///{foreign}")
    assert str(refused.value) == f"mlflow.tracking_uri: {foreign} is an SQLite database but not MLflow's (tables " \
                                 "['studies']); point --tracking-uri elsewhere"
    empty = tmp_path / "empty.db"
    empty.touch()
    for fine in (f"sqlite:///{empty}", f"sqlite:///{tmp_path / 'missing.db'}", "http://127.0.0.1:5000"):
        check_tracking_db(fine)
    assert garbage.read_bytes() == b"this is not SQLite\n" * 10 and not (tmp_path / "missing.db").exists()


def test_check_tracking_kept_refuses_only_a_missing_database_that_trials_were_logged_to(tmp_path):
    gone = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SweepError) as refused:
        check_tracking_kept(gone, 2, "j")
    assert str(refused.value).startswith(f"mlflow.tracking_uri: {tmp_path / 'mlflow.db'} is gone, but the study "
                                         "in j logged 2 trials to it; ")
    check_tracking_kept(gone, 0, "j")
    check_tracking_kept("http://127.0.0.1:5000", 2, "j")


# ---------------------------------------------------------------- through run_sweep.py


@pytest.fixture(scope="module")
def finished(small_dataset, tmp_path_factory):
    """A finished one-trial sweep of one epoch: its folder, with spec, journal and mlflow.db; copy it to change it."""
    folder = tmp_path_factory.mktemp("finished")
    spec_path = write_spec(folder, small_dataset, "done", num_epoch=1, workers=1, extra=ONE_TRIAL)
    spec_path.write_text(spec_path.read_text().replace("seeds: [1, 2]", "seeds: [1]"))
    with pytest.MonkeyPatch.context() as patch:
        assert run_launch(folder, spec_path, patch).exit_code == 0
    return folder


@pytest.fixture
def sweep_copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "sweep", ignore=shutil.ignore_patterns("trials")))


def test_a_storage_that_cannot_be_created_stops_the_launch_in_one_line(small_dataset, tmp_path):
    spec_path = write_spec(tmp_path, small_dataset, "nowhere", num_epoch=1, workers=1, extra=ONE_TRIAL)
    (tmp_path / "runs").write_text("a file where the runs folder would be\n")
    last = refusal(run_sweep(tmp_path, spec_path.name))
    assert last == (f"error: {spec_path.name}: storage: cannot create {tmp_path}/runs/nowhere/optuna.journal "
                    f"({tmp_path}/runs is a file, not a folder)")
    assert (tmp_path / "runs").read_text() == "a file where the runs folder would be\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_garbage_tracking_database_stops_the_launch_before_the_journal_is_made(small_dataset, tmp_path):
    spec_path = write_spec(tmp_path, small_dataset, "garbage", num_epoch=1, workers=1, extra=ONE_TRIAL)
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"\x00garbage, not SQLite\n" * 50)
    before = digest(database)
    last = refusal(run_sweep(tmp_path, spec_path.name))
    assert last == f"error: mlflow.tracking_uri: {database} is not an SQLite database (file is not a database); " \
                   "move it aside or point --tracking-uri elsewhere"
    assert digest(database) == before and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damage", ["garbage line", "cut-short line"])
def test_a_damaged_journal_stops_the_launch_and_is_left_as_it_was(sweep_copy, damage):
    journal = sweep_copy / "runs/done/optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    if damage == "garbage line":
        journal.write_bytes(b"".join(lines[:3] + [b"{not json\n"] + lines[3:]))
        expected = "line 4 is not an Optuna journal record ('{not json'); the launch changed nothing: " \
                   "restore the file, or delete that line"
    else:
        journal.write_bytes(b"".join(lines) + lines[-1][:25])  # a record whose write was cut short
        expected = f"line {len(lines) + 1}, the last, is cut short (a write interrupted?); the launch changed " \
                   "nothing: delete that line to resume without it"
    before = {name: digest(sweep_copy / name) for name in ("runs/done/optuna.journal", "mlflow.db")}
    assert refusal(run_sweep(sweep_copy, "done.yaml")) == f"error: {journal}: {expected}"
    assert {name: digest(sweep_copy / name) for name in before} == before


def test_a_deleted_mlflow_database_stops_the_next_launch_of_the_sweep(sweep_copy):
    journal = sweep_copy / "runs/done/optuna.journal"
    before = digest(journal)
    rerun = run_sweep(sweep_copy, "done.yaml")  # intact: a finished sweep reruns nothing and writes nothing
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert digest(journal) == before
    (sweep_copy / "mlflow.db").unlink()
    last = refusal(run_sweep(sweep_copy, "done.yaml"))
    assert last == (f"error: mlflow.tracking_uri: {sweep_copy / 'mlflow.db'} is gone, but the study in {journal} "
                    "logged 1 trial to it; restore it or point --tracking-uri at it (the launch changed nothing), "
                    "or give the sweep a new name to start over")
    assert digest(journal) == before and not (sweep_copy / "mlflow.db").exists()


def wait_for_running_trial(spec_path: Path, journal: Path, launcher: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + 600  # a worker's start (torch's import) takes minutes on a busy 2-core machine
    while time.monotonic() < deadline and launcher.poll() is None:
        if journal.exists():
            study = open_study(configure(load_spec(spec_path), storage=str(journal)))
            if study.get_trials(states=(TrialState.RUNNING,)):
                return
        time.sleep(0.5)
    raise AssertionError(f"the first launcher ran no trial: {output.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_second_launcher_on_the_journal_is_refused_by_name_and_the_first_finishes_unharmed(small_dataset,
                                                                                            tmp_path):
    spec_path = write_spec(tmp_path, small_dataset, "two", num_epoch=2, workers=1)
    spec_path.write_text(spec_path.read_text().replace("seeds: [1, 2]", "seeds: [1]"))  # two trials
    journal = tmp_path / "runs/two/optuna.journal"
    output = tmp_path / "first.txt"
    with output.open("w") as sink:
        first = subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), spec_path.name], cwd=tmp_path,
                                 stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_running_trial(spec_path, journal, first, output)
        # Stopped, the first holds its lock however long the second takes to start; its worker trains on.
        first.send_signal(signal.SIGSTOP)
        try:
            second = run_sweep(tmp_path, spec_path.name)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=900) == 0, output.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    refused = refusal(second)
    assert refused.startswith(f"error: {journal} is in use by the launcher with pid {first.pid} on host ")
    assert refused.endswith("one launcher per journal or SQLite file; wait for it to finish or stop it "
                            "(to share a sweep, use a database server)")
    assert "Cannot tell" not in output.read_text() and "two: 2 of 2 trials done" in output.read_text()
    study = open_study(configure(load_spec(spec_path), storage=str(journal)))
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    assert not journal.with_name(journal.name + LOCK_SUFFIX).exists()
