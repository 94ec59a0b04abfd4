"""experiments/study.py: the Optuna study of a sweep on real journal files, its queue, progress and results."""
from __future__ import annotations

import multiprocessing
import textwrap
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from experiments.errors import SpecError
from experiments.plan import group_key, train_config, trial_plan
from experiments.replicates import Savings
from experiments.samplers import make_sampler
from experiments.spec_loader import load_spec
from experiments.study import (
    Launch,
    fail_running,
    find_study,
    holder,
    make_storage,
    missing_cells,
    open_study,
    prepare_study,
    progress,
    record_savings,
    remaining_trials,
    start_launch,
    suggest,
    summary_table,
    sweep_id,
    unheld_failures,
    work_left,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def small_grid(tmp_path: Path, seeds: str = "[1, 2]") -> Path:
    """A 3-configuration union grid with its journal in tmp_path."""
    return write(tmp_path, f"""
        name: small
        base: {{num_epoch: 2}}
        grid:
          - {{kl_anneal_type: Cyclical, kl_anneal_ratio: [0.5, 1.0]}}
          - {{kl_anneal_type: None}}
        seeds: {seeds}
        storage: {tmp_path / "optuna.journal"}
        """)


# ---------------------------------------------------------------- samplers, pruners, storages


def test_sampler_seed_comes_from_the_spec_and_differs_per_worker(tmp_path):
    path = write(tmp_path, "name: x\nsampler: {type: random, seed: 4}\nn_trials: 2\n"
                           "parameters:\n  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}\n")
    spec = load_spec(path)

    def draws(worker: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(spec, worker))
        return [suggest(spec, study.ask())[0]["lr"] for _ in range(3)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_make_storage_rdb_has_a_heartbeat(tmp_path):
    spec = load_spec(write(tmp_path, f"name: x\nstorage: sqlite:///{tmp_path}/db/optuna.db\n"))
    storage = make_storage(spec)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.heartbeat_interval == 60 and storage.grace_period == 120
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert (tmp_path / "db" / "optuna.db").is_file()


def test_an_existing_study_opens_without_a_write_to_its_journal(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    assert find_study(spec) is None
    prepare_study(spec, open_study(spec))
    journal = tmp_path / "optuna.journal"
    written = journal.read_bytes()
    assert len(find_study(spec).trials) == len(open_study(spec, worker=1).trials) == 6
    assert journal.read_bytes() == written  # create_study(load_if_exists=True) would append a record each time


def test_a_storage_that_cannot_be_made_is_one_spec_error(tmp_path):
    (tmp_path / "file").write_text("")
    spec = load_spec(write(tmp_path, f"name: x\nstorage: {tmp_path / 'file' / 'optuna.journal'}\n"))
    with pytest.raises(SpecError) as refused:
        make_storage(spec)
    assert str(refused.value) == (f"{tmp_path / 'x.yaml'}: storage: cannot create {tmp_path / 'file/optuna.journal'} "
                                  f"({tmp_path / 'file'} is a file, not a folder)")


def test_open_study_refuses_a_changed_direction(tmp_path):
    path = write(tmp_path, f"name: x\nstorage: {tmp_path / 'j.journal'}\n")
    open_study(load_spec(path))
    path.write_text(f"name: x\nstorage: {tmp_path / 'j.journal'}\nobjective: {{metric: train_loss}}\n")
    with pytest.raises(SpecError, match="objective.direction: study 'x' .* was created to maximize"):
        open_study(load_spec(path))


# ---------------------------------------------------------------- the grid queue on a real journal


def run_queue(spec, study, value: Callable[[dict, int], float] = lambda cell, seed: float(seed)) -> list[tuple[dict, int]]:
    """What a worker does: pop queued trials until none is left, each worth `value(cell, seed)`; returns what ran."""
    ran = []
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        overrides, seed = suggest(spec, trial)
        ran.append((overrides, seed))
        study.tell(trial, value(overrides, seed))
    return ran


def test_suggest_returns_the_queued_cells_once_each(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    assert prepare_study(spec, study) == 6
    ran = run_queue(spec, study)
    assert ran == trial_plan(spec)
    assert [t.params for t in study.trials] == [cell for cell, _ in trial_plan(spec)]
    assert [t.user_attrs["seed"] for t in study.trials] == [1, 1, 1, 2, 2, 2]
    assert [t.user_attrs["group"] for t in study.trials] == [group_key(c) for c, _ in trial_plan(spec)]
    assert missing_cells(spec, study) == [] and prepare_study(spec, study) == 0


def test_resume_reruns_running_and_failed_never_complete(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    prepare_study(spec, study)
    plan = trial_plan(spec)
    for value in (1.0, 2.0):                      # two cells finish
        trial = study.ask()
        suggest(spec, trial)
        study.tell(trial, value)
    failed = study.ask()                          # one fails
    suggest(spec, failed)
    study.tell(failed, state=TrialState.FAIL)
    suggest(spec, study.ask())                    # one was running when the launcher died

    resumed = open_study(spec)                     # a new launch reads the same journal
    assert missing_cells(spec, resumed) == plan[2:]
    assert remaining_trials(spec, resumed) == 4
    assert prepare_study(spec, resumed) == 4       # 2 still queued + the failed and the running cell
    states = [t.state for t in resumed.trials]
    assert states.count(TrialState.RUNNING) == 0 and states.count(TrialState.FAIL) == 2
    ran = run_queue(spec, resumed)
    assert sorted(map(str, ran)) == sorted(map(str, plan[2:]))
    complete = [(t.params, t.user_attrs["seed"]) for t in resumed.trials if t.state == TrialState.COMPLETE]
    assert sorted(map(str, complete)) == sorted(map(str, plan))


def test_resume_with_more_seeds_queues_only_the_new_ones(tmp_path):
    spec = load_spec(small_grid(tmp_path, seeds="[1]"))
    study = open_study(spec)
    prepare_study(spec, study)
    run_queue(spec, study)
    more = load_spec(small_grid(tmp_path, seeds="[1, 2]"))
    assert prepare_study(more, open_study(more)) == 3
    assert {seed for _, seed in run_queue(more, open_study(more))} == {2}


def cyclical_far_above_none(cell: dict, seed: int) -> float:
    """Both Cyclical cells score alike; None 10 below them, with noise of its own."""
    noise = [0.0, 0.3, -0.2, 0.1, -0.4][seed]
    return 20 + noise if cell["kl_anneal_type"] == "Cyclical" else 10 + noise / 2


def test_adaptive_seeds_queue_round_by_round_and_a_resumed_round_queues_only_what_it_misses(tmp_path):
    spec = load_spec(small_grid(tmp_path, seeds="{initial: 2, max: 4, until: separated}"))
    cyclical = [group_key(cell) for cell in spec.cells[:2]]
    study = open_study(spec)
    assert prepare_study(spec, study) == 6
    assert len(run_queue(spec, study, cyclical_far_above_none)) == 6
    assert prepare_study(spec, study) == 2  # round 1: seed 3 of the two Cyclical cells; None is separated
    assert (progress(spec, study).done, progress(spec, study).total) == (6, 8)
    suggest(spec, study.ask())  # one of them was running, the other still queued, when the launcher died

    resumed = open_study(spec)
    assert [(group_key(cell), seed) for cell, seed in missing_cells(spec, resumed)] == [(key, 3) for key in cyclical]
    assert prepare_study(spec, resumed) == 2  # the dead one failed and queued again beside the queued one
    assert sorted(seed for _, seed in run_queue(spec, resumed, cyclical_far_above_none)) == [3, 3]
    assert prepare_study(spec, resumed) == 2  # round 2: seed 4
    run_queue(spec, resumed, cyclical_far_above_none)
    assert prepare_study(spec, resumed) == 0 and missing_cells(spec, resumed) == []

    complete = [(t.user_attrs["group"], t.user_attrs["seed"]) for t in resumed.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted([(key, seed) for key in cyclical for seed in (1, 2, 3, 4)]
                                      + [(group_key(spec.cells[2]), seed) for seed in (1, 2)])
    assert [t.state for t in resumed.trials].count(TrialState.FAIL) == 1
    now = progress(spec, resumed)
    assert (now.done, now.total, now.running, len(now.failed), now.best) == (10, 10, 0, 1, 20.3)
    assert record_savings(spec, resumed) == Savings(configurations=3, max_seeds=4, trials=10, trials_at_max=12,
                                                    saved=2, finished=True)
    assert resumed.user_attrs["adaptive_seeds"]["saved"] == 2


def test_a_failed_duplicate_holds_no_cell_back_and_a_failed_cell_does(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    first, second = trial_plan(spec)[:2]
    for cell, seed in (first, first, second):  # launchers that prepared at once queued the first cell twice
        study.enqueue_trial(cell, user_attrs={"seed": seed, "group": group_key(cell)})
    for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL):
        trial = study.ask()
        suggest(spec, trial)
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    assert unheld_failures(study, [1, 2]) == [2]


def test_prepare_study_refuses_a_widened_axis(tmp_path):
    path = small_grid(tmp_path)
    spec = load_spec(path)
    study = open_study(spec)
    prepare_study(spec, study)
    run_queue(spec, study)
    path.write_text(path.read_text().replace("[0.5, 1.0]", "[0.5, 0.8, 1.0]"))
    spec = load_spec(path)
    with pytest.raises(SpecError, match=r"kl_anneal_ratio: study 'small' was run with choices \(0.5, 1.0\), "
                                        r"which Optuna cannot change to choices \(0.5, 0.8, 1.0\)"):
        prepare_study(spec, open_study(spec))


def test_prepare_study_refuses_a_changed_base(tmp_path):
    path = small_grid(tmp_path)
    spec = load_spec(path)
    prepare_study(spec, open_study(spec))
    path.write_text(path.read_text().replace("num_epoch: 2", "num_epoch: 5"))
    spec = load_spec(path)
    with pytest.raises(SpecError, match=r"base: study 'small' was run with another base \(differs at num_epoch;"):
        prepare_study(spec, open_study(spec))


def test_prepare_study_refuses_a_changed_default(tmp_path):
    path = small_grid(tmp_path)
    spec = load_spec(path)
    study = open_study(spec)
    prepare_study(spec, study)
    started = study.user_attrs["sweep_config"]
    study.set_user_attr("sweep_config", {**started, "bf16": not started["bf16"]})  # as a run of an older version left it
    with pytest.raises(SpecError, match=r"another base \(differs at bf16; a changed base, or a TrainConfig default"):
        prepare_study(spec, open_study(spec))


def test_a_trial_the_grid_did_not_queue_is_refused(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    with pytest.raises(SpecError, match="trial 0 is not a queued cell of this grid"):
        suggest(spec, study.ask())


def _worker(spec_path: str, worker: int, out: str) -> None:
    spec = load_spec(spec_path)
    study = open_study(spec, worker)
    with open(out, "w") as log:
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()
            try:
                overrides, seed = suggest(spec, trial)
            except SpecError:                       # another worker took the last queued trial
                study.tell(trial, state=TrialState.FAIL)
                continue
            log.write(f"{group_key(overrides)} {seed}\n")
            study.tell(trial, float(seed))


def test_worker_processes_share_one_queue(tmp_path):
    path = small_grid(tmp_path, seeds="[1, 2, 3, 4]")
    spec = load_spec(path)
    prepare_study(spec, open_study(spec))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(str(path), i, str(tmp_path / f"w{i}.txt"))) for i in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    ran = [line for i in range(3) for line in (tmp_path / f"w{i}.txt").read_text().splitlines()]
    assert sorted(ran) == sorted(f"{group_key(cell)} {seed}" for cell, seed in trial_plan(spec))
    assert missing_cells(spec, open_study(spec)) == []


# ---------------------------------------------------------------- sampled sweeps


def test_suggest_samples_within_the_spec_and_cycles_seeds(tmp_path):
    spec = load_spec(write(tmp_path, f"""
        name: sampled
        parameters:
          lr: {{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}}
          tfr: {{distribution: uniform, min: 0, max: 1, q: 0.25}}
          tfr_sde: {{distribution: int_uniform, min: 0, max: 20, q: 5}}
          optim: {{values: [Adam, AdamW]}}
          lr_schedule: {{value: cosine}}
        seeds: [1, 2, 3]
        sampler: {{type: tpe, seed: 1, n_startup_trials: 2}}
        pruner: {{type: hyperband, min_resource: 1, max_resource: 10}}
        n_trials: 7
        storage: {tmp_path / "sampled.journal"}
        """))
    study = open_study(spec)
    assert prepare_study(spec, study) == 7
    rows = []
    for _ in range(7):
        trial = study.ask()
        overrides, seed = suggest(spec, trial)
        train_config(spec, overrides, seed)
        rows.append((overrides, seed))
        study.tell(trial, overrides["lr"])
    assert [seed for _, seed in rows] == [1, 2, 3, 1, 2, 3, 1]
    for overrides, _ in rows:
        assert 1e-4 <= overrides["lr"] <= 1e-2
        assert overrides["tfr"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert overrides["tfr_sde"] in (0, 5, 10, 15, 20)
        assert overrides["optim"] in ("Adam", "AdamW") and overrides["lr_schedule"] == "cosine"
    assert [t.user_attrs["group"] for t in study.trials] == [group_key(o) for o, _ in rows]
    assert remaining_trials(spec, study) == 0
    assert trial_plan(spec)[0] == ({"lr": "log_uniform_values(0.0001..0.01)", "tfr": "uniform(0.0..1.0 step 0.25)",
                                    "tfr_sde": "int_uniform(0..20 step 5)", "optim": "one of Adam, AdamW",
                                    "lr_schedule": "one of cosine"}, 1)




# ---------------------------------------------------------------- launches, progress and results


def test_a_grid_launch_works_through_its_queue_and_reads_back_its_results(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    share = start_launch(spec, study)
    assert share == Launch(first_number=6, budget=6)
    values = {0: 20.0, 1: 21.0, 2: 23.0, 3: 24.0, 4: None, 5: 24.0}  # None: that trial fails
    while work_left(spec, study, share):
        trial = study.ask()
        suggest(spec, trial)
        if values[trial.number] is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values[trial.number])
    extra = study.ask()                              # what a worker gets from the empty queue
    with pytest.raises(SpecError):
        suggest(spec, extra)
    study.tell(extra, state=TrialState.FAIL)

    now = progress(spec, study)
    assert (now.done, now.total, now.running, now.best) == (5, 6, 0, 24.0)
    assert [t.number for t in now.failed] == [4]     # the empty-queue trial is not the sweep's
    table = summary_table(spec, study)
    assert table.columns.tolist() == ["configuration", "group", "seeds", "mean", "std"]
    assert table["configuration"].tolist() == [
        "kl_anneal_type=None", "kl_anneal_type=Cyclical, kl_anneal_ratio=0.5", "kl_anneal_type=Cyclical, kl_anneal_ratio=1.0"]
    assert table["seeds"].tolist() == [2, 2, 1]
    assert table["mean"].tolist() == [23.5, 22.0, 21.0]
    assert table["std"].iloc[:2].tolist() == pytest.approx([0.7071, 2.8284], abs=1e-4)

    again = start_launch(spec, open_study(spec))     # the next launch runs the failed cell only
    assert again == Launch(first_number=8, budget=1)


def test_a_sampled_launch_starts_at_most_its_budget_and_the_next_launch_replaces_failures(tmp_path):
    spec = load_spec(write(tmp_path, f"""
        name: sampled
        parameters: {{lr: {{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}}}}
        sampler: random
        n_trials: 3
        storage: {tmp_path / "sampled.journal"}
        """))
    study = open_study(spec)
    share = start_launch(spec, study)
    assert share == Launch(first_number=0, budget=3)
    states = iter([TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE])
    while work_left(spec, study, share):
        trial = study.ask()
        suggest(spec, trial)
        state = next(states)
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    assert len(study.trials) == 3
    assert progress(spec, study).done == 2
    assert start_launch(spec, study) == Launch(first_number=3, budget=1)


def test_fail_running_fails_only_running_trials(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    prepare_study(spec, study)
    done, running = study.ask(), study.ask()
    study.tell(done, 1.0)
    assert [t.number for t in fail_running(study)] == [running.number]
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]


def test_fail_running_of_one_launch_leaves_the_other_launchs_trials_running(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    study = open_study(spec)
    prepare_study(spec, study)
    mine, theirs = study.ask(), study.ask()
    mine.set_user_attr("launch", "here:1")
    theirs.set_user_attr("launch", "there:1")
    assert [t.number for t in fail_running(study, "here:1")] == [mine.number]
    assert [t.state for t in study.trials[:2]] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_cell_queued_twice_runs_once_the_smaller_number_or_the_complete_one_holds_it(tmp_path):
    spec = load_spec(small_grid(tmp_path, seeds="[1]"))
    study = open_study(spec)
    prepare_study(spec, study)
    cell, seed = trial_plan(spec)[0]
    study.enqueue_trial(cell, user_attrs={"seed": seed, "group": group_key(cell)})  # a second launcher's copy
    first = study.ask()
    for _ in range(len(spec.cells) - 1):
        study.tell(study.ask(), 1.0)
    copy = study.ask()
    assert (copy.user_attrs["group"], copy.user_attrs["seed"]) == (group_key(cell), seed)
    assert holder(study, copy).number == first.number and holder(study, first) is None
    study.tell(first, 1.0)
    assert holder(study, copy).state == TrialState.COMPLETE


def test_sweep_id_is_made_once_per_study(tmp_path):
    spec = load_spec(small_grid(tmp_path))
    first = sweep_id(open_study(spec))
    assert len(first) == 32 and sweep_id(open_study(spec)) == first
