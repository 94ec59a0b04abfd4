"""Adaptive seeds through the launcher: real sweeps of a tiny model, real worker processes, journal and MLflow files.

Three configurations of one epoch: `frame_output: sigmoid` (draws every frame anew: about 14 dB against 24 dB
for the others, so it separates after its initial seeds), and `warp` twice, with tfr_sde 10 and 20, which one
epoch never reaches: the two train the same numbers seed by seed (to float rounding where their workers ran with
different thread counts), never separate and run to seeds.max.
"""
from __future__ import annotations

import re
from collections import Counter

import pytest
from optuna.trial import TrialState

from analysis.report import write_report
from experiments.launcher import configure, describe_outcome
from experiments.plan import group_key
from experiments.schema import ADAPTIVE_SEEDS
from experiments.spec_loader import load_spec
from experiments.study import open_study
from test_sweep import ROOT, complete_cells, load_script, mlflow_runs, run_launch, write_spec

SEEDS = "{initial: 3, max: 4, until: separated}"
GRID = "grid: [{frame_output: sigmoid}, {frame_output: warp, tfr_sde: [10, 20]}]"


def study_of(folder, spec_path):
    return open_study(configure(load_spec(spec_path), storage=str(folder / "runs/adaptive/optuna.journal")))


@pytest.fixture(scope="module")
def adaptive_sweep(small_dataset, tmp_path_factory):
    """The sweep run by three launches: the first stopped in round 1 by a trial that fails, the second finishes
    it, the third finds nothing to do. (folder, spec path, keys by name, the three outcomes)"""
    folder = tmp_path_factory.mktemp("adaptive")
    spec_path = write_spec(folder, small_dataset, "adaptive", num_epoch=1, extra=GRID, seeds=SEEDS)
    sigmoid, warp, twin = (group_key(cell) for cell in load_spec(spec_path).cells)
    # a file where warp (tfr_sde 20) seed 4 would keep its checkpoints: that trial fails until it is removed
    blocked = folder / "runs/adaptive/trials" / f"{twin}-seed4"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    with pytest.MonkeyPatch.context() as patch:
        stopped = run_launch(folder, spec_path, patch)
        blocked.unlink()
        finished = run_launch(folder, spec_path, patch)
        again = run_launch(folder, spec_path, patch)
    return folder, spec_path, {"sigmoid": sigmoid, "warp": warp, "twin": twin}, (stopped, finished, again)


def test_the_worse_configuration_stops_after_its_initial_seeds_and_the_identical_ones_run_to_max(adaptive_sweep):
    folder, spec_path, key, (_, finished, again) = adaptive_sweep
    assert (finished.exit_code, finished.progress.done, finished.progress.total) == (0, 11, 11)
    study = study_of(folder, spec_path)
    seeds = Counter(group for group, _ in complete_cells(study))
    assert seeds == {key["sigmoid"]: 3, key["warp"]: 4, key["twin"]: 4}
    values = {(t.user_attrs["group"], t.user_attrs["seed"]): t.value for t in study.trials
              if t.state == TrialState.COMPLETE}
    assert [values[key["twin"], seed] for seed in range(1, 5)] == pytest.approx(
        [values[key["warp"], seed] for seed in range(1, 5)], abs=1e-4)
    assert max(values[key["sigmoid"], seed] for seed in (1, 2, 3)) < min(values[key["warp"], seed] - 5
                                                                         for seed in (1, 2, 3))
    assert study.user_attrs[ADAPTIVE_SEEDS] == {"configurations": 3, "max_seeds": 4, "trials": 11,
                                                "trials_at_max": 12, "saved": 1, "finished": True}
    assert "adaptive seeds: 11 trials of the 12 that 4 seeds of every configuration would take; 1 saved" in \
        describe_outcome(finished, "python run_sweep.py adaptive.yaml").splitlines()
    assert finished.table.set_index("group")["seeds"].to_dict() == {key["warp"]: 4, key["twin"]: 4,
                                                                     key["sigmoid"]: 3}
    assert (again.exit_code, again.parent, again.savings) == (0, None, finished.savings)


def test_a_launch_stopped_mid_round_is_finished_by_the_next_and_no_cell_runs_twice(adaptive_sweep):
    folder, spec_path, key, (stopped, _, _) = adaptive_sweep
    assert stopped.exit_code == 1
    [failed] = stopped.failed
    assert (failed.seed, failed.configuration) == (4, "frame_output=warp, tfr_sde=20")
    assert (stopped.progress.done, stopped.progress.total) == (10, 11)  # round 1 (seed 4 of both warps) half done
    assert stopped.savings.finished is False and stopped.savings.trials == 11
    assert "1 trials still to run" in describe_outcome(stopped, "python run_sweep.py adaptive.yaml")

    study = study_of(folder, spec_path)
    runs = Counter((t.user_attrs["group"], t.user_attrs["seed"]) for t in study.trials)
    assert complete_cells(study) == Counter({cell: 1 for cell in runs})  # every cell that ran is COMPLETE once
    assert runs == {**{cell: 1 for cell in runs}, (key["twin"], 4): 2}  # only the failed one ran again
    assert [t.state for t in study.trials if t.state != TrialState.COMPLETE] == [TrialState.FAIL]
    _, parents, children = mlflow_runs(folder, "adaptive")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert Counter(run.data.tags["sweep.status"] for run in children) == {"COMPLETE": 11, "FAILED": 1}


def test_dry_run_shows_the_initial_plan_and_the_most_it_can_grow_to(tmp_path, capsys):
    spec_path = write_spec(tmp_path, tmp_path / "data", "adaptive", num_epoch=1, extra=GRID, seeds=SEEDS)
    assert load_script().main([str(spec_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("adaptive: 9 trials now (3 configurations x 3 seeds), up to 12 (x 4 seeds) while configurations are "
            "not separated from the best") in out.splitlines()
    rows = [line.split() for line in out.splitlines() if "frame_output=" in line]
    assert [(row[0], row[-1]) for row in rows] == [(str(i), str(i // 3 + 1)) for i in range(9)]
    assert not (tmp_path / "runs").exists()


def test_the_shipped_kl_ablation_dry_run_counts_its_rounds(capsys):
    assert load_script().main([str(ROOT / "sweeps/kl_ablation.yaml"), "--dry-run", "--gpus", "none"]) == 0
    assert ("kl_ablation: 21 trials now (7 configurations x 3 seeds), up to 70 (x 10 seeds) while configurations "
            "are not separated from the best") in capsys.readouterr().out.splitlines()


def test_the_report_says_what_the_seeds_adaptive_replication_did_not_run_would_have_cost(adaptive_sweep, tmp_path,
                                                                                        monkeypatch):
    folder = adaptive_sweep[0]
    monkeypatch.chdir(folder)  # where the parent run's relative journal path leads
    report = write_report(f"sqlite:///{folder / 'mlflow.db'}", sweep="adaptive", out=tmp_path / "report")
    text = report.markdown.read_text()
    [line] = [line for line in text.splitlines() if "adaptive seeds" in line]
    assert "11 trials of the 12 that 4 seeds of every configuration would take: 1 saved, about " in line
    assert re.search(r"about (< )?[0-9.]+ device-hours at a finished trial's mean", line), line
