"""How well the report's statistics are calibrated, over simulated sweeps (no training, seconds on a CPU).

    python benchmarks/stats_calibration.py [--sweeps N] [--seed S]

Prints each check of `analysis.calibration` (the measured rate and the range a correct procedure puts
it in 99.8% of the time), then two figures behind the report's choices: how often Holm over only the
comparisons with the apparent best finds a "real" difference among identical configurations (why the
report corrects over every pair), and how often the 95% intervals hold the true difference at 5 pairs.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from analysis import calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/stats_calibration.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=20000, help="simulated sweeps per figure (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's random seed (default 0)")
    args = parser.parse_args(argv)
    if args.sweeps < 100:
        print("error: --sweeps: give 100 or more, or the rates mean little", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    found = calibration.checks(rng, args.sweeps)
    print(f"{args.sweeps} simulated sweeps per line; range: where a correct procedure lands "
          f"{calibration.TOLERANCE:.1%} of the time")
    for check in found:
        print(f"{'ok  ' if check.holds else 'FAIL'} {check.measured:7.2%}  in [{check.low:6.2%}, {check.high:6.2%}]"
              f"  {check.claim}")
    print("\nwhy every pair: Holm over only the k - 1 comparisons with the apparent best, identical configurations, "
          f"{calibration.SEEDS} seeds")
    for configurations in (3, 5, 10):
        values = calibration.simulate(rng, args.sweeps, configurations, calibration.SEEDS)
        wrong = calibration.real_against_apparent_best(values).mean()
        print(f"     {wrong:7.2%}  false positives among {configurations} configurations (level "
              f"{calibration.ALPHA:.0%})")
    print(f"\ncoverage of the 95% intervals of the mean per-seed difference, {calibration.SEEDS} pairs")
    values = calibration.simulate(rng, args.sweeps, 2, calibration.SEEDS)
    for name, bootstrap in (("t interval", False), ("percentile bootstrap interval", True)):
        print(f"     {calibration.coverage(values[:, 1], values[:, 0], 0.0, bootstrap):7.2%}  {name}")
    return 0 if all(check.holds for check in found) else 1


if __name__ == "__main__":
    sys.exit(main())
