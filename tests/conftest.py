"""Shared fixtures (real data sets on disk) and the hooks that set up `make test`'s processes."""
from __future__ import annotations

import gc
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

# `make test` runs two pytest-xdist workers on two cores: torch threads (theirs, and those of the sweeps and
# trainings they start) that are left waiting sleep instead of spinning. Set before torch is imported, so every
# process the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from cvae.data import CACHE_DIR
from cvae.synthetic import generate
from experiments.workers import cpu_count


# The Ctrl-C tests send SIGINT to this process and to launchers it starts. A shell starts a command run in
# the background (`make test &`, nohup) with SIGINT ignored, and children inherit that: hear it again.
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker, and every process it starts, gets its share of the cores as torch threads (sweep
    workers split a launcher's share again): two workers that each thought they owned both cores ran their torch
    threads against each other, doubling the CPU time of a test. Set here, in the process that starts the workers
    (before they import torch), for them to inherit."""
    workers = getattr(config.option, "numprocesses", None) or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // workers)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with the most `slow` tests first, then the others by their number of tests. `make test`'s xdist
    workers take whole modules in this order (the Makefile's --no-loadscope-reorder): in xdist's own order, by
    number of tests, the modules of one or two long tests came last, and one worker ran them alone for a minute
    after the other had finished."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    size = Counter(item.path for item in items)
    items.sort(key=lambda item: (-slow[item.path], -size[item.path]))  # stable: a module's tests stay together


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the test modules imported (torch, MLflow, Optuna, pandas: 650,000 objects) is never garbage: left out
    of the garbage collector's full passes, which took 0.4 s each and about 10 s of each xdist worker's run."""
    gc.freeze()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `--small` synthetic data set (seed 0), written once per test session; treat it as read-only."""
    return generate(tmp_path_factory.mktemp("data") / "dance", seed=0, small=True)


@pytest.fixture
def small_dataset_copy(small_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of `small_dataset`, without any frame cache, for tests that change or break it."""
    return Path(shutil.copytree(small_dataset, tmp_path / "dance", ignore=shutil.ignore_patterns(CACHE_DIR)))
