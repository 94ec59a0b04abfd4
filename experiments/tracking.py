"""MLflow for sweeps: a sweep's experiment and parent run, and one child run per trial that `fit` logs into.

Everything goes through an MlflowClient, never the fluent `mlflow.start_run` and its process-wide
active run, so a worker keeps one client for all its trials. A child run is a run tagged with its
parent's id (`mlflow.parentRunId`), which is how `mlflow ui` nests it. An epoch is one `log_batch`
call: on SQLite, fewer and shorter write transactions are what keeps several workers from waiting
on the database lock; MLflow waits up to 20 s for it, and a write that still finds it locked is retried.

With an SQLite tracking URI the artifacts go to `mlartifacts/<experiment>` beside the database file,
so `mlflow ui` started next to `mlflow.db` finds runs and artifacts alike. A sweep's experiment carries
MLflow's experiment kind for model training; MLflow 3.17's UI still opens it as its sidebar's GenAI /
Model training switch says, so the README's link to the runs names that workflow.

Every run says where it came from (`experiments.provenance`): MLflow's own source and git tags fill the
UI's Source and Version columns, ours the run page's tag list (which hides `mlflow.` tags), and the data
set, logged as the run's input, its Dataset column. The parent run carries the launcher's provenance and
every data set its trials used.
"""
from __future__ import annotations

import logging
import math
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping, TypeVar

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import (MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT,
                                      MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE)

from cvae.config import TrainConfig
from cvae.metrics import CopyBaselines
from cvae.train import EpochReport
from experiments.errors import SweepError, one_line
from experiments.provenance import Provenance, collect
from experiments import schema
from experiments.schema import (COPY_FIRST_FRAME_METRIC, COPY_FIRST_METRIC, COPY_PREVIOUS_METRIC,
                                DEVICE_SECONDS_METRIC, ERROR, FRAME_METRICS, GIT_DIRTY, HOST_DEVICE, HOST_NAME,
                                IS_PARENT, LAUNCH_TAG, STATUS, SWEEP_ID, TRIAL_NUMBER, VERSION_TAG)

RUN_STATUS = {"COMPLETE": "FINISHED", "FAILED": "FAILED", "PRUNED": "KILLED"}
# MLflow key -> EpochReport field, logged with step=epoch (0-based, as in the report)
EPOCH_METRICS = {metric.key: metric.name for metric in schema.EPOCH_METRICS}
# MLflow key -> CopyBaselines attribute, logged once per trial at step 0
BASELINE_METRICS = {COPY_FIRST_METRIC: "first_mean", COPY_PREVIOUS_METRIC: "previous_mean"}
RUN_METRICS = (*EPOCH_METRICS, *(metric.key for metric in FRAME_METRICS), *BASELINE_METRICS,
               COPY_FIRST_FRAME_METRIC)  # logged once per step
