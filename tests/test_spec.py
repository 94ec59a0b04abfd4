"""experiments/spec_loader.py and spec_sections.py: YAML sweep specs, their errors, plans and the study they drive."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvae.config import TrainConfig
from experiments.errors import SpecError
from experiments.plan import group_key, group_label, train_config, trial_plan
from experiments.samplers import make_pruner, make_sampler
from experiments.schema import OBJECTIVES as METRICS
from experiments.spec import AdaptiveSeeds, Execution
from experiments.spec_loader import TOP_KEYS, load_spec
from experiments.spec_sections import DISTRIBUTIONS, PARAMETER_KEYS
from experiments.study import make_storage
from experiments.workers import resolve_gpus, worker_gpus

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


def test_kl_ablation_is_a_union_of_subgrids_with_adaptive_seeds():
    spec = load_spec(SWEEPS / "kl_ablation.yaml")
    labels = [group_label(cell) for cell in spec.cells]
    assert labels == [
        "kl_anneal_type=Cyclical, kl_anneal_cycle=10, kl_anneal_ratio=0.5",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=10, kl_anneal_ratio=1.0",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=20, kl_anneal_ratio=0.5",
        "kl_anneal_type=Cyclical, kl_anneal_cycle=20, kl_anneal_ratio=1.0",
        "kl_anneal_type=Monotonic, kl_anneal_ratio=0.5",
        "kl_anneal_type=Monotonic, kl_anneal_ratio=1.0",
        "kl_anneal_type=None",
    ]
    assert (spec.seeds, spec.adaptive) == (tuple(range(1, 11)), AdaptiveSeeds(initial=3, max=10, until="separated"))
    assert len(trial_plan(spec)) == spec.n_trials == 21  # the initial seeds; the rounds may add up to 49
    assert spec.execution.gpus == "auto"
    cfg = train_config(spec, spec.cells[0], 3)
    assert (cfg.tfr, cfg.tfr_sde, cfg.tfr_d_step, cfg.seed) == (1.0, 10, 0.1, 3)
    assert cfg.F_dim == TrainConfig().F_dim


def test_shipped_plan_counts():
    counts = {p.stem: len(trial_plan(load_spec(p))) for p in SWEEPS.glob("*.yaml")}
    assert counts == {"kl_ablation": 21, "tfr_ablation": 27, "lr_schedule": 24, "lab_experiments": 15, "quick": 6}


def test_lab_experiments_best_setting():
    spec = load_spec(SWEEPS / "lab_experiments.yaml")
    best = train_config(spec, spec.cells[-1], 1)
    assert (best.optim, best.lr_schedule, best.lr, best.batch_size) == ("AdamW", "cosine", 1e-4, 16)
    assert (best.kl_anneal_type, best.kl_anneal_cycle, best.kl_anneal_ratio, best.tfr) == ("Cyclical", 20, 0.5, 0.0)
    # the first cell is the lab's defaults with the lab recipe of configs/lab.yaml
    assert train_config(spec, spec.cells[0], 1) == \
        TrainConfig(seed=1, model="lab", frame_output="mask", norm="group", augment=True)


def test_quick_is_a_small_cpu_sweep():
    spec = load_spec(SWEEPS / "quick.yaml")
    assert len(trial_plan(spec)) >= 6 and len(spec.seeds) >= 2  # seeds, so the report has a spread to show
    assert spec.execution == Execution(gpus=(), trials_per_gpu=1, cpu_workers=2)
    assert resolve_gpus(spec.execution) == []
    assert worker_gpus(spec.execution, []) == [None, None]
    cfg = train_config(spec, spec.cells[0], 1)
    assert (cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim) == (32, 16, 4, 48)
    assert cfg.DR == TrainConfig().DR  # the default data set, which the launcher generates when missing


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
    "adaptive seeds, unknown key": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 3, max: 10, until: separated, level: 0.1}\n",
        "seeds.level: unknown key of adaptive seeds (one of initial, max, until)"),
    "adaptive seeds, a key missing": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 3, max: 10}\n",
        "seeds: adaptive seeds need until (e.g. {initial: 3, max: 10, until: separated})"),
    "adaptive seeds, initial > max": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 5, max: 3, until: separated}\n",
        "seeds.max: 3 is less than seeds.initial (5)"),
    "adaptive seeds, one initial seed": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 1, max: 3, until: separated}\n",
        "seeds.initial: must be >= 2 (a paired t interval needs 2 seeds of each configuration), got 1"),
    "adaptive seeds, max not an integer": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 3, max: ten, until: separated}\n",
        "seeds.max: expected an integer, got 'ten'"),
    "adaptive seeds, until something else": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 3, max: 10, until: converged}\n",
        "seeds.until: unknown 'converged' (one of separated)"),
    "adaptive seeds, a sampled sweep": (
        "name: x\nsampler: tpe\nn_trials: 8\nparameters: {tfr: [0.0, 1.0]}\n"
        "seeds: {initial: 3, max: 10, until: separated}\n",
        "seeds: adaptive seeds need sampler: grid, not tpe (a sampled sweep cycles a list of seeds)"),
    "adaptive seeds with n_trials": (
        "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: {initial: 3, max: 10, until: separated}\nn_trials: 4\n",
        "n_trials: adaptive seeds run as many trials as their rounds need"),
    "adaptive seeds, one configuration": (
        "name: x\nseeds: {initial: 3, max: 10, until: separated}\n",
        "seeds: adaptive seeds compare configurations and this grid has 1; list its seeds instead"),
    "adaptive seeds past the grid's size": (
        "name: x\nparameters: {tfr_sde: {values: [" + ", ".join(map(str, range(50))) + "]}}\n"
        "seeds: {initial: 3, max: 41, until: separated}\n",
        "parameters: 50 configurations x 41 seeds = 2050 trials, more than 2000"),
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
    "unknown metric": ("name: x\nobjective: val_fid\n",
                       "objective.metric: unknown 'val_fid' (one of " + ", ".join(METRICS) + ")"),
    "bad gpus": ("name: x\nexecution: {gpus: [0, 0]}\n", "execution.gpus: [0, 0] repeats a GPU"),
    "unknown execution key": ("name: x\nexecution: {gpu: [0]}\n", "execution.gpu: unknown key (did you mean gpus?)"),
    "zero trials per GPU": ("name: x\nexecution: {trials_per_gpu: 0}\n",
                            "execution.trials_per_gpu: expected auto or an integer >= 1, got 0"),
    "trials per GPU a word": ("name: x\nexecution: {trials_per_gpu: Auto}\n",
                              "execution.trials_per_gpu: expected auto or an integer >= 1, got 'Auto'"),
    "trials per GPU a bool": ("name: x\nexecution: {trials_per_gpu: true}\n",
                              "execution.trials_per_gpu: expected auto or an integer >= 1, got True"),
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


def test_trials_per_gpu_is_a_number_or_auto(tmp_path):
    assert load_spec(write(tmp_path, "name: x\nexecution: {trials_per_gpu: auto}\n")).execution.trials_per_gpu == "auto"
    assert load_spec(write(tmp_path, "name: x\nexecution: {trials_per_gpu: 3}\n")).execution.trials_per_gpu == 3


def test_adaptive_seeds_are_one_to_max_and_the_plan_holds_the_initial_ones(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\nparameters: {tfr: [0.0, 1.0]}\n"
                                     "seeds: {initial: 2, max: 4, until: separated}\n"))
    assert (spec.seeds, spec.first_seeds, spec.n_trials) == ((1, 2, 3, 4), (1, 2), 4)
    assert trial_plan(spec) == [({"tfr": 0.0}, 1), ({"tfr": 1.0}, 1), ({"tfr": 0.0}, 2), ({"tfr": 1.0}, 2)]
    listed = load_spec(write(tmp_path, "name: x\nparameters: {tfr: [0.0, 1.0]}\nseeds: [5, 6]\n"))
    assert (listed.adaptive, listed.first_seeds) == (None, (5, 6))


def test_plan_is_seed_major_and_n_trials_keeps_its_head(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\nparameters:\n  tfr: [0.0, 1]\nseeds: [7, 8]\nn_trials: 3\n"))
    assert trial_plan(spec) == [({"tfr": 0.0}, 7), ({"tfr": 1.0}, 7), ({"tfr": 0.0}, 8)]
    assert list(spec.cells) == [{"tfr": 0.0}, {"tfr": 1.0}]


def test_values_are_read_as_train_config_reads_them(tmp_path):
    spec = load_spec(write(tmp_path, """
        name: x
        parameters:
          lr: [1e-4]          # YAML 1.1 reads this as a string
          milestones: {value: "10,20"}
          bf16: [true, false]
        """))
    assert spec.cells[0] == {"lr": 0.0001, "milestones": "10,20", "bf16": True}
    assert train_config(spec, spec.cells[0], 1).milestones == (10, 20)


def test_a_long_values_list_keeps_its_order_and_a_repeat_at_its_end_is_named(tmp_path):
    # 100,000 values: `python benchmarks/spec_validation.py`; here few, as each builds a TrainConfig
    values = ", ".join(str(epochs) for epochs in range(1, 31))
    spec = load_spec(write(tmp_path, f"name: x\nsampler: random\nn_trials: 1\nparameters: {{num_epoch: [{values}]}}\n"))
    assert spec.parameters[0].values == tuple(range(1, 31))
    path = write(tmp_path, f"name: x\nsampler: random\nn_trials: 1\nparameters: {{num_epoch: [{values}, '7']}}\n")
    assert spec_error(path) == "parameters.num_epoch.values[30]: '7' repeats a value (as num_epoch it is 7)"


def test_parameters_cross_every_subgrid(tmp_path):
    spec = load_spec(write(tmp_path, """
        name: x
        parameters: {optim: [Adam, AdamW]}
        grid:
          - {kl_anneal_type: Cyclical, kl_anneal_cycle: [10, 20]}
          - {kl_anneal_type: None}
        """))
    assert [group_label(c) for c in spec.cells] == [
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
