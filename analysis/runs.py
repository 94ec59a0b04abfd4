"""One sweep's runs in MLflow -> tidy DataFrames: a row per trial, per (trial, epoch, metric), per (trial, frame).

A sweep is an MLflow experiment holding a parent run (tag `sweep.parent=true`) and one child run per
Optuna trial, as `experiments.tracking` logs them. When an experiment holds several parent runs (the
sweep was started afresh under the same name), the latest is the sweep and the others are counted.
Epochs are numbered from 1 here, as the trainer's progress bar and checkpoints count them; MLflow's
steps count from 0.

Beside the runs lies the sweep's Optuna study, which `load_study` opens read-only from the storage
the parent run names.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from analysis.errors import ReportError
from analysis.labels import configuration_label, kl_setting, swept_keys, tfr_setting
from cvae.config import TrainConfig
from cvae.errors import ConfigError
from experiments.spec import DEFAULT_TRACKING_URI, URL
from experiments.schema import (COPY_FIRST_FRAME_METRIC, COPY_FIRST_METRIC, COPY_PREVIOUS_METRIC,
                                DEVICE_SECONDS_METRIC, EPOCH_METRICS, ERROR, FRAME_METRICS, GIT_DIRTY, GPU, GROUP_KEY,
                                GROUP_LABEL, HOST_DEVICE, IS_PARENT, PSNR_FRAMES, SEED_TAG, STATUS, SWEEP_DIRECTION,
                                SWEEP_METRIC, SWEEP_SAMPLER, SWEEP_SPEC, SWEEP_STORAGE, TRIAL_NUMBER, VAL_PSNR, Metric)
from experiments.tracking import RUN_METRICS, RUN_STATUS

SQLITE = "sqlite:///"
SPEC_NOTE = re.compile(r"```yaml\n(.*)\n```", re.DOTALL)  # how experiments.tracking puts it in the description
# the last epoch's value of the metrics with a table header becomes a trial column: MLflow key -> column
FINAL_COLUMNS = {metric.key: metric.final_column for metric in EPOCH_METRICS if metric.header}
# the copy baselines a trial logged once (NaN for runs logged before them): metric -> column
BASELINE_COLUMNS = {COPY_FIRST_METRIC: "copy_first", COPY_PREVIOUS_METRIC: "copy_previous"}
# copying the first frame forward, per frame: a PSNR like PSNR_FRAMES, in the same column
BASELINE_FRAMES = dataclasses.replace(PSNR_FRAMES, key=COPY_FIRST_FRAME_METRIC)
RUN_STATES = {run: state for state, run in RUN_STATUS.items()}  # MLflow run status -> trial state, for untagged runs
IDENTITY = ["run_id", "trial", "group", "configuration", "seed", "status"]


@dataclass(frozen=True)
class Sweep:
    """A sweep as logged: its parent run's tags and spec, and its trials as DataFrames (see `load_sweep`)."""

    name: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: str
    tags: dict[str, str]
    spec_text: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    frames: pd.DataFrame
    baseline_frames: pd.DataFrame  # as `frames`, of copying the first frame; empty for runs logged before it
    earlier_sweeps: int  # parent runs of earlier sweeps under the same experiment name, not read

    @property
    def sampler(self) -> str:
        return self.tags.get(SWEEP_SAMPLER, "grid")

    @property
    def metric(self) -> str:
        return self.tags.get(SWEEP_METRIC, VAL_PSNR.name)

    @property
    def direction(self) -> str:
        return self.tags.get(SWEEP_DIRECTION, VAL_PSNR.direction)

    @property
    def configurations(self) -> list[str]:
        """Every configuration's label, in the sweep's order (that of its first trial)."""
        return list(self.trials["configuration"].cat.categories)


def connect(tracking_uri: str = DEFAULT_TRACKING_URI) -> MlflowClient:
    """A client for `tracking_uri` that has answered once; a missing SQLite file is an error, not a new database."""
    if tracking_uri.startswith(SQLITE) and ":memory:" not in tracking_uri:
        path = Path(tracking_uri[len(SQLITE):])
        if not path.is_file():
            raise ReportError(f"--tracking-uri: no MLflow database at {path}; run a sweep first "
                              f"(python run_sweep.py sweeps/quick.yaml) or pass the URI it logged to")
    try:
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - MLflow, SQLAlchemy and requests share no base class
        raise ReportError(f"--tracking-uri: cannot open {tracking_uri!r} ({_one_line(err)})") from None
    return client


