"""experiments/spec.py: YAML sweep specs, their errors, plans and the Optuna study they drive."""
from __future__ import annotations

import multiprocessing
import os
import stat
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from cvae.config import TrainConfig
from experiments.errors import SpecError
from experiments.spec import (
    DISTRIBUTIONS,
    PARAMETER_KEYS,
    TOP_KEYS,
    Execution,
    grid_cells,
    group_key,
    group_label,
    load_spec,
    make_pruner,
    make_sampler,
    make_storage,
    missing_cells,
    open_study,
    prepare_study,
    remaining_trials,
    resolve_gpus,
    suggest,
    train_config,
    trial_plan,
    worker_gpus,
)

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


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


# ---------------------------------------------------------------- shipped specs


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads_and_builds_its_configs(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    for overrides, seed in trial_plan(spec)[:50]:
        if spec.is_grid:
            assert isinstance(train_config(spec, overrides, seed), TrainConfig)


def test_shipped_specs_are_all_here():
    assert {p.stem for p in SWEEPS.glob("*.yaml")} >= {
        "kl_ablation", "tfr_ablation", "lr_schedule", "lab_experiments", "quick"}


def test_kl_ablation_is_a_union_of_subgrids_times_three_seeds():
    spec = load_spec(SWEEPS / "kl_ablation.yaml")
    labels = [group_label(cell) for cell in grid_cells(spec)]
    assert labels == [
        "kl_anneal_type=Cyclical, kl_anneal_cycle=10, kl_anneal_ratio=0.5",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=10, kl_anneal_ratio=1.0",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=20, kl_anneal_ratio=0.5",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=20, kl_anneal_ratio=1.0",
        "kl_anneal_type=Monotonic, kl_anneal_ratio=0.5",
        "kl_anneal_type=Monotonic, kl_anneal_ratio=1.0",
        "kl_anneal_type=None",
    ]
    assert spec.seeds == (1, 2, 3)
    assert len(trial_plan(spec)) == spec.n_trials == 21
    assert spec.execution.gpus == "auto"
    cfg = train_config(spec, grid_cells(spec)[0], 3)
    assert (cfg.tfr, cfg.tfr_sde, cfg.tfr_d_step, cfg.seed) == (1.0, 10, 0.1, 3)
    assert cfg.F_dim == TrainConfig().F_dim


def test_shipped_plan_counts():
    counts = {p.stem: len(trial_plan(load_spec(p))) for p in SWEEPS.glob("*.yaml")}
    assert counts == {"kl_ablation": 21, "tfr_ablation": 27, "lr_schedule": 24, "lab_experiments": 15, "quick": 6}


def test_lab_experiments_best_setting():
    spec = load_spec(SWEEPS / "lab_experiments.yaml")
    best = train_config(spec, grid_cells(spec)[-1], 1)
    assert (best.optim, best.lr_schedule, best.lr, best.batch_size) == ("AdamW", "cosine", 1e-4, 16)
    assert (best.kl_anneal_type, best.kl_anneal_cycle, best.kl_anneal_ratio, best.tfr) == ("Cyclical", 20, 0.5, 0.0)
    assert train_config(spec, grid_cells(spec)[0], 1) == TrainConfig(seed=1)


def test_quick_is_a_small_cpu_sweep():
    spec = load_spec(SWEEPS / "quick.yaml")
    assert len(grid_cells(spec)) >= 6
    assert spec.execution == Execution(gpus=(), trials_per_gpu=1, cpu_workers=2)
    assert resolve_gpus(spec.execution) == []
    assert worker_gpus(spec.execution, []) == [None, None]
    cfg = train_config(spec, grid_cells(spec)[0], 1)
    assert (cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim, cfg.DR) == (32, 16, 4, 32, "data/quick")


def test_lr_schedule_is_tpe_with_a_median_pruner():
    spec = load_spec(SWEEPS / "lr_schedule.yaml")
    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)
    assert isinstance(make_pruner(spec), optuna.pruners.MedianPruner)
    assert spec.n_trials == 24


# ---------------------------------------------------------------- one-line errors

