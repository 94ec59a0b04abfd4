"""The objective: an Optuna trial -> its TrainConfig -> `fit` -> the spec's metric, as one MLflow child run.

A trial that raises is recorded, not hidden: its error (type and message on one line) becomes the
trial's `error` user attr and its run's `sweep.error` tag, the traceback of an unexpected exception
is kept as the run's `traceback.txt`, and the exception goes on to Optuna, which fails the trial.
A trial the pruner stops is raised as TrialPruned after `fit` returns, its run KILLED and tagged PRUNED.
Each run carries the worker's provenance (code, packages, host, device) and logs its data set, which the
parent run gets as an input too.

A grid trial resumes: its folder is named by its cell and seed, so a later attempt at the cell finds
the checkpoints of an interrupted one (sweeps checkpoint every epoch), continues from the newest that
loads (a corrupt one is reported by name and skipped) and reopens its MLflow run, which then gets each
epoch once. With no usable checkpoint, or one of another configuration, the trial starts over in a new run.
A grid trial whose cell another trial holds (see `experiments.study.holder`) fails at once as a duplicate.
"""
from __future__ import annotations

import logging
import math
import shutil
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset

from cvae import checkpoint
from cvae.config import TrainConfig
from cvae.data import VideoData, load_video_data
from cvae.errors import CVAEError
from cvae.folders import PSNR_FILE
from cvae.metrics import save_psnr_csv
from cvae.predict import load_model
from cvae.train import EpochReport, History, fit, precision, resolve_device, sample_rollouts
from cvae.video import save_gif, side_by_side, to_uint8
from experiments.errors import one_line
from experiments.plan import group_key, group_label, train_config
from experiments.provenance import collect, data_set
from experiments.schema import (ERROR_ATTR, GPU, GROUP_KEY, GROUP_LABEL, LAUNCH, LAUNCH_TAG, MLFLOW_RUN_ID, PRECISION,
                                RESUMED_FROM, RESUMED_FROM_TAG, SEED_TAG, SWEEP_NAME, TRIAL_DIR, TRIAL_DIR_ATTR,
                                TRIAL_NUMBER, WORKER, objective_metric)
from experiments.spec import SweepSpec
from experiments.study import holder, suggest
from experiments.tracking import ParentRun, TrialRun, log_dataset, provenance_tags

# The TrainConfig fields load_video_data reads: trials that agree on them share one VideoData.
DATA_FIELDS = ("DR", "frame_H", "frame_W", "train_vi_len", "val_vi_len", "partial")
MAX_ERROR_CHARS = 500
GIF_ZOOM = 2
log = logging.getLogger(__name__)


class DuplicateCell(Exception):
    """Another trial holds this grid trial's cell x seed; the copy fails without training."""


