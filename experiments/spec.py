"""Sweep specs: one YAML file -> a validated, frozen SweepSpec, its plan of trials and their TrainConfigs.

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
number, so replicates stay balanced. How a plan becomes an Optuna study is `experiments.study`.
With adaptive seeds the plan holds the initial seeds; the rounds after them depend on the trials' values.

The parser never touches CUDA: `execution.gpus: auto` stays "auto" until `workers.resolve_gpus`, and
`execution.trials_per_gpu: auto` until the launch measures a trial's memory (`experiments.gpu_memory`).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import itertools
import json
import math
import re
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml

from cvae.config import TrainConfig, UniqueKeyLoader
from cvae.errors import ConfigError
from experiments.errors import SpecError, one_line, show
from experiments.schema import OBJECTIVES

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
# What a trial can return, with its usual direction (experiments.schema declares them).
METRICS = OBJECTIVES
DEFAULT_SEEDS = (1,)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ADAPTIVE_KEYS = ("initial", "max", "until")
UNTIL = ("separated",)  # what ends a configuration's rounds (besides max): its interval against the best excludes 0
MIN_INITIAL_SEEDS = 2  # a paired t interval needs 2 pairs
MAX_GRID_TRIALS = 2000  # validating a cell builds a TrainConfig; a bigger grid is a typo or wants sampling
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
SCALARS = (str, int, float, bool)


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
        r.fail("name", f"{show(name)} is not a safe name (letters, digits, _ - . ; not starting with _ - .)")
    base = _parse_base(r, top.get("base"))
    seeds, adaptive = _parse_seeds(r, top.get("seeds", list(DEFAULT_SEEDS)))
    sampler, sampler_options = _parse_component(r, "sampler", top.get("sampler", "grid"), SAMPLERS)
    pruner, pruner_options = _parse_component(r, "pruner", top.get("pruner", "none"), PRUNERS)
    grid = sampler == "grid"
    if grid and pruner != "none":
        r.fail("pruner", "a grid sweep cannot use a pruner: a pruned cell would leave a hole in the grid "
                         "(remove it, or sample with tpe, random or qmc)")
    if adaptive and not grid:
        r.fail("seeds", f"adaptive seeds need sampler: grid, not {sampler} (a sampled sweep cycles a list of seeds)")
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
    if adaptive:
        _check_adaptive(r, top, cells)
    n_seeds = adaptive.initial if adaptive else len(seeds)
    n_trials = _parse_n_trials(r, top, len(cells) * n_seeds, n_seeds, grid, sampler)
    metric, direction = _parse_objective(r, top.get("objective"))
    spec = SweepSpec(
        name=name, source=source, base=base, parameters=parameters, cells=cells, seeds=seeds, adaptive=adaptive,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        n_trials=n_trials, metric=metric, direction=direction,
        execution=_parse_execution(r, top.get("execution")),
        storage=_parse_storage(r, top.get("storage"), name),
        tracking_uri=_parse_mlflow(r, top.get("mlflow")),
    )
    _check_constructs(r, "sampler", lambda: SAMPLERS[sampler](**sampler_options))
    _check_constructs(r, "pruner", lambda: PRUNERS[pruner](**pruner_options))
    return spec


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if not path.is_file():
        raise SpecError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read ({one_line(err)})") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - SafeConstructor only (tests/test_safety.py)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(f"{path}: not valid YAML ({where}{one_line(err.problem or err)})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        # ValueError: PyYAML builds e.g. `2020-13-45` as a date and lets datetime's error through.
        raise SpecError(f"{path}: not valid YAML ({one_line(err)})") from None
    if raw is None:
        raise SpecError(f"{path}: empty; a spec is a mapping with at least a name")
    return raw


class _Reader:
    """Type checks that fail with '<source>: <key path>: <what is wrong>'."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, what: str) -> typing.NoReturn:
        where = f"{self.source}: {path}: " if path else f"{self.source}: "
        raise SpecError(one_line(where + what))

    def mapping(self, value: Any, path: str, what: str = "a mapping") -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"expected {what}, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(_join(path, show(key)), "keys must be strings")
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
            self.fail(path, f"expected an integer, got {show(value)}")
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str) -> float:
        """A finite number; numeric strings too, since YAML 1.1 reads `1e-4` (no dot) as a string."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(path, f"expected a number, got {show(value)}")
        try:
            number = float(value)
        except (ValueError, OverflowError):
            self.fail(path, f"expected a number, got {show(value)}")
        if not math.isfinite(number):
            self.fail(path, f"expected a finite number, got {show(value)}")
        return number


class _Canon:
    """TrainConfig's own reading of one value, so 1 and 1.0 (or '2,5' and '2, 5') are one value."""

    def __init__(self, r: _Reader, base: dict[str, Any]):
        self.r, self.base, self.memo = r, base, {}

    def __call__(self, name: str, value: Any, path: str) -> Any:
        if isinstance(value, (list, tuple, dict)) or not isinstance(value, SCALARS):
            hint = " (write a list value as a string, e.g. '2,5')" if isinstance(value, (list, tuple)) else ""
            self.r.fail(path, f"{show(value)} is not a single value{hint}")
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
            r.fail(_join("base", key), f"{show(base[key])} is a list; a sweep over values belongs in parameters")
    try:
        cfg = TrainConfig.from_dict(base)
    except (ConfigError, OverflowError) as err:
        key = re.match(r"\w*", str(err)).group()  # TrainConfig's messages start with the key
        r.fail(_join("base", key) if key in base else "base", str(err))
    return {key: _plain(getattr(cfg, key)) for key in base}


