"""What a sweep's trials cost and what code they ran, as the report's facts say it: device-hours and devices,
what adaptive seeds saved, git commits, and which trials ran from uncommitted changes (the tags
`experiments.tracking` logs, the study's `adaptive_seeds` user attr).

Runs logged before trials recorded these read as unknown, never as zero or as clean.
"""
from __future__ import annotations

import math

import optuna
import pandas as pd

from analysis.tables import hours_text
from experiments.schema import ADAPTIVE_SEEDS

SHORT_COMMIT = 7
LISTED = ["trial", "configuration", "seed", "status", "commit", "run_id"]


def device_time(trials: pd.DataFrame) -> str:
    """The sweep's device-hours over its ended trials, and on which devices."""
    ended = trials[trials["status"] != "RUNNING"]
    logged = ended["device_seconds"].notna()
    if not logged.any():
        return "n/a: the runs were logged before trials recorded their device time"
    hours = hours_text(ended.loc[logged, "device_seconds"].sum() / 3600)
    devices = ended.loc[logged, "device"].replace("", "unnamed device").value_counts()
    on = ", ".join(f"{device} × {count}" for device, count in devices.items())
    if logged.all():
        return f"{hours} device-hours over {len(ended)} ended trials ({on})"
    return (f"at least {hours} device-hours over {int(logged.sum())} trials ({on}); {int((~logged).sum())} of "
            f"{len(ended)} ended trials were logged before trials recorded their device time")


def seeds_saved(study: optuna.Study | None, trials: pd.DataFrame) -> str | None:
    """What adaptive seeds saved against every configuration running seeds.max: trials, and device-hours at the
    mean of the finished trials; None for a sweep without adaptive seeds or whose study cannot be read."""
    saved = None if study is None else study.user_attrs.get(ADAPTIVE_SEEDS)
    if saved is None:
        return None
    seconds = trials.loc[trials["status"] == "COMPLETE", "device_seconds"].mean()  # NaN: none logged it
    cost = ("their device time is unknown (the runs did not record it)" if math.isnan(seconds) else
            f"about {hours_text(saved['saved'] * seconds / 3600)} device-hours at a finished trial's mean")
    rounds = "" if saved["finished"] else " so far (the rounds are not finished)"
    return (f"{saved['trials']} trials of the {saved['trials_at_max']} that {saved['max_seeds']} seeds of every "
            f"configuration would take: {saved['saved']} saved{rounds}, {cost}")


def code(trials: pd.DataFrame) -> str:
    """The git commits the trials ran and whether any ran from uncommitted changes."""
    commits = sorted({commit[:SHORT_COMMIT] for commit in trials["git_commit"] if commit})
    dirty = trials["git_dirty"]
    if (dirty == "").all():
        return "not recorded: the runs were logged before trials recorded their git commit"
    head = f"git {', '.join(commits)}" if commits else "not a git checkout"
    uncommitted = int((dirty == "true").sum())
    if uncommitted:
        return f"{head}; {uncommitted} of {len(trials)} trials ran from uncommitted changes (listed below)"
    unknown = int(dirty.isin(("", "unknown")).sum())
    if unknown:
        return f"{head}; {unknown} of {len(trials)} trials without a record of uncommitted changes"
    return f"{head}, committed: no trial ran from uncommitted changes"


def uncommitted(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran from uncommitted changes (LISTED columns), in trial order."""
    rows = trials[trials["git_dirty"] == "true"].assign(commit=lambda rows: rows["git_commit"].str[:SHORT_COMMIT])
    return rows[LISTED].astype({"configuration": str}).replace({"commit": {"": "-"}}).reset_index(drop=True)