class Objective:
    """Called by `study.optimize` in a worker process, once per trial, on the worker's device.

    `launch` (`host:pid` of the launcher) is set as each trial's `launch` user attr and its run's
    `sweep.launch` tag, so a launcher that stops fails only its own trials.
    """

    def __init__(self, spec: SweepSpec, runs_dir: Path, parent: ParentRun, worker: int, gpu: int | None,
                 launch: str = ""):
        self.spec, self.runs_dir, self.parent, self.worker, self.gpu = spec, runs_dir, parent, worker, gpu
        self.launch = launch
        self.client = MlflowClient(parent.tracking_uri)
        # after the worker bound its device: a GPU worker's one visible GPU is "cuda"
        self.provenance = provenance_tags(collect(torch.device("cpu" if gpu is None else "cuda")))
        self._data: dict[tuple, tuple[VideoData, Dataset]] = {}  # the data and its MLflow description

    def __call__(self, trial: optuna.Trial) -> float:
        overrides, seed = suggest(self.spec, trial)
        cfg = trial_config(self.spec, trial, overrides, seed, self.runs_dir, self.gpu)
        trial.set_user_attr(TRIAL_DIR_ATTR, cfg.save_root)
        run = None
        tags = {TRIAL_NUMBER: str(trial.number), SWEEP_NAME: self.spec.name,
                GROUP_KEY: group_key(overrides), GROUP_LABEL: group_label(overrides),
                SEED_TAG: str(seed), WORKER: str(self.worker),
                GPU: "cpu" if self.gpu is None else str(self.gpu), TRIAL_DIR: cfg.save_root,
                LAUNCH_TAG: self.launch, PRECISION: precision(cfg, resolve_device(cfg)),
                **self.provenance}
        try:
            trial.set_user_attr(LAUNCH, self.launch)
            if self.spec.is_grid and (other := holder(trial.study, trial)) is not None:
                raise DuplicateCell(f"cell already {other.state.name} in trial {other.number}")
            resume = self._resume_point(cfg) if self.spec.is_grid else None
            if resume is None:
                shutil.rmtree(cfg.save_root, ignore_errors=True)  # an earlier attempt that left nothing to resume
                run = TrialRun.start(self.client, self.parent, f"{group_label(overrides)} | seed {seed}", cfg, tags)
            else:
                path, state, run_id = resume
                tags[RESUMED_FROM_TAG] = f"{path.name} (epoch {state['epoch']})"
                reports = [EpochReport.from_state(report) for report in state["history"]]
                run = TrialRun.resume(self.client, run_id, tags, reports)
                trial.set_user_attr(RESUMED_FROM, str(path))
            trial.set_user_attr(MLFLOW_RUN_ID, run.run_id)
            value = self._train(trial, cfg, run, None if resume is None else resume[0])
            run.end("COMPLETE")
            return value
        except optuna.TrialPruned:
            run.end("PRUNED")
            raise
        except BaseException as err:
            self._record_failure(trial, cfg, run, err)
            raise

    def _resume_point(self, cfg: TrainConfig) -> tuple[Path, dict, str] | None:
        """(checkpoint, its state, the MLflow run it belongs to) of an interrupted attempt at this trial's cell."""
        path = checkpoint.latest_good(Path(cfg.save_root) / "checkpoints")
        if path is None:
            return None
        state = checkpoint.load(path)
        if checkpoint.config_of(state, path).replace(device=cfg.device) != cfg:
            log.warning("%s was trained with another configuration; the trial starts over", path)
            return None
        earlier = self.client.search_runs(
            [self.parent.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent.run_id}' and "
                          f"tags.`{TRIAL_DIR}` = '{cfg.save_root}' and attributes.status != 'FINISHED'")
        if not earlier:
            return None
        log.warning("%s: resuming from %s (epoch %d of %d)", cfg.save_root, path.name, state["epoch"], cfg.num_epoch)
        return path, state, earlier[0].info.run_id

    def _train(self, trial: optuna.Trial, cfg: TrainConfig, run: TrialRun, resume_from: Path | None = None) -> float:
        data, dataset = self._load(cfg)
        log_dataset(self.client, (run.run_id, self.parent.run_id), dataset)
        run.log_baselines(data.baselines)  # before training, so a pruned or interrupted trial has them too
        pruning = PruningCallback(trial, self.spec.metric)
        history = fit(cfg, data, callbacks=[run, pruning], resume_from=resume_from, progress=False)
        if pruning.pruned:
            last = getattr(history.epochs[-1], epoch_field(self.spec.metric))
            raise optuna.TrialPruned(f"pruned after epoch {len(history.epochs)} ({self.spec.metric} {last:.4g})")
        value = objective_value(self.spec.metric, history)
        if not math.isfinite(value):
            raise ValueError(f"{self.spec.metric} is {value}")
        save_root = Path(cfg.save_root)
        csv = save_psnr_csv(save_root / PSNR_FILE, history.epochs[-1].val_psnr_per_frame)
        gif = save_rollout_gif(save_root / "val_rollout.gif", history.best_checkpoint, data)
        run.log_final(history.epochs[-1], {
            PSNR_FILE: csv, "val_rollout.gif": gif, "checkpoints/best.ckpt": history.best_checkpoint})
        return value

    def _load(self, cfg: TrainConfig) -> tuple[VideoData, Dataset]:
        key = tuple(getattr(cfg, name) for name in DATA_FIELDS)
        if key not in self._data:
            data = load_video_data(cfg)
            self._data = {key: (data, data_set(cfg, data))}  # one data set held at a time: sweeps rarely vary it
        return self._data[key]

    def _record_failure(self, trial: optuna.Trial, cfg: TrainConfig, run: TrialRun | None,
                        err: BaseException) -> None:
        """Say why the trial failed in its user attrs and run; never let that hide the error itself."""
        message = describe_error(err)
        try:
            trial.set_user_attr(ERROR_ATTR, message)
            if run is None:
                return
            if not isinstance(err, (CVAEError, KeyboardInterrupt, torch.OutOfMemoryError)):
                path = Path(cfg.save_root) / "traceback.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(traceback.format_exception(err)))
                run.client.log_artifact(run.run_id, str(path))
            run.end("FAILED", message, interrupted=isinstance(err, KeyboardInterrupt))
        except Exception as also:  # noqa: BLE001 - the storage or MLflow may be what failed
            log.warning("trial %d: could not record its failure (%s)", trial.number, describe_error(also))


