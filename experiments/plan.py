"""A sweep's plan: the (configuration, seed) trials it runs, each trial's TrainConfig, and a configuration's
identity (`group_key`, written to trial folders, Optuna user attrs and MLflow tags) and readable name."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from cvae.config import TrainConfig
from cvae.errors import ConfigError
from experiments.errors import SpecError, one_line
from experiments.spec import Parameter, SweepSpec


def trial_plan(spec: SweepSpec) -> list[tuple[dict[str, Any], int]]:
    """Every (configuration, seed) to run, seed-major; a sampled sweep shows its distributions.

    With adaptive seeds, the initial seeds: the rounds after them depend on results (`experiments.replicates`).
    """
    if spec.is_grid:
        return [(dict(cell), seed) for seed in spec.first_seeds for cell in spec.cells][:spec.n_trials]
    sampled = {p.name: _describe(p) for p in spec.parameters}
    return [(dict(sampled), spec.seeds[i % len(spec.seeds)]) for i in range(spec.n_trials)]


def train_config(spec: SweepSpec, overrides: Mapping[str, Any], seed: int) -> TrainConfig:
    """The TrainConfig of one trial: defaults, then base, then the trial's overrides and seed."""
    try:
        return TrainConfig.from_dict({**spec.base, **overrides, "seed": seed})
    except (ConfigError, OverflowError) as err:
        raise SpecError(f"{spec.source}: configuration {group_label(overrides)}, seed {seed}: "
                        f"{one_line(err)}") from None


def group_key(overrides: Mapping[str, Any]) -> str:
    """A configuration's identity: 10 hex digits of the sorted swept values, seed excluded."""
    swept = {key: value for key, value in overrides.items() if key != "seed"}
    text = json.dumps(swept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def group_label(overrides: Mapping[str, Any]) -> str:
    """A readable configuration name, e.g. `kl_anneal_type=Cyclical, kl_anneal_ratio=0.5`."""
    parts = [f"{key}={_format(value)}" for key, value in overrides.items() if key != "seed"]
    return ", ".join(parts) or "base"


def _describe(p: Parameter) -> str:
    if p.values:
        return f"one of {', '.join(_format(v) for v in p.values)}"
    step = f" step {_format(p.step)}" if p.step is not None else ""
    return f"{p.distribution}({_format(p.low)}..{_format(p.high)}{step})"


def _format(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.4g}"
    return text if any(c in text for c in ".einf") else text + ".0"  # 1.0 stays a float to the eye
