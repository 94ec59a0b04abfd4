"""The sections of a sweep spec, each read into its part of a SweepSpec or refused in one line naming the key."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import typing
import warnings
from pathlib import Path
from typing import Any, Mapping

from cvae.config import TrainConfig
from cvae.errors import ConfigError
from experiments.errors import one_line, show
from experiments.plan import group_label
from experiments.samplers import annotation_name, constructor_options, fits_annotation
from experiments.schema import OBJECTIVES
from experiments.spec import DEFAULT_TRACKING_URI, URL, AdaptiveSeeds, Execution, Parameter
from experiments.spec_check import Canon, Reader, build_config, check_config_keys, field_type, is_tuple_field, join

PARAMETER_KEYS = ("values", "value", "distribution", "min", "max", "q")
DISTRIBUTIONS = ("int_uniform", "uniform", "log_uniform_values")
DIRECTIONS = ("maximize", "minimize")
ADAPTIVE_KEYS = ("initial", "max", "until")
UNTIL = ("separated",)  # what ends a configuration's rounds (besides max): its interval against the best excludes 0
MIN_INITIAL_SEEDS = 2  # a paired t interval needs 2 pairs
MAX_GRID_TRIALS = 2000  # validating a cell builds a TrainConfig; a bigger grid is a typo or wants sampling


def parse_base(r: Reader, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    base = r.mapping(raw, "base", "a mapping of TrainConfig overrides")
    check_config_keys(r, base, "base")
    for key in base:
        if isinstance(base[key], (list, tuple)) and not is_tuple_field(key):
            r.fail(join("base", key), f"{show(base[key])} is a list; a sweep over values belongs in parameters")
    try:
        cfg = TrainConfig.from_dict(base)
    except (ConfigError, OverflowError) as err:
        key = re.match(r"\w*", str(err)).group()  # TrainConfig's messages start with the key
        r.fail(join("base", key) if key in base else "base", str(err))
    plain = cfg.to_dict()
    return {key: plain[key] for key in base}


def parse_seeds(r: Reader, raw: Any) -> tuple[tuple[int, ...], AdaptiveSeeds | None]:
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


def _parse_adaptive_seeds(r: Reader, raw: dict) -> AdaptiveSeeds:
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


def check_adaptive(r: Reader, top: dict, cells: tuple[dict[str, Any], ...]) -> None:
    """Adaptive seeds compare a grid's configurations with its best, and decide for themselves how many trials run."""
    if len(cells) < 2:
        r.fail("seeds", f"adaptive seeds compare configurations and this grid has {len(cells)}; list its seeds instead")
    if "n_trials" in top:
        r.fail("n_trials", "adaptive seeds run as many trials as their rounds need (at most configurations x "
                           "seeds.max); remove n_trials")


def parse_component(r: Reader, section: str, raw: Any, kinds: Mapping[str, type]) -> tuple[str, dict]:
    """`tpe` or `{type: tpe, option: value}`; options must be constructor arguments YAML can give."""
    if isinstance(raw, str):
        kind, options = raw, {}
    else:
        raw = r.mapping(raw, section, f"one of {', '.join(kinds)} or a mapping with 'type'")
        if "type" not in raw:
            r.fail(section, f"a mapping needs 'type' (one of {', '.join(kinds)})")
        kind, options = raw["type"], {k: v for k, v in raw.items() if k != "type"}
    if not isinstance(kind, str) or kind not in kinds:
        r.fail(section if isinstance(raw, str) else join(section, "type"),
               f"unknown {show(kind)} (one of {', '.join(kinds)})")
    accepted = constructor_options(kinds[kind])
    r.known_keys(options, section, accepted, f"option of {kind}")
    for option, value in options.items():
        if not fits_annotation(value, accepted[option].annotation):
            r.fail(join(section, option), f"{show(value)} does not fit {kind}'s {option} "
                                           f"({annotation_name(accepted[option].annotation)})")
    return kind, dict(options)


def parse_parameters(r: Reader, raw: Any, base: dict, canon: Canon, grid: bool) -> tuple[Parameter, ...]:
    if raw is None:
        return ()
    params = r.mapping(raw, "parameters", "a mapping of TrainConfig key -> values or distribution")
    check_config_keys(r, params, "parameters")
    parsed = []
    for name, entry in params.items():
        path = join("parameters", name)
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
                r.fail(join(path, key), f"only a distribution takes {key}")
        values = entry["values"] if "values" in entry else [entry["value"]]
        values_path = join(path, "values") if "values" in entry else join(path, "value")
        parsed.append(Parameter(name, _parse_values(r, name, values, values_path, canon)))
    return tuple(parsed)


def _parse_values(r: Reader, name: str, raw: Any, path: str, canon: Canon) -> tuple[Any, ...]:
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


