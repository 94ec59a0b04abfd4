"""A sweep's Optuna study: opened from its spec, prepared for a launch, shared by workers, read back.

Grids are queued, not sampled. Optuna's GridSampler cannot express a union of sub-grids and counts a
failed or crashed cell as done, so a grid uses no sampler at all: `prepare_study` enqueues every
(configuration, seed) that has no COMPLETE trial and is not already queued, with the seed and the
configuration's `group_key` as user attrs, and `suggest` reads them back (suggest_categorical returns
the enqueued value). Workers pop queued trials atomically (journal file lock or RDB row update), so
several processes share one queue and each cell x seed runs once. COMPLETE is never repeated.

`prepare_study` runs in each launcher before its workers start. On a journal file or SQLite (one
launcher per file at a time, `launch_files.hold_storage`) any RUNNING trial then belongs to a dead
launch, so it is failed and its cell queued again. On a server database (PostgreSQL, MySQL) several
launchers share the study: a RUNNING trial may be another host's, so only trials whose heartbeat
stopped for the grace period are failed, and the heartbeat's retry callback queues them again. Two
launchers preparing at once may queue a cell twice; the objective runs the copy only if no other
trial of the cell is COMPLETE or, with a smaller number, RUNNING (`holder`).
A grid trial's params are its cell, so Optuna's own plots work; each axis is one categorical over all
its values, and Optuna fixes a categorical's choices per study: a resumed study takes more seeds, but
a changed axis or base needs a new name (prepare_study says so).

A grid worker pops until the queue is empty; if another worker took the last trial first, its `ask`
makes a fresh trial that `suggest` refuses with SpecError: fail that trial and stop. Such a trial has
no `seed` user attr, which is how progress and results tell it from the sweep's own (`is_sweep_trial`).

A sampled sweep has no queue: a launch may start as many trials as `prepare_study` said remain (its
`Launch.budget`); one that fails is tried again, freshly sampled, by the next launch.

With adaptive seeds a grid's plan grows in rounds (`experiments.replicates`), a pure function of the values of
its COMPLETE trials (`planned_cells`): `prepare_study` queues what the current round misses, and the launcher
prepares the study again after each round. The study's `adaptive_seeds` user attr says what the rounds saved.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cvae.config import LEGACY_VALUES, TrainConfig
from experiments import replicates
from experiments.errors import SpecError, SweepError, one_line, os_reason, show
from experiments.launch_files import storage_file
from experiments.plan import group_key, group_label, trial_plan
from experiments.samplers import make_pruner, make_sampler
# the user attrs that resuming reads, on a trial (seed, group, ...) and on the study (sweep id, config)
from experiments.schema import ADAPTIVE_SEEDS, GROUP, LAUNCH, SEED, SWEEP_CONFIG, SWEEP_ID_ATTR as SWEEP_ID
from experiments.spec import URL, SweepSpec

HEARTBEAT_S = 60
GRACE_S = 120
# Read by make_storage: a test kills a launcher and cannot wait minutes for its trials to go stale.
HEARTBEAT_ENV, GRACE_ENV = "SWEEP_HEARTBEAT_S", "SWEEP_GRACE_S"
MAX_RETRY = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


def make_storage(spec: SweepSpec) -> optuna.storages.BaseStorage:
    """A journal file or an RDB (a file's parent folders created); an RDB's heartbeat fails and re-queues dead trials.

    The heartbeat interval and grace period are HEARTBEAT_S and GRACE_S seconds unless the environment
    sets SWEEP_HEARTBEAT_S and SWEEP_GRACE_S.
    """
    path = storage_file(spec.storage)  # None for a database server
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not URL.match(spec.storage):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as err:
        raise SpecError(f"{spec.source}: storage: cannot create {path} ({os_reason(err)})") from None
    except (ValueError, KeyError, TypeError) as err:  # whole JSON lines that are no records Optuna can replay
        raise SweepError(f"{path}: Optuna cannot replay this journal ({type(err).__name__}: {one_line(err)}); "
                         "restore the file") from None
    try:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and said by every worker
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
            return optuna.storages.RDBStorage(
                spec.storage, heartbeat_interval=int(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S)),
                grace_period=int(os.environ.get(GRACE_ENV, GRACE_S)), heartbeat_stale_trial_callback=retry)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and missing DB drivers share no base class
        raise SpecError(f"{spec.source}: storage: cannot open {spec.storage!r} ({one_line(err)})") from None


def find_study(spec: SweepSpec, worker: int = 0) -> optuna.Study | None:
    """The spec's study if its storage holds one, read without writing; `worker` offsets the sampler seed.

    (`create_study(load_if_exists=True)` appends a record to a journal even when the study is there.)
    """
    storage = make_storage(spec)
    if spec.name not in {summary.study_name for summary in storage.get_all_studies()}:
        return None
    return _check_direction(spec, optuna.load_study(study_name=spec.name, storage=storage,
                                                    sampler=make_sampler(spec, worker), pruner=make_pruner(spec)))


def open_study(spec: SweepSpec, worker: int = 0) -> optuna.Study:
    """Load the spec's study, or create it, with its sampler and pruner; `worker` offsets the sampler seed."""
    study = find_study(spec, worker)
    if study is not None:
        return study
    return _check_direction(spec, optuna.create_study(  # a launcher sharing the database may have made it first
        storage=make_storage(spec), sampler=make_sampler(spec, worker), pruner=make_pruner(spec),
        study_name=spec.name, direction=spec.direction, load_if_exists=True,
    ))


def _check_direction(spec: SweepSpec, study: optuna.Study) -> optuna.Study:
    if study.direction.name.lower() != spec.direction:
        raise SpecError(f"{spec.source}: objective.direction: study {spec.name!r} in {spec.storage} was created "
                        f"to {study.direction.name.lower()}; give the sweep a new name")
    return study


def suggest(spec: SweepSpec, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
    """The overrides and seed of a trial: a queued grid cell, or sampled values and the cycled seed."""
    if spec.is_grid:
        return _suggest_cell(spec, trial)
    overrides: dict[str, Any] = {}
    for p in spec.parameters:
        if p.values:
            overrides[p.name] = trial.suggest_categorical(p.name, p.values)
        elif p.distribution == "int_uniform":
            overrides[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1)
        else:
            overrides[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step,
                                                    log=p.distribution == "log_uniform_values")
    # A re-queued trial (heartbeat retry) keeps its seed; a fresh one takes the next in the cycle.
    seed = trial.user_attrs.get(SEED, spec.seeds[trial.number % len(spec.seeds)])
    trial.set_user_attr(SEED, seed)
    trial.set_user_attr(GROUP, group_key(overrides))
    return overrides, seed


def _suggest_cell(spec: SweepSpec, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
    cells = {group_key(cell): cell for cell in spec.cells}
    cell = cells.get(trial.user_attrs.get(GROUP))
    seed = trial.user_attrs.get(SEED)
    if cell is None or seed not in spec.seeds:
        raise SpecError(f"{spec.source}: trial {trial.number} is not a queued cell of this grid "
                        "(the queue was empty, or the spec changed since prepare_study queued it)")
    choices = _axis_choices(spec)
    overrides = {name: trial.suggest_categorical(name, choices[name]) for name in cell}
    return overrides, seed


def _axis_choices(spec: SweepSpec) -> dict[str, tuple[Any, ...]]:
    """Each grid axis' values over all cells: one categorical per name, as Optuna requires of a study."""
    choices: dict[str, list[Any]] = {}
    for cell in spec.cells:
        for name, value in cell.items():
            if value not in choices.setdefault(name, []):
                choices[name].append(value)
    return {name: tuple(values) for name, values in choices.items()}


def missing_cells(spec: SweepSpec, study: optuna.Study) -> list[tuple[dict[str, Any], int]]:
    """The grid's plan minus its COMPLETE trials, matched by configuration and seed."""
    if not spec.is_grid:
        raise ValueError("missing_cells needs a grid sweep; a sampled one has remaining_trials")
    done = complete_values(study)
    return [(cell, seed) for cell, seed in planned_cells(spec, study) if (group_key(cell), seed) not in done]


def planned_cells(spec: SweepSpec, study: optuna.Study) -> list[tuple[dict[str, Any], int]]:
    """A grid's (configuration, seed) pairs to run, seed-major: its plan, or the rounds of adaptive seeds so far."""
    if spec.adaptive is None:
        return trial_plan(spec)
    return replicates.planned_cells(spec, adaptive_plan(spec, study))


def adaptive_plan(spec: SweepSpec, study: optuna.Study) -> replicates.Plan:
    """The rounds of an adaptive grid, decided from the values of its COMPLETE trials."""
    return replicates.plan(spec, complete_values(study))


def complete_values(study: optuna.Study) -> dict[tuple[str, Any], float]:
    """(group key, seed) -> value of each COMPLETE trial of the plan (of a cell finished twice, the first)."""
    values: dict[tuple[str, Any], float] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_sweep_trial(trial):
            values.setdefault(_cell_of(trial), trial.value)
    return values


def record_savings(spec: SweepSpec, study: optuna.Study) -> replicates.Savings:
    """Keep what adaptive seeds saved as the study's ADAPTIVE_SEEDS user attr (written only when it changed)."""
    saved = replicates.savings(spec, adaptive_plan(spec, study))
    if study.user_attrs.get(ADAPTIVE_SEEDS) != dataclasses.asdict(saved):
        study.set_user_attr(ADAPTIVE_SEEDS, dataclasses.asdict(saved))
    return saved


def _cell_of(trial: optuna.trial.FrozenTrial) -> tuple[str, Any]:
    """(group key, seed) of a grid trial; the queued `group` attr, since an objective may suggest more params."""
    params = trial.system_attrs.get("fixed_params", trial.params)
    return trial.user_attrs.get(GROUP, group_key(params)), trial.user_attrs.get(SEED)


def remaining_trials(spec: SweepSpec, study: optuna.Study) -> int:
    """How many trials a (re)launch still has to finish."""
    if spec.is_grid:
        return len(missing_cells(spec, study))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max(0, spec.n_trials - len(finished))


def prepare_study(spec: SweepSpec, study: optuna.Study) -> int:
    """Ready a study for a (re)launch before any worker starts; returns the number of trials to run.

    Fails the RUNNING trials of dead launches (all of them, or on a shared database those whose
    heartbeat is stale), and for a grid queues each missing cell x seed that is not queued or running
    yet. Refuses a study run with another base, or with categorical choices Optuna cannot change
    (adding seeds is fine: they are not params).
    """
    _check_base(spec, study)
    _check_distributions(spec, study)
    if is_shared(spec):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, and said at every launch
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        orphans = fail_running(study)
        if orphans:
            log.info("study %s: failed %d trials left RUNNING by an earlier launch", spec.name, len(orphans))
    if not spec.is_grid:
        return remaining_trials(spec, study)
    queued: dict[tuple[str, Any], int] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        queued[_cell_of(trial)] = queued.get(_cell_of(trial), 0) + 1
    added = 0
    for cell, seed in missing_cells(spec, study):
        key = (group_key(cell), seed)
        if queued.get(key):
            queued[key] -= 1
            continue
        study.enqueue_trial(cell, user_attrs={SEED: seed, GROUP: group_key(cell)})
        added += 1
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    log.info("study %s: queued %d trials, %d waiting in all", spec.name, added, waiting)
    return waiting


def is_shared(spec: SweepSpec) -> bool:
    """Whether several launchers may share the study: its storage is a database server, not a file."""
    return bool(URL.match(spec.storage)) and not spec.storage.startswith("sqlite:")


def launch_id(launcher_pid: int) -> str:
    """`host:pid` of a launcher: the `launch` user attr of its trials, so it stops only its own."""
    return f"{socket.gethostname()}:{launcher_pid}"


def fail_running(study: optuna.Study, launch: str | None = None) -> list[FrozenTrial]:
    """Fail every RUNNING trial (their workers are gone), or those of one `launch`; returns them as they were."""
    running = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if launch is None or trial.user_attrs.get(LAUNCH) == launch]
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return running


@dataclass(frozen=True)
class Launch:
    """One launch's share of the study: the trials numbered `first_number` on, at most `budget` (sampled) of them."""

    first_number: int
    budget: int


def start_launch(spec: SweepSpec, study: optuna.Study) -> Launch:
    """`prepare_study`, and the share of the study it leaves to this launch."""
    budget = prepare_study(spec, study)
    return Launch(first_number=len(study.get_trials(deepcopy=False)), budget=budget)


def work_left(spec: SweepSpec, study: optuna.Study, launch: Launch) -> bool:
    """Whether a worker should start another trial: a grid has one queued, a sampled sweep has budget left.

    Workers that ask at the same moment may both start one, so a sampled launch can overrun its
    budget by a trial per extra worker; a grid cannot (an empty queue gives a trial `suggest` refuses).
    """
    if spec.is_grid:
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    started = sum(trial.number >= launch.first_number for trial in study.get_trials(deepcopy=False))
    return started < launch.budget


def holder(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """Another trial of this grid trial's cell x seed that is COMPLETE, or RUNNING with a smaller number.

    The smaller number wins, so of two copies queued by launchers preparing at once exactly one runs.
    """
    cell = (trial.user_attrs.get(GROUP), trial.user_attrs.get(SEED))
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and _cell_of(other) == cell and (
                other.state == TrialState.COMPLETE or other.number < trial.number):
            return other
    return None


def unheld_failures(study: optuna.Study, numbers: Iterable[int]) -> list[int]:
    """Of the FAIL trials `numbers`, those whose cell x seed no other trial has finished, runs or waits to run.

    A copy that launchers preparing at once both queued fails as a duplicate (`holder`): the cell is held.
    """
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    held = {_cell_of(trial) for trial in trials.values()
            if trial.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
    return [number for number in numbers if _cell_of(trials[number]) not in held]


def is_sweep_trial(trial: FrozenTrial) -> bool:
    """A trial of the plan, not one a worker made from an empty queue (see the module's docstring)."""
    return SEED in trial.user_attrs


def sweep_id(study: optuna.Study) -> str:
    """The study's own id, kept as a user attr: what its MLflow parent run is tagged with.

    Made from the study's name and its id in the storage, so launchers that find it missing at the
    same moment write the same value (studies made before keep the random id they were given).
    """
    if SWEEP_ID not in study.user_attrs:
        made = uuid.uuid5(uuid.NAMESPACE_OID, f"optuna-study:{study.study_name}:{study._study_id}")
        study.set_user_attr(SWEEP_ID, made.hex)
    return study.user_attrs[SWEEP_ID]


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands: trials of the plan done (of `total`, the rounds so far with adaptive seeds), running
    now, failed ever, best value."""

    done: int
    total: int
    running: int
    failed: tuple[FrozenTrial, ...]
    best: float | None


def progress(spec: SweepSpec, study: optuna.Study) -> Progress:
    trials = [t for t in study.get_trials(deepcopy=False) if is_sweep_trial(t)]
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
    if spec.is_grid:  # with adaptive seeds the total grows with the rounds
        planned, finished = planned_cells(spec, study), complete_values(study)
        done, total = sum((group_key(cell), seed) in finished for cell, seed in planned), len(planned)
    else:
        done, total = sum(t.state in FINISHED for t in trials), spec.n_trials
    pick = max if spec.direction == "maximize" else min
    return Progress(done=done, total=total, running=sum(t.state == TrialState.RUNNING for t in trials),
                    failed=tuple(t for t in trials if t.state == TrialState.FAIL),
                    best=pick(complete) if complete else None)


def summary_table(spec: SweepSpec, study: optuna.Study) -> pd.DataFrame:
    """One row per configuration with COMPLETE trials: mean and std of the objective over seeds, best first.

    Columns: configuration (its label), group (its key), seeds (how many finished), mean, std.
    """
    rows = [{"configuration": group_label(t.params), "group": t.user_attrs.get(GROUP, group_key(t.params)),
             "seed": t.user_attrs[SEED], "value": t.value}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_sweep_trial(t)]
    if not rows:
        return pd.DataFrame(columns=["configuration", "group", "seeds", "mean", "std"])
    table = (pd.DataFrame(rows).groupby(["configuration", "group"], sort=False)["value"]
             .agg(seeds="count", mean="mean", std="std").reset_index())
    return table.sort_values("mean", ascending=spec.direction == "minimize", kind="stable", ignore_index=True)


def _check_base(spec: SweepSpec, study: optuna.Study) -> None:
    """Every trial of a study shares one base: the spec's base over TrainConfig's defaults when it started.

    The defaults count too: an upgrade that changes one (bf16 on by default, say) would otherwise
    mix trials of two kinds in one comparison.
    """
    stored = study.user_attrs.get(SWEEP_CONFIG)
    base = json.loads(json.dumps({**TrainConfig().to_dict(), **spec.base}))
    base.pop("seed")
    if stored is not None:  # a field added since the study started counts as its old behaviour
        stored = {**LEGACY_VALUES, **stored}
    if stored is None:
        study.set_user_attr(SWEEP_CONFIG, base)
    elif stored != base:
        changed = sorted(k for k in set(stored) | set(base) if stored.get(k) != base.get(k))
        raise SpecError(f"{spec.source}: base: study {spec.name!r} was run with another base "
                        f"(differs at {', '.join(changed)}; a changed base, or a TrainConfig default changed "
                        "since); give the sweep a new name")


def _check_distributions(spec: SweepSpec, study: optuna.Study) -> None:
    """Optuna refuses, trial by trial, a param whose choices or log scale differ from earlier trials."""
    if spec.is_grid:
        wanted = {name: ("choices", values) for name, values in _axis_choices(spec).items()}
    else:
        wanted = {p.name: ("choices", p.values) if p.values else ("log", p.distribution == "log_uniform_values")
                  for p in spec.parameters}
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name not in wanted:
                continue
            kind, new = wanted.pop(name)
            if isinstance(old, optuna.distributions.CategoricalDistribution):
                was = ("choices", tuple(old.choices))
            else:
                was = ("log", bool(getattr(old, "log", False)))
            if was != (kind, new):
                raise SpecError(f"{spec.source}: {name}: study {spec.name!r} was run with {was[0]} {show(was[1])}, "
                                f"which Optuna cannot change to {kind} {show(new)}; give the sweep a new name")
        if not wanted:
            return


