"""Does a configuration learn? Its validation curve per epoch next to the copy baselines, and a PNG of it.

    python benchmarks/learning_curve.py CONFIG [--minutes N] [--DR DATA] [--set key=value ...]
                                              [--out DIR] [--quick]

CONFIG is a TrainConfig YAML file (configs/cpu.yaml, say); `--set` overrides its fields, one
`key=value` each, so a candidate needs no file of its own. Each epoch prints the rollout's val
PSNR, the one-step PSNR, both copy baselines, the loss terms and the wall time since the start.
`--minutes` stops after the first epoch that ends past that budget (the schedules still run to
the config's num_epoch). Written into `--out` (default runs/learning_curve/<config name>):
`curve.csv` and `curve.png`. `--quick` trains a tiny model for 2 epochs on a tiny data set, for CI.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cvae.config import TrainConfig, load_yaml_config  # noqa: E402
from cvae.data import load_video_data  # noqa: E402
from cvae.errors import CVAEError  # noqa: E402
from cvae.synthetic import ensure_dataset, generate  # noqa: E402
from cvae.train import EpochReport, fit, precision, resolve_device  # noqa: E402

QUICK = dict(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, batch_size=2, train_vi_len=4, val_vi_len=20,
             num_epoch=2, per_save=2)
COLUMNS = ("epoch", "minutes", "val_psnr", "val_psnr_1step", "copy_first", "copy_previous",
           "train_loss", "train_recon", "train_kl", "kl_beta", "tfr", "lr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--minutes", type=float, default=None, help="stop after the epoch that passes this")
    parser.add_argument("--DR", default=None, help="data set (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny model for 2 epochs on tiny data: for CI")
    args = parser.parse_args(argv)
    scratch = tempfile.TemporaryDirectory() if args.quick else None
    try:
        cfg = _config(args, scratch)
        out = args.out or Path("runs/learning_curve") / args.config.stem
        rows = run(cfg.replace(save_root=str(out / "train")), args.minutes)
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if scratch is not None:
            scratch.cleanup()
    write_csv(rows, out / "curve.csv")
    figure = curve_figure(rows, title=f"{args.config.name} {' '.join(args.overrides)}".strip())
    figure.savefig(out / "curve.png", dpi=120)
    last = rows[-1]
    print(f"final: val PSNR {last['val_psnr']:.2f} dB (copy-first {last['copy_first']:.2f}, "
          f"gain {last['val_psnr'] - last['copy_first']:+.2f} dB); one-step {last['val_psnr_1step']:.2f} dB "
          f"(copy-previous {last['copy_previous']:.2f}); {last['minutes']:.1f} min")
    print(f"curve in {out / 'curve.csv'} and {out / 'curve.png'}")
    return 0


def _config(args: argparse.Namespace, scratch: tempfile.TemporaryDirectory | None) -> TrainConfig:
    cfg = load_yaml_config(args.config)
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CVAEError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = value
    if scratch is not None:
        overrides = {**QUICK, **overrides, "DR": str(generate(Path(scratch.name) / "tiny", small=True))}
    elif args.DR is not None:
        overrides["DR"] = args.DR
    cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides}, source="--set")
    if cfg.DR == TrainConfig.DR:
        ensure_dataset(Path(cfg.DR))
    return cfg


def run(cfg: TrainConfig, minutes: float | None) -> list[dict]:
    """Train `cfg`, printing a line per epoch; the rows of the curve."""
    data = load_video_data(cfg)
    baselines = data.baselines
    print(f"{cfg.DR}: {len(data.train_images)} clips of {cfg.train_vi_len} frames, validation video of "
          f"{len(data.val_images)} frames; copy-first {baselines.first_mean:.2f} dB, copy-previous "
          f"{baselines.previous_mean:.2f} dB; model {cfg.model}, {precision(cfg, resolve_device(cfg))}",
          flush=True)
    print("epoch    min  val PSNR  1-step  copy-1st  copy-prev   loss     recon    kl      beta  tfr   lr")
    rows: list[dict] = []
    started = time.perf_counter()

    def record(report: EpochReport) -> bool:
        row = dict(epoch=report.epoch + 1, minutes=(time.perf_counter() - started) / 60, val_psnr=report.val_psnr,
                   val_psnr_1step=report.val_psnr_1step, copy_first=baselines.first_mean,
                   copy_previous=baselines.previous_mean, train_loss=report.train_loss,
                   train_recon=report.train_recon, train_kl=report.train_kl, kl_beta=report.kl_beta,
                   tfr=report.tfr, lr=report.lr)
        rows.append(row)
        print(f"{row['epoch']:5d} {row['minutes']:6.1f} {row['val_psnr']:9.2f} {row['val_psnr_1step']:7.2f} "
              f"{row['copy_first']:9.2f} {row['copy_previous']:10.2f}  {row['train_loss']:.5f}  "
              f"{row['train_recon']:.5f}  {row['train_kl']:.4g}  {row['kl_beta']:.2f}  {row['tfr']:.2f}  "
              f"{row['lr']:.1e}", flush=True)
        return minutes is not None and row["minutes"] >= minutes

    fit(cfg, data, callbacks=[record], progress=False)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def curve_figure(rows: list[dict], title: str) -> plt.Figure:
    """Val PSNR and one-step PSNR against training minutes, each beside its copy baseline (dashed)."""
    minutes = [row["minutes"] for row in rows]
    figure, (rollout, one_step) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, key, baseline, name in ((rollout, "val_psnr", "copy_first", "rollout of the validation video"),
                                      (one_step, "val_psnr_1step", "copy_previous", "one step from the true frame")):
        axes.plot(minutes, [row[key] for row in rows], marker="o", label="model")
        axes.axhline(rows[0][baseline], linestyle="--", color="grey", label=baseline.replace("_", "-"))
        axes.set(xlabel="training minutes", ylabel="PSNR (dB)", title=name)
        axes.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    raise SystemExit(main())
