"""Shared fixtures: real data sets on disk."""
from __future__ import annotations

import os
import shutil
import signal
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


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `--small` synthetic data set (seed 0), written once per test session; treat it as read-only."""
    return generate(tmp_path_factory.mktemp("data") / "dance", seed=0, small=True)


@pytest.fixture
def small_dataset_copy(small_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of `small_dataset`, without any frame cache, for tests that change or break it."""
    return Path(shutil.copytree(small_dataset, tmp_path / "dance", ignore=shutil.ignore_patterns(CACHE_DIR)))
