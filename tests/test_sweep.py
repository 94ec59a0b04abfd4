"""run_sweep.py and experiments/launcher.py: real sweeps of a tiny model, real worker processes, journal and MLflow files."""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from cvae.config import TrainConfig
from cvae.data import load_video_data
from experiments.launcher import configure, describe_outcome, launch
from experiments.plan import group_key, train_config, trial_plan
from experiments.spec_loader import load_spec
from experiments.study import open_study
from mlflow_ui_check import check_sweep, mlflow_server

ROOT = Path(__file__).resolve().parents[1]
# NCHW: at these sizes on the CPU, the norm layers' channels_last backward takes 40% of a step (benchmarks/README.md)
TINY = ("{F_dim: 16, L_dim: 8, N_dim: 4, D_out_dim: 16, train_vi_len: 4, val_vi_len: 8, batch_size: 4, "
        "partial: 0.5, per_save: 1, channels_last: false, ")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_spec(folder: Path, data: Path, name: str, num_epoch: int = 2, extra: str = "", workers: int = 2,
               seeds: str = "[1, 2]") -> Path:
    """A grid of a tiny model on the small data set: kl_anneal_type x seeds, unless `extra` (one line) says more."""
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base: {TINY}num_epoch: {num_epoch}, DR: "{data}"}}
        {extra or "parameters: {kl_anneal_type: [Cyclical, None]}"}
        seeds: {seeds}
        execution: {{gpus: [], cpu_workers: {workers}}}
        """))
    return path


def run_launch(folder: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What `python run_sweep.py SPEC` does, in this process, in `folder`."""
    with monkeypatch.context() as patch:
        patch.chdir(folder)
        return launch(configure(load_spec(spec_path)))


