"""Command-line flags generated from TrainConfig's fields, and the `python -m cvae.train` entry point."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from cvae import checkpoint
from cvae.config import TrainConfig, load_yaml_config
from cvae.errors import CVAEError

DEFAULT_DATA_ROOT = TrainConfig.DR


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field` per TrainConfig field, under the lab's names; values are checked by TrainConfig."""
    group = parser.add_argument_group("TrainConfig fields (override --config and the checkpoint's config)")
    for f in fields(TrainConfig):
        group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, metavar=f.type.upper() if f.type in
                           ("int", "float", "str", "bool") else "VALUE", help=f"default: {_shown(f.default)}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- checkpoint's config (when resuming without --config) <- --config file <- flags."""
    base = TrainConfig()
    if getattr(args, "ckpt_path", None) and not args.config:
        base = checkpoint.config_of(checkpoint.load(args.ckpt_path), args.ckpt_path)
    if args.config:
        base = load_yaml_config(args.config, base)
    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig.from_dict({**base.to_dict(), **flags}, source="command line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvae.train", description="Train the pose-conditioned video CVAE.")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig overrides")
    parser.add_argument("--ckpt_path", type=Path, help="resume from this checkpoint (its config is the base)")
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg, args.ckpt_path)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --ckpt_path on the newest file in "
              f"{Path(cfg.save_root) / 'checkpoints'}", file=sys.stderr)
        return 130
    return 0


def run(cfg: TrainConfig, ckpt_path: Path | None) -> None:
    from cvae.data import load_video_data
    from cvae.metrics import save_psnr_csv
    from cvae.model import VideoCVAE, parameter_count
    from cvae.synthetic import ensure_dataset
    from cvae.train import fit, resolve_device

    if cfg.DR == DEFAULT_DATA_ROOT:
        ensure_dataset(Path(cfg.DR))
    data = load_video_data(cfg)
    print(f"data {cfg.DR}: {len(data.train_images)} training clips of {cfg.train_vi_len} frames, "
          f"validation video of {len(data.val_images)} frames, {cfg.frame_H}x{cfg.frame_W}")
    print(baselines_line(data.baselines))
    print(f"model {cfg.model}: {parameter_count(VideoCVAE(cfg)):,} parameters on {resolve_device(cfg)}")
    save_root = Path(cfg.save_root)
    save_root.mkdir(parents=True, exist_ok=True)
    (save_root / "config.yaml").write_text(_yaml(cfg))
    history = fit(cfg, data, callbacks=[print_epoch(cfg)], resume_from=ckpt_path)
    last = history.epochs[-1]
    csv_path = save_psnr_csv(save_root / "val_psnr_per_frame.csv", last.val_psnr_per_frame)
    baselines = data.baselines
    print(f"validation PSNR {last.val_psnr:.2f} dB (best {history.best_val_psnr:.2f} dB), "
          f"{last.val_psnr - baselines.first_mean:+.2f} dB over copying the first frame; "
          f"one-step PSNR {last.val_psnr_1step:.2f} dB, {last.val_psnr_1step - baselines.previous_mean:+.2f} dB "
          f"over copying the previous frame")
    print(baselines_line(baselines))
    print(f"checkpoints in {save_root / 'checkpoints'}; per-frame PSNR in {csv_path}")


def baselines_line(baselines) -> str:
    """The two trivial predictors' PSNR on the validation video, the floors every figure is read against."""
    return (f"baselines on the validation video: copy first frame {baselines.first_mean:.2f} dB, "
            f"copy previous true frame {baselines.previous_mean:.2f} dB (one step)")


def print_epoch(cfg: TrainConfig):
    def callback(report) -> None:
        print(f"epoch {report.epoch + 1:3d}/{cfg.num_epoch}  loss {report.train_loss:.4f} "
              f"(recon {report.train_recon:.4f}, kl {report.train_kl:.3f}, beta {report.kl_beta:.2f})  "
              f"tfr {report.tfr:.2f}  lr {report.lr:.1e}  val PSNR {report.val_psnr:.2f} dB  "
              f"one-step {report.val_psnr_1step:.2f} dB  "
              f"{report.epoch_seconds:.1f} s", flush=True)
    return callback


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _shown(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
