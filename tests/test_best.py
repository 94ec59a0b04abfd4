import re
from pathlib import Path

import mlflow
import pytest

from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.train import fit
from experiments.best import best_trial, fetch_checkpoint, main
from experiments.errors import SpecError

TINY = dict(F_dim=16, L_dim=8, N_dim=2, D_out_dim=16, train_vi_len=4, val_vi_len=8, batch_size=4,
            num_epoch=1, seed=2, device="cpu", channels_last=False)


def log_sweep(client, name, parent_tags, trials, artifact_root):
    """An experiment `name` with a parent run and one finished child run per (name, val/psnr per epoch, file)."""
    experiment = client.create_experiment(name, artifact_location=str(artifact_root / name))
    parent = client.create_run(experiment, run_name=name, tags={"sweep.parent": "true", **parent_tags})
    for run_name, per_epoch, save_root, artifact in trials:
        run = client.create_run(experiment, run_name=run_name, tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_param(run.info.run_id, "save_root", save_root)
        for epoch, value in enumerate(per_epoch):
            client.log_metric(run.info.run_id, "val/psnr", value, step=epoch)
        if artifact is not None:
            client.log_artifact(run.info.run_id, str(artifact), artifact_path="checkpoints")
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)


@pytest.fixture(scope="module")
def sweep(small_dataset, tmp_path_factory):
    """A real SQLite MLflow store with the sweep `tiny`: three trials, each with val/psnr for two epochs.

    The best trial by its last epoch (30) logged a real checkpoint; the runner-up (20) a corrupt one, so
    a prediction that picked it would fail; the third (last 10, but 35 at its best epoch) logged none.
    """
    root = tmp_path_factory.mktemp("sweep")
    cfg = TrainConfig(DR=str(small_dataset), save_root=str(root / "trained"), **TINY)
    history = fit(cfg, load_video_data(cfg), progress=False)
    corrupt = root / "corrupt" / "best.ckpt"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"garbage")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trials = [("runner-up", (15.0, 20.0), "elsewhere", corrupt),
              ("best", (25.0, 30.0), "elsewhere", history.best_checkpoint),
              ("no-artifact", (35.0, 10.0), cfg.save_root, None)]
    client = mlflow.MlflowClient(uri)
    log_sweep(client, "tiny", {}, trials, root / "artifacts")
    log_sweep(client, "tiny_best", {"sweep.metric": "best_val_psnr", "sweep.direction": "maximize"}, trials,
              root / "artifacts")
    log_sweep(client, "tiny_corrupt", {}, trials[:1], root / "artifacts")
    client.create_experiment("not_a_sweep")  # an experiment without a sweep's parent run
    return uri, history


def test_best_trial_is_predicted(sweep, tmp_path, capsys):
    uri, history = sweep
    assert main(["--sweep", "tiny", "--tracking-uri", uri, "--out", str(tmp_path), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("best trial of tiny by val_psnr (maximize): run best (")
    assert "val_psnr 30\n" in printed
    assert (tmp_path / "val_psnr_per_frame.csv").is_file()
    assert (tmp_path / "submission.csv").is_file()


def test_objective_is_the_sweeps_and_save_root_serves_without_artifact(sweep, tmp_path):
    uri, history = sweep
    best = best_trial("tiny_best", uri)
    assert (best.run.info.run_name, best.metric, best.value) == ("no-artifact", "best_val_psnr", 35.0)
    assert fetch_checkpoint(best.run, uri) == history.best_checkpoint


def test_unknown_sweep_lists_the_known_ones_and_no_other_experiment(sweep):
    uri, _ = sweep
    with pytest.raises(SpecError, match=r"no sweep 'tiyn' in MLflow at .*; the sweeps there are: "
                                        r"tiny, tiny_best, tiny_corrupt$"):
        best_trial("tiyn", uri)
    with pytest.raises(SpecError, match=r"no sweep 'not_a_sweep' .* are: tiny, tiny_best, tiny_corrupt$"):
        best_trial("not_a_sweep", uri)


def test_a_corrupt_best_checkpoint_is_named_where_it_lies(sweep, tmp_path, capsys):
    uri, _ = sweep
    assert main(["--sweep", "tiny_corrupt", "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # after the log
    named = re.fullmatch(r"error: checkpoint (\S+) is corrupt or not a checkpoint \(\w+\)", line)
    assert named and Path(named[1]).read_bytes() == b"garbage"


def test_the_best_checkpoint_is_registered_as_a_new_model_version(sweep, tmp_path, capsys):
    uri, history = sweep
    client = mlflow.MlflowClient(uri)
    best = best_trial("tiny", uri).run.info.run_id
    for version in ("1", "2"):
        assert main(["--sweep", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / version), "--split", "val",
                     "--register"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"registered runs:/{best}/checkpoints/best.ckpt as model 'tiny' version {version}")
    registered = client.get_model_version("tiny", "2")
    assert (registered.run_id, registered.description) == (best, "best trial of sweep tiny by val_psnr (maximize): 30")

    # a best trial whose checkpoint is only under its save_root: logged as the run's artifact, then registered
    assert main(["--sweep", "tiny_best", "--tracking-uri", uri, "--out", str(tmp_path / "b"), "--split", "val",
                 "--register", "cvae-best"]) == 0
    no_artifact = best_trial("tiny_best", uri).run.info.run_id
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"registered runs:/{no_artifact}/checkpoints/best.ckpt as model 'cvae-best' version 1")
    local = mlflow.artifacts.download_artifacts(f"runs:/{no_artifact}/checkpoints/best.ckpt", tracking_uri=uri)
    assert Path(local).read_bytes() == history.best_checkpoint.read_bytes()


def test_missing_database_is_one_line(tmp_path, capsys):
    missing = tmp_path / "mlflow.db"
    assert main(["--sweep", "tiny", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no MLflow database at {missing}; run the sweep first, or pass --tracking-uri where it logged"]
    assert not missing.exists()
