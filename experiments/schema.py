"""Every name a sweep records under, declared once: the metrics (where each comes from, its MLflow key, its
direction, unit and table header), the MLflow tags and the Optuna user attrs.

The trainer's EpochReport holds the values; `experiments.tracking` logs them under these keys,
`experiments.spec_sections` offers the epoch metrics with a direction as objectives, and `analysis` reads them
back into columns. A metric added to METRICS is logged, selectable and reported without another table to edit.
Runs logged earlier are read by these strings: a key or tag, once logged, is never renamed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

EPOCH, FRAME = "epoch", "frame"  # what a metric's MLflow step counts: the 0-based epoch, or the frame 1..T-1
MAXIMIZE, MINIMIZE = "maximize", "minimize"
BEST_PREFIX = "best_"  # objective `best_<name>`: the best epoch's value instead of the last one's


@dataclass(frozen=True)
class Metric:
    """One quantity a trial logs, read from the EpochReport attribute `name`.

    An EPOCH metric is a float per epoch, logged at step = epoch; analysis keeps the last epoch's value in
    the trials column `final_<name>`. A FRAME metric is a (T-1,) array of the final validation, logged once
    at step = frame 1..T-1; analysis keeps it in the frames column `column`.
    """

    name: str  # the EpochReport field; for an EPOCH metric with a direction also the spec's objective name
    key: str  # the MLflow metric key
    per: str  # EPOCH or FRAME
    label: str  # how figures and text name it: "val PSNR"
    direction: str | None = None  # MAXIMIZE or MINIMIZE: an objective; None: neither better, not an objective
    unit: str = ""
    header: str = ""  # its summary table header
    summarized: bool = False  # the summary table always has it (else only as the sweep's objective)
    best_header: str = ""  # set: `best_<name>` is an objective too and a table column with this header
    column: str = ""  # a FRAME metric's column in analysis' frames table
    decimals: int = 2  # how many the summary table shows
    baseline: str = ""  # the copy baseline it must beat: "first" (a rollout) or "previous" (one step ahead)

    @property
    def final_column(self) -> str:
        return f"final_{self.name}"

    @property
    def best_column(self) -> str:
        return f"{BEST_PREFIX}{self.name}"

    def best(self, values: Iterable[float]) -> float:
        """The best of `values` by the metric's direction; NaN when there are none."""
        return (max if self.direction == MAXIMIZE else min)(values, default=math.nan)


METRICS = (
    # best_val_psnr: the epoch checkpoints/best.ckpt keeps
    Metric("val_psnr", "val/psnr", EPOCH, "val PSNR", MAXIMIZE, "dB", "final val PSNR (dB)", summarized=True,
           best_header="best val PSNR (dB)", baseline="first"),
    Metric("val_psnr_1step", "val/psnr_1step", EPOCH, "one-step val PSNR", MAXIMIZE, "dB", "one-step val PSNR (dB)",
           summarized=True, baseline="previous"),
    Metric("val_ssim", "val/ssim", EPOCH, "val SSIM", MAXIMIZE, header="final val SSIM", summarized=True, decimals=3),
    Metric("train_loss", "train/loss", EPOCH, "train loss", MINIMIZE, header="final train loss"),
    Metric("train_recon", "train/recon", EPOCH, "train recon", MINIMIZE, header="final train recon"),
    Metric("train_kl", "train/kl", EPOCH, "train KL", MINIMIZE, header="final train KL"),
    Metric("kl_beta", "kl_beta", EPOCH, "KL weight β"),
    Metric("tfr", "tfr", EPOCH, "teacher forcing ratio"),
    Metric("lr", "lr", EPOCH, "learning rate"),
    Metric("epoch_seconds", "epoch_seconds", EPOCH, "epoch time", unit="s"),
    Metric("val_psnr_per_frame", "val/psnr_frame", FRAME, "PSNR", MAXIMIZE, "dB", column="psnr"),
    Metric("val_ssim_per_frame", "val/ssim_frame", FRAME, "SSIM", MAXIMIZE, column="ssim"),
)
EPOCH_METRICS = tuple(metric for metric in METRICS if metric.per == EPOCH)
FRAME_METRICS = tuple(metric for metric in METRICS if metric.per == FRAME)
BY_NAME = {metric.name: metric for metric in METRICS}
VAL_PSNR, ONE_STEP_PSNR = BY_NAME["val_psnr"], BY_NAME["val_psnr_1step"]
PSNR_FRAMES = BY_NAME["val_psnr_per_frame"]
# what a trial can return, with its usual direction: an epoch metric's last value, or `best_...` its best epoch's
OBJECTIVES = {name: metric.direction for metric in EPOCH_METRICS if metric.direction
              for name in (metric.name, *([metric.best_column] if metric.best_header else []))}


