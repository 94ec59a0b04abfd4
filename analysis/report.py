"""A sweep's report: its runs read from MLflow, every figure and table made, all written to one folder.

The folder gets the figures (`1_psnr_per_frame.png`, one per per-frame metric, ...), `summary.csv` and `summary.md`,
`comparisons.csv` (each configuration against the best, `analysis.comparisons`), and `report.md` and
`index.html`, which show the same figures, the spec, both tables, the sweep's device time and the
trials that ran from uncommitted code.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.trial import TrialState

from analysis import comparisons, figures, provenance, stats, tables
from analysis.document import Document, FigureEntry, Section, html_page, markdown, markdown_table
from analysis.errors import ReportError
from analysis.labels import COPY_FIRST, COPY_PREVIOUS
from analysis.power import POWER
from analysis.runs import Sweep, load_study, load_sweep, missing_runs
from experiments.schema import FRAME_METRICS, ONE_STEP_PSNR, PSNR_FRAMES, SWEEP_PRUNER, SWEEP_SPEC
from experiments.spec import DEFAULT_TRACKING_URI

FORMATS = ("png", "pdf", "svg")
REPORTS_DIR = Path("reports")
MAX_CONFIGURATIONS = 10  # a sampled sweep's per-configuration figures show its best ones only
# the csv files keep six significant digits: a sweep's seconds are hours of 0.0000x, not 0
CSV_FLOAT = "%.6g"
DOCUMENTS = ("summary.csv", "summary.md", "comparisons.csv", "report.md", "index.html")
FIGURE_STEMS = (*(f"1_{metric.column}_per_frame" for metric in FRAME_METRICS), "2_loss_curves", "3_teacher_forcing",
                "4_kl_beta", "5_val_psnr", "7_param_importances", "7_optimization_history")


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote, and what it could not make (`notes`)."""

    sweep: str
    folder: Path
    markdown: Path
    html: Path
    files: tuple[Path, ...]
    notes: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class _Made:
    stem: str
    title: str
    caption: str
    figure: Figure


def parse_formats(text: str) -> tuple[str, ...]:
    """`--format png,pdf` -> ('png', 'pdf'); a format matplotlib is not asked for here is a ReportError."""
    formats = tuple(dict.fromkeys(part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()))
    wrong = [fmt for fmt in formats if fmt not in FORMATS]
    if wrong or not formats:
        raise ReportError(f"--format: {', '.join(wrong) or repr(text)} is not a figure format; "
                          f"give a comma-separated list of {', '.join(FORMATS)}")
    return formats


def write_report(tracking_uri: str = DEFAULT_TRACKING_URI, sweep: str | None = None,
                 experiment: str | None = None, out: str | Path | None = None,
                 formats: Sequence[str] = ("png",)) -> Report:
    """Read a sweep (the latest when neither `sweep` nor `experiment` is given) and write its report into `out`
    (default reports/<sweep>)."""
    started = time.perf_counter()
    data = load_sweep(tracking_uri, sweep=sweep, experiment=experiment)
    folder = Path(out) if out is not None else REPORTS_DIR / data.name
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"--out: {folder} is a file; give a folder for the report")
    table = tables.summary_table(data.trials, data.frames, data.metric, data.direction)
    compared = comparisons.compare_to_best(data.trials, table, table.attrs["objective"])
    study, why = load_study(data)
    made, notes = make_figures(data, table, study, why)
    notes += lost_runs(data, study)
    summary = tables.with_baselines(table, data.trials, data.baseline_frames)
    if not tables.is_baseline(summary).any():
        notes.append("no copy baselines in the table or figures 1 and 5: the finished trials' runs were logged "
                     "without them (before trials logged baselines)")
    try:
        written = _write(folder, data, made, summary, compared, notes, formats,
                         provenance.seeds_saved(study, data.trials))
    except OSError as err:  # a read-only or full disk, a folder we may not write into
        raise ReportError(f"--out: cannot write the report into {folder} ({err.strerror or err}); "
                          "give a folder you can write to") from None
    return Report(data.name, folder, folder / "report.md", folder / "index.html", tuple(written), tuple(notes),
                  time.perf_counter() - started)


