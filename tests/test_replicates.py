"""experiments/replicates.py: the rounds of adaptive seeds, decided from made-up objective values (no training)."""
from __future__ import annotations

from typing import Callable

import pytest

from experiments.plan import group_key
from experiments.replicates import Savings, describe, plan, planned_cells, savings
from experiments.spec_loader import parse_spec

CONFIGS = ("good", "twin", "bad")  # lr 1e-3, the same again under another name, lr 1e-9


def adaptive(initial: int = 3, most: int = 5, direction: str = "maximize"):
    """Three configurations (tfr 0.0, 0.5, 1.0, read here as good, twin and bad) with adaptive seeds."""
    return parse_spec({"name": "x", "parameters": {"tfr": [0.0, 0.5, 1.0]},
                       "seeds": {"initial": initial, "max": most, "until": "separated"},
                       "objective": {"metric": "val_psnr", "direction": direction}})


def keys(spec) -> dict[str, str]:
    return dict(zip(CONFIGS, (group_key(cell) for cell in spec.cells)))


def run_rounds(spec, value: Callable[[str, int], float]) -> tuple[dict[tuple[str, int], float], list]:
    """What launches do: run every planned trial with `value(config, seed)` until the plan is finished."""
    names = {key: name for name, key in keys(spec).items()}
    values: dict[tuple[str, int], float] = {}
    plans = [plan(spec, values)]
    while not plans[-1].finished:
        for cell, seed in planned_cells(spec, plans[-1]):
            values.setdefault((group_key(cell), seed), value(names[group_key(cell)], seed))
        plans.append(plan(spec, values))
    return values, plans


def seed_noise(seed: int) -> float:
    return [0.0, 0.3, -0.2, 0.1, -0.4, 0.25, 0.05, -0.1][seed]


def psnr(config: str, seed: int) -> float:
    """A worse configuration 2 dB down with its own noise; two identical ones."""
    return {"good": 24.0, "twin": 24.0, "bad": 22.0 + 0.5 * seed_noise(seed + 1)}[config] + seed_noise(seed)


def test_a_worse_configuration_stops_after_the_initial_seeds_and_identical_ones_go_to_max():
    spec = adaptive()
    values, plans = run_rounds(spec, psnr)
    key = keys(spec)
    assert plans[0].depths == {key["good"]: 3, key["twin"]: 3, key["bad"]: 3} and plans[0].best is None
    final = plans[-1]
    assert final.depths == {key["good"]: 5, key["twin"]: 5, key["bad"]: 3}
    assert (final.rounds, final.best, final.finished) == (2, key["good"], True)  # good and twin tie: spec order
    by_group = {comparison.group: comparison for comparison in final.comparisons}
    assert (by_group[key["twin"]].ci_low, by_group[key["twin"]].ci_high) == (0.0, 0.0)
    assert by_group[key["bad"]].separated and by_group[key["bad"]].pairs == 3
    assert sorted(values) == sorted((group_key(cell), seed) for cell, seed in planned_cells(spec, final))
    assert savings(spec, final) == Savings(configurations=3, max_seeds=5, trials=13, trials_at_max=15, saved=2,
                                           finished=True)


def test_the_plan_is_seed_major_and_grows_one_seed_a_round():
    spec = adaptive()
    _, plans = run_rounds(spec, psnr)
    cells = [(group_key(cell), seed) for cell, seed in planned_cells(spec, plans[1])]
    key = keys(spec)
    assert cells == [(key[name], seed) for seed in (1, 2, 3) for name in CONFIGS] + [
        (key["good"], 4), (key["twin"], 4)]
    assert [(p.trials, p.finished) for p in plans] == [(9, False), (11, False), (13, False), (13, True)]


def test_a_round_waits_for_every_trial_of_it():
    spec = adaptive()
    values, plans = run_rounds(spec, psnr)
    key = keys(spec)
    del values[key["twin"], 4]  # failed, or still running: round 1 is not done
    waiting = plan(spec, values)
    assert waiting.depths == plans[1].depths and not waiting.finished
    values[key["bad"], 5] = 0.0  # a value the plan did not ask for (a changed spec, a race) decides nothing
    assert plan(spec, values) == waiting


def test_minimize_picks_the_lowest_mean_and_separation_is_two_sided():
    spec = adaptive(direction="minimize")
    _, plans = run_rounds(spec, psnr)
    key = keys(spec)
    assert plans[-1].best == key["bad"]
    assert plans[-1].depths == {key["good"]: 3, key["twin"]: 3, key["bad"]: 3}  # both separated from bad at once
    assert plans[-1].finished and plans[-1].rounds == 0


def test_a_new_best_with_fewer_seeds_catches_up_with_the_configurations_still_open():
    spec = adaptive(initial=2, most=4)
    key = keys(spec)
    values = {(key["good"], 1): 12.0, (key["good"], 2): 12.2, (key["twin"], 1): 11.9, (key["twin"], 2): 12.2,
              (key["bad"], 1): 11.0, (key["bad"], 2): 11.1}
    first = plan(spec, values)  # good is best; twin is not told apart from it, bad is
    assert (first.best, first.depths) == (key["good"], {key["good"]: 3, key["twin"]: 3, key["bad"]: 2})
    values.update({(key["good"], 3): 5.0, (key["twin"], 3): 5.0})  # seed 3 sinks both: bad is the best now
    second = plan(spec, values)
    assert second.best == key["bad"]
    # good is separated from bad on their 2 shared seeds; twin is not, so it runs seed 4 and bad runs 3 and 4
    assert second.depths == {key["good"]: 3, key["twin"]: 4, key["bad"]: 4}
    assert [(c.group, c.pairs, c.separated) for c in second.comparisons] == [
        (key["good"], 2, True), (key["twin"], 2, False)]


def test_describe_names_the_best_and_the_seeds_per_configuration():
    spec = adaptive()
    _, plans = run_rounds(spec, psnr)
    assert describe(spec, plans[0]) == "adaptive seeds: every configuration runs 3 seeds first"
    assert describe(spec, plans[1]) == ("adaptive seeds, round 1: best tfr=0.0, 1 of 2 separated from it; "
                                        "seeds per configuration in spec order: 4, 4, 3")
    assert describe(spec, plans[-1]).endswith("seeds per configuration in spec order: 5, 5, 3, final")


@pytest.mark.parametrize("most", [3, 4])
def test_max_bounds_every_configuration(most):
    spec = adaptive(initial=3, most=most)
    _, plans = run_rounds(spec, psnr)
    assert max(plans[-1].depths.values()) == most and plans[-1].finished