DATA_CONTEXT = "training"  # the data set's mlflow.data.context: it holds the training clips and validation video
EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment's kind, as MLflow's UI records it when a user picks one
TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning" kind, not GenAI
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_TAG_CHARS = 5000
MAX_RUN_NAME_CHARS = 250
LOCK_RETRIES = 4
ARTIFACT_FOLDER = "mlartifacts"
CONNECT_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ParentRun:
    """Where a sweep's child runs go; made by the launcher, handed to every worker."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def artifact_root(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside an SQLite database as a file URI; None (the server's choice) for anything else."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / ARTIFACT_FOLDER).as_uri()


def check_reachable(tracking_uri: str) -> None:
    """SweepError at once when nothing answers at an http(s) tracking URI's host and port.

    MLflow's own client retries a refused connection for minutes, printing a warning each time.
    """
    url = urllib.parse.urlsplit(tracking_uri)
    if url.scheme not in ("http", "https"):
        return
    try:
        address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
        socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise SweepError(f"mlflow.tracking_uri: nothing answers at {tracking_uri} ({one_line(err)}); "
                         "is `mlflow server` running there, on that port?") from None


def open_parent_run(tracking_uri: str, name: str, sweep_id: str, tags: Mapping[str, str],
                    spec_text: str = "") -> ParentRun:
    """The experiment `name` and the sweep's parent run in it: found by its sweep id, else created.

    A rerun of the same sweep (same Optuna study) finds the same parent run and marks it RUNNING
    again. `tags` are set on it each time; the spec's YAML becomes its description and `spec.yaml`.
    Launchers that start together may each create one; each then keeps the oldest and deletes its own
    if that is not it, so all use one parent run (given hosts whose clocks agree to the millisecond).
    """
    try:
        client = MlflowClient(tracking_uri)
        experiment_id = _experiment(client, name, artifact_root(tracking_uri))
        parents = f"tags.`{SWEEP_ID}` = '{sweep_id}' and tags.`{IS_PARENT}` = 'true'"
        found = client.search_runs([experiment_id], max_results=1, filter_string=parents,
                                   order_by=["attributes.start_time ASC"])
        all_tags = {SWEEP_ID: sweep_id, IS_PARENT: "true", **provenance_tags(collect()), **tags}
        if spec_text:
            all_tags[MLFLOW_RUN_NOTE] = f"Sweep spec:\n\n```yaml\n{spec_text.strip()}\n```"
        if found:
            run_id = found[0].info.run_id
            _retry(client.update_run, run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            _retry(client.log_batch, run_id, tags=_tags(all_tags))
            log.info("MLflow: continuing parent run %s of experiment %s", run_id, name)
        else:
            run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
            oldest = min(client.search_runs([experiment_id], filter_string=parents),
                         key=lambda run: (run.info.start_time, run.info.run_id))
            if oldest.info.run_id != run_id:
                client.delete_run(run_id)
                run_id = oldest.info.run_id
            log.info("MLflow: created parent run %s in experiment %s", run_id, name)
        if spec_text:
            client.log_text(run_id, spec_text, "spec.yaml")
    except MlflowException as err:
        raise SweepError(f"mlflow.tracking_uri: cannot use {tracking_uri!r} ({one_line(err.message)[:300]})") from None
    return ParentRun(tracking_uri, experiment_id, run_id)


def provenance_tags(provenance: Provenance) -> dict[str, str]:
    """The run tags of `provenance`: MLflow's source and git tags (the commit where known) and ours."""
    tags = {MLFLOW_SOURCE_NAME: provenance.source, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
            GIT_DIRTY: "unknown" if provenance.dirty is None else str(provenance.dirty).lower(),
            HOST_NAME: provenance.host,
            **{VERSION_TAG.format(name): version for name, version in provenance.versions.items()}}
    known = {MLFLOW_GIT_COMMIT: provenance.commit, MLFLOW_GIT_BRANCH: provenance.branch,
             HOST_DEVICE: provenance.device}
    return tags | {key: value for key, value in known.items() if value is not None}


def log_dataset(client: MlflowClient, run_ids: Collection[str], dataset: Dataset) -> None:
    """`dataset` as an input of each run; MLflow keeps one copy per experiment and one input per run.

    Two workers that log a new data set at the same moment may both insert it: the one that loses is
    told its request was bad, and finds the data set there when it tries again.
    """
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATA_CONTEXT)])]
    for run_id in run_ids:
        try:
            _retry(client.log_inputs, run_id, datasets=inputs)
        except MlflowException as err:
            if err.error_code != "BAD_REQUEST":
                raise
            _retry(client.log_inputs, run_id, datasets=inputs)


def _experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if missing; one of an earlier version without the training kind gets it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=f"{artifact_location}/{name}"
                                            if artifact_location else None, tags={EXPERIMENT_KIND: TRAINING_KIND})
        except MlflowException as err:  # another launcher created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise SweepError(f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore "
                         f"--experiment-id {experiment.experiment_id}`) or give the sweep a new name")
    if EXPERIMENT_KIND not in experiment.tags:  # a kind chosen in the UI is kept
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
    return experiment.experiment_id


