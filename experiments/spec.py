"""Sweep specs: one YAML file -> a validated, frozen SweepSpec, and the Optuna study it implies.

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
    sampler: grid                  # grid | tpe | random | qmc, or {type: tpe, seed: 0, n_startup_trials: 5}
    pruner: none                   # none | median | hyperband, or {type: median, n_warmup_steps: 10}
    n_trials: 24                   # required unless grid
    objective: {metric: val_psnr, direction: maximize}
    execution: {gpus: auto, trials_per_gpu: 1, cpu_workers: 1}
    storage: runs/<name>/optuna.journal    # a journal file, or an SQLAlchemy URL
    mlflow: {tracking_uri: "sqlite:///mlflow.db"}

Trials. A grid runs every configuration once per seed: its plan is seed-major (every configuration
with the first seed, then with the second, ...), so a sweep stopped halfway has compared every
configuration at least once; `n_trials`, if given, keeps the first n_trials of that plan. A sampled
sweep (tpe, random, qmc) runs n_trials trials, each one sampled configuration with one seed; the seed
is not a dimension the sampler sees (TPE would learn which seed is lucky) but `seeds` cycled by trial
number, so replicates stay balanced.

Grids are queued, not sampled. Optuna's GridSampler cannot express a union of sub-grids and counts a
failed or crashed cell as done, so a grid uses no sampler at all: `prepare_study` enqueues every
(configuration, seed) that has no COMPLETE trial and is not already queued, with the seed and the
configuration's `group_key` as user attrs, and `suggest` reads them back (suggest_categorical returns
the enqueued value). Workers pop queued trials atomically (journal file lock or RDB row update), so
several processes share one queue and each cell x seed runs once. `prepare_study` runs in the
launcher before its workers start; any RUNNING trial then belongs to a dead launch, so it is failed
and its cell queued again. COMPLETE is never repeated. Precondition: one launcher per study at a time.
On RDB storages a heartbeat also fails trials of workers that die mid-sweep and queues them again.
A grid trial's params are its cell, so Optuna's own plots work; each axis is one categorical over all
its values, and Optuna fixes a categorical's choices per study: a resumed study takes more seeds, but
a changed axis or base needs a new name (prepare_study says so).

A grid worker pops until the queue is empty; if another worker took the last trial first, its `ask`
makes a fresh trial that `suggest` refuses with SpecError: fail that trial and stop.

The parser never touches CUDA: `execution.gpus: auto` stays "auto" until `resolve_gpus`, which asks
nvidia-smi or CUDA_VISIBLE_DEVICES, because the launcher process must never initialise CUDA.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import itertools
import json
import logging
import math
import os
import re
import reprlib
import subprocess
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml
from optuna.trial import TrialState

from cvae.config import TrainConfig
from cvae.errors import ConfigError
from experiments.errors import SpecError

TOP_KEYS = ("name", "base", "parameters", "grid", "seeds", "sampler", "pruner", "n_trials",
            "objective", "execution", "storage", "mlflow")
WANDB_KEYS = {"method": "sampler", "metric": "objective", "early_terminate": "pruner", "run_cap": "n_trials"}
PARAMETER_KEYS = ("values", "value", "distribution", "min", "max", "q")
DISTRIBUTIONS = ("int_uniform", "uniform", "log_uniform_values")
# A grid draws nothing: its cells arrive as enqueued fixed params, so the cheapest sampler stands by.
SAMPLERS = {"grid": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler}
PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner}
DIRECTIONS = ("maximize", "minimize")
DEFAULT_SEEDS = (1,)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_GRID_TRIALS = 2000  # validating a cell builds a TrainConfig; a bigger grid is a typo or wants sampling
HEARTBEAT_S = 60
GRACE_S = 120
MAX_RETRY = 3
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
SCALARS = (str, int, float, bool)
log = logging.getLogger(__name__)

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 4, 2


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
    """Where trials run: GPU indices (nvidia-smi's numbering) or "auto", and workers per device."""

    gpus: tuple[int, ...] | str = "auto"
    trials_per_gpu: int = 1
    cpu_workers: int = 1


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. `cells` are the grid's configurations in spec order, () for sampled sweeps."""

    name: str
    source: str
    base: dict[str, Any]
    parameters: tuple[Parameter, ...]
    cells: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...]
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