BAD_SPECS = {
    "unknown TrainConfig key": (
        "name: x\nparameters:\n  kl_anneal_typ: {values: [Cyclical]}\n",
        "parameters.kl_anneal_typ: unknown TrainConfig key (did you mean kl_anneal_type?)"),
    "unknown base key": ("name: x\nbase: {lrr: 0.1}\n", "base.lrr: unknown TrainConfig key (did you mean lr?)"),
    "unknown top-level key": ("name: x\nsampelr: tpe\n", "sampelr: unknown key (did you mean sampler?)"),
    "W&B key": ("name: x\nmethod: grid\n", "method: unknown key (this is W&B's name; here it is 'sampler')"),
    "unknown distribution": (
        "name: x\nsampler: tpe\nn_trials: 3\nparameters:\n  lr: {distribution: normal, min: 0.1, max: 1}\n",
        "parameters.lr.distribution: unknown 'normal' (one of int_uniform, uniform, log_uniform_values)"),
    "min > max": (
        "name: x\nsampler: tpe\nn_trials: 3\nparameters:\n  lr: {distribution: uniform, min: 0.1, max: 0.01}\n",
        "parameters.lr.min (0.1) > max (0.01)"),
    "grid with a continuous range": (
        "name: x\nparameters:\n  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-3}\n",
        "parameters.lr: a grid sweep needs 'values', not a continuous distribution"),
    "float distribution on an integer": (
        "name: x\nsampler: random\nn_trials: 2\nparameters:\n  num_epoch: {distribution: uniform, min: 1, max: 9}\n",
        "parameters.num_epoch.distribution: uniform gives floats but num_epoch is an integer (use int_uniform)"),
    "step that does not divide the range": (
        "name: x\nsampler: random\nn_trials: 2\nparameters:\n  tfr_sde: {distribution: int_uniform, min: 0, max: 10, q: 3}\n",
        "parameters.tfr_sde.q: max - min (10) is not a multiple of q (3)"),
    "pruner with grid": (
        "name: x\npruner: median\n",
        "pruner: a grid sweep cannot use a pruner"),
    "unknown sampler option": (
        "name: x\nsampler: {type: tpe, n_startup_trial: 5}\nn_trials: 3\nparameters:\n  lr: {values: [0.001]}\n",
        "sampler.n_startup_trial: unknown option of tpe (did you mean n_startup_trials?)"),
    "sampler option of the wrong type": (
        "name: x\nsampler: {type: tpe, n_startup_trials: five}\nn_trials: 3\nparameters:\n  lr: {values: [0.001]}\n",
        "sampler.n_startup_trials: 'five' does not fit tpe's n_startup_trials (int)"),
    "sampler option YAML cannot give": (
        "name: x\nsampler: {type: tpe, gamma: 3}\nn_trials: 3\nparameters:\n  lr: {values: [0.001]}\n",
        "sampler.gamma: 3 does not fit tpe's gamma (Callable[[int], int] | None)"),
    "sampler option value Optuna refuses": (
        "name: x\nsampler: {type: random, seed: -5}\nn_trials: 3\nparameters:\n  lr: {values: [0.001]}\n",
        "sampler: Optuna refused the options"),
    "unknown sampler": ("name: x\nsampler: bayes\n", "sampler: unknown 'bayes' (one of grid, tpe, random, qmc)"),
    "unknown pruner option": (
        "name: x\nsampler: tpe\nn_trials: 3\npruner: {type: median, warmup: 5}\nparameters:\n  lr: {values: [0.001]}\n",
        "pruner.warmup: unknown option of median"),
    "bad value caught by TrainConfig": (
        "name: x\nparameters:\n  kl_anneal_type: {values: [Cyclical, Linear]}\n",
        "parameters.kl_anneal_type.values[1]: kl_anneal_type='Linear': must be one of Cyclical, Monotonic, None"),
    "bad sub-grid value": (
        "name: x\ngrid:\n  - {kl_anneal_type: Cyclical}\n  - {kl_anneal_type: Linear}\n",
        "grid[1].kl_anneal_type: kl_anneal_type='Linear': must be one of"),
    "bad base value": ("name: x\nbase: {lr: -1}\n", "base.lr: lr=-1.0: must be positive"),
    "bad value for the base": (
        "name: x\nbase: {lr_min: 0.0005}\nparameters:\n  lr: {values: [0.1, 0.0001]}\n",
        "parameters.lr.values[1]: lr_min=0.0005: must be between 0 and lr"),
    "cell whose values clash": (
        "name: x\nparameters:\n  lr: {values: [0.1, 0.0001]}\n  lr_min: {values: [0.0005]}\n",
        "parameters (lr=0.0001, lr_min=0.0005): lr_min=0.0005: must be between 0 and lr"),
    "two sub-grids with one configuration": (
        "name: x\ngrid:\n  - {kl_anneal_type: Cyclical}\n  - {kl_anneal_cycle: 10}\n",
        "grid[1] (kl_anneal_cycle=10): the same configuration as grid[0] (kl_anneal_type=Cyclical)"),
    "repeated value": ("name: x\nparameters:\n  tfr: [1, 1.0]\n", "parameters.tfr.values[1]: 1.0 repeats a value"),
    "list value": (
        "name: x\nparameters:\n  milestones: {values: [[2, 5]]}\n",
        "parameters.milestones.values[0]: [2, 5] is not a single value (write a list value as a string, e.g. '2,5')"),
    "seed as a parameter": ("name: x\nparameters:\n  seed: [1, 2]\n", "parameters.seed: seeds are not swept"),
    "swept key also in base": (
        "name: x\nbase: {lr: 0.01}\nparameters:\n  lr: [0.1]\n", "parameters.lr: also set in base"),
    "seeds not a list": ("name: x\nseeds: 3\n", "seeds: expected a non-empty list of integers"),
    "n_trials missing for tpe": (
        "name: x\nsampler: tpe\nparameters:\n  lr: [0.1]\n", "n_trials: required for sampler tpe"),
    "n_trials beyond the grid": (
        "name: x\nparameters:\n  tfr: [0.0, 1.0]\nseeds: [1, 2]\nn_trials: 5\n",
        "n_trials: 5 is more than the grid's 2 configurations x 2 seeds = 4 trials"),
    "sub-grids without a grid": (
        "name: x\nsampler: random\nn_trials: 2\nparameters:\n  lr: [0.1]\ngrid: [{tfr: 0.0}]\n",
        "grid: sub-grids need sampler: grid, not random"),
    "huge grid": (
        "name: x\nparameters:\n  tfr_sde: {values: [" + ", ".join(map(str, range(50))) + "]}\n"
        "  num_epoch: {values: [" + ", ".join(map(str, range(1, 51))) + "]}\n",
        "parameters: 2500 configurations x 1 seeds = 2500 trials, more than 2000"),
    "unsafe name": ("name: ../etc\n", "name: '../etc' is not a safe name"),
    "missing name": ("seeds: [1]\n", "name: required"),
    "unknown direction": ("name: x\nobjective: {metric: val_psnr, direction: up}\n", "objective.direction: unknown 'up'"),
    "metric of unknown direction": ("name: x\nobjective: val_fid\n", "objective: give the direction for 'val_fid'"),
    "bad gpus": ("name: x\nexecution: {gpus: [0, 0]}\n", "execution.gpus: [0, 0] repeats a GPU"),
    "unknown execution key": ("name: x\nexecution: {gpu: [0]}\n", "execution.gpu: unknown key (did you mean gpus?)"),
    "duplicate key": ("name: x\nseeds: [1]\nseeds: [2]\n", "not valid YAML (line 3, column 1: key 'seeds' given twice)"),
    "invalid YAML": ("name: x\nparameters: [unclosed\n", "not valid YAML (line 3, column 1:"),
    "bad date": ("name: x\nbase: {DR: 2020-13-45}\n", "not valid YAML (month must be in 1..12)"),
    "not a mapping": ("- name\n- x\n", "expected a mapping of sweep keys, got list ['name', 'x']"),
    "empty file": ("", "empty; a spec is a mapping with at least a name"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, case):
    text, expected = BAD_SPECS[case]
    assert spec_error(write(tmp_path, text)).startswith(expected)


def test_missing_file_and_folder(tmp_path):
    assert spec_error(tmp_path / "nope.yaml") == "spec file not found"
    assert spec_error(tmp_path) == "not a file"


# ---------------------------------------------------------------- semantics


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, "name: plain\n"))
    assert (spec.sampler, spec.pruner, spec.seeds) == ("grid", "none", (1,))
    assert (spec.metric, spec.direction) == ("val_psnr", "maximize")
    assert spec.execution == Execution(gpus="auto", trials_per_gpu=1, cpu_workers=1)
    assert spec.storage == str(Path("runs/plain/optuna.journal"))
    assert spec.tracking_uri == "sqlite:///mlflow.db"
    assert trial_plan(spec) == [({}, 1)]
    assert isinstance(make_storage(spec), optuna.storages.JournalStorage)
    assert (tmp_path / "runs" / "plain").is_dir()