def _write(folder: Path, data: Sweep, made: list[_Made], summary: pd.DataFrame, compared: pd.DataFrame,
           notes: list[str], formats: Sequence[str], seeds_saved: str | None) -> list[Path]:
    """Every file of the report into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_old_figures(folder)
    written: list[Path] = []
    entries = []
    for item in made:
        paths = figures.save(item.figure, folder, item.stem, formats)
        written += paths
        entries.append(FigureEntry(paths[0].name, item.title, item.caption, tuple(p.name for p in paths[1:])))
    summary.to_csv(folder / "summary.csv", index=False, float_format=CSV_FLOAT)
    (folder / "summary.md").write_text(markdown_table(tables.formatted(summary)) + "\n", encoding="utf-8")
    per_seed = compared["differences"].map(lambda values: " ".join(f"{value:.6g}" for value in values))
    compared.assign(differences=per_seed).to_csv(folder / "comparisons.csv", index=False, float_format=CSV_FLOAT)
    document = build_document(data, summary, compared, tuple(entries), notes, seeds_saved)
    (folder / "report.md").write_text(markdown(document), encoding="utf-8")
    (folder / "index.html").write_text(html_page(document), encoding="utf-8")
    return written + [folder / name for name in DOCUMENTS]


def _remove_old_figures(folder: Path) -> None:
    """An earlier report's figures, in any format: a figure this report leaves out (or a format not asked
    for) must not stay behind looking current."""
    for stem in FIGURE_STEMS:
        for fmt in FORMATS:
            (folder / f"{stem}.{fmt}").unlink(missing_ok=True)


def make_figures(data: Sweep, table: pd.DataFrame, study: optuna.Study | None,
                 why: str) -> tuple[list[_Made], list[str]]:
    """Figures 1-5 from the COMPLETE trials, and Optuna's two for a sampled sweep from its `study` (None: `why`);
    notes say what was left out."""
    notes: list[str] = []
    colours = figures.palette(data.configurations)
    finished = [config for config, seeds in zip(table["configuration"], table["seeds"]) if seeds > 0]
    shown = finished[:MAX_CONFIGURATIONS]
    among = ""
    if len(finished) > len(shown):
        among = f" Only the {len(shown)} best of {len(finished)} configurations are drawn."
        notes.append(f"figures 1, 2 and 5 show the {len(shown)} best of {len(finished)} configurations")
    epochs = data.epochs[data.epochs["status"] == "COMPLETE"]

    def drawn(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[(rows["status"] == "COMPLETE") & rows["configuration"].isin(shown)]

    best_epochs, copied, levels = drawn(data.epochs), drawn(data.baseline_frames), drawn(data.trials)
    copy_first, copy_previous = levels["copy_first"].mean(), levels["copy_previous"].mean()
    one_step = (best_epochs["metric"] == ONE_STEP_PSNR.key).any()
    spread = "line: mean over seeds, band: ±1 std over seeds."
    made = []
    frames = drawn(data.frames)
    for metric in FRAME_METRICS:
        if frames[metric.column].isna().all():
            notes.append(f"no {metric.label} per frame figure: the runs were logged before trials logged it")
            continue
        reference = copied if metric is PSNR_FRAMES else None  # the copy baselines are PSNRs
        made.append(_Made(
            f"1_{metric.column}_per_frame", f"{metric.label} per frame",
            f"{metric.label} of each predicted frame of the validation video after the last epoch; {spread}"
            + (" Dashed grey: copying the first frame forward, the floor a model must beat."
               if reference is not None and len(reference) else "") + among,
            figures.per_frame(frames, colours, reference, metric)))
    made += [
        _Made("2_loss_curves", "Training losses",
              f"Training loss per epoch: total, reconstruction (MSE) and KL terms; {spread}{among}",
              figures.loss_curves(best_epochs, colours)),
        _Made("3_teacher_forcing", "Teacher forcing ratio",
              "Teacher forcing ratio of each epoch, one line per teacher forcing setting of the sweep.",
              figures.tfr_schedule(epochs, colours)),
        _Made("4_kl_beta", "KL annealing",
              "KL weight β of each epoch, one line per KL annealing setting of the sweep.",
              figures.kl_beta_schedule(epochs, colours)),
        _Made("5_val_psnr", "Validation PSNR per epoch",
              "Validation PSNR (mean over the video's predicted frames) after each epoch"
              + (", left of the rollout from the first frame, right of each frame predicted from the true frame "
                 "before it" if one_step else "") + f"; {spread}" + _levels_caption(copy_first, copy_previous, one_step)
              + among,
              figures.val_psnr_curves(best_epochs, colours, copy_first, copy_previous)),
    ]
    if data.sampler == "grid":
        return made, notes
    if study is None:
        notes.append(f"no Optuna figures: {why}")
        return made, notes
    for stem, title, caption, make, needs in (
            ("7_param_importances", "Hyperparameter importances",
             "How much of the objective's variation each sampled hyperparameter explains (Optuna, fANOVA).",
             figures.param_importances, why_no_importances),
            ("7_optimization_history", "Optimisation history",
             "Objective value of each trial in the order the trials were numbered, and the best so far.",
             figures.optimization_history, why_no_history)):
        reason = needs(study)
        if reason:
            notes.append(f"no {title.lower()} figure: {reason}")
            continue
        try:
            made.append(_Made(stem, title, caption, make(study, target_name=data.metric)))
        except (ValueError, RuntimeError) as err:  # Optuna's refusals for too few or degenerate trials
            notes.append(f"no {title.lower()} figure: Optuna says {' '.join(str(err).split())}")
    return made, notes


def lost_runs(data: Sweep, study: optuna.Study | None) -> list[str]:
    """A note when the study finished trials whose runs this MLflow database does not hold (it was deleted or
    replaced between launches); none when the study cannot be read."""
    missing = [] if study is None else missing_runs(data, study)
    if not missing:
        return []
    numbers = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return [f"the Optuna study has {len(missing)} finished trial(s) whose runs are not in MLflow at "
            f"{data.tracking_uri} (trials {numbers}), so they are in no table or figure: was the database deleted "
            "or replaced since they ran?"]


def _levels_caption(copy_first: float, copy_previous: float, one_step: bool) -> str:
    """What figure 5's dashed lines are, or '' when it has none."""
    if math.isnan(copy_first):
        return ""
    previous = " (left) and the previous frame (right)" if one_step and not math.isnan(copy_previous) else ""
    return f" Dashed grey: copying the first frame{previous}, mean over the trials drawn."