def close_orphans(parent: ParentRun, why: str, launch: str | None = None,
                  running: Callable[[], Collection[int]] = tuple) -> int:
    """Mark the parent's child runs still RUNNING FAILED and KILLED; returns how many.

    Only those of one `launch` (its `sweep.launch` tag) when given, and never those of the Optuna
    trials `running()` numbers (another launcher's, alive). It is called after the runs are listed,
    so a trial that started in between is among them.
    """
    client = MlflowClient(parent.tracking_uri)
    orphans = client.search_runs([parent.experiment_id], filter_string=(
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.run_id}' and attributes.status = 'RUNNING'"
        + ("" if launch is None else f" and tags.`{LAUNCH_TAG}` = '{launch}'")))
    alive = {str(number) for number in running()}
    orphans = [run for run in orphans if run.data.tags.get(TRIAL_NUMBER) not in alive]
    for run in orphans:
        _retry(client.log_batch, run.info.run_id, tags=_tags({STATUS: "FAILED", ERROR: why}))
        _retry(client.set_terminated, run.info.run_id, status="KILLED")
    return len(orphans)


def finish_parent(parent: ParentRun, complete: bool, interrupted: bool, summary_csv: str | None) -> None:
    """End the parent run FINISHED when the sweep is complete, KILLED when interrupted, else FAILED."""
    client = MlflowClient(parent.tracking_uri)
    if summary_csv is not None:
        client.log_text(parent.run_id, summary_csv, "summary.csv")
    status = "FINISHED" if complete else "KILLED" if interrupted else "FAILED"
    _retry(client.set_terminated, parent.run_id, status=status)


