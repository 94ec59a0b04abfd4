"""`python -m cvae train`: flags generated from TrainConfig's fields, and a run into one run folder."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from cvae import checkpoint, folders
from cvae.config import TrainConfig, read_yaml_overrides
from cvae.data import load_video_data
from cvae.errors import CVAEError, OutputError
from cvae.metrics import save_psnr_csv
from cvae.model import VideoCVAE, parameter_count
from cvae.synthetic import ensure_dataset
from cvae.train import fit, resolve_device

DEFAULT_DATA_ROOT = TrainConfig.DR


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field` per TrainConfig field, under the lab's names; values are checked by TrainConfig."""
    group = parser.add_argument_group("TrainConfig fields (override --config and the checkpoint's config)")
    for f in fields(TrainConfig):
        group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, metavar=f.type.upper() if f.type in
                           ("int", "float", "str", "bool") else "VALUE", help=f"default: {_shown(f.default)}")


def config_from_args(args: argparse.Namespace, overrides: dict, resume_from: Path | None) -> TrainConfig:
    """Defaults <- the checkpoint's config (resuming without --config) <- --config file <- flags.

    A resume writes into the run folder holding its checkpoint (`<folder>/checkpoints/<file>`) unless
    --save_root or the --config file (its `overrides`) names another: a copied run folder is resumed in the copy.
    """
    flags = _flags(args)
    base = TrainConfig()
    if resume_from is not None and not args.config:
        base = checkpoint.config_of(checkpoint.load(resume_from), resume_from)
    if args.config:
        base = TrainConfig.from_dict({**base.to_dict(), **overrides}, source=str(args.config))
    if resume_from is not None and "save_root" not in {**overrides, **flags} \
            and resume_from.parent.name == checkpoint.CHECKPOINT_DIR:
        flags["save_root"] = str(resume_from.parent.parent)
    return TrainConfig.from_dict({**base.to_dict(), **flags})


def resume_point(args: argparse.Namespace, overrides: dict) -> Path | None:
    """The checkpoint to continue: --ckpt_path, or with --resume the newest good one in the save_root asked for."""
    if not args.resume:
        return args.ckpt_path
    asked = {**overrides, **_flags(args)}
    folder = Path(str(asked.get("save_root", TrainConfig.save_root)))
    found = checkpoint.latest_good(folder / checkpoint.CHECKPOINT_DIR)
    if found is None:
        raise OutputError(f"--resume: save_root {folder} holds no checkpoint to continue "
                          f"({checkpoint.CHECKPOINT_DIR}/epoch_NNNN.ckpt); train without --resume to start a run")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvae train", description="Train the pose-conditioned video CVAE.")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig overrides")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--ckpt_path", type=Path, help="resume from this checkpoint (its config is the base), in "
                                                      "the run folder holding it unless --save_root names another")
    start.add_argument("--resume", action="store_true", help="continue the newest checkpoint in save_root")
    start.add_argument("--overwrite", action="store_true",
                       help="start over in a save_root that holds a run, moving that run aside to <save_root>.old-N")
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        overrides = read_yaml_overrides(args.config) if args.config else {}
        resume_from = resume_point(args, overrides)
        cfg = config_from_args(args, overrides, resume_from)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg, resume_from, args.overwrite)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: continue with --resume --save_root {cfg.save_root}", file=sys.stderr)
        return 130
    return 0


def run(cfg: TrainConfig, resume_from: Path | None, overwrite: bool = False) -> None:
    """Train `cfg` into its save_root, which must hold no other run; every check comes before the first write."""
    save_root = Path(cfg.save_root)
    model = VideoCVAE(cfg)
    resumed = None
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        checkpoint.check_resumable(state, resume_from, cfg, model)
        resumed = (resume_from, state["epoch"])
    folders.check_claim(save_root, resumed, overwrite)
    device = resolve_device(cfg)
    if cfg.DR == DEFAULT_DATA_ROOT:
        ensure_dataset(Path(cfg.DR))
    data = load_video_data(cfg)
    print(f"data {cfg.DR}: {len(data.train_images)} training clips of {cfg.train_vi_len} frames, "
          f"validation video of {len(data.val_images)} frames, {cfg.frame_H}x{cfg.frame_W}")
    print(data.baselines.describe())
    print(f"model {cfg.model}: {parameter_count(model):,} parameters on {device}")
    if overwrite and folders.earlier_run(save_root):
        print(f"moved the earlier run in {save_root} aside to {folders.move_aside(save_root)}")
    folders.writable_folder(save_root, "save_root")
    folders.writable_folder(save_root / checkpoint.CHECKPOINT_DIR, "the checkpoint folder")
    (save_root / folders.CONFIG_FILE).write_text(_yaml(cfg))
    history = fit(cfg, data, callbacks=[print_epoch(cfg)], resume_from=resume_from)
    last = history.epochs[-1]
    csv_path = save_psnr_csv(save_root / folders.PSNR_FILE, last.val_psnr_per_frame)
    baselines = data.baselines
    print(f"validation PSNR {last.val_psnr:.2f} dB (best {history.best_val_psnr:.2f} dB), "
          f"{last.val_psnr - baselines.first_mean:+.2f} dB over copying the first frame; "
          f"one-step PSNR {last.val_psnr_1step:.2f} dB, {last.val_psnr_1step - baselines.previous_mean:+.2f} dB "
          f"over copying the previous frame")
    print(baselines.describe())
    print(f"checkpoints in {save_root / checkpoint.CHECKPOINT_DIR}; per-frame PSNR in {csv_path}")


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


def _flags(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}


def _shown(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
