"""analysis/: real small sweeps, logged by run_sweep.py to temporary MLflow databases, read into DataFrames."""
from __future__ import annotations

import gc
import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
from filelock import FileLock
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
from scipy import stats as scipy_stats

from analysis import comparisons, figures, provenance, stats, tables
from analysis.document import markdown_table
from analysis.errors import ReportError
from analysis.labels import configuration_label, kl_setting, number, swept_keys, tfr_setting
from analysis.power import seeds_needed
from analysis.runs import connect, load_study, load_sweep, sweep_names
from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.metrics import CopyBaselines
from cvae.train import EpochReport
from experiments.launcher import configure
from experiments.plan import group_key, trial_plan
from experiments.schema import BY_NAME
from experiments.spec_loader import load_spec
from experiments.study import open_study
from experiments.tracking import GIT_DIRTY, HOST_DEVICE, STATUS, TrialRun, open_parent_run

TINY = ("F_dim: 16, L_dim: 8, N_dim: 4, D_out_dim: 16, train_vi_len: 4, val_vi_len: 8, batch_size: 4, "
        "partial: 0.5, per_save: 1, device: cpu, channels_last: false")
# Three configurations x two seeds, 4 epochs: Cyclical and Monotonic train; the third (the lab model, whose
# random Generator moves the posterior at once) diverges in its first epoch.
GRID = """\
    name: ablation
    base: {{{tiny}, num_epoch: 4, DR: "{data}", tfr_sde: 1, tfr_d_step: 0.4}}
    grid:
      - {{kl_anneal_type: Cyclical, kl_anneal_cycle: [2], kl_anneal_ratio: [1.0]}}
      - {{kl_anneal_type: Monotonic, kl_anneal_ratio: [1.0]}}
      - {{kl_anneal_type: None, lr: [1.0e+30], lr_schedule: [constant], grad_clip: [1.0e+30], model: [lab],
         frame_output: [sigmoid]}}
    seeds: [1, 2]
    execution: {{gpus: [], cpu_workers: 1}}
    """
# Three sampled trials of one epoch, for Optuna's own figures.
SAMPLED = """\
    name: sampled
    base: {{{tiny}, num_epoch: 1, DR: "{data}"}}
    parameters:
      lr: {{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}}
      kl_anneal_type: [Cyclical, None]
    sampler: random
    n_trials: 3
    execution: {{gpus: [], cpu_workers: 1}}
    """
