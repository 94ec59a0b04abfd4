"""Does speed cost quality? Every trial of a sweep spec trained with and without the speed options.

    python benchmarks/quality_check.py [SPEC] [--device cpu|cuda] [--settings plain,ours,fp32,...]
                                       [--quick] [--json]

SPEC defaults to sweeps/quick.yaml. Each (configuration, seed) of its plan is trained by `fit`
directly (no Optuna, no MLflow) once per setting:

    plain     the unoptimised path: fp32, NCHW, no fused optimizer, no compile, no CUDA graphs
    ours      TrainConfig's defaults, what a sweep runs unless its spec says otherwise
    fp32      the defaults without bf16 autocast: ours against fp32 is the bf16 check
    +compile, +cuda_graphs, +all    the defaults with the options that are off by default

(benchmarks/variants.py)
and the script prints every trial's best validation PSNR per setting, then the sweep's best per
setting next to the plain path's, against the 0.3 dB tolerance. Same seeds, same data, same
schedules: the only differences are the options' arithmetic.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cvae.data import load_video_data
from cvae.errors import CVAEError
from cvae.synthetic import ensure_dataset, generate
from cvae.train import fit
from experiments.errors import SpecError
from experiments.plan import group_label, train_config, trial_plan
from experiments.spec_loader import load_spec
from variants import VARIANTS, parse_variants

TOLERANCE_DB = 0.3
DEFAULT_SETTINGS = {"cpu": "plain,ours,fp32", "cuda": "plain,ours,fp32,+all"}
QUICK = dict(num_epoch=1, partial=0.5, val_vi_len=20)  # on the --small data set, 2 trials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="sweeps/quick.yaml")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated from {', '.join(VARIANTS)} "
                             f"(default {DEFAULT_SETTINGS['cpu']} on the CPU, {DEFAULT_SETTINGS['cuda']} on CUDA)")
    parser.add_argument("--quick", action="store_true", help="2 trials of 1 epoch on half of a tiny data set: for CI")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    try:
        settings = parse_variants(args.settings or DEFAULT_SETTINGS[args.device], "--settings")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "plain" not in settings:
        print(f"error: --settings: {','.join(settings)} lacks plain, the reference to compare with", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        plan = trial_plan(spec)[:2] if args.quick else trial_plan(spec)
        with tempfile.TemporaryDirectory() as tmp:
            data_root = generate(Path(tmp) / "data", seed=0, small=True) if args.quick else None
            rows = run_plan(spec, plan, settings, args.device, Path(tmp), data_root)
    except (SpecError, CVAEError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarise(rows, settings)
    print(json.dumps({"trials": rows, "summary": summary}, indent=2) if args.json else tables(rows, summary))
    return 0


def run_plan(spec, plan, settings: list[str], device: str, tmp: Path, data_root: Path | None) -> list[dict]:
    """One row per trial: its label, seed and best validation PSNR under each setting."""
    rows = []
    runs = tqdm(total=len(plan) * len(settings), desc="quality check", unit="run")
    for index, (overrides, seed) in enumerate(plan):
        base = train_config(spec, overrides, seed).replace(device=device)
        if data_root is None:
            ensure_dataset(base.DR)
        else:
            base = base.replace(DR=str(data_root), **QUICK)
        data = load_video_data(base)
        row = {"configuration": group_label(overrides), "seed": seed}
        for setting in settings:
            cfg = base.replace(save_root=str(tmp / f"trial{index}" / setting), **VARIANTS[setting])
            row[setting] = fit(cfg, data, progress=False).best_val_psnr
            runs.update()
        rows.append(row)
    runs.close()
    return rows


def summarise(rows: list[dict], settings: list[str]) -> dict:
    """Per setting: the sweep's best PSNR, its difference from plain's, the largest per-trial difference."""
    plain_best = max(row["plain"] for row in rows)
    summary = {}
    for setting in settings:
        best = max(row[setting] for row in rows)
        worst_trial = max(abs(row[setting] - row["plain"]) for row in rows)
        summary[setting] = {"best_val_psnr": best, "best_minus_plain_db": best - plain_best,
                            "largest_trial_difference_db": worst_trial,
                            "within_tolerance": abs(best - plain_best) <= TOLERANCE_DB}
    return summary


def tables(rows: list[dict], summary: dict) -> str:
    settings = list(summary)
    width = max(len(row["configuration"]) for row in rows)
    lines = [f"{'configuration':{width}} {'seed':>4} " + " ".join(f"{name:>12}" for name in settings)]
    for row in rows:
        lines.append(f"{row['configuration']:{width}} {row['seed']:4d} "
                     + " ".join(f"{row[name]:12.3f}" for name in settings))
    lines += ["", f"{'setting':12} {'best dB':>8} {'vs plain':>9} {'largest trial diff':>19}  within {TOLERANCE_DB} dB"]
    for name, figures in summary.items():
        lines.append(f"{name:12} {figures['best_val_psnr']:8.3f} {figures['best_minus_plain_db']:+9.3f} "
                     f"{figures['largest_trial_difference_db']:19.3f}  {'yes' if figures['within_tolerance'] else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
