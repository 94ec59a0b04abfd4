"""Adaptive seeds: the rounds that give another seed to each grid configuration not yet told apart from the best.

`seeds: {initial: 3, max: 10, until: separated}` runs seeds 1..initial of every configuration first. Once
every trial of a round is COMPLETE, the round is decided on the sweep's objective:
- the best is the configuration with the best mean over its seeds (on a tie, the first in spec order);
- every other configuration is compared with it seed by seed, on the seeds both ran: the paired t interval of
  the per-seed differences, the report's 95% interval (`analysis.stats.paired`);
- an interval that excludes 0 separates the configuration; one that holds 0 (identical values give [0, 0])
  gives it its next seed, unless it has run seed max;
- the best runs every seed such a configuration runs, so each new seed is a new pair.
The rounds end when no configuration gets a seed. Separation is decided afresh each round: a configuration
separated from one best may get seeds again when another becomes the best.

The plan is a pure function of the COMPLETE values: `plan` replays the rounds from the initial seeds, deciding
each from the values of the trials it planned only, so every launch (a resumed one, one of several sharing a
study) finds the same rounds and the same trials missing, and none is planned twice. A round with a trial not
COMPLETE (queued, running, failed, interrupted) is the current one: no later round is decided before it is
done, so a failed trial holds the rounds until a launch runs it again.

This is a budget rule, not a verdict: it looks at the intervals after every seed, uncorrected, so identical
configurations separate more often than 5% of the time. The report's Holm-corrected comparison is the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from experiments.plan import group_key, group_label
from experiments.spec import SweepSpec

Values = Mapping[tuple[str, int], float]  # (group key, seed) -> the objective value of its COMPLETE trial


@dataclass(frozen=True)
class Comparison:
    """One configuration against a round's best: the 95% paired t interval of it minus the best on `pairs` seeds."""

    group: str
    pairs: int
    ci_low: float
    ci_high: float

    @property
    def separated(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class Plan:
    """Where the rounds stand: each configuration's seeds (the first `depths[group]` of spec.seeds) and the
    latest decided round, whose best and comparisons made them (None and () before the first decision)."""

    depths: dict[str, int]  # group key -> seeds planned, in spec order
    rounds: int  # rounds decided after the initial seeds
    best: str | None
    comparisons: tuple[Comparison, ...]
    finished: bool  # every planned trial is COMPLETE and no configuration gets another seed

    @property
    def trials(self) -> int:
        return sum(self.depths.values())


@dataclass(frozen=True)
class Savings:
    """What adaptive seeds ran against every configuration running seeds.max; `saved` is final once `finished`."""

    configurations: int
    max_seeds: int
    trials: int  # planned so far; all COMPLETE once finished
    trials_at_max: int  # configurations x max_seeds
    saved: int  # trials_at_max - trials
    finished: bool


def plan(spec: SweepSpec, values: Values) -> Plan:
    """The rounds decided so far from the COMPLETE values of an adaptive grid (see the module docstring)."""
    depths = {group_key(cell): spec.adaptive.initial for cell in spec.cells}
    rounds, best, comparisons = 0, None, ()
    while all((group, seed) in values for group, depth in depths.items() for seed in spec.seeds[:depth]):
        best, comparisons = _compare(spec, depths, values)
        grown = _grow(spec, depths, best, comparisons)
        if grown == depths:
            return Plan(depths, rounds, best, comparisons, finished=True)
        depths, rounds = grown, rounds + 1
    return Plan(depths, rounds, best, comparisons, finished=False)


def planned_cells(spec: SweepSpec, planned: Plan) -> list[tuple[dict[str, Any], int]]:
    """The (configuration, seed) pairs of a plan, seed-major like `spec.trial_plan`."""
    depths = [planned.depths[group_key(cell)] for cell in spec.cells]
    return [(dict(cell), seed) for index, seed in enumerate(spec.seeds)
            for cell, depth in zip(spec.cells, depths) if index < depth]


def savings(spec: SweepSpec, planned: Plan) -> Savings:
    at_max = len(spec.cells) * spec.adaptive.max
    return Savings(configurations=len(spec.cells), max_seeds=spec.adaptive.max, trials=planned.trials,
                   trials_at_max=at_max, saved=at_max - planned.trials, finished=planned.finished)


def describe(spec: SweepSpec, planned: Plan) -> str:
    """One line on the latest decided round: its best, how many it separated, every configuration's seeds now."""
    if planned.best is None:
        return f"adaptive seeds: every configuration runs {spec.adaptive.initial} seeds first"
    best = group_label(next(cell for cell in spec.cells if group_key(cell) == planned.best))
    separated = sum(comparison.separated for comparison in planned.comparisons)
    seeds = ", ".join(str(depth) for depth in planned.depths.values())
    return (f"adaptive seeds, round {planned.rounds}: best {best}, {separated} of {len(planned.comparisons)} "
            f"separated from it; seeds per configuration in spec order: {seeds}{', final' if planned.finished else ''}")


def _compare(spec: SweepSpec, depths: dict[str, int], values: Values) -> tuple[str, tuple[Comparison, ...]]:
    """The best configuration by mean, and every other one's paired interval against it on their shared seeds."""
    # here, not at the top: every worker imports this module (through experiments.study) and would load scipy
    # and statsmodels, a second of each worker's start, for rounds only the launcher decides
    from analysis import stats

    runs = {group: np.array([values[group, seed] for seed in spec.seeds[:depth]]) for group, depth in depths.items()}
    pick = max if spec.direction == "maximize" else min
    best = pick(runs, key=lambda group: runs[group].mean())  # the first of equals: spec order
    comparisons = []
    for group, mine in runs.items():
        if group == best:
            continue
        pairs = min(len(mine), len(runs[best]))  # seeds are 1..depth, so the shared ones are the first `pairs`
        tests = stats.paired(mine[:pairs], runs[best][:pairs])
        comparisons.append(Comparison(group, pairs, float(tests.ci_low), float(tests.ci_high)))
    return best, tuple(comparisons)


def _grow(spec: SweepSpec, depths: dict[str, int], best: str, comparisons: tuple[Comparison, ...]) -> dict[str, int]:
    """The next round's depths: a seed more for each configuration still open, the best up to the deepest of them."""
    opened = {comparison.group: depths[comparison.group] + 1 for comparison in comparisons
              if not comparison.separated and depths[comparison.group] < spec.adaptive.max}
    grown = {**depths, **opened}
    if opened:
        grown[best] = max(depths[best], *opened.values())
    return grown