def _parse_seeds(r: _Reader, raw: Any) -> tuple[tuple[int, ...], AdaptiveSeeds | None]:
    """A list of seeds, or adaptive seeds as the seeds 1..max they may use."""
    if isinstance(raw, dict):
        adaptive = _parse_adaptive_seeds(r, raw)
        return tuple(range(1, adaptive.max + 1)), adaptive
    if not isinstance(raw, list) or not raw:
        r.fail("seeds", f"expected a non-empty list of integers, e.g. [1, 2, 3], or adaptive seeds "
                        f"{{initial: 3, max: 10, until: separated}}, got {show(raw)}")
    seeds = tuple(r.integer(seed, f"seeds[{i}]", 0) for i, seed in enumerate(raw))
    if len(set(seeds)) != len(seeds):
        r.fail("seeds", f"{list(seeds)} repeats a seed")
    return seeds, None


def _parse_adaptive_seeds(r: _Reader, raw: dict) -> AdaptiveSeeds:
    r.mapping(raw, "seeds")
    r.known_keys(raw, "seeds", ADAPTIVE_KEYS, "key of adaptive seeds")
    missing = [key for key in ADAPTIVE_KEYS if key not in raw]
    if missing:
        r.fail("seeds", f"adaptive seeds need {' and '.join(missing)} (e.g. {{initial: 3, max: 10, until: separated}})")
    initial = r.integer(raw["initial"], "seeds.initial")
    if initial < MIN_INITIAL_SEEDS:
        r.fail("seeds.initial", f"must be >= {MIN_INITIAL_SEEDS} (a paired t interval needs {MIN_INITIAL_SEEDS} "
                                f"seeds of each configuration), got {initial}")
    most = r.integer(raw["max"], "seeds.max")
    if most < initial:
        r.fail("seeds.max", f"{most} is less than seeds.initial ({initial})")
    if raw["until"] not in UNTIL:
        r.fail("seeds.until", f"unknown {show(raw['until'])} (one of {', '.join(UNTIL)})")
    return AdaptiveSeeds(initial=initial, max=most, until=raw["until"])


