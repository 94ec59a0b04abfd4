"""What `mlflow ui` shows of a real sweep, loaded in headless Chromium (skipped where it is not installed)."""
from __future__ import annotations

import textwrap

import pytest
from PIL import Image

from experiments.launcher import configure, launch
from experiments.spec_loader import load_spec
from mlflow_ui_check import check_pages, check_sweep, find_chromium, mlflow_server


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_the_ui_opens_a_sweep_on_its_runs_and_shows_where_each_came_from(small_dataset, tmp_path, monkeypatch):
    spec = tmp_path / "ui.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: ui
        base: {{DR: "{small_dataset}", F_dim: 16, L_dim: 8, N_dim: 4, D_out_dim: 16, train_vi_len: 4,
                val_vi_len: 8, batch_size: 4, partial: 0.5, num_epoch: 1, channels_last: false}}
        parameters: {{kl_anneal_type: [Cyclical]}}
        seeds: [1]
        execution: {{gpus: [], cpu_workers: 1}}
        """))
    monkeypatch.chdir(tmp_path)
    assert launch(configure(load_spec(spec))).exit_code == 0

    with mlflow_server(tmp_path / "mlflow.db") as url:
        found = check_sweep(url, "ui")
        shots = check_pages(url, found, tmp_path / "pages")
    # one trial: each page Chromium loads costs seconds of CPU, and a second run's page is the same page
    assert (found["children"], found["complete"]) == (1, 1)
    assert [shot.name for shot in shots] == ["experiment.png", "runs.png", "run0.png"]
    assert all(Image.open(shot).size == (1920, 1080) for shot in shots)
