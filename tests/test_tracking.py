"""experiments/tracking.py: the parent run of a sweep and its children, in a real SQLite MLflow database."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Dataset

from cvae.config import TrainConfig
from cvae.metrics import CopyBaselines
from cvae.train import EpochReport
from experiments.errors import SweepError
from experiments.provenance import Provenance
from experiments.schema import (COPY_FIRST_FRAME_METRIC, COPY_FIRST_METRIC, COPY_PREVIOUS_METRIC,
                                DEVICE_SECONDS_METRIC, ONE_STEP_PSNR)
from experiments.tracking import (TrialRun, artifact_root, close_orphans, finish_parent, log_dataset, open_parent_run,
                                  provenance_tags)


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
        report = EpochReport(epoch, 1.0 - epoch, 0.5, 0.25, 1.0, 0.5, 1e-3, 20.0 + epoch, np.linspace(30.0, 20.0, 1500),
                             2.0, 25.0 + epoch, val_ssim=0.5 + epoch / 4, val_ssim_per_frame=np.linspace(0.9, 0.5, 1500))
        run(report)
    file = tmp_path / "val_rollout.gif"
    file.write_bytes(b"GIF89a")
    run.log_final(report, {"gifs/val_rollout.gif": file})
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
    assert history(client, run.run_id, "val/ssim") == [(0, 0.5), (1, 0.75)]
    ssim_frames = history(client, run.run_id, "val/ssim_frame")
    assert len(ssim_frames) == 1500 and ssim_frames[0] == (1, 0.9) and ssim_frames[-1] == (1500, 0.5)
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
    older = EpochReport(1, 1.0, 0.5, 0.25, 1.0, 0.5, 1e-3, 21.0, np.zeros(3), 2.0, 27.5)  # no SSIM yet
    run(older)
    run.log_final(older, {})
    assert history(client, run.run_id, ONE_STEP_PSNR.key) == [(1, 27.5)]
    assert history(client, run.run_id, "val/psnr") == [(0, 20.0), (1, 21.0)]
    assert history(client, run.run_id, "val/ssim") == history(client, run.run_id, "val/ssim_frame") == []
    assert len(history(client, run.run_id, "val/psnr_frame")) == 3


def test_a_sweeps_experiment_is_one_of_model_training(uri):
    client = MlflowClient(uri)
    parent = open_parent_run(uri, "k", "id", tags={})
    assert client.get_experiment(parent.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")  # as a sweep of an earlier version left it
    open_parent_run(uri, "older", "id", tags={})
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(older, "mlflow.experimentKind", "genai_development")  # chosen in the UI: kept
    open_parent_run(uri, "older", "id", tags={})
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "genai_development"


def test_the_parent_run_says_which_code_packages_and_host_made_it(uri):
    parent = open_parent_run(uri, "p", "id", tags={})
    tags = MlflowClient(uri).get_run(parent.run_id).data.tags
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["host.name"] == socket.gethostname()
    assert {key for key in tags if key.startswith("version.")} == {
        "version.python", "version.torch", "version.cuda", "version.optuna", "version.mlflow"}
    assert "host.device" not in tags  # the launcher trains on no device


def test_provenance_without_git_says_its_dirtiness_is_unknown():
    found = Provenance(source="/x/run_sweep.py", commit=None, branch=None, dirty=None, versions={"torch": "2.4"},
                       host="box", device="NVIDIA H200")
    assert provenance_tags(found) == {"mlflow.source.name": "/x/run_sweep.py", "mlflow.source.type": "LOCAL",
                                      "git.dirty": "unknown", "host.name": "box", "version.torch": "2.4",
                                      "host.device": "NVIDIA H200"}
    committed = provenance_tags(Provenance("s", "a" * 40, "main", False, {}, "box", None))
    assert (committed["mlflow.source.git.commit"], committed["mlflow.source.git.branch"], committed["git.dirty"]) == (
        "a" * 40, "main", "false")


def test_a_trial_logs_its_device_seconds_summed_over_its_attempts(uri):
    parent = open_parent_run(uri, "c", "id", tags={})
    client = MlflowClient(uri)
    run = TrialRun.start(client, parent, "c | seed 1", TrainConfig(), tags={})
    time.sleep(0.2)
    run.end("FAILED", "interrupted", interrupted=True)
    [first] = client.get_metric_history(run.run_id, DEVICE_SECONDS_METRIC)
    assert DEVICE_SECONDS_METRIC == "cost/device_seconds" and first.step == 0 and 0.2 <= first.value < 5
    again = TrialRun.resume(client, run.run_id, tags={}, reports=[])
    time.sleep(0.1)
    again.end("COMPLETE")
    assert history(client, run.run_id, DEVICE_SECONDS_METRIC)[1][0] == 1
    total = client.get_run(run.run_id).data.metrics[DEVICE_SECONDS_METRIC]  # the latest: both attempts
    assert first.value + 0.1 <= total < first.value + 5


def test_a_data_set_is_an_input_of_the_trial_and_its_parent_once(uri):
    parent = open_parent_run(uri, "d", "id", tags={})
    client = MlflowClient(uri)
    runs = [TrialRun.start(client, parent, f"d | seed {seed}", TrainConfig(), tags={}) for seed in (1, 2)]
    dance = Dataset(name="dance", digest="0123456789abcdef", source_type="local", source=json.dumps({"uri": "/d"}),
                    profile=json.dumps({"frame_size": "32x64"}))
    other = Dataset(name="dance", digest="fedcba9876543210", source_type="local", source=json.dumps({"uri": "/e"}))
    log_dataset(client, (runs[0].run_id, parent.run_id), dance)
    log_dataset(client, (runs[0].run_id, parent.run_id), dance)  # a resumed trial logs it again: nothing doubles
    log_dataset(client, (runs[1].run_id, parent.run_id), other)

    def inputs(run_id: str) -> list[tuple[str, str, dict]]:
        return sorted((found.dataset.name, found.dataset.digest, {tag.key: tag.value for tag in found.tags})
                      for found in client.get_run(run_id).inputs.dataset_inputs)

    training = {"mlflow.data.context": "training"}
    assert inputs(runs[0].run_id) == [("dance", "0123456789abcdef", training)]
    assert inputs(runs[1].run_id) == [("dance", "fedcba9876543210", training)]
    assert inputs(parent.run_id) == [("dance", "0123456789abcdef", training), ("dance", "fedcba9876543210", training)]


def test_workers_that_log_a_new_data_set_at_once_all_get_it(uri):
    parent = open_parent_run(uri, "r", "id", tags={})
    client = MlflowClient(uri)
    runs = [TrialRun.start(client, parent, f"r | seed {seed}", TrainConfig(), tags={}).run_id for seed in range(8)]
    dance = Dataset(name="dance", digest="0123456789abcdef", source_type="local", source=json.dumps({"uri": "/d"}))
    together, failed = threading.Barrier(len(runs)), []

    def worker(run_id: str) -> None:
        together.wait()  # all insert the new data set in the same moment: without a retry some lose the race
        try:
            log_dataset(MlflowClient(uri), (run_id, parent.run_id), dance)
        except Exception as err:  # noqa: BLE001 - the test reports whatever escapes
            failed.append(err)

    threads = [threading.Thread(target=worker, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    assert all([found.dataset.digest for found in client.get_run(run_id).inputs.dataset_inputs] == [dance.digest]
               for run_id in (*runs, parent.run_id))
