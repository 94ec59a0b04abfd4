"""Fuzzed sweep specs: any spec file loads, or fails with one line naming the file, never a traceback."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.errors import SpecError
from experiments.spec_loader import load_spec

QUICK = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps" / "quick.yaml").read_text())
SECTIONS = [*QUICK, "objective", "storage", "mlflow", "pruner", "search", "nonsense"]
BASE_KEYS = [*QUICK["base"], "N_dim", "lr_schedule", "bf16", "unknown_key"]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=10),
                 st.lists(st.one_of(st.integers(-3, 40), st.text(max_size=3), st.floats()), max_size=4),
                 st.dictionaries(st.sampled_from(["values", "min", "max", "log", "initial", "x"]),
                                 st.one_of(st.integers(-3, 40), st.floats(), st.text(max_size=3),
                                           st.lists(st.integers(-3, 5), max_size=3)), max_size=3))


@st.composite
def damaged_specs(draw) -> str:
    """The quick spec with a few of its sections, base keys or parameters replaced by junk."""
    spec = copy.deepcopy(QUICK)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["section", "base", "parameter"]))
        if where == "section":
            spec[draw(st.sampled_from(SECTIONS))] = draw(JUNK)
        elif where == "base" and isinstance(spec.get("base"), dict):
            spec["base"][draw(st.sampled_from(BASE_KEYS))] = draw(JUNK)
        elif isinstance(spec.get("parameters"), dict):
            spec["parameters"][draw(st.sampled_from(BASE_KEYS))] = draw(JUNK)
    return yaml.safe_dump(spec)


SPEC_FILES = st.one_of(damaged_specs(), st.text(max_size=80)).map(str.encode) | st.binary(max_size=80)


@settings(max_examples=150, deadline=None)
@given(content=SPEC_FILES)
def test_any_spec_file_loads_or_is_one_line_naming_it(content, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(content)
    try:
        load_spec(path)
    except SpecError as err:
        assert str(err).startswith(f"{path}") and "\n" not in str(err), str(err)
