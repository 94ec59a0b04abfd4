"""The files a launch writes, checked before it writes any: its study's journal or SQLite file, held by one
launcher at a time, and MLflow's SQLite database.

A journal file or SQLite study is for one launcher: a second one would fail the first one's RUNNING
trials as left over by a dead launch (`study.prepare_study`). The launcher holds an OS lock
(`flock`) on `<storage file>.launcher.lock` for as long as it runs, with its host and pid written in
the file, so a second launcher stops with one line naming it. The kernel drops the lock when its
process dies, kill -9 included, so a stale lock file never blocks a rerun. A study on a database
server is shared on purpose (README, "Running on several machines") and is not locked.

Optuna skips a journal's garbage or cut-short last line without a word and appends after it, which
makes the journal unreadable for good; an MLflow database that is not one fails only after the
study was created. Both are refused before anything is written.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from experiments.errors import SpecError, SweepError, os_reason, show
from experiments.spec import URL

LOCK_SUFFIX = ".launcher.lock"
SQLITE = "sqlite:///"


def sqlite_file(uri: str) -> Path | None:
    """The file of an sqlite:/// URL (query dropped), None for any other URL or an in-memory database."""
    if not uri.startswith(SQLITE) or ":memory:" in uri:
        return None
    return Path(uri[len(SQLITE):].split("?", 1)[0])


def storage_file(storage: str) -> Path | None:
    """The file a journal or sqlite:/// study lives in; None for a database server, which has no file here."""
    return sqlite_file(storage) if URL.match(storage) else Path(storage)


@contextlib.contextmanager
def hold_storage(storage: str, source: str) -> Iterator[None]:
    """Hold the lock on a file storage for the block, its parent folders made; SweepError naming the holder.

    `source` names the spec in the error for a storage that cannot be created.
    """
    path = storage_file(storage)
    if path is None:
        yield
        return
    if path.exists() and not path.is_file():
        raise SpecError(f"{source}: storage: {path} is {'a folder' if path.is_dir() else 'not a regular file'}; "
                        "give a file path such as runs/<name>/optuna.journal")
    lock = path.with_name(path.name + LOCK_SUFFIX)
    descriptor = _lock(lock, path, source)
    try:
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (json.dumps(holder) + "\n").encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the lock goes, so a launcher that finds the file finds it held
        os.close(descriptor)


def _lock(lock: Path, storage: Path, source: str) -> int:
    """An open descriptor of `lock`, exclusively locked by this process."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise SpecError(f"{source}: storage: cannot create {lock if storage.exists() else storage} "
                            f"({os_reason(err)})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise SweepError(f"{storage} is in use by {holder}: one launcher per journal or SQLite file; wait "
                             "for it to finish or stop it (to share a sweep, use a database server)") from None
        except OSError as err:
            os.close(descriptor)
            raise SweepError(f"cannot lock {lock} ({os_reason(err)}); put the storage on a local file system") from None
        # The holder before us may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else can find, and must lock the one at the path now.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    """Who holds a lock, as its file says: 'the launcher with pid N on host H (since ...)'."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        return f"the launcher with pid {holder['pid']} on host {holder['host']} (since {holder['since']})"
    except (ValueError, KeyError, TypeError):  # it has locked the file and not written it yet
        return "another launcher"


def check_journal(storage: str) -> None:
    """SweepError naming the first line of a journal storage's file that is not a whole Optuna record."""
    path = Path(storage)
    if URL.match(storage) or not path.is_file():
        return
    with path.open("rb") as journal:
        for number, line in enumerate(journal, start=1):
            if not line.endswith(b"\n"):
                raise SweepError(f"{path}: line {number}, the last, is cut short (a write interrupted?); the launch "
                                 "changed nothing: delete that line to resume without it")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "op_code" not in record:
                text = line.rstrip(b"\r\n").decode(errors="replace")
                raise SweepError(f"{path}: line {number} is not an Optuna journal record ({show(text)}); the launch "
                                 "changed nothing: restore the file, or delete that line")


def check_tracking_db(tracking_uri: str) -> None:
    """SweepError when an sqlite:/// tracking URI names a file that is not MLflow's database.

    Read-only: MLflow would fail only after the study was created, or add its tables to a database of another program.
    """
    path = sqlite_file(tracking_uri)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise SweepError(f"mlflow.tracking_uri: {path} is not a file; point --tracking-uri at an SQLite file")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        raise SweepError(f"mlflow.tracking_uri: {path} is not an SQLite database ({err}); move it aside or point "
                         "--tracking-uri elsewhere") from None
    if tables and "experiments" not in tables:
        raise SweepError(f"mlflow.tracking_uri: {path} is an SQLite database but not MLflow's (tables "
                         f"{show(sorted(tables))}); point --tracking-uri elsewhere")


def check_tracking_kept(tracking_uri: str, logged: int, storage: str) -> None:
    """SweepError when the study logged `logged` trials to an sqlite:/// database that is gone.

    MLflow would make a new, empty one, and the sweep's report would lack every earlier trial.
    """
    path = sqlite_file(tracking_uri)
    if logged and path is not None and not path.exists():
        trials = f"{logged} trial{'s' if logged > 1 else ''}"
        raise SweepError(f"mlflow.tracking_uri: {path} is gone, but the study in {storage} logged {trials} to it; "
                         "restore it or point --tracking-uri at it (the launch changed nothing), or give the sweep "
                         "a new name to start over")
