"""Write a sweep's report from its MLflow runs: its figures, summary table, report.md and index.html.

`python report.py [--sweep NAME | --experiment NAME] [--out DIR] [--format png,pdf] [--tracking-uri URI]`
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # headless: figures are only ever written to files
# an unreachable tracking server should fail in seconds, not after MLflow's minutes of retries
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from analysis.errors import ReportError  # noqa: E402 - after the environment above
from analysis.report import parse_formats, write_report  # noqa: E402
from experiments.spec import DEFAULT_TRACKING_URI  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python report.py", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="NAME",
                       help="the sweep's name (its spec's `name`); default: the latest sweep")
    which.add_argument("--experiment", metavar="NAME", help="an MLflow experiment, by name or id, holding a sweep")
    parser.add_argument("--out", metavar="DIR", help="folder for the report (default: reports/<sweep name>)")
    parser.add_argument("--format", default="png", metavar="FORMATS",
                        help="figure formats, comma-separated: png, pdf, svg (default: png)")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, metavar="URI",
                        help=f"where the sweep logged its runs (default: {DEFAULT_TRACKING_URI})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        report = write_report(args.tracking_uri, sweep=args.sweep, experiment=args.experiment, out=args.out,
                              formats=parse_formats(args.format))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    print(f"{report.sweep}: {len(report.files)} files in {report.folder} ({report.seconds:.1f} s)")
    print(report.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