def load_sweep(tracking_uri: str = DEFAULT_TRACKING_URI, sweep: str | None = None,
               experiment: str | None = None) -> Sweep:
    """The sweep named `sweep`, or the MLflow experiment `experiment` (name or id), or else the latest sweep."""
    client = connect(tracking_uri)
    found = find_experiment(client, tracking_uri, sweep, experiment)
    parents = _search(client, [found.experiment_id], f"tags.`{IS_PARENT}` = 'true'",
                      order_by=["attributes.start_time DESC"])
    if not parents:
        raise ReportError(f"MLflow experiment {found.name!r} at {tracking_uri} holds no sweep (no run tagged "
                          f"{IS_PARENT}=true); the sweeps there are: {_names(sweep_names(client))}")
    parent = parents[0]
    children = _search(client, [found.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'")
    trials = trials_frame(children)
    if not (trials["status"] == "COMPLETE").any():
        counts = trials["status"].value_counts().to_dict() if len(trials) else {}
        seen = ", ".join(f"{count} {status.lower()}" for status, count in counts.items()) or "no trial started"
        study, _ = _open_study(found.name, parent.data.tags)
        lost = _finished_numbers(study) if study is not None else set()
        if lost:
            raise ReportError(f"sweep {found.name!r} at {tracking_uri} has no finished trial ({seen}), but its Optuna "
                              f"study has {len(lost)}: their runs are not in this MLflow database (was it deleted or "
                              "replaced since they ran?); give --tracking-uri the database they logged to")
        raise ReportError(f"sweep {found.name!r} at {tracking_uri} has no finished trial yet ({seen}); "
                          f"finish it with python run_sweep.py {parent.data.tags.get(SWEEP_SPEC, 'SPEC')}")
    histories = {run.info.run_id: _histories(client, run.info.run_id) for run in children}
    return Sweep(name=found.name, experiment_id=found.experiment_id, tracking_uri=tracking_uri,
                 parent_run_id=parent.info.run_id, tags=dict(parent.data.tags), spec_text=_spec_text(parent),
                 trials=_add_finals(trials, histories), epochs=epochs_frame(trials, histories),
                 frames=frames_frame(trials, histories),
                 baseline_frames=frames_frame(trials, histories, (BASELINE_FRAMES,)),
                 earlier_sweeps=len(parents) - 1)


def find_experiment(client: MlflowClient, tracking_uri: str, sweep: str | None = None,
                    experiment: str | None = None) -> Experiment:
    """The experiment of `sweep` (its name), of `experiment` (a name or an id), or of the latest sweep."""
    if sweep is not None:
        found = client.get_experiment_by_name(sweep)
        if found is None or found.lifecycle_stage != "active":
            raise ReportError(f"--sweep: no sweep {sweep!r} in MLflow at {tracking_uri}; "
                              f"the sweeps there are: {_names(sweep_names(client))}")
        return found
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None and experiment.isdigit():
            try:
                found = client.get_experiment(experiment)
            except MlflowException:
                found = None
        if found is None or found.lifecycle_stage != "active":
            names = [e.name for e in _experiments(client)]
            raise ReportError(f"--experiment: no experiment {experiment!r} in MLflow at {tracking_uri}; "
                              f"the experiments there are: {_names(names)}")
        return found
    latest = _search(client, [e.experiment_id for e in _experiments(client)], f"tags.`{IS_PARENT}` = 'true'",
                     order_by=["attributes.start_time DESC"], max_results=1)
    if not latest:
        raise ReportError(f"no sweep in MLflow at {tracking_uri} yet; run one with python run_sweep.py SPEC")
    return client.get_experiment(latest[0].info.experiment_id)


def sweep_names(client: MlflowClient) -> list[str]:
    """The names of the experiments holding a sweep, sorted."""
    experiments = {e.experiment_id: e.name for e in _experiments(client)}
    parents = _search(client, list(experiments), f"tags.`{IS_PARENT}` = 'true'") if experiments else []
    return sorted({experiments[run.info.experiment_id] for run in parents})


# ---------------------------------------------------------------- DataFrames


def trials_frame(children: list[Run]) -> pd.DataFrame:
    """One row per trial: identity (run id, trial number, group, configuration, seed), status, timing, cost
    (device seconds and the device), the code (git commit, dirty flag) and params.

    `configuration` is categorical, its categories in the order of each configuration's first trial;
    `params.<field>` hold every TrainConfig field with its type (tuples as TrainConfig's '2,5').
    """
    rows = [_trial_row(run) for run in children]
    if not rows:
        return pd.DataFrame(columns=[*IDENTITY, "group_label", "error"])
    trials = pd.DataFrame(rows).sort_values("trial", kind="stable", ignore_index=True)
    labels = trials.groupby("group", sort=False)["configuration"].first()
    clash = labels[labels.duplicated(keep=False)]  # two groups would read the same: name them by their values
    trials["configuration"] = trials.apply(
        lambda row: row["group_label"] if row["group"] in clash.index else row["configuration"], axis=1)
    trials["configuration"] = pd.Categorical(trials["configuration"],
                                             categories=list(dict.fromkeys(trials["configuration"])))
    return trials


def epochs_frame(trials: pd.DataFrame, histories: dict[str, dict[str, list]]) -> pd.DataFrame:
    """One row per (trial, epoch, metric): the trial's identity and settings, metric, epoch (from 1), value."""
    rows = [(run_id, key, metric.step + 1, metric.value)
            for run_id, metrics in histories.items() for key in (m.key for m in EPOCH_METRICS)
            for metric in metrics[key]]
    values = pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])
    return _with_identity(trials, values, ["kl_setting", "tfr_setting"])


