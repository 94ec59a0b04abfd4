"""The summary table: one row per configuration, mean and std over its finished seeds, best first.

Only COMPLETE trials are averaged; FAILED and PRUNED ones (and RUNNING ones, while a sweep goes on)
are counted in their own columns. `with_baselines` adds a row per copy baseline after the
configurations, and `formatted` turns the table into the strings a report shows.
"""
from __future__ import annotations

import functools
import math

import pandas as pd

from analysis.errors import ReportError
from analysis.labels import COPY_FIRST, COPY_PREVIOUS
from experiments.schema import EPOCH_METRICS, OBJECTIVES, ONE_STEP_PSNR, PSNR_FRAMES, VAL_PSNR
from experiments.schema import objective_column as schema_column

FRAME_WINDOW = 100  # the lab report's "first / last 100 frames"
# the metrics every table has, each's final value and, where it has one, its best epoch's
SUMMARIZED = tuple(column for metric in EPOCH_METRICS if metric.summarized
                   for column in (metric.final_column, *([metric.best_column] if metric.best_header else [])))
ONE_STEP = ONE_STEP_PSNR.final_column
GAIN = "gain_over_copy_first"  # final val PSNR minus copy-first, mean over seeds
COUNTED = ("FAILED", "PRUNED")
COUNTS = ("seeds", *(status.lower() for status in (*COUNTED, "RUNNING")))
DEVICE_HOURS = "device_hours"


def objective_column(metric: str) -> str:
    """The trials column holding the sweep's objective; a ReportError for a metric the schema does not know."""
    if metric not in OBJECTIVES:
        raise ReportError(f"the sweep's objective {metric!r} is not a metric this code knows "
                          f"(one of {', '.join(OBJECTIVES)}); report it with the code that ran it")
    return schema_column(metric)


def unit(column: str) -> str:
    """The unit of a trials column of a metric (`final_val_psnr` -> dB), '' for one without."""
    return next((metric.unit for metric in EPOCH_METRICS if column in (metric.final_column, metric.best_column)), "")


