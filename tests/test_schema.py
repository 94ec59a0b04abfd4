import pytest

from experiments import schema
from experiments.schema import EPOCH, FRAME, OBJECTIVES, objective_column, objective_metric


def test_mlflow_keys_are_those_earlier_runs_were_logged_under():
    keys = {metric.name: (metric.key, metric.per) for metric in schema.METRICS}
    assert {name: keys[name] for name in (
        "train_loss", "train_recon", "train_kl", "kl_beta", "tfr", "lr", "val_psnr", "val_psnr_1step",
        "epoch_seconds", "val_psnr_per_frame")} == {
        "train_loss": ("train/loss", EPOCH), "train_recon": ("train/recon", EPOCH), "train_kl": ("train/kl", EPOCH),
        "kl_beta": ("kl_beta", EPOCH), "tfr": ("tfr", EPOCH), "lr": ("lr", EPOCH), "val_psnr": ("val/psnr", EPOCH),
        "val_psnr_1step": ("val/psnr_1step", EPOCH), "epoch_seconds": ("epoch_seconds", EPOCH),
        "val_psnr_per_frame": ("val/psnr_frame", FRAME)}
    assert len({metric.key for metric in schema.METRICS}) == len(schema.METRICS)  # no key named twice
    assert (schema.STATUS, schema.ERROR, schema.IS_PARENT, schema.SWEEP_ID) == (
        "sweep.status", "sweep.error", "sweep.parent", "sweep.id")
    assert (schema.SEED, schema.GROUP, schema.ERROR_ATTR, schema.MLFLOW_RUN_ID, schema.SWEEP_ID_ATTR) == (
        "seed", "group", "error", "mlflow_run_id", "sweep_id")


def test_objectives_are_the_epoch_metrics_with_a_direction_and_the_best_val_psnr():
    assert {name: OBJECTIVES[name] for name in (
        "val_psnr", "best_val_psnr", "val_psnr_1step", "train_loss", "train_recon", "train_kl")} == {
        "val_psnr": "maximize", "best_val_psnr": "maximize", "val_psnr_1step": "maximize",
        "train_loss": "minimize", "train_recon": "minimize", "train_kl": "minimize"}
    assert not {"lr", "tfr", "kl_beta", "epoch_seconds", "val_psnr_per_frame"} & set(OBJECTIVES)
    assert objective_metric("best_val_psnr") is schema.VAL_PSNR
    assert [objective_column(name) for name in ("val_psnr", "best_val_psnr", "train_kl")] == [
        "final_val_psnr", "best_val_psnr", "final_train_kl"]
    with pytest.raises(KeyError, match="unknown objective 'val_fid' \\(one of val_psnr, best_val_psnr"):
        objective_column("val_fid")


def test_the_best_value_follows_the_metric_s_direction():
    assert schema.VAL_PSNR.best([20.0, 22.0, 21.0]) == 22.0
    assert schema.BY_NAME["train_loss"].best([3.0, 1.0, 2.0]) == 1.0
    assert schema.VAL_PSNR.best([]) != schema.VAL_PSNR.best([])  # NaN when no epoch logged it