class TrialRun:
    """One trial's child run; `fit` calls it after every epoch to log that epoch's metrics.

    The time from its start (or resume) to its end is what the trial spent on its device.
    """

    def __init__(self, client: MlflowClient, run_id: str, logged: Mapping[str, set[int]] | None = None,
                 attempt: int = 0, earlier_seconds: float = 0.0):
        self.client, self.run_id = client, run_id
        self.logged = {name: set(steps) for name, steps in (logged or {}).items()}  # metric -> steps it has
        self.attempt, self.earlier_seconds, self.started = attempt, earlier_seconds, time.monotonic()

    @classmethod
    def start(cls, client: MlflowClient, parent: ParentRun, name: str, cfg: TrainConfig,
              tags: Mapping[str, str]) -> "TrialRun":
        """Create the child run with `tags` and every TrainConfig field as a param."""
        run = client.create_run(parent.experiment_id, run_name=name[:MAX_RUN_NAME_CHARS],
                                tags={MLFLOW_PARENT_RUN_ID: parent.run_id, STATUS: "RUNNING", **tags})
        trial_run = cls(client, run.info.run_id)
        params = [Param(key, _param_value(value)) for key, value in cfg.to_dict().items()]
        _retry(client.log_batch, trial_run.run_id, params=params)
        return trial_run

    @classmethod
    def resume(cls, client: MlflowClient, run_id: str, tags: Mapping[str, str],
               reports: list[EpochReport]) -> "TrialRun":
        """Reopen an interrupted trial's run: RUNNING again, with `tags`, without its old error.

        The epochs of `reports` (the checkpoint's history) that the run lacks are logged, so its curves
        have no gap whatever the interruption cut short.
        """
        logged = {name: {m.step for m in _retry(client.get_metric_history, run_id, name)}
                  for name in RUN_METRICS}
        spent = max(_retry(client.get_metric_history, run_id, DEVICE_SECONDS_METRIC), key=lambda m: m.step,
                    default=None)  # the total up to the last attempt that ended
        _retry(client.update_run, run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        _retry(client.log_batch, run_id, tags=_tags({STATUS: "RUNNING", **tags}))
        if ERROR in client.get_run(run_id).data.tags:
            _retry(client.delete_tag, run_id, ERROR)
        trial_run = cls(client, run_id, logged, *((0, 0.0) if spent is None else (spent.step + 1, spent.value)))
        for report in reports:
            trial_run(report)
        return trial_run

    def __call__(self, report: EpochReport) -> None:
        """Log the epoch's metrics, each unless this run has it already (logged before an interruption).

        The epochs a resumed trial trains again after its checkpoint come out the same on the CPU (and
        nearly so on a GPU); the first value logged is kept, so every step has one value. A NaN is not
        logged: it is what a report from a checkpoint older than a field (`val_psnr_1step`) holds.
        """
        now = _now_ms()
        metrics = [Metric(name, value, now, report.epoch) for name, field in EPOCH_METRICS.items()
                   if report.epoch not in self.logged.get(name, ())
                   and not math.isnan(value := float(getattr(report, field)))]
        self._log_metrics(metrics)

    def log_baselines(self, baselines: CopyBaselines) -> None:
        """The validation video's copy baselines: both means at step 0, and copy-first per frame (step = frame).

        Logged once: a resumed run that has them already is left as it is.
        """
        now = _now_ms()
        means = [Metric(name, float(getattr(baselines, field)), now, 0)
                 for name, field in BASELINE_METRICS.items() if 0 not in self.logged.get(name, ())]
        self._log_metrics(means + self._per_frame(COPY_FIRST_FRAME_METRIC, baselines.first, now))

    def log_final(self, report: EpochReport, artifacts: Mapping[str, Path]) -> None:
        """The final epoch's per-frame metrics (`val/psnr_frame`, ...; step = frame), and files as artifacts.

        `artifacts` maps an artifact path (`checkpoints/best.ckpt`) to the local file to upload.
        """
        now = _now_ms()
        self._log_metrics([metric for frame_metric in FRAME_METRICS
                           for metric in self._per_frame(frame_metric.key, getattr(report, frame_metric.name), now)])
        for artifact_path, local in artifacts.items():
            folder = str(Path(artifact_path).parent)
            if Path(artifact_path).name != local.name:
                raise ValueError(f"artifact {artifact_path} must keep its file's name {local.name}")
            self.client.log_artifact(self.run_id, str(local), artifact_path=None if folder == "." else folder)

    def _per_frame(self, name: str, values: np.ndarray, now: int) -> list[Metric]:
        """`values` of frames 1..T-1 as metric `name` with step = frame, less the frames the run has already."""
        return [Metric(name, float(value), now, frame) for frame, value in enumerate(values, start=1)
                if frame not in self.logged.get(name, ())]

    def _log_metrics(self, metrics: list[Metric]) -> None:
        """In batches of at most MLflow's limit."""
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            _retry(self.client.log_batch, self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def end(self, status: str, error: str | None = None, interrupted: bool = False) -> None:
        """Close the run: `status` is the trial's Optuna state name (COMPLETE, FAILED or PRUNED).

        An interrupted run ends KILLED, as a pruned one does; one that raised ends FAILED. Its device seconds
        are logged whatever the end: a failed or pruned trial cost them too.
        """
        tags = {STATUS: status}
        if error is not None:
            tags[ERROR] = error[:MAX_TAG_CHARS]
        seconds = self.earlier_seconds + time.monotonic() - self.started
        _retry(self.client.log_batch, self.run_id, tags=_tags(tags),
               metrics=[Metric(DEVICE_SECONDS_METRIC, seconds, _now_ms(), self.attempt)])
        _retry(self.client.set_terminated, self.run_id, status="KILLED" if interrupted else RUN_STATUS[status])


def _tags(values: Mapping[str, str]) -> list[RunTag]:
    return [RunTag(key, str(value)) for key, value in values.items()]


def _param_value(value: object) -> str:
    """MLflow params are strings; a tuple field's list is written the way TrainConfig reads it back, '2,5'."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _retry(call: Callable[..., T], *args, **kwargs) -> T:
    """`call`, tried again with a growing pause while the database says it is locked."""
    for attempt in range(LOCK_RETRIES):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            if err.error_code != "TEMPORARILY_UNAVAILABLE" or attempt + 1 == LOCK_RETRIES:
                raise
            pause = 0.5 * 2**attempt
            log.warning("MLflow is busy (%s); trying again in %.1f s", one_line(err.message)[:120], pause)
            time.sleep(pause)
    raise AssertionError("unreachable")

