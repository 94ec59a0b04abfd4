"""The checks every section of a sweep spec is read with: typed reads that fail with one line naming the source
and the key path, and TrainConfig's own reading of a value or of a whole configuration."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Mapping

from cvae.config import TrainConfig
from cvae.errors import ConfigError
from experiments.errors import SpecError, one_line, show
from experiments.spec import SCALARS


class Reader:
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
                self.fail(join(path, show(key)), "keys must be strings")
        return value

    def known_keys(self, value: dict, path: str, known: typing.Iterable[str], what: str,
                   hints: Mapping[str, str] | None = None) -> None:
        known = list(known)
        for key in value:
            if key in known:
                continue
            shown = join(path, key if key.isprintable() and key.strip() else repr(key))
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


class Canon:
    """TrainConfig's own reading of one value, so 1 and 1.0 (or '2,5' and '2, 5') are one value."""

    def __init__(self, r: Reader, base: dict[str, Any]):
        self.r, self.base, self.memo = r, base, {}

    def __call__(self, name: str, value: Any, path: str) -> Any:
        if isinstance(value, (list, tuple, dict)) or not isinstance(value, SCALARS):
            hint = " (write a list value as a string, e.g. '2,5')" if isinstance(value, (list, tuple)) else ""
            self.r.fail(path, f"{show(value)} is not a single value{hint}")
        memo_key = (name, type(value), value)
        if memo_key not in self.memo:
            cfg = build_config(self.r, path, {**self.base, name: value})
            self.memo[memo_key] = _optuna_value(getattr(cfg, name))
        return self.memo[memo_key]


def build_config(r: Reader, path: str, values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except (ConfigError, OverflowError) as err:  # OverflowError: a float field given a 400-digit integer
        r.fail(path, str(err))


def check_config_keys(r: Reader, values: dict, path: str) -> None:
    if "seed" in values:
        r.fail(join(path, "seed"), "seeds are not swept or fixed here; list them in the top-level 'seeds'")
    r.known_keys(values, path, [f.name for f in dataclasses.fields(TrainConfig)], "TrainConfig key")


def field_type(name: str) -> Any:
    return typing.get_type_hints(TrainConfig)[name]


def is_tuple_field(name: str) -> bool:
    return typing.get_origin(field_type(name)) is tuple


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _optuna_value(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a tuple field's value becomes TrainConfig's '2,5' form."""
    return ",".join(str(item) for item in value) if isinstance(value, tuple) else value


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {show(value)}"