def frame_window(frames: pd.DataFrame) -> int:
    """FRAME_WINDOW frames, or half the video when it is shorter than two windows (so first and last never overlap)."""
    if frames.empty:
        return FRAME_WINDOW
    return max(1, min(FRAME_WINDOW, int(frames["frame"].max()) // 2))


def frame_means(frames: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per trial: mean PSNR over its first `window` predicted frames and over its last `window`."""
    first_column, last_column = _window_columns(window)
    last_frame = frames.groupby("run_id")["frame"].transform("max")
    first = frames[frames["frame"] <= window].groupby("run_id")[PSNR_FRAMES.column].mean()
    last = frames[frames["frame"] > last_frame - window].groupby("run_id")[PSNR_FRAMES.column].mean()
    return pd.DataFrame({first_column: first, last_column: last}).reset_index()


def summary_table(trials: pd.DataFrame, frames: pd.DataFrame, metric: str = VAL_PSNR.name,
                  direction: str = VAL_PSNR.direction) -> pd.DataFrame:
    """One row per configuration, ranked by the objective's mean (configurations with no finished seed last).

    Columns: configuration, seeds (finished), failed, pruned, [running,] `<value>_mean` and `<value>_std`
    for final and best val PSNR, the other SUMMARIZED metrics, PSNR over the first and last `frame_window`
    frames [and the objective when it is none of these], gain_over_copy_first (NaN for runs logged before
    the baselines), epochs (mean over finished seeds), wall_seconds (mean of a finished trial),
    device_hours (`device_hours`), group.
    """
    window = frame_window(frames)
    objective = objective_column(metric)
    values = [*SUMMARIZED, *_window_columns(window)]
    if objective not in values:
        values.append(objective)
    complete = trials[trials["status"] == "COMPLETE"].merge(frame_means(frames, window), on="run_id", how="left")
    complete[GAIN] = complete[VAL_PSNR.final_column] - complete["copy_first"]  # per trial: its own video's baseline
    by_config = complete.groupby("configuration", observed=False)
    table = by_config.agg(seeds=("seed", "nunique"), **{
        f"{value}_{stat}": (value, stat) for value in values for stat in ("mean", "std")},
        **{GAIN: (GAIN, "mean")}, epochs=("epochs", "mean"), wall_seconds=("wall_seconds", "mean"))
    counts = trials.groupby(["configuration", "status"], observed=False).size().unstack(fill_value=0)
    counted = [status for status in (*COUNTED, "RUNNING")
               if status in COUNTED or (status in counts and counts[status].sum())]
    for status in counted:
        table[status.lower()] = counts[status] if status in counts else 0
    table["group"] = trials.groupby("configuration", observed=False)["group"].first()
    table[DEVICE_HOURS] = device_hours(trials)
    order = ["seeds", *(status.lower() for status in counted),
             *(f"{value}_{stat}" for value in values for stat in ("mean", "std")), GAIN, "epochs", "wall_seconds",
             DEVICE_HOURS, "group"]
    table = table[order].reset_index()
    table["configuration"] = table["configuration"].astype(str)
    table = table.sort_values(f"{objective}_mean", ascending=direction == "minimize", na_position="last",
                              kind="stable", ignore_index=True)
    table.attrs.update(frame_window=window, objective=objective)
    return table


def device_hours(trials: pd.DataFrame) -> pd.Series:
    """Per configuration, the device-hours its ended trials (finished, failed or pruned) took; NaN when one of
    them was logged without its device seconds (before runs recorded them) or none has ended."""
    ended = trials[trials["status"] != "RUNNING"].groupby("configuration", observed=False)["device_seconds"]
    known = ended.count() == ended.size()
    return (ended.sum() / 3600).where(known & (ended.size() > 0))


def with_baselines(table: pd.DataFrame, trials: pd.DataFrame, baseline_frames: pd.DataFrame) -> pd.DataFrame:
    """`table` (`summary_table`) and after it a row per copy baseline the finished trials logged, mean over them.

    copy first frame fills the rollout's columns (final val PSNR, PSNR over the first and last frames, from
    `baseline_frames`), copy previous frame the one-step column; every other cell is empty. Runs logged
    before the baselines add no row.
    """
    window = table.attrs["frame_window"]
    complete = trials[trials["status"] == "COMPLETE"]
    copied = baseline_frames[baseline_frames["run_id"].isin(complete["run_id"])]
    windows = frame_means(copied, window).mean(numeric_only=True)  # empty when nothing was logged
    copy_first, copy_previous = complete["copy_first"].mean(), complete["copy_previous"].mean()
    rows = []
    if not math.isnan(copy_first):
        rows.append({"configuration": COPY_FIRST, f"{VAL_PSNR.final_column}_mean": copy_first,
                     **{f"{column}_mean": windows.get(column, math.nan) for column in _window_columns(window)}})
    if not math.isnan(copy_previous):
        rows.append({"configuration": COPY_PREVIOUS, f"{ONE_STEP}_mean": copy_previous})
    if not rows:
        return table
    counts = {column: "Int64" for column in COUNTS if column in table}  # whole numbers with blanks, in the CSV too
    combined = pd.concat([table.astype(counts), pd.DataFrame(rows)], ignore_index=True)[table.columns]
    combined.attrs.update(table.attrs)
    return combined


def is_baseline(table: pd.DataFrame) -> pd.Series:
    """Which rows of a table are copy baselines rather than configurations."""
    return table["configuration"].isin((COPY_FIRST, COPY_PREVIOUS))


def _headers() -> dict[str, str]:
    """Trials column -> header, in the schema's order, the gain over copy-first beside the PSNR it is a gain of."""
    headers = {}
    for metric in EPOCH_METRICS:
        if metric.header:
            headers[metric.final_column] = metric.header
        if metric.best_header:
            headers[metric.best_column] = metric.best_header
        if metric is VAL_PSNR:
            headers[GAIN] = "gain over copy-first (dB)"
    return headers


HEADERS = _headers()
DECIMALS = {column: metric.decimals for metric in EPOCH_METRICS for column in (metric.final_column, metric.best_column)}
# shown always; the other columns only when some row has a value (runs logged before a metric existed have none)
ALWAYS = (VAL_PSNR.final_column, VAL_PSNR.best_column)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a report shows it: `mean ± std` strings, readable headers, wall time in minutes and seconds,
    device-hours (`n/a` where a trial did not log its device time).

    A configuration's missing value is `-`; in a baseline row, the cells that do not apply to it are empty.
    """
    window = table.attrs.get("frame_window", FRAME_WINDOW)
    first, last = _window_columns(window)
    headers = {**HEADERS, first: f"PSNR frames 1-{window} (dB)", last: f"PSNR last {window} frames (dB)"}
    baseline = is_baseline(table).tolist()

    def cells(show, *columns: str) -> list:
        """show(values of `columns`) per row, or empty in a baseline row that has no first value."""
        return ["" if is_copy and pd.isna(values[0]) else show(*values)
                for is_copy, *values in zip(baseline, *(table[column] for column in columns))]

    shown = pd.DataFrame({"#": ["" if is_copy else rank for rank, is_copy in enumerate(baseline, start=1)],
                          "configuration": table["configuration"]})
    for column in COUNTS:
        if column in table:
            shown[column] = cells(int, column)
    for value, header in headers.items():
        if value == GAIN and _known(table, GAIN):
            shown[header] = cells(lambda gain: _number(gain, "{:+.2f}"), GAIN)
        elif f"{value}_mean" in table and (value in ALWAYS or _known(table, f"{value}_mean")):
            show = functools.partial(_mean_std, decimals=DECIMALS.get(value, 2))
            shown[header] = cells(show, f"{value}_mean", f"{value}_std")
    shown["epochs"] = cells(_epochs, "epochs")
    shown["wall time / trial"] = cells(_duration, "wall_seconds")
    shown["device-hours"] = cells(hours_text, DEVICE_HOURS)
    return shown


def _window_columns(window: int) -> tuple[str, str]:
    """The columns of the mean PSNR over the first and over the last `window` frames."""
    return f"{PSNR_FRAMES.column}_first_{window}", f"{PSNR_FRAMES.column}_last_{window}"


def _known(table: pd.DataFrame, column: str) -> bool:
    return column in table and bool(table[column].notna().any())


def _epochs(epochs: float) -> str:
    return _number(epochs, "{:.0f}") if math.isnan(epochs) or float(epochs).is_integer() else f"{epochs:.1f}"


def _mean_std(mean: float, std: float, decimals: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _number(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def hours_text(hours: float) -> str:
    """`0.052`, `< 0.001`, or `n/a` where a trial's device time was not logged."""
    if math.isnan(hours):
        return "n/a"
    return "< 0.001" if hours < 0.001 else f"{hours:.3f}"


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
