"""The report's figures: each one function from a tidy DataFrame (see analysis.runs) to a matplotlib Figure.

Colours belong to configurations: `palette` fixes them once per sweep and every figure takes that
mapping, so a configuration has one colour throughout a report. Figures are pyplot-free `Figure`
objects (nothing to close, any backend); legends sit below the axes, never on the curves.
Layout (`_figure`, `_legend_below`) and saving (`save`) live at the end of this file.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.labels import COPY_FIRST, COPY_PREVIOUS
from experiments.schema import BY_NAME, ONE_STEP_PSNR, PSNR_FRAMES, VAL_PSNR, Metric

Colours = Mapping[str, tuple[float, float, float]]
WIDTH = 9.0  # inches; a page's width at 100% in a browser
PANEL_HEIGHT = 4.0
CHARS_PER_INCH = 13  # legend text at 9 pt
MARKER_EPOCHS = 12  # curves with at most this many epochs get a marker per point, or two points read as one line
SCHEDULE_GREY = "0.2"
SCHEDULE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COINCIDENT = 0.005  # curves closer than this fraction of the y range everywhere would hide each other
TWIN_DASHES = ((4, 4), (1.5, 3), (8, 3, 2, 3), (1, 5))  # for lines drawn over an identical one
TRAIN_LOSS = BY_NAME["train_loss"].key
LOSSES = {TRAIN_LOSS: "total loss", BY_NAME["train_recon"].key: "reconstruction (MSE)",
          BY_NAME["train_kl"].key: "KL divergence"}
VAL_PSNR_PANELS = {VAL_PSNR.key: "rollout from the first frame", ONE_STEP_PSNR.key: "one step from the true previous frame"}
REFERENCE = {"color": "0.5", "linestyle": "--", "linewidth": 1.4}  # a baseline: grey and dashed, beside any colour
LOG_SCALE_RATIO = 30  # a panel whose values span more than this factor gets a log y axis
DPI = 150


def palette(configurations: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per configuration, in the given order: tab10 up to ten, evenly spaced hues beyond."""
    colours = sns.color_palette("tab10" if len(configurations) <= 10 else "husl", len(configurations))
    return dict(zip(configurations, colours))


# ---------------------------------------------------------------- the lab report's figures


def per_frame(frames: pd.DataFrame, colours: Colours, copy_first: pd.DataFrame | None = None,
              metric: Metric = PSNR_FRAMES) -> Figure:
    """Figure 1: a per-frame metric (PSNR, SSIM) of each predicted validation frame, mean over seeds with a ±1 std
    band.

    `copy_first` (rows of trial, frame and the metric's column, as `frames`) is drawn as a dashed grey reference,
    the mean over its trials; none when it is None or empty (runs logged before the baselines).
    """
    fig, [ax] = _figure()
    frames = frames.dropna(subset=[metric.column])  # runs logged before the metric have no value
    shown, twins = _lines(ax, frames, "frame", metric.column, colours, markers=False)
    references = []
    if copy_first is not None and len(copy_first):
        curve = copy_first.groupby("frame")[metric.column].mean()
        references = ax.plot(curve.index, curve.to_numpy(), **REFERENCE, label=COPY_FIRST)
    ax.set(xlabel="frame of the validation video", ylabel=metric.label + (f" ({metric.unit})" if metric.unit else ""),
           title=f"{metric.label} per frame of the validation video (final epoch)")
    _legend_below(fig, shown, colours, _notes(frames, twins), references=references)
    return fig


def loss_curves(epochs: pd.DataFrame, colours: Colours) -> Figure:
    """Figure 2: training loss against epoch, one panel each for total, reconstruction and KL, seed bands."""
    fig, axes = _figure(panels=len(LOSSES))
    shown, twins = _epoch_panels(axes, epochs, LOSSES, colours)
    for ax, metric in zip(axes, LOSSES):
        _log_scale_if_wide(ax, epochs.loc[epochs["metric"] == metric, "value"])
    axes[0].set_ylabel("loss, mean over the epoch's batches")
    fig.suptitle("Training losses (total = reconstruction + β · KL)")
    _legend_below(fig, shown, colours, _notes(epochs[epochs["metric"] == TRAIN_LOSS], twins))
    return fig


def tfr_schedule(epochs: pd.DataFrame, colours: Colours) -> Figure:
    """Figure 3: teacher forcing ratio against epoch, one line per distinct teacher forcing setting."""
    return _schedule(epochs, "tfr", "tfr_setting", colours, ylabel="teacher forcing ratio",
                     title="Teacher forcing ratio per epoch", legend_title="teacher forcing setting")


def kl_beta_schedule(epochs: pd.DataFrame, colours: Colours) -> Figure:
    """Figure 4: KL weight beta against epoch, one line per distinct KL annealing setting."""
    return _schedule(epochs, "kl_beta", "kl_setting", colours, ylabel="KL weight β",
                     title="KL annealing: β per epoch", legend_title="KL annealing setting")


