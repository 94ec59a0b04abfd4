"""The errors `experiments` raises for bad input, and the helpers that keep their messages to one line.

Scripts print them as one line and exit 2.
"""
from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 4, 2


class ExperimentError(Exception):
    """Base of every user-facing error of the `experiments` package."""


class SpecError(ExperimentError):
    """A sweep spec, or the study it names, is wrong; the message names the file and the key path."""


class SweepError(ExperimentError):
    """A sweep cannot go on: a worker process died, an assigned GPU is missing, MLflow cannot be used."""


def one_line(err: Any) -> str:
    """An error or text with its whitespace, newlines included, folded to single spaces."""
    return " ".join(str(err).split())


def show(value: Any) -> str:
    """A value as it appears in a message: its repr, shortened."""
    return _short.repr(value)


def os_reason(err: OSError) -> str:
    """What an OSError says of its file, e.g. 'Permission denied: runs/x', or 'runs is a file, not a folder'."""
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:  # mkdir met a file
        in_the_way = next(path for path in (Path(err.filename), *Path(err.filename).parents) if path.exists())
        return f"{in_the_way} is a file, not a folder"
    return f"{err.strerror}: {err.filename}" if err.filename else one_line(err.strerror or err)