def objective_metric(objective: str) -> Metric:
    """The epoch metric an objective is made of: `best_val_psnr` is the best epoch's `val_psnr`."""
    if objective not in OBJECTIVES:
        raise KeyError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    return BY_NAME.get(objective) or BY_NAME[objective.removeprefix(BEST_PREFIX)]


def objective_column(objective: str) -> str:
    """The trials column of analysis that holds an objective's value."""
    metric = objective_metric(objective)
    return metric.best_column if objective == metric.best_column else metric.final_column


# ---------------------------------------------------------------- the copy baselines and the cost, per trial

COPY_FIRST_METRIC = "baseline/copy_first"  # step 0: the mean over frames 1..T-1
COPY_PREVIOUS_METRIC = "baseline/copy_previous"  # step 0: the mean over frames 1..T-1
COPY_FIRST_FRAME_METRIC = "baseline/copy_first_frame"  # step = frame number, 1..T-1, as PSNR_FRAMES
# the wall time a trial held its device (HOST_DEVICE names it), from its run's start to its end, summed over the
# attempts at it: step = attempt (0, then 1 for the first resume, ...), so the latest value is the total
DEVICE_SECONDS_METRIC = "cost/device_seconds"

# ---------------------------------------------------------------- MLflow tags

SWEEP_ID = "sweep.id"
IS_PARENT = "sweep.parent"
STATUS = "sweep.status"  # a child run's Optuna state (RUNNING, COMPLETE, FAILED, PRUNED), beside MLflow's status
ERROR = "sweep.error"
# on the parent run, set by the launcher
SWEEP_SPEC, SWEEP_STORAGE, SWEEP_SAMPLER, SWEEP_PRUNER = "sweep.spec", "sweep.storage", "sweep.sampler", "sweep.pruner"
SWEEP_METRIC, SWEEP_DIRECTION, SWEEP_N_TRIALS = "sweep.metric", "sweep.direction", "sweep.n_trials"
# on a trial's run
TRIAL_NUMBER = "optuna.trial_number"
SWEEP_NAME, GROUP_KEY, GROUP_LABEL, SEED_TAG = "sweep.name", "sweep.group_key", "sweep.group_label", "sweep.seed"
WORKER, GPU, TRIAL_DIR, LAUNCH_TAG = "sweep.worker", "sweep.gpu", "sweep.trial_dir", "sweep.launch"
PRECISION, RESUMED_FROM_TAG = "sweep.precision", "sweep.resumed_from"
# where a run came from, besides MLflow's mlflow.source.name/.type and mlflow.source.git.commit/.branch
GIT_DIRTY = "git.dirty"  # "true" when the code had uncommitted changes, "false", or "unknown" without git
VERSION_TAG = "version.{}"  # version.python, version.torch, version.cuda, version.optuna, version.mlflow
HOST_NAME = "host.name"
HOST_DEVICE = "host.device"  # a trial's device: the GPU's model (NVIDIA H200) or the CPU's; absent on the parent

# ---------------------------------------------------------------- Optuna user attrs

# On a trial: its seed and group_key, queued with a grid cell (set by `suggest` on a sampled trial); the
# objective's launch, MLflow run, error, folder and the checkpoint it resumed from.
SEED, GROUP, LAUNCH, MLFLOW_RUN_ID, ERROR_ATTR = "seed", "group", "launch", "mlflow_run_id", "error"
TRIAL_DIR_ATTR, RESUMED_FROM = "trial_dir", "resumed_from"
# On the study: the id its MLflow parent run is tagged with, the base it was run with, and what adaptive seeds
# ran and saved (`replicates.Savings` as a dict, `study.record_savings`).
SWEEP_ID_ATTR, SWEEP_CONFIG, ADAPTIVE_SEEDS = "sweep_id", "sweep_config", "adaptive_seeds"
