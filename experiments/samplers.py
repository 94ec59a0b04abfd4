"""Optuna's samplers and pruners by their spec names: the tables, the factories a study is made with, and what
options their constructors take."""
from __future__ import annotations

import inspect
from typing import Any

import optuna

from experiments.spec import SCALARS, SweepSpec

# A grid draws nothing: its cells arrive as enqueued fixed params, so the cheapest sampler stands by.
SAMPLERS = {"grid": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler}
PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner}
_ANNOTATION_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "None": type(None)}


def make_sampler(spec: SweepSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded from `sampler.seed` (default 0).

    Each worker process of a tpe or random sweep adds its index to the seed, or all workers would
    draw the same points; qmc keeps one seed, since its workers share one sequence through the study.
    """
    options = dict(spec.sampler_options)
    seed = options.pop("seed", 0)
    if seed is not None and spec.sampler in ("tpe", "random"):
        seed += worker
    return SAMPLERS[spec.sampler](seed=seed, **options)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    return PRUNERS[spec.pruner](**spec.pruner_options)


def constructor_options(kind: type) -> dict[str, inspect.Parameter]:
    """The named arguments a sampler or pruner class takes (not *args or **kwargs)."""
    return {name: p for name, p in inspect.signature(kind).parameters.items()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def annotation_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def fits_annotation(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a constructor argument; one taking a callable or an object never does."""
    if annotation is inspect.Parameter.empty:
        return isinstance(value, SCALARS)
    for name in (part.strip() for part in annotation_name(annotation).split("|")):
        kinds = _ANNOTATION_TYPES.get(name)
        if kinds is None or (isinstance(value, bool) and name in ("int", "float")):
            continue
        if isinstance(value, kinds):
            return True
    return False