class PruningCallback:
    """A `fit` callback: reports the objective's epoch value to the trial, stops training when it should be pruned."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.field, self.pruned = trial, epoch_field(metric), False

    def __call__(self, report: EpochReport) -> bool:
        self.trial.report(float(getattr(report, self.field)), step=report.epoch)
        self.pruned = self.trial.should_prune()
        return self.pruned


def trial_config(spec: SweepSpec, trial: optuna.Trial, overrides: dict[str, Any], seed: int,
                 runs_dir: Path, gpu: int | None) -> TrainConfig:
    """The trial's TrainConfig, saving into its own folder, on the worker's device."""
    cfg = train_config(spec, overrides, seed)
    # per_save=1: an interrupted trial loses at most the epoch it was in (see the module docstring)
    return cfg.replace(save_root=str(runs_dir / "trials" / trial_folder(spec, trial, overrides, seed)),
                       device="cpu" if gpu is None else "cuda", per_save=1)


def trial_folder(spec: SweepSpec, trial: optuna.Trial, overrides: dict[str, Any], seed: int) -> str:
    """A grid cell's folder is named by its configuration and seed, so every attempt at it uses the same one;
    a sampled trial's by its number, since two sampled trials may draw the same configuration and seed."""
    if spec.is_grid:
        return f"{group_key(overrides)}-seed{seed}"
    return f"trial{trial.number:04d}"


def epoch_field(objective: str) -> str:
    """The EpochReport field an objective is made of: `best_val_psnr` is the best epoch's `val_psnr`."""
    return objective_metric(objective).name


def objective_value(objective: str, history: History) -> float:
    """The value a trial returns: the last epoch's, or for `best_...` the best epoch's (by the metric's direction)."""
    metric = objective_metric(objective)
    if objective == metric.best_column:
        return metric.best(float(getattr(report, metric.name)) for report in history.epochs)
    return float(getattr(history.epochs[-1], metric.name))


def describe_error(err: BaseException) -> str:
    """One line: the exception's type and message, shortened."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C, or the launcher stopped)"
    return f"{type(err).__name__}: {one_line(err)}"[:MAX_ERROR_CHARS]


@torch.no_grad()
def save_rollout_gif(path: Path, checkpoint_path: Path, data: VideoData) -> Path:
    """A GIF of the checkpoint's rollout of the validation video (left) beside the true video (right).

    The rollout draws z as `validate` does, so its PSNR is the one the checkpoint was chosen by.
    """
    model, cfg = load_model(checkpoint_path)
    images = data.val_images.to(resolve_device(cfg))  # (T, 3, H, W) uint8
    frames = sample_rollouts(model, images[0], data.val_labels, cfg, cfg.seed)[0]  # (T, 3, H, W)
    return save_gif(path, side_by_side(to_uint8(frames), images).cpu(), zoom=GIF_ZOOM)
