"""Seconds to read and validate a sweep spec with many categorical values, which must grow linearly.

    python benchmarks/spec_validation.py [--values 100000] [--repeat-last]

Writes a sampled spec whose one parameter, lr, lists `--values` distinct values, and times
`experiments.spec_loader.load_spec` on it: wall-clock seconds, and CPU seconds, which a busy machine
changes less. `--repeat-last` makes the last value repeat the first, so the whole list is read
before the one-line error.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from experiments.errors import SpecError
from experiments.spec_loader import load_spec


def write_spec(folder: Path, count: int, repeat_last: bool) -> Path:
    values = [f"{1e-5 + i * 1e-9:.9g}" for i in range(count)]
    if repeat_last:
        values[-1] = values[0]
    path = folder / "many_values.yaml"
    path.write_text("name: many_values\nsampler: random\nn_trials: 10\n"
                    f"parameters:\n  lr: {{values: [{', '.join(values)}]}}\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000, help="how many values lr lists")
    parser.add_argument("--repeat-last", action="store_true", help="the last value repeats the first (an error)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_spec(Path(tmp), args.values, args.repeat_last)
        size = path.stat().st_size
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            spec = load_spec(path)
            outcome = f"{len(spec.parameters[0].values)} values"
        except SpecError as err:
            outcome = f"refused: {str(err)[-60:]}"
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"{args.values} values, {size / 1e3:.0f} kB: validated in {seconds:.2f} s "
          f"({cpu_seconds:.2f} s of CPU; {outcome})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
