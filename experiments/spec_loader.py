"""Sweep specs read: a YAML file, or a mapping already loaded, -> a validated SweepSpec (`experiments.spec`).

Every problem is a one-line SpecError naming the file and the key; each section has its parser in
`experiments.spec_sections`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cvae.config import UniqueKeyLoader
from experiments import spec_sections as sections
from experiments.errors import SpecError, one_line, show
from experiments.samplers import PRUNERS, SAMPLERS
from experiments.spec import SweepSpec
from experiments.spec_check import Canon, Reader

TOP_KEYS = ("name", "base", "parameters", "grid", "seeds", "sampler", "pruner", "n_trials",
            "objective", "execution", "storage", "mlflow")
WANDB_KEYS = {"method": "sampler", "metric": "objective", "early_terminate": "pruner", "run_cap": "n_trials"}
DEFAULT_SEEDS = (1,)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is a one-line SpecError naming file and key."""
    return parse_spec(_read_yaml(Path(path)), source=str(path))


def parse_spec(raw: Any, source: str = "spec") -> SweepSpec:
    """Validate an already-loaded spec mapping; `source` names it in errors."""
    r = Reader(source)
    top = r.mapping(raw, "", "a mapping of sweep keys")
    r.known_keys(top, "", TOP_KEYS, "key", hints=WANDB_KEYS)
    if "name" not in top:
        r.fail("name", "required (the Optuna study and MLflow experiment name)")
    name = top["name"]
    if not isinstance(name, str) or not NAME.match(name):
        r.fail("name", f"{show(name)} is not a safe name (letters, digits, _ - . ; not starting with _ - .)")
    base = sections.parse_base(r, top.get("base"))
    seeds, adaptive = sections.parse_seeds(r, top.get("seeds", list(DEFAULT_SEEDS)))
    sampler, sampler_options = sections.parse_component(r, "sampler", top.get("sampler", "grid"), SAMPLERS)
    pruner, pruner_options = sections.parse_component(r, "pruner", top.get("pruner", "none"), PRUNERS)
    grid = sampler == "grid"
    if grid and pruner != "none":
        r.fail("pruner", "a grid sweep cannot use a pruner: a pruned cell would leave a hole in the grid "
                         "(remove it, or sample with tpe, random or qmc)")
    if adaptive and not grid:
        r.fail("seeds", f"adaptive seeds need sampler: grid, not {sampler} (a sampled sweep cycles a list of seeds)")
    canon = Canon(r, base)
    parameters = sections.parse_parameters(r, top.get("parameters"), base, canon, grid)
    if grid:
        cells = sections.parse_grid(r, parameters, top.get("grid"), base, seeds, canon)
    else:
        if "grid" in top:
            r.fail("grid", f"sub-grids need sampler: grid, not {sampler}")
        if not parameters:
            r.fail("parameters", f"a {sampler} sweep needs at least one parameter to sample")
        cells = ()
    if adaptive:
        sections.check_adaptive(r, top, cells)
    n_seeds = adaptive.initial if adaptive else len(seeds)
    n_trials = sections.parse_n_trials(r, top, len(cells) * n_seeds, n_seeds, grid, sampler)
    metric, direction = sections.parse_objective(r, top.get("objective"))
    spec = SweepSpec(
        name=name, source=source, base=base, parameters=parameters, cells=cells, seeds=seeds, adaptive=adaptive,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        n_trials=n_trials, metric=metric, direction=direction,
        execution=sections.parse_execution(r, top.get("execution")),
        storage=sections.parse_storage(r, top.get("storage"), name),
        tracking_uri=sections.parse_mlflow(r, top.get("mlflow")),
    )
    sections.check_constructs(r, "sampler", lambda: SAMPLERS[sampler](**sampler_options))
    sections.check_constructs(r, "pruner", lambda: PRUNERS[pruner](**pruner_options))
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
