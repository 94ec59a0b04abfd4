"""Every configuration against the best on the sweep's objective: paired where seeds are shared, Holm-corrected
over every pair, a plain verdict, and the seeds that would tell the two apart.

A seed gives every configuration the same data order, initialisation and noise, so two configurations are
compared seed by seed: the paired t-test of the per-seed differences, the seed's own luck cancelled. Where
they share fewer than 2 finished seeds, Welch's t-test of the two means stands in. The best was picked by
looking at these same numbers, so Holm's correction runs over every pair of configurations it might have
been compared in (k (k - 1) / 2 of them), not only the k - 1 comparisons shown: with three identical
configurations, correcting the two comparisons with the apparent best alone finds a "real" difference
about 6% of the time at a level of 5% (benchmarks/stats_calibration.py measures both).

Seeds needed are counted at level ALPHA / m, the strictest step of Holm's correction over the m pairs, so
the number holds whatever the other comparisons show.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats
from analysis.power import MAX_SEEDS, seeds_needed

ALPHA = stats.ALPHA
MIN_SEEDS = 2  # a t-test needs a spread: 2 pairs, or 2 seeds a side
PAIRED, WELCH = "paired t", "Welch t"
REAL = "real difference"
NOT_TOLD = "not told apart"
TOO_FEW = "not testable: needs 2+ seeds on both sides"
SAME_DIFFERENCE = "not testable: the same difference on every seed"
NO_SPREAD = "not testable: every seed gave the same value"
COLUMNS = ["configuration", "test", "seeds", "best_seeds", "differences", "difference", "ci_low", "ci_high",
           "bootstrap_low", "bootstrap_high", "p_value", "p_holm", "p_wilcoxon", "hedges_g", "effect_size",
           "seeds_needed", "verdict"]


@dataclass(frozen=True)
class _Pair:
    """Two configurations' values as their test takes them: on the shared seeds when paired."""

    test: str  # PAIRED, WELCH, or "" when neither can run
    values: np.ndarray  # (seeds,) the configuration's
    best: np.ndarray  # (seeds,) the one it is compared with
    tests: stats.Tests | None
    untestable: str = ""  # why there is no p-value, or ""