# ---------------------------------------------------------------- loading


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is a one-line SpecError naming file and key."""
    return parse_spec(_read_yaml(Path(path)), source=str(path))


def parse_spec(raw: Any, source: str = "spec") -> SweepSpec:
    """Validate an already-loaded spec mapping; `source` names it in errors."""
    r = _Reader(source)
    top = r.mapping(raw, "", "a mapping of sweep keys")
    r.known_keys(top, "", TOP_KEYS, "key", hints=WANDB_KEYS)
    if "name" not in top:
        r.fail("name", "required (the Optuna study and MLflow experiment name)")
    name = top["name"]
    if not isinstance(name, str) or not NAME.match(name):
        r.fail("name", f"{_show(name)} is not a safe name (letters, digits, _ - . ; not starting with _ - .)")
    base = _parse_base(r, top.get("base"))
    seeds = _parse_seeds(r, top.get("seeds", list(DEFAULT_SEEDS)))
    sampler, sampler_options = _parse_component(r, "sampler", top.get("sampler", "grid"), SAMPLERS)
    pruner, pruner_options = _parse_component(r, "pruner", top.get("pruner", "none"), PRUNERS)
    grid = sampler == "grid"
    if grid and pruner != "none":
        r.fail("pruner", "a grid sweep cannot use a pruner: a pruned cell would leave a hole in the grid "
                         "(remove it, or sample with tpe, random or qmc)")
    canon = _Canon(r, base)
    parameters = _parse_parameters(r, top.get("parameters"), base, canon, grid)
    if grid:
        cells = _grid_cells(r, parameters, top.get("grid"), base, seeds, canon)
    else:
        if "grid" in top:
            r.fail("grid", f"sub-grids need sampler: grid, not {sampler}")
        if not parameters:
            r.fail("parameters", f"a {sampler} sweep needs at least one parameter to sample")
        cells = ()
    n_trials = _parse_n_trials(r, top, len(cells) * len(seeds), len(seeds), grid, sampler)
    metric, direction = _parse_objective(r, top.get("objective"))
    spec = SweepSpec(
        name=name, source=source, base=base, parameters=parameters, cells=cells, seeds=seeds,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        n_trials=n_trials, metric=metric, direction=direction,
        execution=_parse_execution(r, top.get("execution")),
        storage=_parse_storage(r, top.get("storage"), name),
        tracking_uri=_parse_mlflow(r, top.get("mlflow")),
    )
    _check_constructs(r, "sampler", lambda: make_sampler(spec))
    _check_constructs(r, "pruner", lambda: make_pruner(spec))
    return spec


class _SpecLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_show(key)} given twice", key_node.start_mark)
                seen.add(key)
            except TypeError:
                pass  # an unhashable key; the base class says so
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if not path.is_file():
        raise SpecError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read ({_one_line(err)})") from None
    try:
        raw = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(f"{path}: not valid YAML ({where}{_one_line(err.problem or err)})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        # ValueError: PyYAML builds e.g. `2020-13-45` as a date and lets datetime's error through.
        raise SpecError(f"{path}: not valid YAML ({_one_line(err)})") from None
    if raw is None:
        raise SpecError(f"{path}: empty; a spec is a mapping with at least a name")
    return raw


class _Reader:
    """Type checks that fail with '<source>: <key path>: <what is wrong>'."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, what: str) -> typing.NoReturn:
        where = f"{self.source}: {path}: " if path else f"{self.source}: "
        raise SpecError(_one_line(where + what))

    def mapping(self, value: Any, path: str, what: str = "a mapping") -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"expected {what}, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(_join(path, _show(key)), "keys must be strings")
        return value

    def known_keys(self, value: dict, path: str, known: typing.Iterable[str], what: str,
                   hints: Mapping[str, str] | None = None) -> None:
        known = list(known)
        for key in value:
            if key in known:
                continue
            shown = _join(path, key if key.isprintable() and key.strip() else repr(key))
            if hints and key in hints:
                self.fail(shown, f"unknown {what} (this is W&B's name; here it is {hints[key]!r})")
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                self.fail(shown, f"unknown {what} (did you mean {close[0]}?)")
            if len(known) > 15:
                self.fail(shown, f"unknown {what} (none of the {len(known)} is close)")
            self.fail(shown, f"unknown {what} (one of {', '.join(known) or 'none'})")

    def integer(self, value: Any, path: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str) -> float:
        """A finite number; numeric strings too, since YAML 1.1 reads `1e-4` (no dot) as a string."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(path, f"expected a number, got {_show(value)}")
        try:
            number = float(value)
        except (ValueError, OverflowError):
            self.fail(path, f"expected a number, got {_show(value)}")
        if not math.isfinite(number):
            self.fail(path, f"expected a finite number, got {_show(value)}")
        return number


class _Canon:
    """TrainConfig's own reading of one value, so 1 and 1.0 (or '2,5' and '2, 5') are one value."""

    def __init__(self, r: _Reader, base: dict[str, Any]):
        self.r, self.base, self.memo = r, base, {}

    def __call__(self, name: str, value: Any, path: str) -> Any:
        if isinstance(value, (list, tuple, dict)) or not isinstance(value, SCALARS):
            hint = " (write a list value as a string, e.g. '2,5')" if isinstance(value, (list, tuple)) else ""
            self.r.fail(path, f"{_show(value)} is not a single value{hint}")
        memo_key = (name, type(value), value)
        if memo_key not in self.memo:
            cfg = _build_config(self.r, path, {**self.base, name: value})
            self.memo[memo_key] = _optuna_value(getattr(cfg, name))
        return self.memo[memo_key]