def test_plan_is_seed_major_and_n_trials_keeps_its_head(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\nparameters:\n  tfr: [0.0, 1]\nseeds: [7, 8]\nn_trials: 3\n"))
    assert trial_plan(spec) == [({"tfr": 0.0}, 7), ({"tfr": 1.0}, 7), ({"tfr": 0.0}, 8)]
    assert grid_cells(spec) == [{"tfr": 0.0}, {"tfr": 1.0}]


def test_values_are_read_as_train_config_reads_them(tmp_path):
    spec = load_spec(write(tmp_path, """
        name: x
        parameters:
          lr: [1e-4]          # YAML 1.1 reads this as a string
          milestones: {value: "10,20"}
          bf16: [true, false]
        """))
    assert grid_cells(spec)[0] == {"lr": 0.0001, "milestones": "10,20", "bf16": True}
    assert train_config(spec, grid_cells(spec)[0], 1).milestones == (10, 20)


def test_parameters_cross_every_subgrid(tmp_path):
    spec = load_spec(write(tmp_path, """
        name: x
        parameters: {optim: [Adam, AdamW]}
        grid:
          - {kl_anneal_type: Cyclical, kl_anneal_cycle: [10, 20]}
          - {kl_anneal_type: None}
        """))
    assert [group_label(c) for c in grid_cells(spec)] == [
        "optim=Adam, kl_anneal_type=Cyclical, kl_anneal_cycle=10",
        "optim=Adam, kl_anneal_type=Cyclical, kl_anneal_cycle=20",
        "optim=AdamW, kl_anneal_type=Cyclical, kl_anneal_cycle=10",
        "optim=AdamW, kl_anneal_type=Cyclical, kl_anneal_cycle=20",
        "optim=Adam, kl_anneal_type=None",
        "optim=AdamW, kl_anneal_type=None",
    ]


def test_group_key_ignores_seed_and_order():
    a = {"kl_anneal_type": "Cyclical", "kl_anneal_ratio": 0.5}
    b = {"kl_anneal_ratio": 0.5, "seed": 3, "kl_anneal_type": "Cyclical"}
    assert group_key(a) == group_key(b)
    assert len(group_key(a)) == 10 and int(group_key(a), 16) >= 0
    assert group_key(a) != group_key({**a, "kl_anneal_ratio": 1.0})
    assert group_label(b) == "kl_anneal_ratio=0.5, kl_anneal_type=Cyclical"
    assert group_label({"seed": 1}) == "base"


def test_train_config_layers_base_overrides_and_seed(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\nbase: {lr: 0.01, num_epoch: 3}\nparameters: {tfr: [0.0]}\n"))
    cfg = train_config(spec, {"tfr": 0.0}, 5)
    assert (cfg.lr, cfg.num_epoch, cfg.tfr, cfg.seed, cfg.batch_size) == (0.01, 3, 0.0, 5, TrainConfig().batch_size)
    with pytest.raises(SpecError, match=r"x.yaml: configuration tfr=2.0, seed 5: tfr=2.0: must be in \[0, 1\]"):
        train_config(spec, {"tfr": 2.0}, 5)


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


def test_open_study_refuses_a_changed_direction(tmp_path):
    path = write(tmp_path, f"name: x\nstorage: {tmp_path / 'j.journal'}\n")
    open_study(load_spec(path))
    path.write_text(f"name: x\nstorage: {tmp_path / 'j.journal'}\nobjective: {{metric: val_loss}}\n")
    with pytest.raises(SpecError, match="objective.direction: study 'x' .* was created to maximize"):
        open_study(load_spec(path))


# ---------------------------------------------------------------- the grid queue on a real journal


def run_queue(spec, study) -> list[tuple[dict, int]]:
    """What a worker does: pop queued trials until none is left; returns what ran."""
    ran = []
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        overrides, seed = suggest(spec, trial)
        ran.append((overrides, seed))
        study.tell(trial, float(seed))
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
    with pytest.raises(SpecError, match=r"base: study 'small' was run with another base \(differs at num_epoch\)"):
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


# ---------------------------------------------------------------- GPUs without CUDA


def fake_nvidia_smi(folder: Path, output: str) -> str:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\n")  # printf: a builtin, PATH holds only this
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(folder)


SMI = ("GPU 0: NVIDIA H200 (UUID: GPU-aaaa1111)\n"
       "GPU 1: NVIDIA H200 (UUID: GPU-bbbb2222)\n"
       "  MIG 1g.18gb     Device  0: (UUID: MIG-cccc3333)\n")


def test_resolve_gpus(tmp_path, monkeypatch):
    auto = Execution(gpus="auto", trials_per_gpu=2)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, SMI))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_gpus(auto) == [0, 1]
    assert worker_gpus(auto, [0, 1]) == [0, 1, 0, 1]
    for visible, gpus in {"1": [1], "3,2": [3, 2], "": [], "-1": [], "0,-1,1": [0], "GPU-bbbb": [1]}.items():
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert resolve_gpus(auto) == gpus, visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccc3333")
    with pytest.raises(SpecError, match="execution.gpus: auto cannot map CUDA_VISIBLE_DEVICES entry 'MIG-cccc3333'"):
        resolve_gpus(auto)
    assert resolve_gpus(Execution(gpus=(2, 5))) == [2, 5]


