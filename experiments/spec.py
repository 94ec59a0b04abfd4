"""What a sweep spec holds: the frozen SweepSpec and its parts, made from one YAML file by `experiments.spec_loader`.

A spec (every key but `name` optional)::

    name: kl_ablation              # Optuna study and MLflow experiment; letters, digits, _ - .
    base: {num_epoch: 70}          # TrainConfig overrides shared by every trial
    parameters:                    # the search space, W&B's vocabulary
      kl_anneal_ratio: {values: [0.5, 1.0]}        # categorical, or a grid axis (a bare list works too)
      optim: {value: AdamW}                        # one fixed value
      lr: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-3}
      tfr_sde: {distribution: int_uniform, min: 0, max: 20, q: 5}   # q: step; also for uniform
    grid:                          # grid only: a union of sub-grids, each crossed with `parameters`
      - {kl_anneal_type: Cyclical, kl_anneal_cycle: [10, 20]}
      - {kl_anneal_type: [Monotonic, None]}
    seeds: [1, 2, 3]               # replicates; a seed is never part of a configuration's identity
    # or, grid only: seeds 1..max, the first `initial` for every configuration, then rounds (experiments.replicates)
    # seeds: {initial: 3, max: 10, until: separated}
    sampler: grid                  # grid | tpe | random | qmc, or {type: tpe, seed: 0, n_startup_trials: 5}
    pruner: none                   # none | median | hyperband, or {type: median, n_warmup_steps: 10}
    n_trials: 24                   # required unless grid
    objective: {metric: val_psnr, direction: maximize}   # or best_val_psnr, train_loss, ...
    execution: {gpus: auto, trials_per_gpu: 1, cpu_workers: 1}   # trials_per_gpu: auto = as many as fit
    storage: runs/<name>/optuna.journal    # a journal file, or an SQLAlchemy URL
    mlflow: {tracking_uri: "sqlite:///mlflow.db"}

Trials. A grid runs every configuration once per seed: its plan is seed-major (every configuration
with the first seed, then with the second, ...), so a sweep stopped halfway has compared every
configuration at least once; `n_trials`, if given, keeps the first n_trials of that plan. A sampled
sweep (tpe, random, qmc) runs n_trials trials, each one sampled configuration with one seed; the seed
is not a dimension the sampler sees (TPE would learn which seed is lucky) but `seeds` cycled by trial
number, so replicates stay balanced. The plan is `experiments.plan`, and how it becomes an Optuna study
`experiments.study`. With adaptive seeds the plan holds the initial seeds; the rounds after them depend on
the trials' values.

The parser never touches CUDA: `execution.gpus: auto` stays "auto" until `workers.resolve_gpus`, and
`execution.trials_per_gpu: auto` until the launch measures a trial's memory (`experiments.gpu_memory`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a storage or tracking URI, not a file path
SCALARS = (str, int, float, bool)  # what YAML reads a single value as


@dataclass(frozen=True)
class Parameter:
    """One swept TrainConfig key: categorical `values`, or a `distribution` over [low, high]."""

    name: str
    values: tuple[Any, ...] = ()
    distribution: str | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None


@dataclass(frozen=True)
class Execution:
    """Where trials run: GPU indices (nvidia-smi's numbering) or "auto", and workers per device.

    trials_per_gpu "auto" is sized at launch from a measured trial's peak memory; on the CPU,
    cpu_workers counts alone.
    """

    gpus: tuple[int, ...] | str = "auto"
    trials_per_gpu: int | str = 1
    cpu_workers: int = 1


@dataclass(frozen=True)
class AdaptiveSeeds:
    """`seeds: {initial, max, until}`: every configuration runs seeds 1..initial, then rounds add one seed at a time
    to those not yet separated from the best, up to seed max (`experiments.replicates`)."""

    initial: int
    max: int
    until: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. `cells` are the grid's configurations in spec order, () for sampled sweeps."""

    name: str
    source: str
    base: dict[str, Any]
    parameters: tuple[Parameter, ...]
    cells: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...]  # every seed a trial may have: with adaptive seeds 1..max
    adaptive: AdaptiveSeeds | None
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    n_trials: int
    metric: str
    direction: str
    execution: Execution
    storage: str
    tracking_uri: str

    @property
    def is_grid(self) -> bool:
        return self.sampler == "grid"

    @property
    def first_seeds(self) -> tuple[int, ...]:
        """The seeds every configuration runs: all of them, or with adaptive seeds the initial ones."""
        return self.seeds[:self.adaptive.initial] if self.adaptive else self.seeds