def why_no_importances(study: optuna.Study) -> str:
    """Why Optuna cannot rank the study's hyperparameters, or '' when it can."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"importances need 2 or more COMPLETE trials, the study has {len(complete)}"
    varied = {name for trial in complete for name in trial.params
              if len({str(t.params.get(name)) for t in complete}) > 1}
    if not varied:
        return "no sampled hyperparameter took more than one value among the COMPLETE trials"
    return ""


def why_no_history(study: optuna.Study) -> str:
    """Why there is no optimisation history to draw, or '' when there is."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "the study has no COMPLETE trial"
    return ""


# ---------------------------------------------------------------- the document


def build_document(data: Sweep, table: pd.DataFrame, compared: pd.DataFrame,
                   entries: tuple[FigureEntry, ...], notes: list[str], seeds_saved: str | None) -> Document:
    counts = data.trials["status"].value_counts()
    trials = ", ".join(f"{counts[s]} {s.lower()}" for s in ("COMPLETE", "FAILED", "PRUNED", "RUNNING") if s in counts)
    facts = [("sweep", data.name), ("trials", f"{len(data.trials)} ({trials})"),
             ("configurations", str(len(data.configurations))),
             ("seeds", ", ".join(str(s) for s in sorted(data.trials["seed"].unique()))),
             ("sampler", f"{data.sampler}, pruner {data.tags.get(SWEEP_PRUNER, 'none')}"),
             ("objective", f"{data.metric} ({data.direction})"),
             ("device time", provenance.device_time(data.trials))]
    if seeds_saved is not None:
        facts.append(("adaptive seeds", seeds_saved))
    facts += [("code", provenance.code(data.trials)),
              ("MLflow", f"{data.tracking_uri}, experiment {data.experiment_id}, parent run {data.parent_run_id}")]
    if data.earlier_sweeps:
        facts.append(("note", f"the experiment also holds {data.earlier_sweeps} earlier sweep(s) of this name; "
                              "only the latest is reported"))
    window = table.attrs["frame_window"]
    table_notes = (f"Mean ± std over the finished seeds of each configuration, best first by {data.metric}. "
                   f"Failed and pruned trials are counted, never averaged in. PSNR frames: the first and the last "
                   f"{window} predicted frames of the validation video after the last epoch. Wall time: a "
                   "finished trial's, start to end, data loading and checkpoints included. Device-hours: the time "
                   "all of a configuration's ended trials held their GPU or CPU, failed and pruned ones included "
                   "(n/a for runs logged before trials recorded it). The same table is in `summary.csv`.")
    before = [Section("Summary", (table_notes, *_baseline_text(table)), tables.formatted(table)),
              Section("Differences from the best configuration", _comparison_text(table, compared),
                      comparisons.formatted(compared, _unit(table)) if compared["p_value"].notna().any() else None)]
    after = []
    problems = data.trials[data.trials["status"] != "COMPLETE"]
    if len(problems):
        listed = problems[["trial", "configuration", "seed", "status", "error"]].astype({"configuration": str})
        after.append(Section("Trials that did not finish", (
            "Not in any mean above. A failed grid trial runs again when the same `python run_sweep.py` "
            "command is repeated.",), listed.replace({"error": {"": "-"}})))
    dirty = provenance.uncommitted(data.trials)
    if len(dirty):
        after.append(Section("Runs from uncommitted code", (
            "These trials ran with changes that were not committed (tag `git.dirty=true`): their commit alone "
            "does not reproduce them.",), dirty))
    if notes:
        after.append(Section("Left out", tuple(note[0].upper() + note[1:] + "." for note in notes)))
    after.append(Section("Sweep spec", (f"As logged with the sweep (`{data.tags.get(SWEEP_SPEC, '?')}`).",),
                         code=data.spec_text or "(not logged)", code_language="yaml"))
    return Document(f"Sweep report: {data.name}", tuple(facts), tuple(before), entries, tuple(after))


