"""A sweep's best trial and its checkpoint, found through MLflow; `python -m experiments.best` predicts with it.

`cvae.predict` takes a checkpoint file and knows nothing of sweeps; this module turns a sweep's name into
that file. The best trial is the finished trial run of the sweep's MLflow experiment with the best value
of the sweep's objective, as its parent run's `sweep.metric` and `sweep.direction` tags name it (default
`val_psnr`, maximised): the last epoch's value, or for `best_val_psnr` the best epoch's. Its checkpoint
is the `.ckpt` artifact it logged (`checkpoints/best.ckpt`), or else `<save_root>/checkpoints/best.ckpt`.
`--register` then adds it to MLflow's model registry, where MLflow users look for "the model".
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from cvae.errors import CVAEError
from cvae.predict_cli import add_predict_flags, run as run_prediction
from experiments.errors import SpecError, one_line
from experiments.objective import epoch_field
from experiments.schema import IS_PARENT, OBJECTIVES, SWEEP_DIRECTION, SWEEP_METRIC
from experiments.spec import DEFAULT_TRACKING_URI
from experiments.tracking import EPOCH_METRICS

log = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = "val_psnr"
CHECKPOINT_NAME = "best.ckpt"  # the trainer's checkpoint of the epoch with the best val PSNR
CHECKPOINT_FOLDER = "checkpoints"  # where a trial run logs it
SQLITE_PREFIX = "sqlite:///"
MLFLOW_NAME = {field: name for name, field in EPOCH_METRICS.items()}  # EpochReport field -> MLflow metric
PARENTS = f"tags.`{IS_PARENT}` = 'true'"  # a sweep's parent run


@dataclass(frozen=True)
class BestTrial:
    run: Any  # mlflow.entities.Run
    metric: str  # the sweep's objective, e.g. val_psnr
    direction: str  # maximize or minimize
    value: float


def best_trial(sweep: str, tracking_uri: str = DEFAULT_TRACKING_URI) -> BestTrial:
    """The finished trial of `sweep` with the best value of the sweep's objective."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    parents = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string=PARENTS, order_by=["attributes.start_time DESC"],
        max_results=1)  # finished or not
    if not parents:
        raise SpecError(f"no sweep {sweep!r} in MLflow at {tracking_uri}; "
                        f"the sweeps there are: {', '.join(sweep_names(client)) or 'none'}")
    tags = parents[0].data.tags
    metric = tags.get(SWEEP_METRIC, DEFAULT_OBJECTIVE)
    if metric not in OBJECTIVES:
        raise SpecError(f"sweep {sweep!r} optimised {metric!r}, which best_trial cannot read back from MLflow "
                        f"(it knows {', '.join(OBJECTIVES)})")
    direction = tags.get(SWEEP_DIRECTION, OBJECTIVES[metric])
    scored = [(value, run) for run in _finished_runs(client, experiment.experiment_id)
              if run.data.tags.get(IS_PARENT) != "true" and math.isfinite(value := _trial_value(client, run, metric))]
    if not scored:
        raise SpecError(f"sweep {sweep!r} in MLflow at {tracking_uri} has no finished trial with a "
                        f"{MLFLOW_NAME[epoch_field(metric)]} metric yet")
    pick = max if direction == "maximize" else min
    value, run = pick(scored, key=lambda pair: pair[0])
    return BestTrial(run, metric, direction, value)


def sweep_names(client) -> list[str]:
    """The names of the experiments that hold a sweep's parent run (not MLflow's `Default`, say)."""
    experiments = {found.experiment_id: found.name for found in client.search_experiments()}
    parents = client.search_runs(list(experiments), filter_string=PARENTS) if experiments else []
    return sorted({experiments[run.info.experiment_id] for run in parents})


def fetch_checkpoint(run, tracking_uri: str) -> Path:
    """The checkpoint of `run`: its `.ckpt` artifact, or the one under its save_root.

    An artifact in a local store is read where it lies; one on a server is downloaded into a folder MLflow
    keeps, so a path in an error message is one that exists.
    """
    artifact = checkpoint_artifact(_client(tracking_uri), run)
    if artifact is not None:
        log.info("checkpoint: artifact %s of run %s", artifact, run.info.run_id)
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact,
                                                        tracking_uri=tracking_uri))
    local = local_checkpoint(run)
    log.info("checkpoint: %s (save_root of run %s)", local, run.info.run_id)
    return local


