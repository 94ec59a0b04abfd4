"""The tests of one comparison between two configurations' values over seeds, each vectorised over leading axes.

`paired` takes the two configurations' values on the seeds both ran, `welch` any two samples; the last
axis is the seeds, any axes before it are separate comparisons (the calibration tests pass thousands of
simulated sweeps at once, a report one comparison). Where a test has no answer (zero spread, too few
seeds) scipy's NaN stands and the caller says why.

Hedges' g is the difference in units of one configuration's seed-to-seed standard deviation, with
Hedges' small-sample correction J(df) = 1 - 3 / (4 df - 1) (Hedges 1981):
- paired: the mean per-seed difference over the average of the two SDs, sqrt((s_a^2 + s_b^2) / 2)
  (d_av, Lakens 2013, Front. Psychol. 4:863), with df = 2 (n - 1), the degrees of freedom of the two SDs;
- Welch: the difference of the means over the pooled SD, with df = n_a + n_b - 2.
Both are the same number for the same values, so a paired g and a Welch g read alike; with n seeds a side
and equal spreads both are the textbook between-groups g. The paired test itself, and `effect_size`, use
the spread of the per-seed differences instead (d_z), which is what a paired test sees.
"""
from __future__ import annotations

import gc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_PAIRS = 5  # fewer pairs have too few distinct resamples for a percentile interval
WILCOXON_PAIRS = 6  # with 5 pairs the smallest two-sided p is 2/32 = 0.0625: it could never say p < 0.05
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # the same values give the same interval in every report
BOOTSTRAP_BATCH = 200  # resamples held in memory at once, per comparison


@dataclass(frozen=True)
class Tests:
    """A comparison's statistics; each field an array of the inputs' leading shape (a 0-d array for one).

    `difference` is values minus best (of the means, which for paired values is the mean per-seed
    difference); `ci_low`, `ci_high` its 95% t interval; `p_value` two-sided; `effect_size` the absolute
    difference in units of the spread the test sees (the SD of the per-seed differences, or the pooled SD).
    """

    difference: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    hedges_g: np.ndarray
    effect_size: np.ndarray


def paired(values: np.ndarray, best: np.ndarray) -> Tests:
    """The paired t-test of `values - best`, seed by seed along the last axis (2+ seeds)."""
    differences = values - best  # (..., seeds)
    mean = differences.mean(axis=-1)
    average_sd = np.sqrt((values.var(axis=-1, ddof=1) + best.var(axis=-1, ddof=1)) / 2)
    with _quiet():
        result = stats.ttest_rel(values, best, axis=-1)
        interval = result.confidence_interval(CONFIDENCE)
        return Tests(difference=mean, ci_low=np.asarray(interval.low), ci_high=np.asarray(interval.high),
                     p_value=np.asarray(result.pvalue),
                     hedges_g=_correction(2 * (differences.shape[-1] - 1)) * mean / average_sd,
                     effect_size=np.abs(mean) / differences.std(axis=-1, ddof=1))


def welch(values: np.ndarray, best: np.ndarray) -> Tests:
    """Welch's t-test of the two means along the last axis (2+ seeds a side), for values not matched by seed."""
    difference = values.mean(axis=-1) - best.mean(axis=-1)
    df = values.shape[-1] + best.shape[-1] - 2
    pooled_sd = np.sqrt(((values.shape[-1] - 1) * values.var(axis=-1, ddof=1)
                         + (best.shape[-1] - 1) * best.var(axis=-1, ddof=1)) / df)
    with _quiet():
        result = stats.ttest_ind(values, best, axis=-1, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
        return Tests(difference=difference, ci_low=np.asarray(interval.low), ci_high=np.asarray(interval.high),
                     p_value=np.asarray(result.pvalue), hedges_g=_correction(df) * difference / pooled_sd,
                     effect_size=np.abs(difference) / pooled_sd)


def bootstrap_interval(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile bootstrap interval of the mean per-seed difference (last axis, BOOTSTRAP_PAIRS+ pairs)."""
    with _quiet():
        result = stats.bootstrap((differences,), np.mean, axis=-1, method="percentile",
                                 confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                                 batch=BOOTSTRAP_BATCH, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def wilcoxon_p(differences: np.ndarray) -> np.ndarray:
    """The two-sided Wilcoxon signed-rank p-value of the per-seed differences (last axis, WILCOXON_PAIRS+ pairs).

    Exact for small samples without ties or zeros (scipy's choice); it assumes no normal distribution.
    """
    with _quiet():
        return np.asarray(stats.wilcoxon(differences, axis=-1).pvalue)


def holm(p_values: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values, one family per row of the last axis (statsmodels' multipletests)."""
    p_values = np.asarray(p_values, dtype=float)
    if p_values.shape[-1] == 0:
        return p_values
    # multipletests' Holm runs gc.collect() on every call, 80 ms over a heap of scipy and pandas; frozen, the
    # heap is not scanned, and the calibration's thousands of families take a second rather than minutes. A heap
    # its caller had frozen (as the tests do) stays frozen.
    frozen_by_caller = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        return np.apply_along_axis(lambda family: multipletests(family, alpha=alpha, method="holm")[1], -1,
                                   p_values)
    finally:
        if not frozen_by_caller:
            gc.unfreeze()


def _correction(df: int) -> float:
    """Hedges' J: the factor that removes most of the small-sample bias of a standardised difference."""
    return 1 - 3 / (4 * df - 1)


@contextmanager
def _quiet() -> Iterator[None]:
    """Near-identical seeds make scipy warn of precision loss and zero spreads of division by zero; the NaN or
    the value stands, and the caller names the case."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