ROOT = Path(__file__).resolve().parents[1]
CYCLICAL, MONOTONIC = "Cyclical (2 cycles, ratio 1)", "Monotonic (ratio 1)"
DIVERGING = "None (β = 1), lr 1e+30, constant, grad_clip 1e+30, model lab, frame_output sigmoid"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def logged_sweeps(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Sweeps logged once per test run in analysis-sweeps, a folder all pytest-xdist workers share; returns it.

    mlflow.db holds `broken` (a parent run and one failed trial, logged with experiments.tracking) and
    then `ablation` (GRID, run by `python run_sweep.py`); sampled.db holds `sampled` (SAMPLED), launched
    at the same time. Their studies are in runs/<name>/optuna.journal.
    """
    basetemp = tmp_path_factory.getbasetemp()
    folder = (basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp) / "analysis-sweeps"
    with FileLock(f"{folder}.lock"):  # the first worker to ask logs them, the others wait and read
        if not (folder / "done").exists():
            _log_sweeps(folder, data)
    return folder


def _log_sweeps(folder: Path, data: Path) -> None:
    folder.mkdir(exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    parent = open_parent_run(uri, "broken", "a-sweep-id", tags={"sweep.spec": "sweeps/broken.yaml"})
    TrialRun.start(MlflowClient(uri), parent, "trial 0", TrainConfig(), tags={"sweep.seed": "1"}).end(
        "FAILED", "TrainingDiverged: training loss became nan in epoch 1")
    launches = []
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for index, (name, text, db) in enumerate((("ablation", GRID, "mlflow.db"), ("sampled", SAMPLED, "sampled.db"))):
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text.format(tiny=TINY, data=data)))
        # a core each when there are two: two launches that each think they own every core would
        # give their torch threads more cores than there are, and spin
        core = {cores[index % len(cores)]} if len(cores) >= 2 else None
        launches.append(subprocess.Popen(
            [sys.executable, str(ROOT / "run_sweep.py"), f"{name}.yaml", "--tracking-uri", f"sqlite:///{db}"],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=(lambda core=core: os.sched_setaffinity(0, core)) if core else None))
    outputs = [launch.communicate(timeout=900)[0] for launch in launches]  # minutes on a busy 2-core machine
    # exit codes: 1 = trials still to run (the ablation's diverging ones), 0 = complete
    assert [launch.returncode for launch in launches] == [1, 0], "\n".join(out[-3000:] for out in outputs)
    (folder / "done").touch()


# Sweeps logged with experiments.tracking, without training, so every value is known: per trial its lr,
# seed, val PSNR and one-step PSNR per epoch. Every trial's validation video has these copy baselines:
KNOWN_TRIALS = [(1e-3, 1, [20.5, 22.0], [28.0, 30.0]), (1e-3, 2, [21.0, 23.0], [28.0, 31.0]),
                (1e-2, 1, [19.0, 19.5], [27.0, 27.5])]
KNOWN_BASELINES = CopyBaselines(first=np.array([21.0, 20.0, 19.0]), previous=np.array([30.0, 29.0, 28.0]))
AHEAD, BEHIND = "lr 1e-3", "lr 0.01"  # final val PSNR 22.5 and 19.5 against copy-first's 20
# `seeded`: three configurations on six shared seeds, one epoch each. lr 1e-3 scores 20 + seed; lr 2e-3 0.5, 0.7,
# 0.6, 0.4, 0.8 and 0.6 dB less, seed by seed; lr 3e-3 within 0.1 dB of lr 1e-3 either way. Trials 0 and 1 ran
# from uncommitted code.
SEEDED_OFFSETS = {1e-3: [0.0] * 6, 2e-3: [-0.5, -0.7, -0.6, -0.4, -0.8, -0.6], 3e-3: [0.05, -0.1, 0.08, -0.02, 0.03,
                                                                                      -0.06]}
SEEDED_BEST, SEEDED_BEHIND, SEEDED_LEVEL = "lr 1e-3", "lr 2e-3", "lr 3e-3"
DB_PER_SSIM = 50  # a trial's made-up SSIM is its PSNR / 50: 0.45 for 22.5 dB
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DEVICE = "NVIDIA H200"


def log_trial(client: MlflowClient, parent, number: int, lr: float, seed: int, psnrs: list[float],
              one_steps: list[float], baselines: CopyBaselines | None, tags: dict[str, str] | None = None,
              old: bool = False) -> None:
    """One finished trial's run with these values per epoch; `old` logs it as runs were before baselines,
    one-step PSNR, SSIM and device seconds."""
    tags = {"optuna.trial_number": str(number), "sweep.group_key": f"lr{lr}", "sweep.group_label": f"lr={lr}",
            "sweep.seed": str(seed), **(tags or {})}
    run = TrialRun.start(client, parent, f"lr {lr} | seed {seed}", TrainConfig(lr=lr, seed=seed,
                                                                              num_epoch=len(psnrs)), tags)
    if baselines is not None:
        run.log_baselines(baselines)
    for epoch, (psnr, one_step) in enumerate(zip(psnrs, one_steps)):
        newer = {} if old else {"val_psnr_1step": one_step, "val_ssim": psnr / DB_PER_SSIM,
                                "val_ssim_per_frame": np.full(3, psnr / DB_PER_SSIM)}
        report = EpochReport(epoch, 1.0, 1.0, 0.0, 1.0, 1.0, lr, psnr, np.full(3, psnr), 1.0, **newer)
        run(report)
    run.log_final(report, {})
    if old:
        client.set_tag(run.run_id, STATUS, "COMPLETE")
        client.set_terminated(run.run_id, "FINISHED")
    else:
        run.end("COMPLETE")


def log_known_sweeps(folder: Path) -> str:
    """`known` (KNOWN_TRIALS with their baselines), `old` (the same, logged as before the baselines, the
    one-step PSNR and device seconds were) and `seeded` (SEEDED_OFFSETS) in folder/known.db; returns its URI."""
    uri = f"sqlite:///{folder / 'known.db'}"
    client = MlflowClient(uri)
    for name, baselines in (("old", None), ("known", KNOWN_BASELINES)):
        parent = open_parent_run(uri, name, f"{name}-id", tags={})
        for number_, (lr, seed, psnrs, one_steps) in enumerate(KNOWN_TRIALS):
            log_trial(client, parent, number_, lr, seed, psnrs, one_steps, baselines, old=baselines is None)
    parent = open_parent_run(uri, "seeded", "seeded-id", tags={})
    for number_, (seed, (lr, offsets)) in enumerate(itertools.product(range(1, 7), SEEDED_OFFSETS.items())):
        provenance = {GIT_DIRTY: "true" if number_ < 2 else "false", MLFLOW_GIT_COMMIT: COMMIT, HOST_DEVICE: DEVICE}
        value = 20.0 + seed + offsets[seed - 1]
        log_trial(client, parent, number_, lr, seed, [value], [value + 8], KNOWN_BASELINES, provenance)
    return uri


@pytest.fixture(scope="session")
def known_uri(tmp_path_factory) -> str:
    return log_known_sweeps(tmp_path_factory.mktemp("known"))


@pytest.fixture(scope="session")
def known(known_uri):
    return load_sweep(known_uri, sweep="known")


@pytest.fixture(scope="session")
def old(known_uri):
    return load_sweep(known_uri, sweep="old")


@pytest.fixture(scope="session")
def seeded(known_uri):
    return load_sweep(known_uri, sweep="seeded")


@pytest.fixture(scope="session")
def swept(tmp_path_factory, small_dataset) -> Path:
    return logged_sweeps(tmp_path_factory, small_dataset)


@pytest.fixture(scope="session")
def uri(swept) -> str:
    return f"sqlite:///{swept / 'mlflow.db'}"


@pytest.fixture(scope="session")
def sampled(swept):
    return load_sweep(f"sqlite:///{swept / 'sampled.db'}", sweep="sampled")


@pytest.fixture(scope="session")
def ablation(uri):
    return load_sweep(uri, sweep="ablation")


@pytest.fixture(scope="session")
def colours(ablation):
    return figures.palette(ablation.configurations)


def finished(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "COMPLETE"]


# ---------------------------------------------------------------- runs.py: the DataFrames


def test_one_row_per_trial_with_its_configuration_seed_and_status(ablation, swept):
    trials = ablation.trials
    assert len(trials) == 6 and trials["trial"].tolist() == list(range(6))
    assert ablation.configurations == [CYCLICAL, MONOTONIC, DIVERGING]  # the spec's order
    spec = load_spec(swept / "ablation.yaml")
    assert sorted(zip(trials["group"], trials["seed"])) == sorted((group_key(c), s) for c, s in trial_plan(spec))
    by_config = trials.groupby("configuration", observed=True)
    assert by_config["seed"].apply(sorted).to_dict() == {CYCLICAL: [1, 2], MONOTONIC: [1, 2], DIVERGING: [1, 2]}
    assert by_config["status"].unique().apply(list).to_dict() == {
        CYCLICAL: ["COMPLETE"], MONOTONIC: ["COMPLETE"], DIVERGING: ["FAILED"]}
    failed = trials[trials["status"] == "FAILED"]
    assert failed["error"].str.startswith("TrainingDiverged: training loss became nan in epoch 1").all()
    done = finished(trials)
    assert done["epochs"].tolist() == [4, 4, 4, 4] and (done["wall_seconds"] > 0).all()
    assert (done["best_val_psnr"] >= done["final_val_psnr"]).all()
    assert done["params.num_epoch"].tolist() == [4] * 4 and done["params.kl_anneal_ratio"].tolist() == [1.0] * 4
    journal = swept / "runs/ablation/optuna.journal"
    study = open_study(configure(load_spec(swept / "ablation.yaml"), storage=str(journal)))
    values = {t.user_attrs["mlflow_run_id"]: t.value for t in study.trials if t.value is not None}
    assert done.set_index("run_id")["final_val_psnr"].to_dict() == pytest.approx(values)
    assert ablation.sampler == "grid" and ablation.metric == "val_psnr" and ablation.earlier_sweeps == 0
    assert "name: ablation" in ablation.spec_text


def test_one_row_per_trial_epoch_and_metric_with_the_logged_schedules(ablation):
    epochs = ablation.epochs
    # the diverged trials stopped before their first epoch was logged
    assert len(epochs) == 4 * 4 * 10 and set(epochs["status"]) == {"COMPLETE"}
    assert set(epochs["metric"]) == {"train/loss", "train/recon", "train/kl", "kl_beta", "tfr", "lr", "val/psnr",
                                     "val/psnr_1step", "val/ssim", "epoch_seconds"}
    assert epochs.groupby(["run_id", "metric"])["epoch"].apply(list).map(tuple).unique().tolist() == [(1, 2, 3, 4)]

    def curve(config: str, metric: str) -> list[float]:
        rows = epochs[(epochs["configuration"] == config) & (epochs["metric"] == metric)]
        return rows.groupby("epoch")["value"].mean().round(6).tolist()

    assert curve(CYCLICAL, "kl_beta") == [0.5, 1.0, 0.5, 1.0]  # two cycles of two epochs
    assert curve(MONOTONIC, "kl_beta") == [0.25, 0.5, 0.75, 1.0]
    assert curve(CYCLICAL, "tfr") == curve(MONOTONIC, "tfr") == [1.0, 1.0, 0.6, 0.2]  # decays after epoch 2
    assert set(epochs["kl_setting"]) == {CYCLICAL, MONOTONIC}
    assert set(epochs["tfr_setting"]) == {"tfr 1, -0.4/epoch after epoch 2"}


def test_one_row_per_trial_and_frame(ablation):
    frames = ablation.frames
    assert len(frames) == 4 * 7  # val_vi_len 8: frames 1..7 are predicted
    assert frames.groupby("run_id")["frame"].apply(list).map(tuple).unique().tolist() == [tuple(range(1, 8))]
    means = frames.groupby("run_id")[["psnr", "ssim"]].mean()
    finals = finished(ablation.trials).set_index("run_id")
    assert means["psnr"].to_dict() == pytest.approx(finals["final_val_psnr"].to_dict())
    assert means["ssim"].to_dict() == pytest.approx(finals["final_val_ssim"].to_dict())
    assert frames["ssim"].between(0, 1).all()


def test_each_trial_has_the_copy_baselines_of_its_validation_video(ablation, uri):
    done = finished(ablation.trials)
    run = MlflowClient(uri).get_run(done["run_id"].iloc[0])
    baselines = load_video_data(TrainConfig.from_dict(run.data.params)).baselines  # as the trial loaded it
    assert done["copy_first"].tolist() == pytest.approx([baselines.first_mean] * 4)
    assert done["copy_previous"].tolist() == pytest.approx([baselines.previous_mean] * 4)
    copied = ablation.baseline_frames[ablation.baseline_frames["run_id"] == run.info.run_id]
    assert copied["frame"].tolist() == list(range(1, 8)) and copied["psnr"].tolist() == pytest.approx(baselines.first)
    one_step = ablation.epochs[(ablation.epochs["run_id"] == run.info.run_id)
                               & (ablation.epochs["metric"] == "val/psnr_1step")]
    assert done["final_val_psnr_1step"].iloc[0] == one_step["value"].iloc[-1] and one_step["epoch"].tolist() == [
        1, 2, 3, 4]


def test_runs_logged_before_the_baselines_read_as_missing_values(old):
    assert old.trials["copy_first"].isna().all() and old.trials["copy_previous"].isna().all()
    assert old.trials["final_val_psnr_1step"].isna().all() and old.baseline_frames.empty
    assert "val/psnr_1step" not in set(old.epochs["metric"])
    assert old.trials["final_val_psnr"].tolist() == [22.0, 23.0, 19.5]
    assert old.trials["final_val_ssim"].isna().all() and old.frames["ssim"].isna().all()  # logged before SSIM
    assert old.frames["psnr"].notna().all() and "val/ssim" not in set(old.epochs["metric"])
    assert old.trials["device_seconds"].isna().all() and (old.trials[["device", "git_dirty"]] == "").all(axis=None)


def test_each_trial_has_its_device_time_device_and_code(seeded):
    trials = seeded.trials
    assert len(trials) == 18 and (trials["device_seconds"] > 0).all() and (trials["device_seconds"] < 60).all()
    assert set(trials["device"]) == {DEVICE} and set(trials["git_commit"]) == {COMMIT}
    assert trials["git_dirty"].tolist() == ["true", "true"] + ["false"] * 16
    by_config = trials.groupby("configuration", observed=True)["seed"].apply(sorted).to_dict()
    assert by_config == {SEEDED_BEST: [1, 2, 3, 4, 5, 6], SEEDED_BEHIND: [1, 2, 3, 4, 5, 6],
                         SEEDED_LEVEL: [1, 2, 3, 4, 5, 6]}


def test_without_a_name_the_latest_sweep_is_read(uri, ablation):
    assert load_sweep(uri).name == "ablation"
    assert sweep_names(connect(uri)) == ["ablation", "broken"]
    assert load_sweep(uri, experiment=ablation.experiment_id).name == "ablation"  # an experiment by its id


def test_errors_name_what_exists(uri, tmp_path):
    with pytest.raises(ReportError, match=r"no sweep 'abaltion' .*; the sweeps there are: ablation, broken$"):
        load_sweep(uri, sweep="abaltion")
    with pytest.raises(ReportError, match=r"no experiment 'x' .*; the experiments there are: .*ablation"):
        load_sweep(uri, experiment="x")
    with pytest.raises(ReportError, match=r"no MLflow database at .*missing\.db"):
        load_sweep(f"sqlite:///{tmp_path / 'missing.db'}")
    (tmp_path / "not.db").write_text("not a database")
    with pytest.raises(ReportError, match=r"cannot open 'sqlite:///.*not\.db'"):
        load_sweep(f"sqlite:///{tmp_path / 'not.db'}")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ReportError, match=r"sweep 'broken' .* has no finished trial yet \(1 failed\); finish it with "
                                          r"python run_sweep.py sweeps/broken.yaml"):
        load_sweep(uri, sweep="broken")


def test_the_study_of_a_sampled_sweep_is_opened_from_the_storage_its_parent_run_names(sampled, swept):
    study, why = load_study(sampled)
    assert why == "" and len(study.trials) == 3 and set(study.trials[0].params) == {"lr", "kl_anneal_type"}
    assert len(sampled.trials) == 3 and sampled.sampler == "random"
    journal = swept / "runs/sampled/optuna.journal"
    journal.rename(swept / "moved.journal")
    try:
        assert load_study(sampled) == (None, f"its Optuna journal {journal} is gone")
    finally:
        (swept / "moved.journal").rename(journal)


# ---------------------------------------------------------------- labels.py


@pytest.mark.parametrize("swept_label, changes, expected", [
    ("kl_anneal_type=Cyclical, kl_anneal_cycle=20, kl_anneal_ratio=0.5", {}, "Cyclical (20 cycles, ratio 0.5)"),
    ("kl_anneal_type=Monotonic", {"kl_anneal_type": "Monotonic"}, "Monotonic (ratio 0.5)"),
    ("kl_anneal_type=None", {"kl_anneal_type": "None"}, "None (β = 1)"),
    ("tfr=0.0", {"tfr": 0.0}, "tfr 0 (teacher forcing off)"),
    ("tfr=1.0", {"tfr_d_step": 0.0}, "tfr 1 (teacher forcing on)"),
    ("tfr_sde=10", {}, "tfr 1, -0.1/epoch after epoch 11"),
    ("lr=0.0003, lr_schedule=cosine", {"lr": 3e-4, "lr_schedule": "cosine"}, "lr 3e-4, cosine"),
    ("milestones=2,5, batch_size=4", {"milestones": "2,5", "batch_size": 4}, "milestones 2,5, batch_size 4"),
    ("", {}, "base"),
])
def test_configuration_labels_read_like_the_lab_report(swept_label, changes, expected):
    params = {"kl_anneal_type": "Cyclical", "kl_anneal_cycle": 20, "kl_anneal_ratio": 0.5, "tfr": 1.0,
              "tfr_sde": 10, "tfr_d_step": 0.1, "num_epoch": 70, **changes}
    assert configuration_label(swept_keys(swept_label), params) == expected


def test_settings_and_numbers():
    params = {"kl_anneal_type": "Cyclical", "kl_anneal_cycle": 10, "kl_anneal_ratio": 1.0, "tfr": 0.5,
              "tfr_sde": 10, "tfr_d_step": 0.1, "num_epoch": 5}
    assert kl_setting(params) == "Cyclical (10 cycles, ratio 1)"
    assert tfr_setting(params) == "tfr 0.5"  # its decay would start after the last epoch
    assert [number(v) for v in (0.001, 1e30, 0.5, 20, 1.25e-3, "Adam")] == ["1e-3", "1e+30", "0.5", "20", "1.25e-3",
                                                                          "Adam"]


# ---------------------------------------------------------------- tables.py, stats.py, power.py, comparisons.py


def test_summary_table_ranks_configurations_and_counts_failures_apart(ablation):
    table = tables.summary_table(ablation.trials, ablation.frames)
    done = finished(ablation.trials)
    values = done.groupby("configuration", observed=True)["final_val_psnr"]
    best_first = values.mean().sort_values(ascending=False).index.tolist()
    assert table["configuration"].tolist() == [*best_first, DIVERGING]
    assert table[["seeds", "failed", "pruned"]].values.tolist() == [[2, 0, 0], [2, 0, 0], [0, 2, 0]]
    row = table.set_index("configuration").loc[CYCLICAL]
    assert row["final_val_psnr_mean"] == pytest.approx(values.mean()[CYCLICAL])
    assert row["final_val_psnr_std"] == pytest.approx(values.std()[CYCLICAL])  # sample std over the 2 seeds
    assert row["epochs"] == 4 and table.attrs["frame_window"] == 3  # 7 frames: the first 3 and the last 3
    frames = ablation.frames[ablation.frames["configuration"] == CYCLICAL]
    first = frames[frames["frame"] <= 3].groupby("run_id")["psnr"].mean().mean()
    last = frames[frames["frame"] >= 5].groupby("run_id")["psnr"].mean().mean()
    assert (row["psnr_first_3_mean"], row["psnr_last_3_mean"]) == pytest.approx((first, last))
    assert np.isnan(table.iloc[2]["final_val_psnr_mean"])  # the failed seeds are never averaged in
    shown = tables.formatted(table)
    assert shown.columns.tolist() == ["#", "configuration", "seeds", "failed", "pruned", "final val PSNR (dB)",
                                      "best val PSNR (dB)", "gain over copy-first (dB)", "one-step val PSNR (dB)",
                                      "final val SSIM", "PSNR frames 1-3 (dB)", "PSNR last 3 frames (dB)", "epochs", "wall time / trial",
                                      "device-hours"]
    assert shown.loc[0, "final val PSNR (dB)"] == f"{table.loc[0, 'final_val_psnr_mean']:.2f} ± " \
                                                  f"{table.loc[0, 'final_val_psnr_std']:.2f}"
    assert shown.loc[2, "final val PSNR (dB)"] == "-" and shown.loc[2, "failed"] == 2


def test_an_objective_the_schema_does_not_know_is_an_error_not_the_psnr():
    assert tables.objective_column("val_psnr_1step") == "final_val_psnr_1step"
    with pytest.raises(ReportError, match="objective 'val_fid' is not a metric this code knows \\(one of val_psnr"):
        tables.objective_column("val_fid")


def test_the_table_gains_over_copy_first_and_ends_with_the_baselines(known):
    table = tables.with_baselines(tables.summary_table(known.trials, known.frames), known.trials, known.baseline_frames)
    assert table["configuration"].tolist() == [AHEAD, BEHIND, "copy first frame", "copy previous frame"]
    rows = table.set_index("configuration")
    assert rows.loc[[AHEAD, BEHIND], "gain_over_copy_first"].tolist() == pytest.approx([2.5, -0.5])  # 22.5 - 20, 19.5 - 20
    assert rows.loc[[AHEAD, BEHIND], "final_val_psnr_1step_mean"].tolist() == [30.5, 27.5]
    copy_first, copy_previous = rows.loc["copy first frame"], rows.loc["copy previous frame"]
    assert copy_first[["final_val_psnr_mean", "psnr_first_1_mean", "psnr_last_1_mean"]].tolist() == [20.0, 21.0, 19.0]
    assert copy_previous["final_val_psnr_1step_mean"] == 29.0 and pd.isna(copy_previous["final_val_psnr_mean"])
    assert copy_first[["seeds", "failed", "best_val_psnr_mean", "gain_over_copy_first", "epochs"]].isna().all()

    shown = tables.formatted(table).set_index("configuration")
    assert shown["#"].tolist() == [1, 2, "", ""]
    assert shown["final val PSNR (dB)"].tolist() == ["22.50 ± 0.71", "19.50", "20.00", ""]
    assert shown["gain over copy-first (dB)"].tolist() == ["+2.50", "-0.50", "", ""]
    assert shown["one-step val PSNR (dB)"].tolist() == ["30.50 ± 0.71", "27.50", "", "29.00"]
    assert shown["PSNR frames 1-1 (dB)"].tolist() == ["22.50 ± 0.71", "19.50", "21.00", ""]
    assert shown.loc["copy previous frame", ["seeds", "best val PSNR (dB)", "epochs", "wall time / trial",
                                             "device-hours"]].tolist() == ["", "", "", "", ""]
    markdown = markdown_table(tables.formatted(table))
    assert shown["final val SSIM"].tolist() == ["0.450 ± 0.014", "0.390", "", ""]  # three decimals
    assert "| copy first frame |  |  |  | 20.00 |  |  |  |  | 21.00 | 19.00 |  |  |  |" in markdown
    assert markdown.splitlines()[1].startswith("| ---: | --- | ---: |")  # ranks and counts stay numbers with blanks


def test_a_sweep_that_maximised_the_ssim_is_ranked_by_it(known):
    table = tables.summary_table(known.trials, known.frames, "val_ssim", "maximize")
    assert table.attrs["objective"] == "final_val_ssim" and tables.unit("final_val_ssim") == ""
    assert table["configuration"].tolist() == [AHEAD, BEHIND]
    assert table["final_val_ssim_mean"].tolist() == pytest.approx([0.45, 0.39])


def test_the_table_gives_each_configuration_s_device_hours(seeded, old):
    table = tables.summary_table(seeded.trials, seeded.frames).set_index("configuration")
    spent = seeded.trials.groupby("configuration", observed=True)["device_seconds"].sum() / 3600
    assert table["device_hours"].to_dict() == pytest.approx(spent.to_dict())
    assert tables.formatted(table.reset_index())["device-hours"].tolist() == ["< 0.001"] * 3  # a second or so each
    assert [tables.hours_text(hours) for hours in (0.0521, 12.0, math.nan)] == ["0.052", "12.000", "n/a"]
    assert tables.summary_table(old.trials, old.frames)["device_hours"].isna().all()  # logged before device time
    trials = seeded.trials.copy()
    trials.loc[0, "device_seconds"] = math.nan  # one trial without it: its configuration's total is unknown
    hours = tables.device_hours(trials)
    assert math.isnan(hours[trials.loc[0, "configuration"]]) and hours.notna().sum() == 2


def test_the_facts_give_the_sweep_s_device_time_and_the_trials_from_uncommitted_code(seeded, old):
    hours = seeded.trials["device_seconds"].sum() / 3600
    assert provenance.device_time(seeded.trials) == (f"{tables.hours_text(hours)} device-hours over 18 ended trials "
                                                     f"({DEVICE} × 18)")
    assert provenance.device_time(old.trials) == "n/a: the runs were logged before trials recorded their device time"
    partly = seeded.trials.assign(device_seconds=lambda rows: rows["device_seconds"].where(rows["trial"] > 2))
    assert provenance.device_time(partly).endswith("; 3 of 18 ended trials were logged before trials recorded their "
                                                   "device time")
    assert provenance.code(seeded.trials) == "git 0123456; 2 of 18 trials ran from uncommitted changes (listed below)"
    assert provenance.code(old.trials) == "not recorded: the runs were logged before trials recorded their git commit"
    clean = seeded.trials.assign(git_dirty="false")
    assert provenance.code(clean) == "git 0123456, committed: no trial ran from uncommitted changes"
    dirty = provenance.uncommitted(seeded.trials)
    assert dirty.columns.tolist() == provenance.LISTED and dirty["trial"].tolist() == [0, 1]
    assert dirty["commit"].tolist() == ["0123456"] * 2 and dirty["configuration"].tolist() == [SEEDED_BEST,
                                                                                                SEEDED_BEHIND]
    assert provenance.uncommitted(clean).empty


def test_runs_logged_before_the_baselines_make_the_table_as_before(old):
    table = tables.summary_table(old.trials, old.frames)
    assert tables.with_baselines(table, old.trials, old.baseline_frames) is table  # no baseline row to add
    assert tables.formatted(table).columns.tolist() == [
        "#", "configuration", "seeds", "failed", "pruned", "final val PSNR (dB)", "best val PSNR (dB)",
        "PSNR frames 1-1 (dB)", "PSNR last 1 frames (dB)", "epochs", "wall time / trial", "device-hours"]
    assert table["gain_over_copy_first"].isna().all() and table["final_val_ssim_mean"].isna().all()


# Five configurations of known values. close: best minus 0.5, 0.7, 0.6, 0.4, 0.8, 0.6 on seeds 1-6 (mean -0.6,
# SD of the differences sqrt(0.02)); tied: best on every seed; far: three other seeds; single: one seed.
BEST = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
CLOSE = [19.5, 20.3, 21.4, 22.6, 23.2, 24.4]
FAR = {11: 21.0, 12: 23.0, 13: 22.0}


def known_comparisons() -> pd.DataFrame:
    rows = [(config, seed, value) for config, values in (("best", BEST), ("close", CLOSE), ("tied", BEST))
            for seed, value in enumerate(values, start=1)]
    rows += [("far", seed, value) for seed, value in FAR.items()] + [("single", 1, 15.0)]
    trials = pd.DataFrame(rows, columns=["configuration", "seed", "value"]).assign(status="COMPLETE")
    trials["configuration"] = pd.Categorical(trials["configuration"])
    table = pd.DataFrame({"configuration": ["best", "tied", "far", "close", "single"]})
    return comparisons.compare_to_best(trials, table, "value").set_index("configuration")


def test_configurations_sharing_seeds_are_compared_seed_by_seed():
    compared = known_comparisons()
    close = compared.loc["close"]
    assert (close["test"], close["seeds"], close["best_seeds"]) == ("paired t", 6, 6)
    assert close["differences"] == pytest.approx((-0.5, -0.7, -0.6, -0.4, -0.8, -0.6))
    assert close["difference"] == pytest.approx(-0.6)
    half_width = scipy_stats.t.ppf(0.975, 5) * np.sqrt(0.02 / 6)  # t(5) times the standard error of the mean
    assert (close["ci_low"], close["ci_high"]) == pytest.approx((-0.6 - half_width, -0.6 + half_width))
    assert close["p_value"] == pytest.approx(scipy_stats.ttest_rel(CLOSE, BEST).pvalue)
    assert -0.8 <= close["bootstrap_low"] < -0.6 < close["bootstrap_high"] <= -0.4
    assert close["p_wilcoxon"] == pytest.approx(2 / 64)  # all six differences negative: the exact two-sided p
    average_sd = np.sqrt((np.var(CLOSE, ddof=1) + np.var(BEST, ddof=1)) / 2)
    assert close["hedges_g"] == pytest.approx((1 - 3 / (4 * 10 - 1)) * -0.6 / average_sd)  # J at df = 2 (6 - 1)
    assert close["effect_size"] == pytest.approx(0.6 / np.sqrt(0.02))
    assert close["verdict"] == comparisons.REAL


def test_configurations_without_shared_seeds_fall_back_to_welch():
    far = known_comparisons().loc["far"]
    assert (far["test"], far["seeds"], far["best_seeds"], far["differences"]) == ("Welch t", 3, 6, ())
    welch = scipy_stats.ttest_ind(list(FAR.values()), BEST, equal_var=False)
    assert far["difference"] == pytest.approx(-0.5) and far["p_value"] == pytest.approx(welch.pvalue)
    assert far["ci_low"] < -0.5 < far["ci_high"]
    pooled_sd = np.sqrt((2 * np.var(list(FAR.values()), ddof=1) + 5 * np.var(BEST, ddof=1)) / 7)
    assert far["hedges_g"] == pytest.approx((1 - 3 / (4 * 7 - 1)) * -0.5 / pooled_sd)
    assert np.isnan(far["bootstrap_low"]) and np.isnan(far["p_wilcoxon"]) and far["verdict"] == comparisons.NOT_TOLD


def test_holm_corrects_over_every_pair_of_configurations_that_can_be_tested():
    compared = known_comparisons()
    # best-close, best-far, close-far, close-tied and far-tied; best-tied has no spread, single too few seeds
    assert compared.attrs == {"pairs": 5, "level": 0.01}
    # close against best and against tied are the two smallest p-values, equal: Holm multiplies both by 5
    assert compared.loc["close", "p_holm"] == pytest.approx(5 * compared.loc["close", "p_value"])
    assert compared.loc["far", "p_holm"] == 1.0
    assert stats.holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm(np.array([[0.01, 0.04], [0.5, 0.01]])) == pytest.approx(np.array([[0.02, 0.04], [0.5, 0.02]]))


def test_holm_leaves_the_garbage_collector_frozen_or_not_as_it_found_it():
    gc.unfreeze()  # conftest froze the imported modules
    try:
        stats.holm([0.01, 0.04])
        assert gc.get_freeze_count() == 0
    finally:
        gc.freeze()
    frozen = gc.get_freeze_count()
    stats.holm([0.01, 0.04])
    assert gc.get_freeze_count() >= frozen > 0


def test_comparisons_that_cannot_be_tested_say_why():
    compared = known_comparisons()
    assert compared.loc["tied", "verdict"] == comparisons.SAME_DIFFERENCE
    assert compared.loc["single", "verdict"] == comparisons.TOO_FEW
    for config in ("tied", "single"):
        assert np.isnan(compared.loc[config, ["p_value", "p_holm", "seeds_needed"]].astype(float)).all()
    assert compared.loc["single", "difference"] == pytest.approx(-7.5)


def test_seeds_needed_are_the_textbook_sample_sizes():
    assert seeds_needed(1.0, paired=True, alpha=0.05) == 10  # a paired t-test needs 9.94 pairs for d_z = 1
    assert seeds_needed(1.0, paired=False, alpha=0.05) == 17  # and two groups of 16.7 for d = 1
    assert seeds_needed(0.5, paired=False, alpha=0.05) == 64  # Cohen's 64 per group for a medium effect
    assert seeds_needed(1.0, paired=True, alpha=0.01) > 10
    assert seeds_needed(0.0, paired=True, alpha=0.05) == math.inf and math.isnan(seeds_needed(math.nan, True, 0.05))
    assert seeds_needed(math.inf, paired=True, alpha=0.05) == 2
    sizes = [seeds_needed(effect, paired=True, alpha=0.05 / 45) for effect in np.geomspace(0.05, 200, 60)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 3  # no gaps from scipy's NaNs at large effects
    assert known_comparisons().loc["close", "seeds_needed"] == seeds_needed(0.6 / np.sqrt(0.02), True, 0.01)


def test_comparisons_as_the_report_shows_them():
    shown = comparisons.formatted(known_comparisons().reset_index()).set_index("configuration")
    assert shown.columns.tolist() == ["test", "seeds", "per-seed difference (dB)", "difference from best (dB)",
                                      "95% t interval", "95% bootstrap interval", "p", "p (Holm)", "p (Wilcoxon)",
                                      "Hedges' g", "seeds needed", "verdict"]
    assert shown.loc["close"].tolist()[:6] == ["paired t", "6", "-0.50, -0.70, -0.60, -0.40, -0.80, -0.60", "-0.60",
                                               "[-0.75, -0.45]", "[-0.70, -0.50]"]
    assert shown.loc["close", "p (Wilcoxon)"] == "0.031" and shown.loc["close", "p (Holm)"] == "< 0.001"
    assert shown.loc["far", ["seeds", "per-seed difference (dB)", "95% bootstrap interval", "p (Holm)"]].tolist() == [
        "3 vs 6", "-", "-", "1.000"]
    assert shown.loc["single", ["test", "p", "Hedges' g", "seeds needed"]].tolist() == ["-", "-", "-", "-"]
    assert comparisons.seeds_sentence("Monotonic", "None", -0.64, 9, "dB") == (
        "Monotonic vs None: -0.64 dB, about 9 seeds would tell them apart.")
    assert comparisons.seeds_sentence("a", "b", -0.01, math.inf, "") == (
        "a vs b: -0.01; not even 1000 seeds would tell them apart.")


def test_the_sweep_s_configurations_are_compared_on_their_two_shared_seeds(ablation):
    table = tables.summary_table(ablation.trials, ablation.frames)
    compared = comparisons.compare_to_best(ablation.trials, table, "final_val_psnr")
    assert compared["configuration"].tolist() == [table.loc[1, "configuration"]]  # the failed one has no seed
    row = compared.iloc[0]
    assert (row["test"], row["seeds"], len(row["differences"])) == ("paired t", 2, 2)
    assert row["verdict"] in (comparisons.REAL, comparisons.NOT_TOLD) and compared.attrs["pairs"] == 1
    assert row["p_holm"] == row["p_value"]  # one pair: nothing to correct
    assert np.isnan(row["bootstrap_low"]) and np.isnan(row["p_wilcoxon"])  # too few pairs for either


# ---------------------------------------------------------------- figures.py


def line_colours(ax) -> list[tuple]:
    return [to_rgb(line.get_color()) for line in ax.get_lines()]


def legend_labels(fig) -> list[str]:
    [legend] = fig.legends
    return [text.get_text() for text in legend.get_texts()]


def assert_legend_below_axes(fig) -> None:
    fig.draw_without_rendering()
    [legend] = fig.legends
    top = legend.get_window_extent().y1
    assert all(top <= ax.get_window_extent().y0 for ax in fig.axes)


def test_the_per_frame_psnr_has_a_line_and_a_seed_band_per_configuration(ablation, colours):
    fig = figures.per_frame(finished(ablation.frames), colours)
    [ax] = fig.axes
    assert line_colours(ax) == [colours[CYCLICAL], colours[MONOTONIC]]
    assert [line.get_xdata().tolist() for line in ax.get_lines()] == [list(range(1, 8))] * 2
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # two seeds: a band each
    frames = ablation.frames[ablation.frames["configuration"] == CYCLICAL]
    assert ax.get_lines()[0].get_ydata() == pytest.approx(frames.groupby("frame")["psnr"].mean().to_numpy())
    assert legend_labels(fig) == [CYCLICAL, MONOTONIC]
    assert_legend_below_axes(fig)


def test_loss_curves_have_three_panels_of_one_line_per_configuration(ablation, colours):
    fig = figures.loss_curves(finished(ablation.epochs), colours)
    assert [ax.get_title() for ax in fig.axes] == ["total loss", "reconstruction (MSE)", "KL divergence"]
    for ax in fig.axes:
        assert line_colours(ax) == [colours[CYCLICAL], colours[MONOTONIC]]
        assert [line.get_xdata().tolist() for line in ax.get_lines()] == [[1, 2, 3, 4]] * 2
    assert legend_labels(fig) == [CYCLICAL, MONOTONIC]
    assert_legend_below_axes(fig)


def test_schedules_have_one_line_per_distinct_setting(ablation, colours):
    epochs = finished(ablation.epochs)
    tfr = figures.tfr_schedule(epochs, colours)
    [ax] = tfr.axes
    [line] = ax.get_lines()  # both configurations share one teacher forcing setting: one grey line
    assert line.get_ydata().tolist() == pytest.approx([1.0, 1.0, 0.6, 0.2])
    assert legend_labels(tfr) == ["tfr 1, -0.4/epoch after epoch 2"]
    beta = figures.kl_beta_schedule(epochs, colours)
    [ax] = beta.axes
    assert [line.get_ydata().tolist() for line in ax.get_lines()] == [[0.5, 1.0, 0.5, 1.0], [0.25, 0.5, 0.75, 1.0]]
    assert line_colours(ax) == [colours[CYCLICAL], colours[MONOTONIC]]  # a setting per configuration: its colour
    assert legend_labels(beta) == [CYCLICAL, MONOTONIC]
    assert_legend_below_axes(beta)


def test_val_psnr_curves_mean_over_seeds(ablation, colours):
    fig = figures.val_psnr_curves(finished(ablation.epochs), colours)
    ax, one_step = fig.axes  # the rollout's and the one-step PSNR's
    assert line_colours(ax) == line_colours(one_step) == [colours[CYCLICAL], colours[MONOTONIC]]
    done = finished(ablation.trials).set_index("configuration")
    assert ax.get_lines()[1].get_ydata()[-1] == pytest.approx(done.loc[MONOTONIC, "final_val_psnr"].mean())
    assert one_step.get_lines()[1].get_ydata()[-1] == pytest.approx(done.loc[MONOTONIC, "final_val_psnr_1step"].mean())


GREY = to_rgb("0.5")


def test_the_copy_baselines_are_dashed_grey_references(known):
    colours = figures.palette(known.configurations)
    fig = figures.per_frame(known.frames, colours, known.baseline_frames)
    [ax] = fig.axes
    *_, copy_first = ax.get_lines()
    assert copy_first.get_ydata().tolist() == [21.0, 20.0, 19.0] and copy_first.get_xdata().tolist() == [1, 2, 3]
    assert (to_rgb(copy_first.get_color()), copy_first.get_linestyle()) == (GREY, "--")
    assert legend_labels(fig) == [AHEAD, BEHIND, "copy first frame"]

    fig = figures.val_psnr_curves(known.epochs, colours, copy_first=20.0, copy_previous=29.0)
    rollout, one_step = fig.axes
    assert [line.get_ydata()[-1] for line in one_step.get_lines()[:2]] == [30.5, 27.5]  # the configurations' means
    assert list(rollout.get_lines()[-1].get_ydata()) == [20.0, 20.0]  # a level across the panel
    assert list(one_step.get_lines()[-1].get_ydata()) == [29.0, 29.0]
    assert {(to_rgb(ax.get_lines()[-1].get_color()), ax.get_lines()[-1].get_linestyle()) for ax in fig.axes} == {
        (GREY, "--")}
    assert legend_labels(fig) == [AHEAD, BEHIND, "copy first frame", "copy previous frame"]
    assert_legend_below_axes(fig)


def test_the_per_frame_ssim_has_a_line_per_configuration_and_no_psnr_reference(known):
    colours = figures.palette(known.configurations)
    fig = figures.per_frame(known.frames, colours, metric=BY_NAME["val_ssim_per_frame"])
    [ax] = fig.axes
    assert line_colours(ax) == [colours[AHEAD], colours[BEHIND]]
    assert ax.get_lines()[0].get_ydata() == pytest.approx([0.45] * 3)  # 22.5 dB / 50, the mean over two seeds
    assert (ax.get_ylabel(), ax.get_title()) == ("SSIM", "SSIM per frame of the validation video (final epoch)")


def test_runs_logged_before_the_baselines_draw_no_reference(old):
    colours = figures.palette(old.configurations)
    fig = figures.per_frame(old.frames, colours, old.baseline_frames)
    assert GREY not in line_colours(fig.axes[0]) and legend_labels(fig) == [AHEAD, BEHIND]
    fig = figures.val_psnr_curves(old.epochs, colours, copy_first=float("nan"), copy_previous=float("nan"))
    [ax] = fig.axes  # no one-step panel either
    assert line_colours(ax) == [colours[AHEAD], colours[BEHIND]] and legend_labels(fig) == [AHEAD, BEHIND]


def test_coincident_curves_are_found_so_they_can_be_dashed():
    curves = pd.DataFrame([[1.0, 2.0, 3.0], [1.0, 2.001, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]],
                          index=["a", "b", "c", "d"])
    assert figures.coincident(curves) == {"b": "a", "d": "a"}


def test_the_palette_is_fixed_by_configuration_order():
    colours = figures.palette(["x", "y", "z"])
    assert list(colours) == ["x", "y", "z"] and len(set(colours.values())) == 3
    assert figures.palette(["x", "y", "z"]) == colours


def test_optuna_figures_of_a_sampled_study(sampled):
    study, _ = load_study(sampled)
    importances = figures.param_importances(study, target_name="val_psnr")
    [ax] = importances.axes
    assert sorted(label.get_text() for label in ax.get_yticklabels()) == ["kl_anneal_type", "lr"]
    assert ax.get_title() == "Hyperparameter importances for val_psnr"
    history = figures.optimization_history(study, target_name="val_psnr")
    assert len(history.axes[0].collections[0].get_offsets()) == 3  # one point per trial
    assert matplotlib.rcParams["axes.facecolor"] == "white"  # Optuna's ggplot style stayed inside its figures
