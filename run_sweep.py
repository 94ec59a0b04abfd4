"""Run a sweep spec: `python run_sweep.py sweeps/kl_ablation.yaml [--dry-run] [--gpus 0,1|auto|none] [--workers N]`.

Running the same command again after an interruption finishes the sweep: complete trials are kept.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys

import optuna
from tqdm.contrib.logging import logging_redirect_tqdm

from cvae.errors import CVAEError
from experiments.errors import ExperimentError
from experiments.launcher import configure, describe_outcome, describe_plan, launch, parse_gpus
from experiments.spec_loader import load_spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python run_sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the sweep's YAML file, e.g. sweeps/quick.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trials it would run and their count")
    parser.add_argument("--gpus", help="auto, none (CPU only) or indices like 0,1 (default: the spec's execution.gpus)")
    parser.add_argument("--workers", type=int, help="worker processes per GPU, or in all on the CPU "
                                                    "(default: the spec's trials_per_gpu / cpu_workers)")
    parser.add_argument("--storage", help="Optuna storage: a journal file or an SQLAlchemy URL (default: the spec's)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, sqlite:///mlflow.db)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("experiments", "cvae"):
        logging.getLogger(name).setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the launcher says what Optuna would
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    try:
        spec = configure(load_spec(args.spec), gpus=None if args.gpus is None else parse_gpus(args.gpus),
                         workers=args.workers, storage=args.storage, tracking_uri=args.tracking_uri)
        if args.dry_run:
            print(describe_plan(spec))
            return 0
        with logging_redirect_tqdm():
            outcome = launch(spec)
    except (ExperimentError, CVAEError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any trial started; nothing to resume", file=sys.stderr)
        return 130
    command = shlex.join(["python", "run_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    print(describe_outcome(outcome, command))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
