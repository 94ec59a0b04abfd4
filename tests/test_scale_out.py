"""Many workers on one sweep: eight CPU worker processes writing the default journal file and mlflow.db at once."""
from __future__ import annotations

import pytest
from optuna.trial import TrialState

from experiments.tracking import EPOCH_METRICS
from test_faults import every_cell_once, journal_study
from test_sweep import complete_cells, mlflow_runs, run_sweep, write_spec

EPOCHS = 2


@pytest.mark.slow
def test_eight_workers_on_the_default_local_storage_lose_no_trial_and_no_metric(small_dataset, tmp_path):
    spec_path = write_spec(tmp_path, small_dataset, "crowd", num_epoch=EPOCHS, workers=8, extra=(
        "parameters: {tfr: [0.0, 0.25, 0.5, 1.0]}"))
    spec_path.write_text(spec_path.read_text().replace("val_vi_len: 8", "val_vi_len: 5"))
    done = run_sweep(tmp_path, spec_path.name)  # a launcher of its own: its workers write to its stderr

    assert done.returncode == 0 and "8 of 8 trials done" in done.stdout, done.stderr[-2000:]
    assert "database is locked" not in done.stdout + done.stderr
    study = journal_study(tmp_path, spec_path)
    assert complete_cells(study) == every_cell_once(spec_path)
    assert {trial.state for trial in study.trials} == {TrialState.COMPLETE}
    client, parents, children = mlflow_runs(tmp_path, "crowd")
    assert len(parents) == 1 and len(children) == 8
    assert len({run.data.tags["sweep.worker"] for run in children}) >= 4  # many writers at once, not one after another
    for run in children:
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(EPOCHS)), key
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr_frame")] == [1, 2, 3, 4]
