"""Simulated sweeps, no training: how often the report's tests call identical configurations different, and how
often they find a planted difference (tests/test_stats_calibration.py, benchmarks/stats_calibration.py).

A simulated sweep is an array of objective values (sweeps, configurations, seeds). Each configuration's
values have standard deviation 1 over seeds; `correlation` of that variance is the seed's own luck,
shared by every configuration on that seed (the same data order, initialisation and noise), the rest is
each trial's own. The tests are `analysis.stats`', vectorised over the simulated sweeps, and the
decision is the report's (`analysis.comparisons`): Holm over every pair of configurations, real where
the adjusted p-value is below ALPHA.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats as distributions
from statsmodels.stats.power import TTestPower

from analysis import stats
from analysis.power import POWER, seeds_needed

ALPHA = stats.ALPHA
TOLERANCE = 0.998  # a calibrated test's rate lies in `binomial_range` this often
SEEDS = 5
PLANTED = 2.0  # SDs of a configuration's seed-to-seed spread
SHARED_LUCK = 0.5  # the share of a configuration's variance that is the seed's, in the seeds-needed checks
# (paired, effect size, level) of the seeds-needed checks: the effect in SDs of what the test sees
SEEDS_NEEDED_CASES = ((True, 1.0, ALPHA), (True, 2.0, ALPHA / 3), (False, 1.0, ALPHA), (False, 2.0, ALPHA))


@dataclass(frozen=True)
class Check:
    """A rate measured over simulated sweeps and the range a correct procedure puts it in, TOLERANCE of the time."""

    claim: str
    measured: float
    low: float
    high: float

    @property
    def holds(self) -> bool:
        return self.low <= self.measured <= self.high


def checks(rng: np.random.Generator, sweeps: int) -> list[Check]:
    """The calibration claims, each measured over `sweeps` simulated sweeps.

    False positives among identical configurations at the nominal level (a single paired comparison) or
    below it (Welch's, and any of a sweep's pairs under Holm); a planted 2-SD difference found at SEEDS
    seeds as often as statsmodels says; and with the seeds `seeds_needed` asks for the power is 80% or
    more, with one seed fewer it is not.
    """
    nominal = binomial_range(sweeps, ALPHA)
    found = []
    values = simulate(rng, sweeps, 2, SEEDS)
    found.append(Check(f"false positives: 2 identical configurations, paired t, {SEEDS} seeds",
                       float(real(values).mean()), *nominal))
    values = simulate(rng, sweeps, 2, SEEDS, correlation=0.0)
    # Welch's approximate degrees of freedom make it a little conservative with few seeds: at most nominal
    found.append(Check(f"false positives: 2 identical configurations, Welch t (seeds not shared), {SEEDS} seeds",
                       float(real(values, paired=False).mean()), 0.0, nominal[1]))
    for configurations in (3, 5):
        values = simulate(rng, sweeps, configurations, SEEDS)
        found.append(Check(f"false positives: {configurations} identical configurations, any of their "
                           f"{len(pairs(configurations))} pairs (Holm), {SEEDS} seeds",
                           float(real(values).any(axis=-1).mean()), 0.0, nominal[1]))
    for correlation in (0.0, SHARED_LUCK):
        values = simulate(rng, sweeps, 2, SEEDS, PLANTED, correlation)
        expected = TTestPower().power(PLANTED / np.sqrt(2 * (1 - correlation)), SEEDS, ALPHA)
        found.append(Check(f"power: a {PLANTED:g}-SD difference found with {SEEDS} seeds, the seed's luck "
                           f"{correlation:.0%} of the spread (statsmodels: {expected:.1%})",
                           float(real(values)[:, 0].mean()), *binomial_range(sweeps, expected)))
    low, high = binomial_range(sweeps, POWER)
    for paired, effect, alpha in SEEDS_NEEDED_CASES:
        needed = int(seeds_needed(effect, paired, alpha))
        test = "paired t" if paired else "Welch t"
        for seeds, bounds, which in ((needed, (low, 1.0), "the"), (needed - 1, (0.0, high), "one fewer than the")):
            # paired: the differences' SD is sqrt(2 (1 - SHARED_LUCK)) = 1, so `effect` is d_z as planted
            values = simulate(rng, sweeps, 2, seeds, effect, SHARED_LUCK if paired else 0.0)
            found.append(Check(f"seeds needed: power with {seeds}, {which} {needed} seeds_needed gives for a "
                               f"{effect:g}-SD difference ({test}, level {alpha:.3g})",
                               float(real(values, paired, alpha)[:, 0].mean()), *bounds))
    return found



def simulate(rng: np.random.Generator, sweeps: int, configurations: int, seeds: int, shift: float = 0.0,
             correlation: float = 0.5) -> np.ndarray:
    """(sweeps, configurations, seeds) values; the last configuration's mean is `shift` SDs above the others'."""
    luck = rng.standard_normal((sweeps, 1, seeds)) * np.sqrt(correlation)  # the seed's, shared
    own = rng.standard_normal((sweeps, configurations, seeds)) * np.sqrt(1 - correlation)
    values = luck + own
    values[:, -1] += shift
    return values


def pairs(configurations: int) -> list[tuple[int, int]]:
    """Every pair of configurations, as the report's Holm family counts them."""
    return list(itertools.combinations(range(configurations), 2))


def real(values: np.ndarray, paired: bool = True, alpha: float = ALPHA) -> np.ndarray:
    """(sweeps, pairs) booleans: which pairs the report calls a real difference at `alpha`, Holm over every pair."""
    test = stats.paired if paired else stats.welch
    p_values = np.stack([test(values[:, a], values[:, b]).p_value for a, b in pairs(values.shape[1])], axis=-1)
    return stats.holm(p_values, alpha) < alpha


def real_against_apparent_best(values: np.ndarray) -> np.ndarray:
    """(sweeps,) booleans: whether Holm over only the k - 1 comparisons with the highest mean calls any real,
    the family the report does not use (it is too small: the best was picked from the same values)."""
    sweeps, configurations, _ = values.shape
    best = values.mean(axis=-1).argmax(axis=-1)  # (sweeps,)
    others = np.array([[c for c in range(configurations) if c != b] for b in best])  # (sweeps, k - 1)
    rows = np.arange(sweeps)[:, None]
    p_values = stats.paired(values[rows, others], values[rows, best[:, None]]).p_value  # (sweeps, k - 1)
    return (stats.holm(p_values) < ALPHA).any(axis=-1)


def binomial_range(sweeps: int, rate: float) -> tuple[float, float]:
    """The rates a test with true rate `rate` shows over `sweeps` simulated sweeps, TOLERANCE of the time."""
    low, high = distributions.binom.interval(TOLERANCE, sweeps, rate)
    return low / sweeps, high / sweeps


def coverage(values: np.ndarray, best: np.ndarray, shift: float, bootstrap: bool = False) -> float:
    """How often the paired 95% interval (t, or percentile bootstrap) of `values - best` holds `shift`."""
    if bootstrap:
        low, high = stats.bootstrap_interval(values - best)
    else:
        tests = stats.paired(values, best)
        low, high = tests.ci_low, tests.ci_high
    return float(((low <= shift) & (shift <= high)).mean())
