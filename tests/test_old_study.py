"""A sweep that main at d699114 ran (before schema.py, SSIM and adaptive seeds) resumes with today's code.

The fixture tests/fixtures/sweep_main_d699114/ was written in /tmp/oldrun by a worktree of d699114
(`git worktree add /tmp/old-main d699114`) with this checkout's venv: the small synthetic data set in
/tmp/oldrun/data (`cvae.synthetic.generate("data", seed=0, small=True)`), then, in /tmp/oldrun,
`PYTHONPATH=/tmp/old-main python /tmp/old-main/run_sweep.py resumed.yaml`, which ran both cells to COMPLETE.
It keeps the spec, the Optuna journal and the MLflow database (vacuumed, gzipped); the trial folders and
artifacts are left out, since a resumed launch never reads a finished trial's.
"""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiments.plan import group_key
from experiments.schema import GROUP, IS_PARENT, SEED

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "sweep_main_d699114"
WRITTEN_IN = "/tmp/oldrun"  # the folder the old sweep ran in: its MLflow artifact locations point there
CELLS = [{"kl_anneal_type": "Cyclical"}, {"kl_anneal_type": "None"}]


def old_sweep(folder: Path, data: Path) -> Path:
    """The old sweep's files in `folder`, its data set linked in, and its spec asking for a second seed."""
    journal = folder / "runs" / "resumed" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    shutil.copy(FIXTURE / "optuna.journal", journal)
    (folder / "mlflow.db").write_bytes(gzip.decompress((FIXTURE / "mlflow.db.gz").read_bytes()))
    with sqlite3.connect(folder / "mlflow.db") as db:  # the project folder moved: so do its artifact stores
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (WRITTEN_IN, str(folder)))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (WRITTEN_IN, str(folder)))
    (folder / "data").symlink_to(data)
    spec = (FIXTURE / "resumed.yaml").read_text()
    assert "seeds: [1]\n" in spec
    (folder / "resumed.yaml").write_text(spec.replace("seeds: [1]\n", "seeds: [1, 2]\n"))
    return journal


def trials_of(journal: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="resumed", storage=storage).get_trials()


def test_a_study_of_main_d699114_resumes_with_a_second_seed(small_dataset, tmp_path):
    journal = old_sweep(tmp_path, small_dataset)
    old = trials_of(journal)
    assert [(t.state, t.user_attrs[SEED]) for t in old] == [(TrialState.COMPLETE, 1)] * 2

    done = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), "resumed.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "another base" not in done.stderr

    trials = trials_of(journal)
    assert [(t.number, t.state, t.value, t.datetime_complete, t.user_attrs) for t in trials[:2]] == \
           [(t.number, t.state, t.value, t.datetime_complete, t.user_attrs) for t in old]  # untouched
    new = trials[2:]
    assert sorted((t.user_attrs[GROUP], t.user_attrs[SEED], t.state) for t in new) == \
           sorted((group_key(cell), 2, TrialState.COMPLETE) for cell in CELLS)  # each new cell once, nothing else
    stored = json.loads(journal.read_text().splitlines()[1])["user_attr"]["sweep_config"]
    assert stored["DR"] == "data"  # the base the old sweep stored, relative as its spec gave it

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    children = [run for run in runs if run.data.tags.get(IS_PARENT) != "true"]
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children)
    assert all(Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path) for run in children)