def val_psnr_curves(epochs: pd.DataFrame, colours: Colours, copy_first: float = math.nan,
                    copy_previous: float = math.nan) -> Figure:
    """Figure 5: validation PSNR against epoch, mean over seeds with a ±1 std band, of the rollout from the first
    frame and, in a second panel when the runs logged it, of one step from the true previous frame.

    The copy baselines are dashed grey levels: copying the first frame in the first panel, the previous one
    in the second; a NaN (runs logged before the baselines) is not drawn.
    """
    logged = set(epochs["metric"])
    panels = {metric: title for metric, title in VAL_PSNR_PANELS.items() if metric == VAL_PSNR.key or metric in logged}
    fig, axes = _figure(panels=len(panels))
    shown, twins = _epoch_panels(axes, epochs, panels, colours)
    references = [ax.axhline(level, **REFERENCE, label=name)
                  for ax, level, name in zip(axes, (copy_first, copy_previous), (COPY_FIRST, COPY_PREVIOUS))
                  if not math.isnan(level)]
    axes[0].set_ylabel("validation PSNR (dB, mean over frames)")
    fig.suptitle("Validation PSNR per epoch")
    _legend_below(fig, shown, colours, _notes(epochs[epochs["metric"] == VAL_PSNR.key], twins),
                  references=references)
    return fig


def _schedule(epochs: pd.DataFrame, metric: str, setting: str, colours: Colours, ylabel: str, title: str,
              legend_title: str) -> Figure:
    """One line per setting. A setting shared by several configurations is not one of them, so it is drawn
    in dark grey with its own marker and dashes; a setting that is exactly one configuration keeps its colour."""
    values = epochs[epochs["metric"] == metric]
    curves = values.groupby([setting, "epoch"])["value"].mean().unstack("epoch")
    settings = list(dict.fromkeys(values.sort_values("trial")[setting]))
    configs = values.groupby(setting)["configuration"].unique()
    one_to_one = len(settings) == values["configuration"].nunique() and all(len(configs[s]) == 1 for s in settings)
    twins = coincident(curves.loc[settings])
    fig, [ax] = _figure()
    handles, labels = [], []
    for index, name in enumerate(settings):
        curve = curves.loc[name].dropna()
        colour = colours[configs[name][0]] if one_to_one else SCHEDULE_GREY
        marker = SCHEDULE_MARKERS[index % len(SCHEDULE_MARKERS)] if len(curve) <= 4 * MARKER_EPOCHS else ""
        [line] = ax.plot(curve.index, curve.to_numpy(), color=colour, linewidth=1.8, marker=marker, markersize=6,
                         linestyle=_dashes(index if not one_to_one else 0, twins.get(name)), label=name)
        handles.append(line)
        labels.append(f"{name}: same curve as {twins[name]}" if name in twins else name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title, ylim=(-0.05, 1.05))
    _integer_epochs(ax, values)
    _legend_below(fig, labels, {}, handles=handles, title=legend_title)
    return fig


def _epoch_panels(axes: Sequence[Axes], epochs: pd.DataFrame, titles: Mapping[str, str],
                  colours: Colours) -> tuple[list[str], dict[str, str]]:
    """A panel per metric (metric -> its title) against epoch, a line per configuration, as `_lines`; returns the
    configurations drawn and the dashed ones of every panel."""
    shown: list[str] = []
    twins: dict[str, str] = {}
    for ax, (metric, title) in zip(axes, titles.items()):
        drawn, panel_twins = _lines(ax, epochs[epochs["metric"] == metric], "epoch", "value", colours)
        shown, twins = drawn or shown, {**twins, **panel_twins}
        ax.set(xlabel="epoch", ylabel="", title=title)
    return shown, twins


def _lines(ax: Axes, data: pd.DataFrame, x: str, y: str, colours: Colours,
           markers: bool = True) -> tuple[list[str], dict[str, str]]:
    """Mean of `y` over seeds per configuration against `x`, with a ±1 std band.

    A curve that would hide an earlier one (see `coincident`) is dashed, so both colours show. Returns
    the configurations drawn, and those drawn dashed (name -> the configuration they lie on).
    """
    shown = [config for config in colours if config in set(data["configuration"])]
    if not shown:
        return [], {}
    few = markers and data[x].nunique() <= MARKER_EPOCHS
    twins = coincident(data.groupby(["configuration", x], observed=True)[y].mean().unstack(x).loc[shown])
    sns.lineplot(data=data.astype({"configuration": str}), x=x, y=y, hue="configuration", hue_order=shown,
                 palette={config: colours[config] for config in shown}, errorbar="sd", legend=False, ax=ax,
                 style="configuration", style_order=shown, dashes={c: _dash_pattern(c, twins) for c in shown},
                 markers={c: "o" for c in shown} if few else False, markersize=5, linewidth=1.6)
    if x == "epoch":
        _integer_epochs(ax, data)
    return shown, twins


