"""`python -m cvae train ...` and `python -m cvae predict ...`: the commands of the trainer and the predictor."""
from __future__ import annotations

import argparse

from cvae import predict_cli, train_cli

COMMANDS = {"train": train_cli.main, "predict": predict_cli.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvae", description="Train the pose-conditioned video CVAE, "
                                                                        "or predict with a checkpoint it wrote.")
    parser.add_argument("command", choices=COMMANDS, help="`python -m cvae COMMAND --help` lists its flags")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's flags")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.arguments)


if __name__ == "__main__":
    raise SystemExit(main())
