"""Safety by reading our own source: YAML is loaded safely, checkpoints as weights only, servers on loopback."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("cvae/*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("analysis/*.py"),
                  *ROOT.glob("*.py"), *ROOT.glob("tests/*.py")])


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, ast.unparse(node.func), {kw.arg: ast.unparse(kw.value) for kw in node.keywords}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_and_torch_load_only_what_is_safe(path):
    for node, name, keywords in calls(path):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        assert name not in ("yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads"), where
        if name == "yaml.load":  # only with a SafeLoader (subclass)
            assert keywords.get("Loader") in ("yaml.SafeLoader", "UniqueKeyLoader"), where
        if name == "torch.load":
            assert keywords.get("weights_only") == "True", where


def test_the_yaml_loader_of_configs_and_specs_constructs_only_plain_data():
    import yaml

    from cvae.config import UniqueKeyLoader
    # libyaml's CSafeLoader is not a SafeLoader subclass, but builds objects with the same SafeConstructor
    assert issubclass(UniqueKeyLoader, yaml.constructor.SafeConstructor)
    assert not issubclass(UniqueKeyLoader, (yaml.constructor.FullConstructor, yaml.constructor.UnsafeConstructor))
    try:
        yaml.load("!!python/object/apply:os.system ['true']", Loader=UniqueKeyLoader)
    except yaml.constructor.ConstructorError as err:
        assert "python/object/apply" in str(err)
    else:
        raise AssertionError("a python/object tag was constructed")


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name != "test_safety.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_listens_beyond_loopback(path):
    text = path.read_text(encoding="utf-8")
    assert "0.0.0.0" not in text and "--host\", \"::" not in text
    for node, name, _ in calls(path):
        if name.endswith(".bind"):
            assert "127.0.0.1" in ast.unparse(node.args[0]), f"{path.relative_to(ROOT)}:{node.lineno}"