def coincident(curves: pd.DataFrame, tolerance: float = COINCIDENT) -> dict[str, str]:
    """Rows of `curves` (one curve per row, x in columns) that lie on an earlier row, within `tolerance` of the
    y range: name -> the first row it hides. Such lines would cover each other entirely."""
    span = float(np.nanmax(curves.to_numpy()) - np.nanmin(curves.to_numpy())) if curves.size else 0.0
    twins: dict[str, str] = {}
    names = list(curves.index)
    for index, name in enumerate(names):
        for earlier in names[:index]:
            a, b = curves.loc[name].to_numpy(float), curves.loc[earlier].to_numpy(float)
            if earlier not in twins and np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(
                    a, b, rtol=0, atol=tolerance * span, equal_nan=True):
                twins[name] = earlier
                break
    return twins


def _dash_pattern(name: str, twins: dict[str, str]) -> str | tuple[float, float]:
    """Solid, or for the k-th curve hiding the same one a dash pattern that leaves gaps for those below."""
    if name not in twins:
        return ""
    rank = [other for other, first in twins.items() if first == twins[name]].index(name)
    return TWIN_DASHES[rank % len(TWIN_DASHES)]


def _dashes(index: int, twin: str | None) -> str | tuple:
    """Grey schedule lines: solid, then a dash pattern each (`index`); coloured ones (index 0): dashed if a twin."""
    if index == 0 and twin is None:
        return "-"
    return (0, TWIN_DASHES[max(0, index - 1) % len(TWIN_DASHES)])


def _notes(data: pd.DataFrame, twins: dict[str, str]) -> str:
    """What the lines and bands are, and what dashes mean when there are any."""
    seeds = data.groupby("configuration", observed=True)["seed"].nunique()
    notes = ["one seed per configuration: no band" if seeds.empty or seeds.max() < 2 else
             "lines: mean over seeds, bands: ±1 std over seeds"]
    if twins:
        notes.append("dashed: drawn over an almost identical curve")
    return "; ".join(notes)


def _integer_epochs(ax: Axes, data: pd.DataFrame) -> None:
    ax.xaxis.get_major_locator().set_params(integer=True)
    if data["epoch"].nunique() == 1:
        ax.set_xlim(data["epoch"].min() - 1, data["epoch"].max() + 1)


def _log_scale_if_wide(ax: Axes, values: pd.Series) -> None:
    low, high = values.min(), values.max()
    if low > 0 and high / low > LOG_SCALE_RATIO:
        ax.set_yscale("log")


# ---------------------------------------------------------------- Optuna's figures


def param_importances(study: optuna.Study, target_name: str = "objective") -> Figure:
    """Optuna's hyperparameter importances (fANOVA) of the study's COMPLETE trials."""
    with _optuna_plotting():
        ax = optuna.visualization.matplotlib.plot_param_importances(study, target_name=target_name)
    ax.get_legend().remove()  # one objective: its one legend entry says nothing
    ax.set_xlabel(f"importance for {target_name} (fraction of its variance)")
    return _adopt(ax, f"Hyperparameter importances for {target_name}")


def optimization_history(study: optuna.Study, target_name: str = "objective") -> Figure:
    """Optuna's optimisation history: each trial's objective value and the best so far."""
    with _optuna_plotting():
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=target_name)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2, frameon=False)
    ax.set_xlabel("trial number")
    return _adopt(ax, f"Optimisation history of {target_name}")


@contextmanager
def _optuna_plotting() -> Iterator[None]:
    """Optuna's plots switch pyplot to the ggplot style for good; keep that inside, and their warnings quiet."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _adopt(ax: Axes, title: str) -> Figure:
    """An Optuna figure, taken off pyplot's list (so it is freed like ours) and given our size, layout and title."""
    fig = ax.figure
    plt.close(fig)
    fig.set_size_inches(WIDTH, PANEL_HEIGHT + 1)
    fig.set_layout_engine("constrained")
    ax.set_title("", loc="left")
    ax.set_title(title)
    return fig


# ---------------------------------------------------------------- layout and saving


def _figure(panels: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH if panels == 1 else 4.2 * panels, PANEL_HEIGHT), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _legend_below(fig: Figure, labels: Sequence[str], colours: Colours, note: str = "",
                  handles: Sequence | None = None, title: str = "configuration",
                  references: Sequence[Line2D] = ()) -> None:
    """A legend under the axes, in as many columns as the labels' length allows, growing the figure to fit.

    `references` (baseline lines drawn on the axes) follow the configurations, under their own labels.
    """
    if handles is None:
        handles = [Line2D([], [], color=colours[label], linewidth=2.5) for label in labels]
    handles, labels = [*handles, *references], [*labels, *(line.get_label() for line in references)]
    longest = max((len(label) for label in labels), default=1)
    columns = max(1, min(len(labels), int(fig.get_figwidth() * CHARS_PER_INCH // (longest + 6))))
    rows = math.ceil(len(labels) / columns)
    fig.set_figheight(fig.get_figheight() + 0.25 * rows + 0.5 + (0.2 if note else 0))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False, fontsize=9,
               alignment="center", title=f"{title}\n({note})" if note else title, title_fontsize=9)


def save(fig: Figure, folder: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write `fig` as folder/stem.<format> for each format; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        fig.savefig(path, dpi=DPI, format=fmt)
        paths.append(path)
    return paths
