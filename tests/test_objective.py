"""experiments/objective.py: one trial in this process, against a real journal-free study and a real MLflow file."""
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from cvae.synthetic import generate
from cvae.train import EpochReport, History, native_bf16
from experiments import objective as objective_module
from experiments.objective import Objective, describe_error, epoch_field, objective_value, trial_folder
from experiments.plan import group_key
from experiments.provenance import device_name
from experiments.spec_loader import load_spec
from experiments.tracking import open_parent_run

optuna.logging.set_verbosity(optuna.logging.WARNING)


class PruneAtOnce(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def sampled_objective(folder: Path, data: Path | None, parameters: str, objective: str = "val_psnr"):
    """A sampled spec of a tiny model on `data` (else a swept DR), its parent run and the objective of a CPU worker."""
    path = folder / "s.yaml"
    data_root = "" if data is None else f'DR: "{data}", '
    path.write_text(textwrap.dedent(f"""\
        name: s
        base: {{{data_root}F_dim: 16, L_dim: 8, N_dim: 2, D_out_dim: 16, train_vi_len: 4,
                val_vi_len: 8, batch_size: 4, partial: 0.25, num_epoch: 3, per_save: 1, channels_last: false}}
        parameters: {parameters}
        sampler: random
        pruner: median
        n_trials: 2
        objective: {{metric: {objective}}}
        """))
    spec = load_spec(path)
    parent = open_parent_run(f"sqlite:///{folder / 'mlflow.db'}", spec.name, "id0", tags={})
    return spec, Objective(spec, folder / "runs", parent, worker=0, gpu=None), MlflowClient(parent.tracking_uri)


@pytest.fixture
def sampled(small_dataset, tmp_path):
    """A spec sampling lr, an in-memory study and the objective of a CPU worker."""
    return sampled_objective(tmp_path, small_dataset, "{lr: {distribution: log_uniform_values, min: 1.0e-4, "
                                                      "max: 1.0e-3}}")


def test_a_pruned_trial_stops_training_and_its_run_says_so(sampled):
    spec, objective, client = sampled
    study = optuna.create_study(direction="maximize", pruner=PruneAtOnce())
    study.optimize(objective, n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["sweep.status"]) == ("KILLED", "PRUNED")
    assert run.data.tags["sweep.precision"] == ("bf16" if native_bf16("cpu") else "fp32")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr")] == [0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr_1step")] == [0]
    assert trial.user_attrs["trial_dir"].endswith("runs/trials/trial0000")

    # the copy baselines of the validation video are logged before training, so a pruned trial has them too
    [(data, _)] = objective._data.values()
    baselines = data.baselines  # of the 8 validation frames: frames 1..7

    def logged(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert logged("baseline/copy_first") == [(0, pytest.approx(baselines.first_mean))]
    assert logged("baseline/copy_previous") == [(0, pytest.approx(baselines.previous_mean))]
    assert logged("baseline/copy_first_frame") == [(frame, pytest.approx(value))
                                                   for frame, value in enumerate(baselines.first, start=1)]
    assert len(baselines.first) == 7 and baselines.first[0] == baselines.previous[0]  # frame 1: both copy frame 0


def test_a_sweep_can_maximise_the_validation_ssim(small_dataset, tmp_path):
    spec, objective, client = sampled_objective(tmp_path, small_dataset, "{lr: {values: [1.0e-3]}}", "val_ssim")
    assert (spec.metric, spec.direction) == ("val_ssim", "maximize")
    study = optuna.create_study(direction=spec.direction)
    study.optimize(objective, n_trials=1)
    [trial] = study.trials
    run_id = trial.user_attrs["mlflow_run_id"]
    per_epoch = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/ssim"))
    assert [step for step, _ in per_epoch] == [0, 1, 2] and trial.value == per_epoch[-1][1] and 0 < trial.value < 1
    per_frame = [m.value for m in client.get_metric_history(run_id, "val/ssim_frame")]
    assert len(per_frame) == 7 and trial.value == pytest.approx(sum(per_frame) / 7)
    assert list(trial.intermediate_values.values()) == [value for _, value in per_epoch]  # what the pruner saw


def test_an_unexpected_error_fails_the_trial_and_keeps_its_traceback(sampled, monkeypatch):
    spec, objective, client = sampled

    def broken_fit(*args, **kwargs):
        raise TypeError("fit() got confused\nover two lines")

    monkeypatch.setattr(objective_module, "fit", broken_fit)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1, catch=(Exception,))
    [trial] = study.trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"] == "TypeError: fit() got confused over two lines"
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["sweep.status"]) == ("FAILED", "FAILED")
    assert run.data.tags["sweep.error"] == trial.user_attrs["error"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["traceback.txt"]
    assert "broken_fit" in (Path(trial.user_attrs["trial_dir"]) / "traceback.txt").read_text()


def report(epoch: int, val_psnr: float, train_loss: float) -> EpochReport:
    return EpochReport(epoch, train_loss, train_loss, 0.0, 1.0, 1.0, 1e-3, val_psnr, np.full(3, val_psnr), 1.0)


def test_objective_values_and_folders(tmp_path):
    history = History(epochs=[report(0, 20.0, 3.0), report(1, 22.0, 2.0), report(2, 21.0, 1.5)])
    assert [objective_value(m, history) for m in ("val_psnr", "best_val_psnr", "train_loss")] == [21.0, 22.0, 1.5]
    assert epoch_field("best_val_psnr") == "val_psnr" and epoch_field("train_loss") == "train_loss"
    assert describe_error(KeyboardInterrupt()) == "interrupted (Ctrl-C, or the launcher stopped)"
    assert describe_error(ValueError("x" * 900)) == ("ValueError: " + "x" * 900)[:500]
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nparameters: {tfr: [0.0, 1.0]}\n")
    trial = optuna.create_study().ask()
    assert trial_folder(load_spec(path), trial, {"tfr": 0.0}, 3) == f"{group_key({'tfr': 0.0})}-seed3"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(Path(__file__).parent), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_trial_run_says_which_code_packages_device_and_data_made_it(sampled):
    spec, objective, client = sampled
    study = optuna.create_study(direction="maximize", pruner=PruneAtOnce())
    study.optimize(objective, n_trials=1)
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    assert tags["git.dirty"] == ("true" if git("status", "--porcelain") else "false")
    assert (tags["mlflow.source.type"], tags["version.torch"], tags["version.optuna"]) == (
        "LOCAL", torch.__version__, optuna.__version__)
    assert tags["host.device"] == device_name(torch.device("cpu"))  # a CPU worker's device is the CPU
    seconds = client.get_metric_history(run.info.run_id, "cost/device_seconds")
    assert [m.step for m in seconds] == [0] and seconds[0].value > 0

    [(data, dataset)] = objective._data.values()
    [logged] = run.inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("dance", dataset.digest)
    assert json.loads(logged.dataset.profile)["val_frames"] == len(data.val_images) == 8
    parent = client.get_run(objective.parent.run_id)
    assert [found.dataset.digest for found in parent.inputs.dataset_inputs] == [dataset.digest]


def test_two_trials_on_two_data_sets_show_two_digests(small_dataset, tmp_path):
    other = generate(tmp_path / "other" / "dance", seed=1, small=True)  # the same folder name, other dancers
    spec, objective, client = sampled_objective(tmp_path, None, f"{{DR: {{values: ['{small_dataset}', "
                                                                         f"'{other}']}}}}")
    study = optuna.create_study(direction="maximize", pruner=PruneAtOnce())
    for data in (small_dataset, other):
        study.enqueue_trial({"DR": str(data)})
    study.optimize(objective, n_trials=2)
    runs = [client.get_run(trial.user_attrs["mlflow_run_id"]) for trial in study.trials]
    assert [run.data.params["DR"] for run in runs] == [str(small_dataset), str(other)]
    [first], [second] = (run.inputs.dataset_inputs for run in runs)
    assert first.dataset.name == second.dataset.name == "dance"
    assert first.dataset.digest != second.dataset.digest
    assert json.loads(first.dataset.source) == {"uri": str(small_dataset)}
    parent = client.get_run(objective.parent.run_id)
    assert sorted(found.dataset.digest for found in parent.inputs.dataset_inputs) == sorted(
        (first.dataset.digest, second.dataset.digest))