def run_sweep(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python run_sweep.py ARGS` in `folder`, to its end, with `env` added to this environment."""
    return subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=folder, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def mlflow_runs(folder: Path, name: str) -> tuple[MlflowClient, list, list]:
    """The client, the parent runs and the child runs of experiment `name` in folder/mlflow.db."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return client, parents, children


def complete_cells(study: optuna.Study) -> Counter:
    return Counter((t.user_attrs["group"], t.user_attrs["seed"]) for t in study.trials if t.state == TrialState.COMPLETE)


@pytest.fixture(scope="module")
def finished_sweep(small_dataset, tmp_path_factory):
    """A 4-trial sweep (2 configurations x 2 seeds) run once by 2 CPU workers; (folder, spec path, outcome)."""
    folder = tmp_path_factory.mktemp("sweep")
    spec_path = write_spec(folder, small_dataset, "tiny")
    with pytest.MonkeyPatch.context() as patch:
        outcome = run_launch(folder, spec_path, patch)
    return folder, spec_path, outcome


def test_a_two_worker_sweep_completes_with_one_child_run_per_trial(finished_sweep):
    folder, spec_path, outcome = finished_sweep
    assert (outcome.progress.done, outcome.progress.total, outcome.exit_code) == (4, 4, 0)
    assert not outcome.failed and not torch.cuda.is_initialized()
    assert outcome.table["seeds"].tolist() == [2, 2] and set(outcome.table["configuration"]) == {
        "kl_anneal_type=Cyclical", "kl_anneal_type=None"}
    # the closing summary sets each configuration against copying the first frame of the validation video
    spec = load_spec(spec_path)
    baselines = load_video_data(train_config(spec, spec.cells[0], spec.seeds[0])).baselines
    assert outcome.baselines.first_mean == baselines.first_mean
    summary = describe_outcome(outcome, "python run_sweep.py tiny.yaml").splitlines()
    assert baselines.describe() in summary
    for row in outcome.table.itertuples():
        [line] = [line for line in summary if line.strip().startswith(row.configuration)]
        assert line.split()[-1] == f"{row.mean - baselines.first_mean:.3f}", line

    study = open_study(configure(load_spec(spec_path), storage=str(folder / "runs/tiny/optuna.journal")))
    assert complete_cells(study) == Counter((group_key(c), s) for c, s in trial_plan(load_spec(spec_path)))
    client, parents, children = mlflow_runs(folder, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["sweep.id"] == study.user_attrs["sweep_id"]
    assert sorted(run.info.run_id for run in children) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert {run.data.tags["sweep.worker"] for run in children} <= {"0", "1"}
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        tags = run.data.tags
        assert (run.info.status, tags["sweep.status"]) == ("FINISHED", "COMPLETE")
        assert (tags["optuna.trial_number"], tags["sweep.seed"], tags["sweep.gpu"]) == (
            str(trial.number), str(trial.user_attrs["seed"]), "cpu")
        assert tags["sweep.group_key"] == trial.user_attrs["group"]
        assert tags["sweep.group_label"] == f"kl_anneal_type={trial.params['kl_anneal_type']}"
        cfg = TrainConfig.from_dict(run.data.params)  # every field, read back as TrainConfig reads it
        assert (cfg.num_epoch, cfg.seed, cfg.kl_anneal_type, cfg.device) == (
            2, trial.user_attrs["seed"], trial.params["kl_anneal_type"], "cpu")
        assert cfg.save_root == str(folder / "runs/tiny/trials" / f"{trial.user_attrs['group']}-seed{cfg.seed}")
        for key in ("train/loss", "train/recon", "train/kl", "kl_beta", "tfr", "lr", "val/psnr", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
        psnr = client.get_metric_history(run.info.run_id, "val/psnr")
        assert psnr[-1].value == pytest.approx(trial.value)
        frames = client.get_metric_history(run.info.run_id, "val/psnr_frame")
        assert [m.step for m in frames] == list(range(1, 8))  # val_vi_len 8: frames 1..7 are predicted
        assert sum(m.value for m in frames) / 7 == pytest.approx(trial.value)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"checkpoints", "val_psnr_per_frame.csv", "val_rollout.gif"}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    assert (folder / "mlartifacts" / "tiny").is_dir()
    summary = client.download_artifacts(parents[0].info.run_id, "summary.csv", str(folder))
    assert Path(summary).read_text().startswith("configuration,group,seeds,mean,std\n")


def test_rerunning_a_finished_sweep_adds_nothing(finished_sweep, monkeypatch):
    folder, spec_path, _ = finished_sweep
    _, parents, children = mlflow_runs(folder, "tiny")
    outcome = run_launch(folder, spec_path, monkeypatch)
    assert (outcome.progress.done, outcome.exit_code, outcome.parent) == (4, 0, None)
    study = open_study(configure(load_spec(spec_path), storage=str(folder / "runs/tiny/optuna.journal")))
    assert len(study.trials) == 4
    _, parents_after, children_after = mlflow_runs(folder, "tiny")
    assert [r.info.run_id for r in parents_after] == [r.info.run_id for r in parents]
    assert len(children_after) == len(children) == 4
    assert "4 of 4 trials done" in describe_outcome(outcome, "python run_sweep.py tiny.yaml")


@pytest.mark.slow
def test_mlflow_ui_shows_the_parent_its_children_and_their_curves(finished_sweep):
    folder, _, _ = finished_sweep
    with mlflow_server(folder / "mlflow.db") as url:
        found = check_sweep(url, "tiny")
    assert (found["children"], found["complete"], found["epochs"]) == (4, 4, 2)


def test_a_trial_that_diverges_is_failed_with_its_error_and_the_sweep_goes_on(small_dataset, tmp_path, monkeypatch,
                                                                              caplog):
    spec_path = write_spec(tmp_path, small_dataset, "nan", workers=1, extra=(
        # the lab model's random Generator moves the posterior at the first step, whose logvar then explodes
        "parameters: {lr: [1.0e30, 0.001], lr_schedule: [constant], grad_clip: [1.0e30], model: [lab], "
        "frame_output: [sigmoid]}"), seeds="[1]")
    outcome = run_launch(tmp_path, spec_path, monkeypatch)

    assert (outcome.progress.done, outcome.progress.total, outcome.exit_code) == (1, 2, 1)
    [failed] = outcome.failed
    assert (failed.number, failed.seed) == (0, 1) and failed.configuration.startswith("lr=1e+30")
    assert failed.error.startswith("TrainingDiverged: training loss became nan in epoch 1")
    assert (f"trial 0 (lr=1e+30, lr_schedule=constant, grad_clip=1e+30, model=lab, frame_output=sigmoid, seed 1) "
            f"FAILED: {failed.error}") in caplog.text
    study = open_study(configure(load_spec(spec_path), storage=str(tmp_path / "runs/nan/optuna.journal")))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["error"] == failed.error
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["sweep.status"], run.data.tags["sweep.error"]) == (
        "FAILED", "FAILED", failed.error)
    assert client.get_run(study.trials[1].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert "1 trials still to run; run them with: python run_sweep.py nan.yaml" in describe_outcome(
        outcome, "python run_sweep.py nan.yaml")


def process_stat(stat: Path) -> list[str]:
    """The fields of a /proc/<pid>/stat file after the command's name: state, parent, process group, ..."""
    return stat.read_text().rsplit(")", 1)[1].split()


def live_processes(group: int) -> list[int]:
    """The processes of a process group that are not zombies (which a container's init may never reap)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = process_stat(stat)
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def parent_pid(pid: int) -> int:
    """The parent of process `pid`, from /proc; 0 for a process that is gone."""
    try:
        return int(process_stat(Path(f"/proc/{pid}/stat"))[1])
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_launcher_killed_with_sigkill_is_resumed_by_the_same_command(small_dataset, tmp_path, monkeypatch):
    spec_path = write_spec(tmp_path, small_dataset, "killed", num_epoch=4)
    launcher = subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), spec_path.name], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    journal = tmp_path / "runs/killed/optuna.journal"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and launcher.poll() is None:
        if journal.exists():
            study = open_study(configure(load_spec(spec_path), storage=str(journal)))
            if any(t.state == TrialState.COMPLETE for t in study.trials):
                break
        time.sleep(0.5)
    assert launcher.poll() is None, launcher.stderr.read().decode()[-2000:]
    os.kill(launcher.pid, signal.SIGKILL)  # the launcher only: its workers must notice and stop by themselves
    launcher.wait()
    deadline = time.monotonic() + 20
    while live_processes(launcher.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = live_processes(launcher.pid)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived their launcher"
    killed = open_study(configure(load_spec(spec_path), storage=str(journal)))
    assert 1 <= len(complete_cells(killed)) < 4, [t.state.name for t in killed.trials]
    interrupted = [t for t in killed.trials if t.state == TrialState.FAIL]  # the workers failed their own trials
    assert not [t for t in killed.trials if t.state == TrialState.RUNNING]
    assert {t.user_attrs["error"] for t in interrupted} <= {"interrupted (Ctrl-C, or the launcher stopped)"}

    outcome = run_launch(tmp_path, spec_path, monkeypatch)
    assert (outcome.progress.done, outcome.exit_code) == (4, 0)
    study = open_study(configure(load_spec(spec_path), storage=str(journal)))
    assert complete_cells(study) == Counter((group_key(c), s) for c, s in trial_plan(load_spec(spec_path)))
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _, parents, children = mlflow_runs(tmp_path, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert Counter(run.data.tags["sweep.status"] for run in children)["COMPLETE"] == 4
    assert not [run for run in children if run.info.status == "RUNNING"]
    for run in children:
        if run.data.tags["sweep.status"] != "COMPLETE":  # a trial the kill interrupted
            assert (run.info.status, run.data.tags["sweep.status"]) == ("KILLED", "FAILED")


# ---------------------------------------------------------------- the script


def load_script():
    module_spec = importlib.util.spec_from_file_location("run_sweep", ROOT / "run_sweep.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_a_bad_spec_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbase: {num_epochs: 2}\n")
    done = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"error: {bad}: base.num_epochs: unknown TrainConfig key (did you mean num_epoch?)\n"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("case", ["pruner with grid", "missing data", "bad --gpus", "bad --workers"])
def test_script_errors_are_one_line(tmp_path, capsys, case):
    spec = tmp_path / "x.yaml"
    spec.write_text(f"name: x\nbase: {{DR: {tmp_path / 'nowhere'}}}\nparameters: {{tfr: [0.0, 1.0]}}\n")
    argv = [str(spec)]
    if case == "pruner with grid":
        spec.write_text(spec.read_text() + "pruner: median\n")
    elif case == "bad --gpus":
        argv += ["--gpus", "0,x"]
    elif case == "bad --workers":
        argv += ["--workers", "0"]
    expected = {"pruner with grid": f"error: {spec}: pruner: a grid sweep cannot use a pruner",
                "missing data": f"error: data root {tmp_path / 'nowhere'} does not exist",
                "bad --gpus": "error: --gpus: expected auto, none or distinct GPU indices like 0,1; got '0,x'",
                "bad --workers": "error: --workers: must be >= 1, got 0"}[case]
    assert load_script().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1


def test_dry_run_prints_the_plan_and_its_count(capsys):
    assert load_script().main([str(ROOT / "sweeps/tfr_ablation.yaml"), "--dry-run", "--gpus", "none"]) == 0
    out = capsys.readouterr().out
    assert "tfr_ablation: 27 trials: 9 configurations x 3 seeds" in out
    assert "workers: 1 on the CPU (no GPU)" in out
    rows = [line for line in out.splitlines() if "tfr=" in line]
    assert len(rows) == 27 and rows[0].split()[0] == "0" and rows[-1].split()[-1] == "3"


def test_dry_run_leaves_trials_per_gpu_auto_to_the_launch(tmp_path, capsys):
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\nexecution: {gpus: [0, 1], trials_per_gpu: auto}\n")
    assert load_script().main([str(spec), "--dry-run"]) == 0
    assert "workers: auto (measured at launch) per GPU on GPUs [0, 1]" in capsys.readouterr().out


def auto_spec(folder: Path, data: Path) -> Path:
    path = folder / "auto.yaml"
    path.write_text(f"name: auto\nbase: {TINY}num_epoch: 1, DR: \"{data}\"}}\n"
                    "parameters: {kl_anneal_type: [Cyclical, None]}\nseeds: [1, 2]\n"
                    "execution: {gpus: [0], trials_per_gpu: auto}\n")
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure without a GPU")
def test_trials_per_gpu_auto_without_a_gpu_stops_the_launch_in_one_line(small_dataset, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_script().main([str(auto_spec(tmp_path, small_dataset))]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the data's progress bars
    assert last.startswith("error: execution.trials_per_gpu: auto"), last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trials_per_gpu_auto_measures_a_trial_then_runs_the_sweep(small_dataset, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="experiments"):
        outcome = run_launch(tmp_path, auto_spec(tmp_path, small_dataset), monkeypatch)
    assert (outcome.progress.done, outcome.exit_code) == (4, 0)
    sizing = [record.message for record in caplog.records if record.message.startswith("trials_per_gpu auto:")]
    assert len(sizing) == 1 and " free on GPU 0 -> " in sizing[0], sizing