def _check_adaptive(r: _Reader, top: dict, cells: tuple[dict[str, Any], ...]) -> None:
    """Adaptive seeds compare a grid's configurations with its best, and decide for themselves how many trials run."""
    if len(cells) < 2:
        r.fail("seeds", f"adaptive seeds compare configurations and this grid has {len(cells)}; list its seeds instead")
    if "n_trials" in top:
        r.fail("n_trials", "adaptive seeds run as many trials as their rounds need (at most configurations x "
                           "seeds.max); remove n_trials")


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
               f"unknown {show(kind)} (one of {', '.join(kinds)})")
    signature = inspect.signature(kinds[kind])
    accepted = {n: p for n, p in signature.parameters.items()
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    r.known_keys(options, section, accepted, f"option of {kind}")
    for option, value in options.items():
        if not _fits_annotation(value, accepted[option].annotation):
            r.fail(_join(section, option), f"{show(value)} does not fit {kind}'s {option} "
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
                         f"got {show(entry)} (a fixed value belongs in base)")
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
    values: dict[Any, None] = {}  # ordered, and a repeat is found in O(1): a long list stays linear
    for i, value in enumerate(raw):
        item_path = f"{path}[{i}]" if listed else path
        value = canon(name, value, item_path)
        if value in values:
            r.fail(item_path, f"{show(raw[i])} repeats a value (as {name} it is {show(value)})")
        values[value] = None
    return tuple(values)


def _parse_distribution(r: _Reader, name: str, entry: dict, path: str, canon: _Canon, grid: bool) -> Parameter:
    dist = entry["distribution"]
    if dist not in DISTRIBUTIONS:
        r.fail(_join(path, "distribution"), f"unknown {show(dist)} (one of {', '.join(DISTRIBUTIONS)})")
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
        r.fail("", f"{_join(path, 'min')} ({show(low)}) > max ({show(high)})")
    if dist == "log_uniform_values":
        if low <= 0:
            r.fail(_join(path, "min"), f"log_uniform_values needs min > 0, got {show(low)}")
        if step is not None:
            r.fail(_join(path, "q"), "log_uniform_values cannot have a step")
    if step is not None:
        if step <= 0:
            r.fail(_join(path, "q"), f"must be > 0, got {show(step)}")
        if isinstance(step, int):
            off_grid = (high - low) % step != 0
        else:
            ratio = (high - low) / step
            off_grid = not math.isfinite(ratio) or abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio)
        if off_grid:
            r.fail(_join(path, "q"), f"max - min ({show(high - low)}) is not a multiple of q ({show(step)})")
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
            r.fail("grid", f"expected a non-empty list of sub-grids (mappings of key -> values), got {show(raw)}")
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
        return "val_psnr", METRICS["val_psnr"]
    if isinstance(raw, str):
        raw = {"metric": raw}
    objective = r.mapping(raw, "objective", "a metric name or {metric: ..., direction: maximize|minimize}")
    r.known_keys(objective, "objective", ("metric", "direction"), "key")
    metric = objective.get("metric")
    if not isinstance(metric, str) or metric not in METRICS:
        r.fail("objective.metric", f"unknown {show(metric)} (one of {', '.join(METRICS)})")
    direction = objective.get("direction", METRICS[metric])
    if direction not in DIRECTIONS:
        r.fail("objective.direction", f"unknown {show(direction)} (one of {', '.join(DIRECTIONS)})")
    return metric, direction


def _parse_execution(r: _Reader, raw: Any) -> Execution:
    if raw is None:
        return Execution()
    execution = r.mapping(raw, "execution")
    r.known_keys(execution, "execution", [f.name for f in dataclasses.fields(Execution)], "key")
    gpus = execution.get("gpus", "auto")
    if gpus != "auto":
        if not isinstance(gpus, list):
            r.fail("execution.gpus", "expected auto or a list of GPU indices (e.g. [0, 1], or [] for CPU), "
                                     f"got {show(gpus)}")
        gpus = tuple(r.integer(g, f"execution.gpus[{i}]", 0) for i, g in enumerate(gpus))
        if len(set(gpus)) != len(gpus):
            r.fail("execution.gpus", f"{list(gpus)} repeats a GPU (use trials_per_gpu to share one)")
    per_gpu = execution.get("trials_per_gpu", 1)
    if per_gpu != "auto" and (isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1):
        r.fail("execution.trials_per_gpu", f"expected auto or an integer >= 1, got {show(per_gpu)}")
    return Execution(
        gpus=gpus,
        trials_per_gpu=per_gpu,
        cpu_workers=r.integer(execution.get("cpu_workers", 1), "execution.cpu_workers", 1),
    )


def _parse_storage(r: _Reader, raw: Any, name: str) -> str:
    if raw is None:
        return str(Path("runs") / name / "optuna.journal")
    if not isinstance(raw, str) or not raw.strip():
        r.fail("storage", f"expected a journal file path or an SQLAlchemy URL, got {show(raw)}")
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
        r.fail("mlflow.tracking_uri", f"expected a URI such as {DEFAULT_TRACKING_URI}, got {show(uri)}")
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
        r.fail(section, f"Optuna refused the options ({one_line(err)})")


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
    text = json.dumps(swept, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def group_label(overrides: Mapping[str, Any]) -> str:
    """A readable configuration name, e.g. `kl_anneal_type=Cyclical, kl_anneal_ratio=0.5`."""
    parts = [f"{key}={_format(value)}" for key, value in overrides.items() if key != "seed"]
    return ", ".join(parts) or "base"


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


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {show(value)}"