def test_resolve_gpus_without_a_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_gpus(Execution()) == []


# ---------------------------------------------------------------- malformed specs never escape as other errors

FIELDS = list(TrainConfig().to_dict())
VOCABULARY = list(TOP_KEYS) + list(PARAMETER_KEYS) + list(DISTRIBUTIONS) + FIELDS + [
    "type", "gpus", "trials_per_gpu", "cpu_workers", "metric", "direction", "tracking_uri",
    "n_startup_trials", "n_warmup_steps", "min_resource", "max_resource", "tpe", "grid", "median"]
VALID = {
    "name": "fuzz",
    "base": {"num_epoch": 2},
    "parameters": {"kl_anneal_type": {"values": ["Cyclical", "None"]}, "lr": {"value": 0.001}},
    "seeds": [1, 2],
}
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
           | st.sampled_from(VOCABULARY))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)
word = st.sampled_from(VOCABULARY) | st.text(max_size=4)
key_paths = st.one_of(
    st.lists(word, min_size=1, max_size=3),
    st.tuples(st.just("parameters"), st.sampled_from(FIELDS), st.sampled_from(PARAMETER_KEYS)).map(list),
    st.tuples(st.sampled_from(["base", "sampler", "pruner", "execution", "objective", "grid"]), word).map(list),
)


def put(doc: dict, path: list[str], value) -> None:
    for key in path[:-1]:
        if not isinstance(doc.get(key), dict):
            doc[key] = {}
        doc = doc[key]
    doc[path[-1]] = value


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(key_paths, junk), min_size=1, max_size=3))
def test_malformed_specs_raise_only_spec_error(fuzz_file, mutations):
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    for path, value in mutations:
        put(doc, path, value)
    fuzz_file.write_text(yaml.safe_dump(doc))
    try:
        spec = load_spec(fuzz_file)
    except SpecError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{fuzz_file}: ")
        return
    for overrides, seed in trial_plan(spec)[:20]:
        if spec.is_grid:
            train_config(spec, overrides, seed)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_loads_or_raises_spec_error(fuzz_file, text):
    fuzz_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_spec(fuzz_file)
    except SpecError as err:
        assert "\n" not in str(err)


def test_shipped_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(SWEEPS / "quick.yaml")
    assert not os.path.isabs(spec.storage)
    make_storage(spec)
    assert (tmp_path / "runs" / "quick").is_dir()
