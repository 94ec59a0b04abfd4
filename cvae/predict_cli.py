"""`python -m cvae predict`: the prediction flags, and a prediction that prints what it wrote where."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cvae.errors import CVAEError
from cvae.folders import PSNR_FILE
from cvae.predict import PSNR_PLOT, SPLITS, SUBMISSION_CSV, PredictResult, predict


def add_predict_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every prediction command but the checkpoint's source; the model's own come from the checkpoint."""
    parser.add_argument("--DR", type=Path, help="data root holding test/ and val/ (default: the checkpoint's DR)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the frames, GIFs and submission.csv")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="test: the test sequences; val: the validation video, with its per-frame PSNR")
    parser.add_argument("--seed", type=int,
                        help="noise seed (default: the checkpoint's seed, as in the trainer's validation)")
    parser.add_argument("--samples", type=_positive, default=1, metavar="K",
                        help="rollouts per sequence, side by side in the GIF; sample 0 goes into the CSV")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the checkpoint's setting)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvae predict",
                                     description="Predict the test sequences with a trained checkpoint.")
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by the trainer")
    add_predict_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args, args.ckpt)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, ckpt: Path) -> PredictResult:
    """Predict with the flags of `add_predict_flags` and print what was written where."""
    result = predict(ckpt, args.out, args.DR, args.split, args.seed, args.samples, args.device)
    for sequence in result.sequences:
        scores = "" if sequence.psnr_per_frame is None else \
            ", PSNR " + " / ".join(f"{mean:.2f}" for mean in sequence.psnr_per_frame.mean(axis=1)) + " dB"
        print(f"{sequence.name}: {sequence.frames} frames x {result.samples} sample(s) -> "
              f"{result.out / sequence.name}/, {result.out / sequence.name}.gif{scores}")
    rows = sum(sequence.frames for sequence in result.sequences)
    print(f"{result.out / SUBMISSION_CSV}: {rows} rows; seed {result.seed}; {result.seconds:.1f} s")
    if result.split == "val":
        per_frame = result.sequences[0].psnr_per_frame[0]
        print(f"validation PSNR {per_frame.mean():.2f} dB, from the rollout and noise the trainer validates with; "
              f"per frame in {result.out / PSNR_FILE} and {result.out / PSNR_PLOT}")
        print(f"copying the first frame forward gives {result.baselines.first_mean:.2f} dB "
              f"({per_frame.mean() - result.baselines.first_mean:+.2f} dB for the model); copying the previous "
              f"true frame {result.baselines.previous_mean:.2f} dB (the one-step floor)")
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
