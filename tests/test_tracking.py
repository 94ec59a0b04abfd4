"""experiments/tracking.py: the parent run of a sweep and its children, in a real SQLite MLflow database."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from cvae.config import TrainConfig
from cvae.metrics import CopyBaselines
from cvae.train import EpochReport
from experiments.errors import SweepError
from experiments.tracking import (COPY_FIRST_FRAME_METRIC, COPY_FIRST_METRIC, COPY_PREVIOUS_METRIC, ONE_STEP_METRIC,
                                  TrialRun, artifact_root, close_orphans, finish_parent, open_parent_run)


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_artifacts_go_beside_an_sqlite_database(tmp_path, uri):
    assert artifact_root(uri) == (tmp_path / "mlartifacts").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None and artifact_root("sqlite:///:memory:") is None


def test_a_sweep_has_one_parent_run_found_again_by_its_id(tmp_path, uri):
    first = open_parent_run(uri, "s", "id-1", tags={"sweep.spec": "s.yaml"}, spec_text="name: s\n")
    client = MlflowClient(uri)
    experiment = client.get_experiment(first.experiment_id)
    assert (experiment.name, experiment.artifact_location) == ("s", (tmp_path / "mlartifacts" / "s").as_uri())
    finish_parent(first, complete=False, interrupted=True, summary_csv=None)
    assert client.get_run(first.run_id).info.status == "KILLED"

    again = open_parent_run(uri, "s", "id-1", tags={})
    assert again == first and client.get_run(first.run_id).info.status == "RUNNING"
    tags = client.get_run(first.run_id).data.tags
    assert (tags["sweep.parent"], tags["sweep.id"], tags["sweep.spec"]) == ("true", "id-1", "s.yaml")
    assert "name: s" in tags["mlflow.note.content"]
    assert [a.path for a in client.list_artifacts(first.run_id)] == ["spec.yaml"]
    finish_parent(again, complete=True, interrupted=False, summary_csv="configuration,mean\na,1.0\n")
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(first.run_id)) == ["spec.yaml", "summary.csv"]

    other = open_parent_run(uri, "s", "id-2", tags={})  # a new study of the same name: a new parent
    assert other.experiment_id == first.experiment_id and other.run_id != first.run_id


def test_a_deleted_experiment_is_an_error_that_says_how_to_restore_it(uri):
    parent = open_parent_run(uri, "gone", "id", tags={})
    MlflowClient(uri).delete_experiment(parent.experiment_id)
    with pytest.raises(SweepError, match=r"MLflow experiment 'gone' is deleted; restore it \(`mlflow experiments "
                                         r"restore --experiment-id \d+`\) or give the sweep a new name"):
        open_parent_run(uri, "gone", "id", tags={})


def test_a_trial_run_logs_its_config_epochs_and_final_frames(tmp_path, uri):
    parent = open_parent_run(uri, "t", "id", tags={})
    cfg = TrainConfig(milestones=(3, 7), num_epoch=2)
    client = MlflowClient(uri)
    run = TrialRun.start(client, parent, "name | seed 1", cfg, tags={"sweep.seed": "1"})
    for epoch in range(2):
        run(EpochReport(epoch, 1.0 - epoch, 0.5, 0.25, 1.0, 0.5, 1e-3, 20.0 + epoch, np.zeros(3), 2.0, 25.0 + epoch))
    file = tmp_path / "val_rollout.gif"
    file.write_bytes(b"GIF89a")
    run.log_final(np.linspace(30.0, 20.0, 1500), {"gifs/val_rollout.gif": file})
    run.end("COMPLETE")

    logged = client.get_run(run.run_id)
    assert TrainConfig.from_dict(logged.data.params) == cfg
    assert logged.data.params["milestones"] == "3,7"
    assert (logged.info.status, logged.data.tags["sweep.status"]) == ("FINISHED", "COMPLETE")
    assert logged.data.tags["mlflow.parentRunId"] == parent.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train/loss")] == [(0, 1.0), (1, 0.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val/psnr_1step")] == [(0, 25.0), (1, 26.0)]
    frames = client.get_metric_history(run.run_id, "val/psnr_frame")
    assert len(frames) == 1500 and (frames[0].step, frames[0].value) == (1, 30.0)  # two batches of at most 1000
    assert [a.path for a in client.list_artifacts(run.run_id, "gifs")] == ["gifs/val_rollout.gif"]


def test_runs_left_running_are_closed_as_killed(uri):
    parent = open_parent_run(uri, "o", "id", tags={})
    client = MlflowClient(uri)
    left = TrialRun.start(client, parent, "left", TrainConfig(), tags={})
    done = TrialRun.start(client, parent, "done", TrainConfig(), tags={})
    done.end("FAILED", "ValueError: no")
    assert close_orphans(parent, "its worker stopped") == 1
    closed = client.get_run(left.run_id)
    assert (closed.info.status, closed.data.tags["sweep.status"], closed.data.tags["sweep.error"]) == (
        "KILLED", "FAILED", "its worker stopped")
    assert client.get_run(done.run_id).info.status == "FAILED"


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_trial_run_logs_the_copy_baselines_once(uri):
    parent = open_parent_run(uri, "b", "id", tags={})
    client = MlflowClient(uri)
    run = TrialRun.start(client, parent, "b | seed 1", TrainConfig(), tags={})
    baselines = CopyBaselines(first=np.linspace(24.0, 14.0, 1200), previous=np.full(1200, 31.0))
    run.log_baselines(baselines)
    assert (COPY_FIRST_METRIC, COPY_PREVIOUS_METRIC, COPY_FIRST_FRAME_METRIC) == (
        "baseline/copy_first", "baseline/copy_previous", "baseline/copy_first_frame")
    assert history(client, run.run_id, "baseline/copy_first") == [(0, pytest.approx(19.0))]  # mean of 24 .. 14
    assert history(client, run.run_id, "baseline/copy_previous") == [(0, 31.0)]
    frames = history(client, run.run_id, "baseline/copy_first_frame")
    assert len(frames) == 1200 and frames[0] == (1, 24.0) and frames[-1] == (1200, 14.0)  # two batches
    run.end("FAILED", "interrupted", interrupted=True)

    again = TrialRun.resume(client, run.run_id, tags={}, reports=[])
    again.log_baselines(baselines)  # a resumed trial logs them again: nothing doubles
    assert len(history(client, run.run_id, "baseline/copy_first_frame")) == 1200
    assert history(client, run.run_id, "baseline/copy_first") == [(0, pytest.approx(19.0))]


def test_a_report_from_a_checkpoint_older_than_the_one_step_psnr_logs_no_nan(uri):
    parent = open_parent_run(uri, "n", "id", tags={})
    client = MlflowClient(uri)
    run = TrialRun.start(client, parent, "n | seed 1", TrainConfig(), tags={})
    run(EpochReport(0, 1.0, 0.5, 0.25, 1.0, 0.5, 1e-3, 20.0, np.zeros(3), 2.0))  # val_psnr_1step: NaN by default
    run(EpochReport(1, 1.0, 0.5, 0.25, 1.0, 0.5, 1e-3, 21.0, np.zeros(3), 2.0, 27.5))
    assert history(client, run.run_id, ONE_STEP_METRIC) == [(1, 27.5)]
    assert history(client, run.run_id, "val/psnr") == [(0, 20.0), (1, 21.0)]