def frames_frame(trials: pd.DataFrame, histories: dict[str, dict[str, list]],
                 logged: tuple[Metric, ...] = FRAME_METRICS) -> pd.DataFrame:
    """One row per (trial, frame) of the per-frame metrics `logged` (by default the final validation's): the
    trial's identity, frame (1..T-1), and a column per metric (`psnr`, ...), NaN where a run did not log it."""
    columns = [pd.DataFrame([(run_id, metric.step, metric.value) for run_id, metrics in histories.items()
                             for metric in metrics[frame_metric.key]], columns=["run_id", "frame", frame_metric.column])
               .astype({"frame": int, frame_metric.column: float}).set_index(["run_id", "frame"])
               for frame_metric in logged]
    return _with_identity(trials, pd.concat(columns, axis=1).reset_index(), [])


def _with_identity(trials: pd.DataFrame, values: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    identity = trials[IDENTITY + extra]
    merged = identity.merge(values, on="run_id", how="inner", validate="one_to_many")
    return merged.sort_values(["trial", *values.columns[1:-1]], kind="stable", ignore_index=True)


def _trial_row(run: Run) -> dict[str, Any]:
    tags, params = run.data.tags, _typed_params(run.data.params)
    group_label = tags.get(GROUP_LABEL, "")
    row = {
        "run_id": run.info.run_id,
        "trial": int(tags.get(TRIAL_NUMBER, -1)),
        "group": tags.get(GROUP_KEY, group_label),
        "configuration": configuration_label(swept_keys(group_label), params) if _complete(params) else group_label,
        "seed": int(tags.get(SEED_TAG, params.get("seed", -1))),
        "status": tags.get(STATUS) or RUN_STATES.get(run.info.status, run.info.status),
        "group_label": group_label,
        "error": tags.get(ERROR, ""),
        "gpu": tags.get(GPU, ""),
        "start": pd.Timestamp(run.info.start_time, unit="ms"),
        "wall_seconds": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else float("nan"),
        # the latest value is the total over the trial's attempts; NaN for runs logged before it was
        "device_seconds": run.data.metrics.get(DEVICE_SECONDS_METRIC, float("nan")),
        "device": tags.get(HOST_DEVICE, ""),
        "git_commit": tags.get(MLFLOW_GIT_COMMIT, ""),
        "git_dirty": tags.get(GIT_DIRTY, ""),  # "true", "false", "unknown" (no git), or "" before it was logged
        "kl_setting": kl_setting(params) if _complete(params) else "",
        "tfr_setting": tfr_setting(params) if _complete(params) else "",
    }
    row.update({f"params.{key}": value for key, value in params.items()})
    return row


def _typed_params(params: dict[str, str]) -> dict[str, Any]:
    """Params as TrainConfig reads them (18 -> int, '2,5' stays a string); as logged if they no longer make one."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig.from_dict({key: value for key, value in params.items() if key in known})
    except (ConfigError, TypeError):
        return dict(params)
    typed = {key: getattr(cfg, key) for key in params if key in known}
    return {key: ",".join(map(str, value)) if isinstance(value, tuple) else value for key, value in typed.items()}


def _complete(params: dict[str, Any]) -> bool:
    """Whether the params name every knob a label reads (a run whose params are missing is named by its tag)."""
    return all(isinstance(params.get(key), (int, float)) for key in ("tfr", "tfr_sde", "tfr_d_step", "num_epoch"))


def _histories(client: MlflowClient, run_id: str) -> dict[str, list]:
    """Every metric of one run (epoch metrics, per-frame PSNR, baselines), each sorted by step."""
    return {key: sorted(client.get_metric_history(run_id, key), key=lambda m: m.step) for key in RUN_METRICS}


def _add_finals(trials: pd.DataFrame, histories: dict[str, dict[str, list]]) -> pd.DataFrame:
    """epochs (how many were logged), the last value of FINAL_COLUMNS and BASELINE_COLUMNS, and the best epoch's
    val PSNR."""
    trials = trials.copy()
    nan = float("nan")
    trials["epochs"] = [len(histories[run_id][VAL_PSNR.key]) for run_id in trials["run_id"]]
    for key, column in {**FINAL_COLUMNS, **BASELINE_COLUMNS}.items():
        trials[column] = [histories[r][key][-1].value if histories[r][key] else nan for r in trials["run_id"]]
    for metric in EPOCH_METRICS:
        if metric.best_header:
            trials[metric.best_column] = [metric.best(m.value for m in histories[r][metric.key])
                                          for r in trials["run_id"]]
    return trials


def _spec_text(parent: Run) -> str:
    """The spec YAML the launcher put in the parent run's description, or else the file it names; '' if neither."""
    note = SPEC_NOTE.search(parent.data.tags.get(MLFLOW_RUN_NOTE, ""))
    if note:
        return note.group(1) + "\n"
    path = Path(parent.data.tags.get(SWEEP_SPEC, ""))
    return path.read_text(encoding="utf-8") if path.is_file() else ""


# ---------------------------------------------------------------- the Optuna study


def load_study(sweep: Sweep) -> tuple[optuna.Study | None, str]:
    """The sweep's Optuna study from the storage its parent run names, or None and why it cannot be read."""
    return _open_study(sweep.name, sweep.tags)


def missing_runs(sweep: Sweep, study: optuna.Study) -> list[int]:
    """The numbers of the study's COMPLETE trials that have no run in the sweep's MLflow experiment."""
    return sorted(_finished_numbers(study) - set(sweep.trials["trial"]))


def _open_study(name: str, tags: Mapping[str, str]) -> tuple[optuna.Study | None, str]:
    storage_name = tags.get(SWEEP_STORAGE, "")
    if not storage_name:
        return None, "the parent run names no Optuna storage (tag sweep.storage)"
    try:
        if URL.match(storage_name):
            storage: optuna.storages.BaseStorage | str = storage_name
        elif Path(storage_name).is_file():
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage_name))
        else:
            return None, f"its Optuna journal {storage_name} is gone"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.load_study(study_name=name, storage=storage), ""
    except Exception as err:  # noqa: BLE001 - KeyError for a missing study; SQLAlchemy errors for a bad URL
        return None, f"cannot read study {name!r} from {storage_name} ({_one_line(err)})"


def _finished_numbers(study: optuna.Study) -> set[int]:
    return {trial.number for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}


# ---------------------------------------------------------------- small helpers


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str,
            order_by: list[str] | None = None, max_results: int | None = None) -> list[Run]:
    """Every run matching, page after page (or the first `max_results`)."""
    runs: list[Run] = []
    for page in _pages(lambda token: client.search_runs(experiment_ids, filter_string, order_by=order_by,
                                                        max_results=max_results or 1000, page_token=token)):
        runs.extend(page)
        if max_results and len(runs) >= max_results:
            return runs[:max_results]
    return runs


def _experiments(client: MlflowClient) -> list[Experiment]:
    return [e for page in _pages(lambda token: client.search_experiments(page_token=token)) for e in page]


def _pages(fetch) -> Iterator[list]:
    token = None
    while True:
        page = fetch(token)
        yield page
        token = page.token
        if not token:
            return


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _one_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(text.split())[:300]