def _parse_base(r: _Reader, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    base = r.mapping(raw, "base", "a mapping of TrainConfig overrides")
    _check_config_keys(r, base, "base")
    for key in base:
        if isinstance(base[key], (list, tuple)) and not _is_tuple_field(key):
            r.fail(_join("base", key), f"{_show(base[key])} is a list; a sweep over values belongs in parameters")
    try:
        cfg = TrainConfig.from_dict(base)
    except (ConfigError, OverflowError) as err:
        key = re.match(r"\w*", str(err)).group()  # TrainConfig's messages start with the key
        r.fail(_join("base", key) if key in base else "base", str(err))
    return {key: _plain(getattr(cfg, key)) for key in base}


def _parse_seeds(r: _Reader, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        r.fail("seeds", f"expected a non-empty list of integers, e.g. [1, 2, 3], got {_show(raw)}")
    seeds = tuple(r.integer(seed, f"seeds[{i}]", 0) for i, seed in enumerate(raw))
    if len(set(seeds)) != len(seeds):
        r.fail("seeds", f"{list(seeds)} repeats a seed")
    return seeds


def _parse_component(r: _Reader, section: str, raw: Any, kinds: Mapping[str, type]) -> tuple[str, dict]:
    """`tpe` or `{type: tpe, option: value}`; options must be constructor arguments YAML can give."""
    if isinstance(raw, str):
        kind, options = raw, {}
    else:
        raw = r.mapping(raw, section, f"one of {', '.join(kinds)} or a mapping with 'type'")
        if "type" not in raw:
            r.fail(section, f"a mapping needs 'type' (one of {', '.join(kinds)})")
        kind, options = raw["type"], {k: v for k, v in raw.items() if k != "type"}
    if not isinstance(kind, str) or kind not in kinds:
        r.fail(section if isinstance(raw, str) else _join(section, "type"),
               f"unknown {_show(kind)} (one of {', '.join(kinds)})")
    signature = inspect.signature(kinds[kind])
    accepted = {n: p for n, p in signature.parameters.items()
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    r.known_keys(options, section, accepted, f"option of {kind}")
    for option, value in options.items():
        if not _fits_annotation(value, accepted[option].annotation):
            r.fail(_join(section, option), f"{_show(value)} does not fit {kind}'s {option} "
                                           f"({_annotation_name(accepted[option].annotation)})")
    return kind, dict(options)


def _parse_parameters(r: _Reader, raw: Any, base: dict, canon: _Canon, grid: bool) -> tuple[Parameter, ...]:
    if raw is None:
        return ()
    params = r.mapping(raw, "parameters", "a mapping of TrainConfig key -> values or distribution")
    _check_config_keys(r, params, "parameters")
    parsed = []
    for name, entry in params.items():
        path = _join("parameters", name)
        if name in base:
            r.fail(path, "also set in base; a swept key takes its values from parameters only")
        if isinstance(entry, list):
            entry = {"values": entry}
        if not isinstance(entry, dict):
            r.fail(path, f"expected {{values: [...]}}, {{value: x}} or {{distribution: ..., min, max}}, "
                         f"got {_show(entry)} (a fixed value belongs in base)")
        r.mapping(entry, path)
        r.known_keys(entry, path, PARAMETER_KEYS, "parameter key")
        given = [k for k in ("values", "value", "distribution") if k in entry]
        if len(given) != 1:
            r.fail(path, "give exactly one of values, value or distribution")
        if "distribution" in entry:
            parsed.append(_parse_distribution(r, name, entry, path, canon, grid))
            continue
        for key in ("min", "max", "q"):
            if key in entry:
                r.fail(_join(path, key), f"only a distribution takes {key}")
        values = entry["values"] if "values" in entry else [entry["value"]]
        values_path = _join(path, "values") if "values" in entry else _join(path, "value")
        parsed.append(Parameter(name, _parse_values(r, name, values, values_path, canon)))
    return tuple(parsed)


def _parse_values(r: _Reader, name: str, raw: Any, path: str, canon: _Canon) -> tuple[Any, ...]:
    listed = isinstance(raw, list)
    raw = raw if listed else [raw]
    if not raw:
        r.fail(path, "empty; give at least one value")
    values: list[Any] = []
    for i, value in enumerate(raw):
        item_path = f"{path}[{i}]" if listed else path
        value = canon(name, value, item_path)
        if value in values:
            r.fail(item_path, f"{_show(raw[i])} repeats a value (as {name} it is {_show(value)})")
        values.append(value)
    return tuple(values)


def _parse_distribution(r: _Reader, name: str, entry: dict, path: str, canon: _Canon, grid: bool) -> Parameter:
    dist = entry["distribution"]
    if dist not in DISTRIBUTIONS:
        r.fail(_join(path, "distribution"), f"unknown {_show(dist)} (one of {', '.join(DISTRIBUTIONS)})")
    if grid:
        r.fail(path, "a grid sweep needs 'values', not a continuous distribution "
                     "(or sample it: sampler: tpe, random or qmc)")
    kind = _field_type(name)
    if kind not in (int, float):
        r.fail(_join(path, "distribution"), f"{name} is not a number; list its choices in values")
    if dist != "int_uniform" and kind is int:
        r.fail(_join(path, "distribution"), f"{dist} gives floats but {name} is an integer (use int_uniform)")
    for key in ("min", "max"):
        if key not in entry:
            r.fail(path, f"{dist} needs min and max")
    if dist == "int_uniform":
        low, high = r.integer(entry["min"], _join(path, "min")), r.integer(entry["max"], _join(path, "max"))
        step = r.integer(entry["q"], _join(path, "q"), 1) if "q" in entry else None
    else:
        low, high = r.number(entry["min"], _join(path, "min")), r.number(entry["max"], _join(path, "max"))
        step = r.number(entry["q"], _join(path, "q")) if "q" in entry else None
    if low > high:
        r.fail("", f"{_join(path, 'min')} ({_show(low)}) > max ({_show(high)})")
    if dist == "log_uniform_values":
        if low <= 0:
            r.fail(_join(path, "min"), f"log_uniform_values needs min > 0, got {_show(low)}")
        if step is not None:
            r.fail(_join(path, "q"), "log_uniform_values cannot have a step")
    if step is not None:
        if step <= 0:
            r.fail(_join(path, "q"), f"must be > 0, got {_show(step)}")
        if isinstance(step, int):
            off_grid = (high - low) % step != 0
        else:
            ratio = (high - low) / step
            off_grid = not math.isfinite(ratio) or abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio)
        if off_grid:
            r.fail(_join(path, "q"), f"max - min ({_show(high - low)}) is not a multiple of q ({_show(step)})")
    canon(name, low, _join(path, "min"))
    canon(name, high, _join(path, "max"))
    return Parameter(name, (), dist, low, high, step)


def _grid_cells(r: _Reader, parameters: tuple[Parameter, ...], raw: Any, base: dict,
                seeds: tuple[int, ...], canon: _Canon) -> tuple[dict[str, Any], ...]:
    """Every configuration: `parameters` crossed with each sub-grid of `grid`, in spec order."""
    axes = [(p.name, p.values) for p in parameters]
    subgrids: list[tuple[str, list[tuple[str, tuple]]]] = []
    if raw is None:
        subgrids.append(("parameters", []))
    else:
        if not isinstance(raw, list) or not raw:
            r.fail("grid", f"expected a non-empty list of sub-grids (mappings of key -> values), got {_show(raw)}")
        for i, sub in enumerate(raw):
            path = f"grid[{i}]"
            sub = r.mapping(sub, path, "a mapping of TrainConfig key -> value or list of values")
            _check_config_keys(r, sub, path)
            sub_axes = []
            for name, values in sub.items():
                if name in base:
                    r.fail(_join(path, name), "also set in base; a swept key takes its values from the grid only")
                if any(name == axis for axis, _ in axes):
                    r.fail(_join(path, name), "also in parameters, which every sub-grid is crossed with")
                sub_axes.append((name, _parse_values(r, name, values, _join(path, name), canon)))
            subgrids.append((path, sub_axes))
    n_cells = sum(math.prod(len(v) for _, v in axes + sub_axes) for _, sub_axes in subgrids)
    if n_cells * len(seeds) > MAX_GRID_TRIALS:
        r.fail("grid" if raw is not None else "parameters",
               f"{n_cells} configurations x {len(seeds)} seeds = {n_cells * len(seeds)} trials, more than "
               f"{MAX_GRID_TRIALS}; sample the space (sampler: random) or split the sweep")
    cells: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path, sub_axes in subgrids:
        names = [name for name, _ in axes + sub_axes]
        for combo in itertools.product(*(values for _, values in axes + sub_axes)):
            cell = dict(zip(names, combo))
            label = f"{path} ({group_label(cell)})"
            cfg = _build_config(r, label, {**base, **cell})
            identity = json.dumps(cfg.to_dict(), sort_keys=True)
            if identity in seen:
                r.fail(label, f"the same configuration as {seen[identity]}")
            seen[identity] = label
            cells.append(cell)
    return tuple(cells)


def _parse_n_trials(r: _Reader, top: dict, grid_trials: int, n_seeds: int, grid: bool, sampler: str) -> int:
    if "n_trials" not in top:
        if not grid:
            r.fail("n_trials", f"required for sampler {sampler} "
                               "(the number of trials, each one configuration x one seed)")
        return grid_trials
    n_trials = r.integer(top["n_trials"], "n_trials", 1)
    if grid and n_trials > grid_trials:
        r.fail("n_trials", f"{n_trials} is more than the grid's {grid_trials // n_seeds} configurations "
                           f"x {n_seeds} seeds = {grid_trials} trials")
    return n_trials


def _parse_objective(r: _Reader, raw: Any) -> tuple[str, str]:
    if raw is None:
        return "val_psnr", "maximize"
    if isinstance(raw, str):
        raw = {"metric": raw}
    objective = r.mapping(raw, "objective", "a metric name or {metric: ..., direction: maximize|minimize}")
    r.known_keys(objective, "objective", ("metric", "direction"), "key")
    metric = objective.get("metric")
    if not isinstance(metric, str) or not metric:
        r.fail("objective.metric", f"expected a metric name, got {_show(metric)}")
    direction = objective.get("direction", _usual_direction(metric))
    if direction is None:
        r.fail("objective", f"give the direction for {metric!r} "
                            f"({{metric: {metric}, direction: maximize|minimize}})")
    if direction not in DIRECTIONS:
        r.fail("objective.direction", f"unknown {_show(direction)} (one of {', '.join(DIRECTIONS)})")
    return metric, direction


def _usual_direction(metric: str) -> str | None:
    if any(word in metric for word in ("psnr", "ssim")):
        return "maximize"
    if any(word in metric for word in ("loss", "mse", "lpips")):
        return "minimize"
    return None


def _parse_execution(r: _Reader, raw: Any) -> Execution:
    if raw is None:
        return Execution()
    execution = r.mapping(raw, "execution")
    r.known_keys(execution, "execution", [f.name for f in dataclasses.fields(Execution)], "key")
    gpus = execution.get("gpus", "auto")
    if gpus != "auto":
        if not isinstance(gpus, list):
            r.fail("execution.gpus", "expected auto or a list of GPU indices (e.g. [0, 1], or [] for CPU), "
                                     f"got {_show(gpus)}")
        gpus = tuple(r.integer(g, f"execution.gpus[{i}]", 0) for i, g in enumerate(gpus))
        if len(set(gpus)) != len(gpus):
            r.fail("execution.gpus", f"{list(gpus)} repeats a GPU (use trials_per_gpu to share one)")
    return Execution(
        gpus=gpus,
        trials_per_gpu=r.integer(execution.get("trials_per_gpu", 1), "execution.trials_per_gpu", 1),
        cpu_workers=r.integer(execution.get("cpu_workers", 1), "execution.cpu_workers", 1),
    )


def _parse_storage(r: _Reader, raw: Any, name: str) -> str:
    if raw is None:
        return str(Path("runs") / name / "optuna.journal")
    if not isinstance(raw, str) or not raw.strip():
        r.fail("storage", f"expected a journal file path or an SQLAlchemy URL, got {_show(raw)}")
    if "://" in raw and not URL.match(raw):
        r.fail("storage", f"{raw!r} is neither a file path nor a URL like sqlite:///runs/x.db")
    return raw


def _parse_mlflow(r: _Reader, raw: Any) -> str:
    if raw is None:
        return DEFAULT_TRACKING_URI
    mlflow = r.mapping(raw, "mlflow")
    r.known_keys(mlflow, "mlflow", ("tracking_uri",), "key")
    uri = mlflow.get("tracking_uri", DEFAULT_TRACKING_URI)
    if not isinstance(uri, str) or not uri.strip():
        r.fail("mlflow.tracking_uri", f"expected a URI such as {DEFAULT_TRACKING_URI}, got {_show(uri)}")
    return uri


def _check_config_keys(r: _Reader, values: dict, path: str) -> None:
    if "seed" in values:
        r.fail(_join(path, "seed"), "seeds are not swept or fixed here; list them in the top-level 'seeds'")
    r.known_keys(values, path, [f.name for f in dataclasses.fields(TrainConfig)], "TrainConfig key")


def _check_constructs(r: _Reader, section: str, build: typing.Callable[[], Any]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build()
    except Exception as err:  # noqa: BLE001 - Optuna's constructors check values with assorted types
        r.fail(section, f"Optuna refused the options ({_one_line(err)})")


def _build_config(r: _Reader, path: str, values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except (ConfigError, OverflowError) as err:  # OverflowError: a float field given a 400-digit integer
        r.fail(path, str(err))


# ---------------------------------------------------------------- plans and configurations


def grid_cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every configuration of a grid in spec order, without seed; empty for a sampled sweep."""
    return [dict(cell) for cell in spec.cells]


def trial_plan(spec: SweepSpec) -> list[tuple[dict[str, Any], int]]:
    """Every (configuration, seed) to run, seed-major; a sampled sweep shows its distributions."""
    if spec.is_grid:
        return [(dict(cell), seed) for seed in spec.seeds for cell in spec.cells][:spec.n_trials]
    sampled = {p.name: _describe(p) for p in spec.parameters}
    return [(dict(sampled), spec.seeds[i % len(spec.seeds)]) for i in range(spec.n_trials)]


def train_config(spec: SweepSpec, overrides: Mapping[str, Any], seed: int) -> TrainConfig:
    """The TrainConfig of one trial: defaults, then base, then the trial's overrides and seed."""
    try:
        return TrainConfig.from_dict({**spec.base, **overrides, "seed": seed})
    except (ConfigError, OverflowError) as err:
        raise SpecError(f"{spec.source}: configuration {group_label(overrides)}, seed {seed}: "
                        f"{_one_line(err)}") from None


def group_key(overrides: Mapping[str, Any]) -> str:
    """A configuration's identity: 10 hex digits of the sorted swept values, seed excluded."""
    swept = {key: value for key, value in overrides.items() if key != "seed"}
    text = json.dumps(swept, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def group_label(overrides: Mapping[str, Any]) -> str:
    """A readable configuration name, e.g. `kl_anneal_type=Cyclical, kl_anneal_ratio=0.5`."""
    parts = [f"{key}={_format(value)}" for key, value in overrides.items() if key != "seed"]
    return ", ".join(parts) or "base"


# ---------------------------------------------------------------- Optuna


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


def make_storage(spec: SweepSpec) -> optuna.storages.BaseStorage:
    """A journal file (parent folders created), or an RDB whose heartbeat fails and re-queues dead trials."""
    if URL.match(spec.storage):
        if spec.storage.startswith("sqlite:///") and ":memory:" not in spec.storage:
            Path(spec.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and said by every worker
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                return optuna.storages.RDBStorage(spec.storage, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, heartbeat_stale_trial_callback=retry)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy and missing DB drivers share no base class
            raise SpecError(f"{spec.source}: storage: cannot open {spec.storage!r} ({_one_line(err)})") from None
    path = Path(spec.storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def open_study(spec: SweepSpec, worker: int = 0) -> optuna.Study:
    """Create or load the spec's study with its sampler and pruner; `worker` offsets the sampler seed."""
    study = optuna.create_study(
        storage=make_storage(spec), sampler=make_sampler(spec, worker), pruner=make_pruner(spec),
        study_name=spec.name, direction=spec.direction, load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise SpecError(f"{spec.source}: objective.direction: study {spec.name!r} in {spec.storage} was created "
                        f"to {study.direction.name.lower()}; give the sweep a new name")
    return study


def suggest(spec: SweepSpec, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
    """The overrides and seed of a trial: a queued grid cell, or sampled values and the cycled seed."""
    if spec.is_grid:
        return _suggest_cell(spec, trial)
    overrides: dict[str, Any] = {}
    for p in spec.parameters:
        if p.values:
            overrides[p.name] = trial.suggest_categorical(p.name, p.values)
        elif p.distribution == "int_uniform":
            overrides[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1)
        else:
            overrides[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step,
                                                    log=p.distribution == "log_uniform_values")
    # A re-queued trial (heartbeat retry) keeps its seed; a fresh one takes the next in the cycle.
    seed = trial.user_attrs.get("seed", spec.seeds[trial.number % len(spec.seeds)])
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("group", group_key(overrides))
    return overrides, seed


def _suggest_cell(spec: SweepSpec, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
    cells = {group_key(cell): cell for cell in spec.cells}
    cell = cells.get(trial.user_attrs.get("group"))
    seed = trial.user_attrs.get("seed")
    if cell is None or seed not in spec.seeds:
        raise SpecError(f"{spec.source}: trial {trial.number} is not a queued cell of this grid "
                        "(the queue was empty, or the spec changed since prepare_study queued it)")
    choices = _axis_choices(spec)
    overrides = {name: trial.suggest_categorical(name, choices[name]) for name in cell}
    return overrides, seed


def _axis_choices(spec: SweepSpec) -> dict[str, tuple[Any, ...]]:
    """Each grid axis' values over all cells: one categorical per name, as Optuna requires of a study."""
    choices: dict[str, list[Any]] = {}
    for cell in spec.cells:
        for name, value in cell.items():
            if value not in choices.setdefault(name, []):
                choices[name].append(value)
    return {name: tuple(values) for name, values in choices.items()}


def missing_cells(spec: SweepSpec, study: optuna.Study) -> list[tuple[dict[str, Any], int]]:
    """The grid's plan minus its COMPLETE trials, matched by configuration and seed."""
    if not spec.is_grid:
        raise ValueError("missing_cells needs a grid sweep; a sampled one has remaining_trials")
    done = {_cell_of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return [(cell, seed) for cell, seed in trial_plan(spec) if (group_key(cell), seed) not in done]


def _cell_of(trial: optuna.trial.FrozenTrial) -> tuple[str, Any]:
    """(group key, seed) of a grid trial; the queued `group` attr, since an objective may suggest more params."""
    params = trial.system_attrs.get("fixed_params", trial.params)
    return trial.user_attrs.get("group", group_key(params)), trial.user_attrs.get("seed")


def remaining_trials(spec: SweepSpec, study: optuna.Study) -> int:
    """How many trials a (re)launch still has to finish."""
    if spec.is_grid:
        return len(missing_cells(spec, study))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max(0, spec.n_trials - len(finished))


def prepare_study(spec: SweepSpec, study: optuna.Study) -> int:
    """Ready a study for a (re)launch before any worker starts; returns the number of trials to run.

    Fails the RUNNING trials of a dead launch, and for a grid queues each missing cell x seed that
    is not queued yet. Refuses a study run with another base, or with categorical choices Optuna
    cannot change (adding seeds is fine: they are not params).
    """
    _check_base(spec, study)
    _check_distributions(spec, study)
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study.tell(trial.number, state=TrialState.FAIL)
    if orphans:
        log.info("study %s: failed %d trials left RUNNING by an earlier launch", spec.name, len(orphans))
    if not spec.is_grid:
        return remaining_trials(spec, study)
    queued: dict[tuple[str, Any], int] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        queued[_cell_of(trial)] = queued.get(_cell_of(trial), 0) + 1
    added = 0
    for cell, seed in missing_cells(spec, study):
        key = (group_key(cell), seed)
        if queued.get(key):
            queued[key] -= 1
            continue
        study.enqueue_trial(cell, user_attrs={"seed": seed, "group": group_key(cell)})
        added += 1
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    log.info("study %s: queued %d trials, %d waiting in all", spec.name, added, waiting)
    return waiting


def _check_base(spec: SweepSpec, study: optuna.Study) -> None:
    stored = study.user_attrs.get("sweep_base")
    base = json.loads(json.dumps(spec.base))
    if stored is None:
        study.set_user_attr("sweep_base", base)
    elif stored != base:
        changed = sorted(k for k in set(stored) | set(base) if stored.get(k) != base.get(k))
        raise SpecError(f"{spec.source}: base: study {spec.name!r} was run with another base "
                        f"(differs at {', '.join(changed)}); give the sweep a new name")


def _check_distributions(spec: SweepSpec, study: optuna.Study) -> None:
    """Optuna refuses, trial by trial, a param whose choices or log scale differ from earlier trials."""
    if spec.is_grid:
        wanted = {name: ("choices", values) for name, values in _axis_choices(spec).items()}
    else:
        wanted = {p.name: ("choices", p.values) if p.values else ("log", p.distribution == "log_uniform_values")
                  for p in spec.parameters}
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name not in wanted:
                continue
            kind, new = wanted.pop(name)
            if isinstance(old, optuna.distributions.CategoricalDistribution):
                was = ("choices", tuple(old.choices))
            else:
                was = ("log", bool(getattr(old, "log", False)))
            if was != (kind, new):
                raise SpecError(f"{spec.source}: {name}: study {spec.name!r} was run with {was[0]} {_show(was[1])}, "
                                f"which Optuna cannot change to {kind} {_show(new)}; give the sweep a new name")
        if not wanted:
            return


# ---------------------------------------------------------------- devices


def resolve_gpus(execution: Execution) -> list[int]:
    """GPU indices for `execution.gpus`, resolving "auto" without initialising CUDA.

    "auto" is CUDA_VISIBLE_DEVICES when set (CUDA's rules: a negative index ends the list; UUIDs
    are looked up in `nvidia-smi -L`), else every GPU nvidia-smi lists; no driver means no GPUs.
    Indices follow nvidia-smi (PCI bus order); workers should set CUDA_DEVICE_ORDER=PCI_BUS_ID.
    """
    if execution.gpus != "auto":
        return list(execution.gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [index for index, _ in _nvidia_smi_gpus()]
    gpus: list[int] = []
    listed: list[tuple[int, str]] | None = None
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            break
        if re.fullmatch(r"-?\d+", entry):
            if int(entry) < 0:
                break
            gpus.append(int(entry))
            continue
        listed = _nvidia_smi_gpus() if listed is None else listed
        matches = [index for index, uuid in listed if entry and uuid.startswith(entry)]
        if len(matches) != 1:
            raise SpecError(f"execution.gpus: auto cannot map CUDA_VISIBLE_DEVICES entry {entry!r} to a GPU "
                            "index; list the GPUs in the spec (execution.gpus: [0, 1])")
        gpus.append(matches[0])
    return gpus


def worker_gpus(execution: Execution, gpus: list[int]) -> list[int | None]:
    """One entry per worker slot: its GPU, round-robin so a short queue spreads over GPUs; None = CPU."""
    if not gpus:
        return [None] * execution.cpu_workers
    return [gpus[i % len(gpus)] for i in range(len(gpus) * execution.trials_per_gpu)]


def _nvidia_smi_gpus() -> list[tuple[int, str]]:
    """(index, UUID) of each GPU nvidia-smi lists; [] where there is no driver or no GPU."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    found = re.findall(r"^GPU (\d+):.*?\(UUID: ([^)\s]+)\)", done.stdout, flags=re.MULTILINE)
    return [(int(index), uuid) for index, uuid in found]


# ---------------------------------------------------------------- small helpers


def _field_type(name: str) -> Any:
    return typing.get_type_hints(TrainConfig)[name]


def _is_tuple_field(name: str) -> bool:
    return typing.get_origin(_field_type(name)) is tuple


_ANNOTATION_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "None": type(None)}


def _annotation_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _fits_annotation(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a constructor argument; one taking a callable or an object never does."""
    if annotation is inspect.Parameter.empty:
        return isinstance(value, SCALARS)
    for name in (part.strip() for part in _annotation_name(annotation).split("|")):
        kinds = _ANNOTATION_TYPES.get(name)
        if kinds is None or (isinstance(value, bool) and name in ("int", "float")):
            continue
        if isinstance(value, kinds):
            return True
    return False


def _optuna_value(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a tuple field's value becomes TrainConfig's '2,5' form."""
    return ",".join(str(item) for item in value) if isinstance(value, tuple) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return _short.repr(value)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {_show(value)}"


def _one_line(err: Any) -> str:
    return " ".join(str(err).split())
