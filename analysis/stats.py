"""Which configurations differ from the best by more than the seed-to-seed spread: Welch's t-test per configuration.

Each configuration's finished seeds are compared with the best configuration's on the sweep's
objective. Welch's test does not assume equal spreads; with two or three seeds a side it can only
see large differences, and the p-values are not corrected for the number of comparisons.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
LARGER = "larger than the seed spread"
WITHIN = "within the seed spread"
TOO_FEW = "not testable: needs 2+ seeds on both sides"
NO_SPREAD = "not testable: every seed gave the same value"


def compare_to_best(trials: pd.DataFrame, table: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per other configuration with finished seeds: its difference in mean `column` from the best's.

    `table` is `tables.summary_table` (best first). Columns: configuration, seeds, difference (this
    minus best), ci_low and ci_high (95% Welch interval of the difference), p_value, verdict.
    """
    complete = trials[trials["status"] == "COMPLETE"]
    samples = {str(config): values[column].dropna().to_numpy(float)
               for config, values in complete.groupby("configuration", observed=True)}
    ranked = [config for config in table["configuration"] if len(samples.get(config, ()))]
    rows = []
    for config in ranked[1:]:
        rows.append({"configuration": config, "seeds": len(samples[config]),
                     **welch(samples[config], samples[ranked[0]])})
    columns = ["configuration", "seeds", "difference", "ci_low", "ci_high", "p_value", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def welch(values: np.ndarray, best: np.ndarray) -> dict[str, float | str]:
    """difference of means, its 95% Welch interval, the two-sided p-value and a verdict at ALPHA."""
    difference = float(values.mean() - best.mean())
    nan = float("nan")
    if min(len(values), len(best)) < 2:
        return dict(difference=difference, ci_low=nan, ci_high=nan, p_value=nan, verdict=TOO_FEW)
    if values.std() == 0 and best.std() == 0:
        return dict(difference=difference, ci_low=nan, ci_high=nan, p_value=nan, verdict=NO_SPREAD)
    with warnings.catch_warnings():  # near-identical seeds: scipy warns of precision loss, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(values, best, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
    p_value = float(result.pvalue)
    return dict(difference=difference, ci_low=float(interval.low), ci_high=float(interval.high), p_value=p_value,
                verdict=LARGER if p_value < ALPHA else WITHIN)


def formatted(comparisons: pd.DataFrame, unit: str = "dB") -> pd.DataFrame:
    """The comparisons as a report shows them: signed differences, intervals and p-values as strings."""
    return pd.DataFrame({
        "configuration": comparisons["configuration"],
        "seeds": comparisons["seeds"].astype(int),
        f"difference from best ({unit})": [f"{value:+.2f}" for value in comparisons["difference"]],
        "95% interval": ["-" if np.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"
                         for low, high in zip(comparisons["ci_low"], comparisons["ci_high"])],
        "p (Welch)": ["-" if np.isnan(p) else f"{p:.3f}" for p in comparisons["p_value"]],
        "verdict": comparisons["verdict"],
    })