def _baseline_text(table: pd.DataFrame) -> tuple[str, ...]:
    """A sentence on the copy baselines, then one per configuration that does not beat copying the first frame
    (or one saying every configuration does); nothing when the runs logged no baselines."""
    baseline = tables.is_baseline(table)
    copies = table[baseline].set_index("configuration")
    if copies.empty:
        return ()
    levels = []
    if COPY_FIRST in copies.index:
        levels.append(f"copying the first frame forward scores {copies.loc[COPY_FIRST, 'final_val_psnr_mean']:.2f} dB "
                      "(what a rollout must beat)")
    if COPY_PREVIOUS in copies.index:
        levels.append(f"copying the true previous frame {copies.loc[COPY_PREVIOUS, f'{tables.ONE_STEP}_mean']:.2f} dB "
                      "(what a one-step prediction must beat)")
    sentences = [f"Baselines on the same validation video: {' and '.join(levels)}; the gain over copy-first in the "
                 "table is a configuration's final val PSNR minus copy-first's, mean over its seeds."]
    gains = table[~baseline].dropna(subset=[tables.GAIN])
    behind = gains[gains[tables.GAIN] <= 0]
    sentences += [f"{config} does not beat copying the first frame ({gain:+.2f} dB)."
                  for config, gain in zip(behind["configuration"], behind[tables.GAIN])]
    if len(gains) and behind.empty:
        sentences.append("Every configuration with a finished seed beats copying the first frame.")
    return tuple(sentences)