def _parse_distribution(r: Reader, name: str, entry: dict, path: str, canon: Canon, grid: bool) -> Parameter:
    dist = entry["distribution"]
    if dist not in DISTRIBUTIONS:
        r.fail(join(path, "distribution"), f"unknown {show(dist)} (one of {', '.join(DISTRIBUTIONS)})")
    if grid:
        r.fail(path, "a grid sweep needs 'values', not a continuous distribution "
                     "(or sample it: sampler: tpe, random or qmc)")
    kind = field_type(name)
    if kind not in (int, float):
        r.fail(join(path, "distribution"), f"{name} is not a number; list its choices in values")
    if dist != "int_uniform" and kind is int:
        r.fail(join(path, "distribution"), f"{dist} gives floats but {name} is an integer (use int_uniform)")
    for key in ("min", "max"):
        if key not in entry:
            r.fail(path, f"{dist} needs min and max")
    if dist == "int_uniform":
        low, high = r.integer(entry["min"], join(path, "min")), r.integer(entry["max"], join(path, "max"))
        step = r.integer(entry["q"], join(path, "q"), 1) if "q" in entry else None
    else:
        low, high = r.number(entry["min"], join(path, "min")), r.number(entry["max"], join(path, "max"))
        step = r.number(entry["q"], join(path, "q")) if "q" in entry else None
    if low > high:
        r.fail("", f"{join(path, 'min')} ({show(low)}) > max ({show(high)})")
    if dist == "log_uniform_values":
        if low <= 0:
            r.fail(join(path, "min"), f"log_uniform_values needs min > 0, got {show(low)}")
        if step is not None:
            r.fail(join(path, "q"), "log_uniform_values cannot have a step")
    if step is not None:
        if step <= 0:
            r.fail(join(path, "q"), f"must be > 0, got {show(step)}")
        if isinstance(step, int):
            off_grid = (high - low) % step != 0
        else:
            ratio = (high - low) / step
            off_grid = not math.isfinite(ratio) or abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio)
        if off_grid:
            r.fail(join(path, "q"), f"max - min ({show(high - low)}) is not a multiple of q ({show(step)})")
    canon(name, low, join(path, "min"))
    canon(name, high, join(path, "max"))
    return Parameter(name, (), dist, low, high, step)


def parse_grid(r: Reader, parameters: tuple[Parameter, ...], raw: Any, base: dict,
               seeds: tuple[int, ...], canon: Canon) -> tuple[dict[str, Any], ...]:
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
            check_config_keys(r, sub, path)
            sub_axes = []
            for name, values in sub.items():
                if name in base:
                    r.fail(join(path, name), "also set in base; a swept key takes its values from the grid only")
                if any(name == axis for axis, _ in axes):
                    r.fail(join(path, name), "also in parameters, which every sub-grid is crossed with")
                sub_axes.append((name, _parse_values(r, name, values, join(path, name), canon)))
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
            cfg = build_config(r, label, {**base, **cell})
            identity = json.dumps(cfg.to_dict(), sort_keys=True)
            if identity in seen:
                r.fail(label, f"the same configuration as {seen[identity]}")
            seen[identity] = label
            cells.append(cell)
    return tuple(cells)


def parse_n_trials(r: Reader, top: dict, grid_trials: int, n_seeds: int, grid: bool, sampler: str) -> int:
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


def parse_objective(r: Reader, raw: Any) -> tuple[str, str]:
    if raw is None:
        return "val_psnr", OBJECTIVES["val_psnr"]
    if isinstance(raw, str):
        raw = {"metric": raw}
    objective = r.mapping(raw, "objective", "a metric name or {metric: ..., direction: maximize|minimize}")
    r.known_keys(objective, "objective", ("metric", "direction"), "key")
    metric = objective.get("metric")
    if not isinstance(metric, str) or metric not in OBJECTIVES:
        r.fail("objective.metric", f"unknown {show(metric)} (one of {', '.join(OBJECTIVES)})")
    direction = objective.get("direction", OBJECTIVES[metric])
    if direction not in DIRECTIONS:
        r.fail("objective.direction", f"unknown {show(direction)} (one of {', '.join(DIRECTIONS)})")
    return metric, direction


def parse_execution(r: Reader, raw: Any) -> Execution:
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


def parse_storage(r: Reader, raw: Any, name: str) -> str:
    if raw is None:
        return str(Path("runs") / name / "optuna.journal")
    if not isinstance(raw, str) or not raw.strip():
        r.fail("storage", f"expected a journal file path or an SQLAlchemy URL, got {show(raw)}")
    if "://" in raw and not URL.match(raw):
        r.fail("storage", f"{raw!r} is neither a file path nor a URL like sqlite:///runs/x.db")
    return raw


def parse_mlflow(r: Reader, raw: Any) -> str:
    if raw is None:
        return DEFAULT_TRACKING_URI
    mlflow = r.mapping(raw, "mlflow")
    r.known_keys(mlflow, "mlflow", ("tracking_uri",), "key")
    uri = mlflow.get("tracking_uri", DEFAULT_TRACKING_URI)
    if not isinstance(uri, str) or not uri.strip():
        r.fail("mlflow.tracking_uri", f"expected a URI such as {DEFAULT_TRACKING_URI}, got {show(uri)}")
    return uri


def check_constructs(r: Reader, section: str, build: typing.Callable[[], Any]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build()
    except Exception as err:  # noqa: BLE001 - Optuna's constructors check values with assorted types
        r.fail(section, f"Optuna refused the options ({one_line(err)})")