def register_checkpoint(best: BestTrial, sweep: str, tracking_uri: str, name: str) -> ModelVersion:
    """A new version of the registered model `name` (created when missing) made of the best trial's checkpoint.

    A checkpoint that only lies under the run's save_root is logged as the run's artifact first, so the
    version points at a file MLflow keeps.
    """
    client = _client(tracking_uri)
    run_id = best.run.info.run_id
    artifact = checkpoint_artifact(client, best.run)
    if artifact is None:
        local = local_checkpoint(best.run)
        client.log_artifact(run_id, str(local), CHECKPOINT_FOLDER)
        artifact = f"{CHECKPOINT_FOLDER}/{local.name}"
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name, source=f"runs:/{run_id}/{artifact}", run_id=run_id,
        description=f"best trial of sweep {sweep} by {best.metric} ({best.direction}): {best.value:.4g}")


def checkpoint_artifact(client, run) -> str | None:
    """The path of the run's `.ckpt` artifact, `best.ckpt` before any other; None when it logged none."""
    logged = [path for path in _artifact_paths(client, run.info.run_id) if path.endswith(".ckpt")]
    return min(logged, key=lambda path: (Path(path).name != CHECKPOINT_NAME, path), default=None)


def local_checkpoint(run) -> Path:
    """`<save_root>/checkpoints/best.ckpt` of the run; SpecError when it is not there."""
    save_root = run.data.params.get("save_root")
    local = Path(save_root) / "checkpoints" / CHECKPOINT_NAME if save_root else None
    if local is None or not local.is_file():
        raise SpecError(f"run {run.info.run_id} ({run.info.run_name}) logged no .ckpt artifact and its save_root "
                        f"holds no {local or CHECKPOINT_NAME}; predict from a checkpoint file with "
                        f"`python -m cvae predict --ckpt PATH`")
    return local


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m experiments.best",
                                     description="Predict with the checkpoint of a sweep's best trial, found "
                                                 "through MLflow (the flags are those of `python -m cvae predict`).")
    parser.add_argument("--sweep", required=True, metavar="NAME", help="the sweep's name, its MLflow experiment")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"where the sweep logged its runs (default: {DEFAULT_TRACKING_URI})")
    parser.add_argument("--register", nargs="?", const="", metavar="NAME",
                        help="after predicting, register the checkpoint in MLflow's model registry as a new "
                             "version of NAME (default: the sweep's name)")
    add_predict_flags(parser)
    args = parser.parse_args(argv)
    try:
        best = best_trial(args.sweep, args.tracking_uri)
        print(f"best trial of {args.sweep} by {best.metric} ({best.direction}): run {best.run.info.run_name} "
              f"({best.run.info.run_id}), {best.metric} {best.value:.4g}")
        run_prediction(args, fetch_checkpoint(best.run, args.tracking_uri))
        if args.register is not None:
            version = register_checkpoint(best, args.sweep, args.tracking_uri, args.register or args.sweep)
            print(f"registered {version.source} as model {version.name!r} version {version.version}")
    except (CVAEError, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(f"error: MLflow at {args.tracking_uri}: {one_line(err.message)[:300]}", file=sys.stderr)
        return 2
    return 0


def _client(tracking_uri: str):
    """An MlflowClient; a missing SQLite file is an error here, where MLflow would create an empty database."""
    if tracking_uri.startswith(SQLITE_PREFIX) and not Path(tracking_uri[len(SQLITE_PREFIX):]).is_file():
        raise SpecError(f"no MLflow database at {tracking_uri[len(SQLITE_PREFIX):]}; run the sweep first, "
                        f"or pass --tracking-uri where it logged")
    return mlflow.MlflowClient(tracking_uri)


def _trial_value(client, run, metric: str) -> float:
    """The objective as the trial returned it: the last epoch's value, or for `best_...` the best epoch's."""
    name = MLFLOW_NAME[epoch_field(metric)]
    if metric.startswith("best_"):
        return max((entry.value for entry in client.get_metric_history(run.info.run_id, name)), default=math.nan)
    return run.data.metrics.get(name, math.nan)


def _finished_runs(client, experiment_id: str) -> list:
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _artifact_paths(client, run_id: str, folder: str | None = None) -> list[str]:
    """Every artifact file of a run, as paths relative to its artifact root."""
    paths = []
    for entry in client.list_artifacts(run_id, folder):
        paths.extend(_artifact_paths(client, run_id, entry.path) if entry.is_dir else [entry.path])
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
