"""Faults injected into real sweeps (worker processes, journal file, mlflow.db): the sweep goes on or a rerun
finishes it, nothing is lost, and the user is told. NaN losses are tested in test_sweep.py.

Exceptions in a trial come from tests/faults/sitecustomize.py, which the worker processes import at
start-up when PYTHONPATH points at it; see its docstring.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiments.launcher import configure, describe_outcome
from experiments.spec import group_key, load_spec, trial_plan
from experiments.study import open_study
from test_sweep import complete_cells, mlflow_runs, run_launch, write_spec

FAULTS = Path(__file__).resolve().parent / "faults"


def journal_study(folder: Path, spec_path: Path):
    spec = load_spec(spec_path)
    return open_study(configure(spec, storage=str(folder / "runs" / spec.name / "optuna.journal")))


def every_cell_once(spec_path: Path) -> Counter:
    return Counter((group_key(cell), seed) for cell, seed in trial_plan(load_spec(spec_path)))


def test_out_of_memory_and_an_exception_fail_their_trials_and_the_sweep_goes_on(small_dataset, tmp_path,
                                                                                monkeypatch, caplog):
    spec_path = write_spec(tmp_path, small_dataset, "faulty", extra="parameters: {F_dim: [16, 40, 48]}")
    spec_path.write_text(spec_path.read_text().replace("seeds: [1, 2]", "seeds: [1]").replace("F_dim: 16, ", ""))
    monkeypatch.setenv("PYTHONPATH", str(FAULTS))  # the worker processes inherit it, and the faults
    monkeypatch.setenv("CVAE_TEST_OOM_CHANNELS", "40")
    monkeypatch.setenv("CVAE_TEST_ERROR_CHANNELS", "48")
    outcome = run_launch(tmp_path, spec_path, monkeypatch)

    assert (outcome.progress.done, outcome.progress.total, outcome.exit_code) == (1, 3, 1)
    errors = {failed.configuration: failed.error for failed in outcome.failed}
    assert errors == {
        "F_dim=40": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB "
                    "(injected by tests/faults for a 40-channel layer)",
        "F_dim=48": "RuntimeError: injected by tests/faults for a 48-channel layer"}
    for configuration, error in errors.items():
        assert f"({configuration}, seed 1) FAILED: {error}" in caplog.text
    report = describe_outcome(outcome, "python run_sweep.py faulty.yaml")
    assert "2 trials failed in this launch:" in report and "2 trials still to run" in report

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

    monkeypatch.delenv("CVAE_TEST_OOM_CHANNELS")  # the GPU has memory again, the bug is fixed: rerun
    monkeypatch.delenv("CVAE_TEST_ERROR_CHANNELS")
    rerun = run_launch(tmp_path, spec_path, monkeypatch)
    assert (rerun.progress.done, rerun.exit_code, rerun.failed) == (3, 0, ())
    assert complete_cells(journal_study(tmp_path, spec_path)) == every_cell_once(spec_path)
    _, parents, children = mlflow_runs(tmp_path, "faulty")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert Counter(run.data.tags["sweep.status"] for run in children) == {"COMPLETE": 3, "FAILED": 2}
    for run in children:
        if run.data.tags["sweep.status"] == "COMPLETE":
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr")] == [0, 1]