def _comparison_text(table: pd.DataFrame, compared: pd.DataFrame) -> tuple[str, ...]:
    objective, unit = table.attrs["objective"], _unit(table)
    best = table.iloc[0]
    name = tables.HEADERS.get(objective, objective).removesuffix(f" ({unit})")
    seeds = int(best["seeds"])
    first = (f"Best: {best['configuration']}, {name} {best[f'{objective}_mean']:.2f}"
             + (f" ± {best[f'{objective}_std']:.2f}" if seeds > 1 else "") + (f" {unit}" if unit else "")
             + f" ({seeds} seed{'s' if seeds > 1 else ''}).")
    if compared.empty:
        return first, "No other configuration has a finished seed to compare with."
    if compared["p_value"].isna().all():
        return first, ("The seed-to-seed spread is unknown: no comparison has two or more finished seeds on both "
                       "sides, so no difference can be told from seed noise. Give the sweep more seeds "
                       "(e.g. `seeds: [1, 2, 3]`) and run it again: finished trials are kept.")
    pairs, level = compared.attrs["pairs"], compared.attrs["level"]
    real = compared[compared["verdict"] == comparisons.REAL]
    unsure = compared[compared["verdict"] == comparisons.NOT_TOLD]

    def listed(rows: pd.DataFrame) -> str:
        return "; ".join(f"{row.configuration} ({row.difference:+.2f}{' ' + unit if unit else ''}, "
                         f"Holm p {comparisons.p_text(row.p_holm)})" for row in rows.itertuples())

    lines = [first,
             "Each configuration is compared with the best on the seeds both ran: a seed gives both the same data "
             "order, initialisation and noise, so the paired t-test of the per-seed differences cancels the seed's "
             "luck. Where two configurations share fewer than 2 finished seeds, Welch's t-test of their means "
             "stands in. The 95% t interval is that of the mean difference; the percentile bootstrap interval "
             f"(from {stats.BOOTSTRAP_PAIRS} pairs) and the Wilcoxon signed-rank test (from {stats.WILCOXON_PAIRS} "
             "pairs) check it without assuming the differences are normal. Hedges' g is the difference in "
             "standard deviations of a configuration's seed-to-seed spread (d_av with Hedges' correction).",
             f"p (Holm): the p-values are Holm-corrected over all {pairs} pair{'s' if pairs > 1 else ''} of "
             "configurations that could be tested, since the best was picked from these same numbers. The same "
             "table, unrounded, is in `comparisons.csv`.",
             f"Real differences at {comparisons.ALPHA} after Holm's correction: "
             + (listed(real) if len(real) else "none") + "."]
    if len(unsure):
        lines.append("Not told apart from the best (the difference may be seed noise): " + listed(unsure) + ".")
    lines.append(f"Seeds needed: per configuration, for an {POWER:.0%} chance of finding the observed difference "
                 f"at level {comparisons.ALPHA}/{pairs} = {level:.3g} (the strictest step of Holm's correction), "
                 "if the observed difference and spread were the true ones; with few seeds both are rough guesses.")
    lines += [comparisons.seeds_sentence(row.configuration, str(best["configuration"]), row.difference,
                                         row.seeds_needed, unit)
              for row in compared.itertuples() if not math.isnan(row.seeds_needed)]
    return tuple(lines)


def _unit(table: pd.DataFrame) -> str:
    return tables.unit(table.attrs["objective"])

