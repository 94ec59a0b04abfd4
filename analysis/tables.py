"""The summary table: one row per configuration, mean and std over its finished seeds, best first.

Only COMPLETE trials are averaged; FAILED and PRUNED ones (and RUNNING ones, while a sweep goes on)
are counted in their own columns. `formatted` turns the table into the strings a report shows.
"""
from __future__ import annotations

import math

import pandas as pd

# the sweep's objective metric (spec `objective.metric`) -> the trial column that holds it
OBJECTIVE_COLUMNS = {"val_psnr": "final_val_psnr", "best_val_psnr": "best_val_psnr",
                     "train_loss": "final_train_loss", "train_recon": "final_train_recon",
                     "train_kl": "final_train_kl"}
FRAME_WINDOW = 100  # the lab report's "first / last 100 frames"
PSNR_COLUMNS = ("final_val_psnr", "best_val_psnr")
COUNTED = ("FAILED", "PRUNED")


def objective_column(metric: str) -> str:
    return OBJECTIVE_COLUMNS.get(metric, "final_val_psnr")


def frame_window(frames: pd.DataFrame) -> int:
    """FRAME_WINDOW frames, or half the video when it is shorter than two windows (so first and last never overlap)."""
    if frames.empty:
        return FRAME_WINDOW
    return max(1, min(FRAME_WINDOW, int(frames["frame"].max()) // 2))


def frame_means(frames: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per trial: mean PSNR over its first `window` predicted frames and over its last `window`."""
    last_frame = frames.groupby("run_id")["frame"].transform("max")
    first = frames[frames["frame"] <= window].groupby("run_id")["psnr"].mean()
    last = frames[frames["frame"] > last_frame - window].groupby("run_id")["psnr"].mean()
    return pd.DataFrame({f"psnr_first_{window}": first, f"psnr_last_{window}": last}).reset_index()


def summary_table(trials: pd.DataFrame, frames: pd.DataFrame, metric: str = "val_psnr",
                  direction: str = "maximize") -> pd.DataFrame:
    """One row per configuration, ranked by the objective's mean (configurations with no finished seed last).

    Columns: configuration, seeds (finished), failed, pruned, [running,] `<value>_mean` and `<value>_std`
    for final and best val PSNR, PSNR over the first and last `frame_window` frames [and the objective
    when it is not a PSNR], epochs (mean over finished seeds), wall_seconds (mean of a finished trial), group.
    """
    window = frame_window(frames)
    objective = objective_column(metric)
    values = [*PSNR_COLUMNS, f"psnr_first_{window}", f"psnr_last_{window}"]
    if objective not in values:
        values.append(objective)
    complete = trials[trials["status"] == "COMPLETE"].merge(frame_means(frames, window), on="run_id", how="left")
    by_config = complete.groupby("configuration", observed=False)
    table = by_config.agg(seeds=("seed", "nunique"), **{
        f"{value}_{stat}": (value, stat) for value in values for stat in ("mean", "std")},
        epochs=("epochs", "mean"), wall_seconds=("wall_seconds", "mean"))
    counts = trials.groupby(["configuration", "status"], observed=False).size().unstack(fill_value=0)
    counted = [status for status in (*COUNTED, "RUNNING")
               if status in COUNTED or (status in counts and counts[status].sum())]
    for status in counted:
        table[status.lower()] = counts[status] if status in counts else 0
    table["group"] = trials.groupby("configuration", observed=False)["group"].first()
    order = ["seeds", *(status.lower() for status in counted),
             *(f"{value}_{stat}" for value in values for stat in ("mean", "std")), "epochs", "wall_seconds", "group"]
    table = table[order].reset_index()
    table["configuration"] = table["configuration"].astype(str)
    table = table.sort_values(f"{objective}_mean", ascending=direction == "minimize", na_position="last",
                              kind="stable", ignore_index=True)
    table.attrs.update(frame_window=window, objective=objective)
    return table


HEADERS = {"final_val_psnr": "final val PSNR (dB)", "best_val_psnr": "best val PSNR (dB)",
           "final_train_loss": "final train loss", "final_train_recon": "final train recon",
           "final_train_kl": "final train KL"}


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a report shows it: `mean ± std` strings, readable headers, wall time in minutes and seconds."""
    window = table.attrs.get("frame_window", FRAME_WINDOW)
    headers = {**HEADERS, f"psnr_first_{window}": f"PSNR frames 1-{window} (dB)",
               f"psnr_last_{window}": f"PSNR last {window} frames (dB)"}
    shown = pd.DataFrame({"#": range(1, len(table) + 1), "configuration": table["configuration"]})
    for column in ("seeds", "failed", "pruned", "running"):
        if column in table:
            shown[column] = table[column].astype(int)
    for value, header in headers.items():
        if f"{value}_mean" in table:
            shown[header] = [_mean_std(mean, std) for mean, std in zip(table[f"{value}_mean"], table[f"{value}_std"])]
    shown["epochs"] = [_number(epochs, "{:.0f}") if float(epochs).is_integer() or math.isnan(epochs) else
                       f"{epochs:.1f}" for epochs in table["epochs"]]
    shown["wall time / trial"] = [_duration(seconds) for seconds in table["wall_seconds"]]
    return shown


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _number(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
