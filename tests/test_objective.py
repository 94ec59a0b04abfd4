"""experiments/objective.py: one trial in this process, against a real journal-free study and a real MLflow file."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from cvae.train import EpochReport, History, native_bf16
from experiments import objective as objective_module
from experiments.objective import Objective, describe_error, epoch_field, objective_value, trial_folder
from experiments.spec import group_key, load_spec
from experiments.tracking import open_parent_run

optuna.logging.set_verbosity(optuna.logging.WARNING)


class PruneAtOnce(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.fixture
def sampled(small_dataset, tmp_path):
    """A sampled spec of a tiny model, an in-memory study and the objective of a CPU worker."""
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: s
        base: {{DR: "{small_dataset}", F_dim: 16, L_dim: 8, N_dim: 2, D_out_dim: 16, train_vi_len: 4,
                val_vi_len: 8, batch_size: 4, partial: 0.25, num_epoch: 3, per_save: 1}}
        parameters: {{lr: {{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-3}}}}
        sampler: random
        pruner: median
        n_trials: 2
        """))
    spec = load_spec(path)
    parent = open_parent_run(f"sqlite:///{tmp_path / 'mlflow.db'}", spec.name, "id0", tags={})
    return spec, Objective(spec, tmp_path / "runs", parent, worker=0, gpu=None), MlflowClient(parent.tracking_uri)


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
    [data] = objective._data.values()
    baselines = data.baselines  # of the 8 validation frames: frames 1..7

    def logged(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert logged("baseline/copy_first") == [(0, pytest.approx(baselines.first_mean))]
    assert logged("baseline/copy_previous") == [(0, pytest.approx(baselines.previous_mean))]
    assert logged("baseline/copy_first_frame") == [(frame, pytest.approx(value))
                                                   for frame, value in enumerate(baselines.first, start=1)]
    assert len(baselines.first) == 7 and baselines.first[0] == baselines.previous[0]  # frame 1: both copy frame 0


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
