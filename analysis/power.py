"""Seeds needed: how many seeds per configuration a t-test needs to find a difference of a given size.

statsmodels' power functions (TTestPower for a paired test, TTestIndPower for two independent samples
of equal size, which Welch's test approaches when the spreads are alike) give the power at every seed
count from 2 to MAX_SEEDS; the answer is the first that reaches POWER. The power counted is that of
the rejection region on the side of the difference: the other side adds less than alpha / 2 (and
under 1e-5 wherever the power is near 80%), and scipy's non-central t returns NaN for it at large
effects.
"""
from __future__ import annotations

import math

import numpy as np
from statsmodels.stats.power import TTestIndPower, TTestPower

POWER = 0.8
MAX_SEEDS = 1000  # beyond this the answer is "more than 1000": no sweep will run that many
SEED_COUNTS = np.arange(2, MAX_SEEDS + 1)  # a t-test needs 2 seeds a side for a spread


def seeds_needed(effect_size: float, paired: bool, alpha: float, power: float = POWER) -> float:
    """The fewest seeds per configuration (pairs, when `paired`) at which a two-sided t-test at level `alpha`
    finds a difference of `effect_size` standard deviations with probability `power`.

    `effect_size` is the one `analysis.stats` reports: the mean per-seed difference over the SD of the
    differences (paired), or the difference of means over the pooled SD. NaN when it is NaN; math.inf
    when even MAX_SEEDS would not do (a difference of 0 is never found).
    """
    if math.isnan(effect_size):
        return math.nan
    if math.isinf(effect_size):  # no spread at all: the fewest seeds that measure one
        return float(SEED_COUNTS[0])
    if paired:
        reached = TTestPower().power(effect_size, SEED_COUNTS, alpha / 2, alternative="larger")
    else:
        reached = TTestIndPower().power(effect_size, SEED_COUNTS, alpha / 2, ratio=1.0, alternative="larger")
    enough = np.flatnonzero(reached >= power)  # NaN compares False; scipy's NaNs lie beyond the first that reaches it
    return float(SEED_COUNTS[enough[0]]) if len(enough) else math.inf