def compare_to_best(trials: pd.DataFrame, table: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per other configuration with finished seeds (COLUMNS): how its `column` differs from the best's.

    `table` is `tables.summary_table` (best first). `difference` is this minus the best; `differences` the
    per-seed ones (paired only); `p_holm` is adjusted over every testable pair of configurations; NaN
    where a statistic does not apply. attrs: `pairs` (the family's size) and `level` (seeds needed's).
    """
    by_seed = finished_values(trials, column)
    ranked = [config for config in table["configuration"] if config in by_seed]
    pairs = {(better, worse): _pair(by_seed[worse], by_seed[better])
             for better, worse in itertools.combinations(ranked, 2)}
    family = [key for key, pair in pairs.items() if not pair.untestable]
    adjusted = dict(zip(family, stats.holm([float(pairs[key].tests.p_value) for key in family])))
    level = ALPHA / max(len(family), 1)
    rows = [_row(config, pairs[(ranked[0], config)], adjusted.get((ranked[0], config), math.nan), level)
            for config in ranked[1:]]
    compared = pd.DataFrame(rows, columns=COLUMNS)
    compared.attrs.update(pairs=len(family), level=level)
    return compared


def finished_values(trials: pd.DataFrame, column: str) -> dict[str, pd.Series]:
    """Per configuration with a finished seed: its COMPLETE trials' `column` by seed (a repeated seed's mean)."""
    complete = trials[(trials["status"] == "COMPLETE") & trials[column].notna()]
    return {str(config): values.groupby("seed")[column].mean()
            for config, values in complete.groupby("configuration", observed=True)}


def _pair(values: pd.Series, best: pd.Series) -> _Pair:
    shared = values.index.intersection(best.index)
    if len(shared) >= MIN_SEEDS:
        matched, other = values[shared].to_numpy(float), best[shared].to_numpy(float)
        return _Pair(PAIRED, matched, other, stats.paired(matched, other),
                     SAME_DIFFERENCE if np.ptp(matched - other) == 0 else "")
    mine, theirs = values.to_numpy(float), best.to_numpy(float)
    if min(len(mine), len(theirs)) < MIN_SEEDS:
        return _Pair("", mine, theirs, None, TOO_FEW)
    return _Pair(WELCH, mine, theirs, stats.welch(mine, theirs),
                 NO_SPREAD if np.ptp(mine) == 0 and np.ptp(theirs) == 0 else "")


def _row(config: str, pair: _Pair, p_holm: float, level: float) -> dict:
    nan = math.nan
    row = dict(configuration=config, test=pair.test, seeds=len(pair.values), best_seeds=len(pair.best),
               differences=tuple(pair.values - pair.best) if pair.test == PAIRED else (),
               difference=float(pair.values.mean() - pair.best.mean()), ci_low=nan, ci_high=nan,
               bootstrap_low=nan, bootstrap_high=nan, p_value=nan, p_holm=nan, p_wilcoxon=nan, hedges_g=nan,
               effect_size=nan, seeds_needed=nan, verdict=pair.untestable)
    if pair.tests is not None:
        row.update(hedges_g=float(pair.tests.hedges_g))
    if pair.untestable:
        return row
    tests = pair.tests
    row.update(difference=float(tests.difference), ci_low=float(tests.ci_low), ci_high=float(tests.ci_high),
               p_value=float(tests.p_value), p_holm=p_holm, effect_size=float(tests.effect_size),
               seeds_needed=seeds_needed(float(tests.effect_size), pair.test == PAIRED, level),
               verdict=REAL if p_holm < ALPHA else NOT_TOLD)
    if pair.test != PAIRED:
        return row
    differences = pair.values - pair.best
    if len(differences) >= stats.BOOTSTRAP_PAIRS:
        low, high = stats.bootstrap_interval(differences)
        row.update(bootstrap_low=float(low), bootstrap_high=float(high))
    if len(differences) >= stats.WILCOXON_PAIRS:
        row.update(p_wilcoxon=float(stats.wilcoxon_p(differences)))
    return row


def formatted(comparisons: pd.DataFrame, unit: str = "dB") -> pd.DataFrame:
    """The comparisons as a report shows them: signed differences, intervals, p-values and counts as strings."""
    suffix = f" ({unit})" if unit else ""
    return pd.DataFrame({
        "configuration": comparisons["configuration"],
        "test": [test or "-" for test in comparisons["test"]],
        "seeds": [str(seeds) if test == PAIRED else f"{seeds} vs {best}"
                  for test, seeds, best in zip(comparisons["test"], comparisons["seeds"], comparisons["best_seeds"])],
        f"per-seed difference{suffix}": [", ".join(f"{value:+.2f}" for value in values) or "-"
                                         for values in comparisons["differences"]],
        f"difference from best{suffix}": [f"{value:+.2f}" for value in comparisons["difference"]],
        "95% t interval": [_interval(low, high) for low, high in zip(comparisons["ci_low"], comparisons["ci_high"])],
        "95% bootstrap interval": [_interval(low, high) for low, high in
                                   zip(comparisons["bootstrap_low"], comparisons["bootstrap_high"])],
        "p": [p_text(p) for p in comparisons["p_value"]],
        "p (Holm)": [p_text(p) for p in comparisons["p_holm"]],
        "p (Wilcoxon)": [p_text(p) for p in comparisons["p_wilcoxon"]],
        "Hedges' g": ["-" if math.isnan(g) or math.isinf(g) else f"{g:+.2f}" for g in comparisons["hedges_g"]],
        "seeds needed": [seeds_text(n) for n in comparisons["seeds_needed"]],
        "verdict": comparisons["verdict"],
    })


def seeds_text(seeds: float) -> str:
    """`7`, `more than 1000`, or `-` where the spread is unknown."""
    if math.isnan(seeds):
        return "-"
    return f"more than {MAX_SEEDS}" if math.isinf(seeds) else str(int(seeds))


def seeds_sentence(config: str, best: str, difference: float, seeds: float, unit: str) -> str:
    """`Monotonic vs None: -0.64 dB, about 9 seeds would tell them apart.`"""
    head = f"{config} vs {best}: {difference:+.2f}{' ' + unit if unit else ''}"
    if math.isinf(seeds):
        return f"{head}; not even {MAX_SEEDS} seeds would tell them apart."
    return f"{head}, about {int(seeds)} seeds would tell them apart."


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"


def p_text(p: float) -> str:
    """`0.012`, `< 0.001`, or `-` where there is no test."""
    if math.isnan(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
