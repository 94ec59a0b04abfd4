"""The launcher: a spec -> its data checked, its study prepared, its MLflow parent run, worker processes, a report.

Everything shared is made before the first worker starts (data decoded once, the study's queue, the
MLflow experiment and parent run), so workers only ever read it. The launcher then watches the study
every POLL_S seconds for its progress bar and for failed trials to report. It never initialises CUDA:
`trials_per_gpu: auto` is measured in a process of its own (`experiments.gpu_memory`).

Interrupted (Ctrl-C, SIGTERM), it has its workers fail their running trials and close their MLflow
runs, kills any that do not stop, and says how to resume; the next launch of the same spec runs those
trials again. Killed outright (kill -9), its workers notice within a second and do the same before
they exit. A worker process that dies (out of memory) stops the launch with one line; the next
launch fails and reruns what it left RUNNING.

With adaptive seeds (`experiments.replicates`) a launch runs in rounds: once the workers have emptied the
queue, the launcher prepares the study again, which queues the next round, and starts workers for it; a
trial that failed ends the rounds for this launch (the next launch runs it again, then the rounds go on),
unless it was a duplicate of a cell another trial holds.
The study's `adaptive_seeds` user attr is brought up to date at the end of every launch.

Several launchers may share a study on a database server (`--storage postgresql://...`): each stops
only its own trials (their `launch` user attr), and the trials of one that was killed with its workers
are failed and queued again once their heartbeat is stale (`experiments.study`). A journal or SQLite
file is held by one launcher, and a second one stops with a line naming it (`experiments.launch_files`).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import signal
import time
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from joblib.externals.loky import ProcessPoolExecutor
from joblib.externals.loky.process_executor import BrokenProcessPool
from optuna.trial import TrialState
from tqdm.auto import tqdm

from cvae.config import TrainConfig
from cvae.data import load_video_data
from cvae.metrics import CopyBaselines
from cvae.synthetic import ensure_dataset
from experiments import replicates
from experiments.errors import SpecError, SweepError
from experiments.gpu_memory import auto_trials_per_gpu
from experiments.launch_files import check_journal, check_tracking_db, check_tracking_kept, hold_storage
from experiments.objective import DATA_FIELDS
from experiments.plan import group_key, group_label, train_config, trial_plan
from experiments.schema import (ERROR_ATTR, MLFLOW_RUN_ID, SEED, SWEEP_DIRECTION, SWEEP_METRIC, SWEEP_N_TRIALS,
                                SWEEP_NAME, SWEEP_PRUNER, SWEEP_SAMPLER, SWEEP_SPEC, SWEEP_STORAGE, objective_metric)
from experiments.spec import DEFAULT_TRACKING_URI, URL, Execution, SweepSpec
from experiments.study import (Launch, Progress, adaptive_plan, fail_running, find_study, launch_id, open_study,
                               progress, record_savings, start_launch, summary_table, sweep_id, unheld_failures)
from experiments.tracking import ParentRun, check_reachable, close_orphans, finish_parent, open_parent_run
from experiments.workers import WorkerJob, cpu_count, resolve_gpus, run_worker, worker_context, worker_gpus

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
POLL_S = 2.0
STOP_GRACE_S = 3.0  # after Ctrl-C, how long workers have to stop on their own before they are told to
STOP_GRACE_ENV = "SWEEP_STOP_GRACE_S"  # ... where the environment says otherwise
STOP_TIMEOUT_S = 15.0  # ... and then before they are killed
RUNS_DIR = Path("runs")
log = logging.getLogger(__name__)


def parse_gpus(text: str) -> tuple[int, ...] | str:
    """`--gpus`: auto, none (CPU workers only) or indices like 0,1."""
    text = text.strip()
    if text in ("auto", "none", ""):
        return "auto" if text == "auto" else ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        gpus = (-1,)
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise SpecError(f"--gpus: expected auto, none or distinct GPU indices like 0,1; got {text!r}")
    return gpus


def configure(spec: SweepSpec, gpus: tuple[int, ...] | str | None = None, workers: int | None = None,
              storage: str | None = None, tracking_uri: str | None = None) -> SweepSpec:
    """The spec with the command line's overrides, its storage and tracking URI made absolute.

    `workers` is the number of worker processes: per GPU when there are GPUs, else in all.
    """
    execution = spec.execution
    if gpus is not None:
        execution = dataclasses.replace(execution, gpus=gpus)
    if workers is not None:
        if workers < 1:
            raise SpecError(f"--workers: must be >= 1, got {workers}")
        execution = dataclasses.replace(execution, cpu_workers=workers, trials_per_gpu=workers)
    return dataclasses.replace(spec, execution=execution, storage=absolute_location(storage or spec.storage),
                               tracking_uri=absolute_location(tracking_uri or spec.tracking_uri))


def absolute_location(location: str) -> str:
    """A file path or sqlite:/// URL relative to the working directory, made absolute; other URLs as given.

    Workers and `mlflow ui` may start elsewhere; the launch's files must not move with them.
    """
    if location.startswith("sqlite:///") and ":memory:" not in location:
        return "sqlite:///" + str(Path(location[len("sqlite:///"):]).resolve())
    if URL.match(location):
        return location
    return str(Path(location).resolve())


# ---------------------------------------------------------------- dry run


def plan_table(spec: SweepSpec) -> pd.DataFrame:
    """The trials a sweep runs: configuration label, group key (grid only) and seed, in plan order."""
    rows = [{"configuration": group_label(cell) if spec.is_grid else ", ".join(f"{k} {v}" for k, v in cell.items()),
             "group": group_key(cell) if spec.is_grid else "sampled", "seed": seed}
            for cell, seed in trial_plan(spec)]
    return pd.DataFrame(rows, columns=["configuration", "group", "seed"])


def describe_plan(spec: SweepSpec) -> str:
    """What `--dry-run` prints: the table of trials, their count and where they would run."""
    table = plan_table(spec)
    table.index.name = "trial"
    if spec.adaptive:
        most = len(spec.cells) * spec.adaptive.max
        count = (f"{len(table)} trials now ({len(spec.cells)} configurations x {spec.adaptive.initial} seeds), "
                 f"up to {most} (x {spec.adaptive.max} seeds) while configurations are not separated from the best")
    elif spec.is_grid:
        full = len(spec.cells) * len(spec.seeds)
        count = f"{len(table)} trials: {len(spec.cells)} configurations x {len(spec.seeds)} seeds"
        count += f" (the first {len(table)} of {full})" if len(table) < full else ""
    else:
        count = f"{len(table)} trials sampled by {spec.sampler}, pruner {spec.pruner}, seeds cycled"
    return "\n".join([table.to_string(), "", f"{spec.name}: {count}", f"workers: {describe_slots(spec)}",
                      f"study: {spec.storage}", f"MLflow: {spec.tracking_uri}"])


def describe_slots(spec: SweepSpec) -> str:
    gpus = resolve_gpus(spec.execution)
    if gpus and spec.execution.trials_per_gpu == "auto":
        return f"auto (measured at launch) per GPU on GPUs {gpus}"
    if gpus:
        return f"{len(gpus) * spec.execution.trials_per_gpu} on GPUs {gpus} ({spec.execution.trials_per_gpu} per GPU)"
    return f"{spec.execution.cpu_workers} on the CPU (no GPU)"


# ---------------------------------------------------------------- launching


@dataclass(frozen=True)
class FailedTrial:
    number: int
    configuration: str
    seed: int
    error: str


@dataclass(frozen=True)
class Outcome:
    """What one launch did: the sweep's progress after it, its table, the trials that failed in it."""

    spec: SweepSpec
    progress: Progress
    table: pd.DataFrame
    failed: tuple[FailedTrial, ...]
    interrupted: bool
    parent: ParentRun | None
    seconds: float
    savings: replicates.Savings | None  # with adaptive seeds: what the rounds ran and saved so far
    baselines: CopyBaselines | None  # of the validation video all trials are scored on; None where they differ

    @property
    def complete(self) -> bool:
        return self.progress.done >= self.progress.total

    @property
    def exit_code(self) -> int:
        """0 complete, 1 trials still to run (failed ones), 130 interrupted: what the script exits with."""
        return 130 if self.interrupted else 0 if self.complete else 1


def launch(spec: SweepSpec) -> Outcome:
    """Run the sweep (or what is left of it) with one worker process per slot; see the module docstring.

    Nothing is written before the tracking database, the data, the storage's lock and the study's
    files have been checked.
    """
    started = time.perf_counter()
    check_reachable(spec.tracking_uri)
    check_tracking_db(spec.tracking_uri)
    baselines = check_data(spec)
    with hold_storage(spec.storage, spec.source):
        return _launch_held(spec, started, baselines)


def _launch_held(spec: SweepSpec, started: float, baselines: CopyBaselines | None) -> Outcome:
    check_journal(spec.storage)
    study = find_study(spec)
    if study is None:
        study = open_study(spec)
    else:
        logged = sum(MLFLOW_RUN_ID in trial.user_attrs for trial in study.get_trials(deepcopy=False))
        check_tracking_kept(spec.tracking_uri, logged, spec.storage)
    share = start_launch(spec, study)
    before = progress(spec, study)
    log.info("study %s in %s: %d of %d trials done, %d to run", spec.name, spec.storage, before.done,
             before.total, share.budget)
    if spec.adaptive:
        log.info("%s", replicates.describe(spec, adaptive_plan(spec, study)))
    if share.budget == 0:
        return Outcome(spec, before, summary_table(spec, study), (), False, None, time.perf_counter() - started,
                       _savings(spec, study), baselines)
    gpus = resolve_gpus(spec.execution)
    execution = sized_execution(spec, gpus)  # before the parent run, so a failed measurement leaves none open
    parent = open_parent_run(spec.tracking_uri, spec.name, sweep_id(study), tags=_parent_tags(spec),
                             spec_text=_spec_text(spec))
    if close_orphans(parent, "its worker stopped before the trial ended", running=lambda: [
            trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]):
        log.info("MLflow: closed the runs an earlier launch left RUNNING")
    watcher = _Watcher(spec, study, before)
    interrupted = False
    try:
        with tqdm(total=before.total, initial=before.done, desc=spec.name, smoothing=0,
                  bar_format="{desc}: {n}/{total} trials |{bar}| {elapsed}<{remaining}{postfix}") as bar:
            while share is not None:
                _run_workers(_worker_jobs(spec, execution, gpus, parent, share), watcher, bar)
                share = _next_round(spec, study, watcher, bar)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as err:
        _clean_up(study, parent, "its launch stopped: a worker failed")
        finish_parent(parent, complete=False, interrupted=False, summary_csv=None)
        if isinstance(err, BrokenProcessPool):  # a worker was killed (out of memory?) or crashed
            codes = re.search(r"exit codes of the workers are (\{.*?\})", str(err))
            raise SweepError(f"a worker process died{f' (exit codes {codes.group(1)})' if codes else ''}; "
                             "the trials in flight are marked failed; run the same command again to resume") from err
        raise
    if interrupted:
        _clean_up(study, parent, "interrupted: its launch was stopped")
    after = progress(spec, study)
    table = summary_table(spec, study)
    finish_parent(parent, complete=after.done >= after.total, interrupted=interrupted,
                  summary_csv=table.to_csv(index=False))
    return Outcome(spec, after, table, tuple(watcher.failed), interrupted, parent, time.perf_counter() - started,
                   _savings(spec, study), baselines)


def _worker_jobs(spec: SweepSpec, execution: Execution, gpus: list[int], parent: ParentRun,
                 share: Launch) -> list[WorkerJob]:
    """One job per worker slot, and no more jobs than the share has trials."""
    slots = worker_gpus(execution, gpus)[:share.budget]
    runs_dir = (RUNS_DIR / spec.name).resolve()
    threads = max(1, cpu_count() // len(slots))
    log.info("workers: %d (%s), %d torch thread%s each; trials in %s", len(slots),
             ", ".join("cpu" if gpu is None else f"GPU {gpu}" for gpu in slots), threads,
             "" if threads == 1 else "s", runs_dir / "trials")
    return [WorkerJob(spec, str(runs_dir), parent, share, slot, gpu, threads, os.getpid())
            for slot, gpu in enumerate(slots)]


def _next_round(spec: SweepSpec, study, watcher: "_Watcher", bar: tqdm) -> Launch | None:
    """This launch's share of the next round of adaptive seeds; None without adaptive seeds, after a trial
    failed and left its cell to the next launch, or when no round is left.

    On a shared study other launchers may still be running trials of the current round: it waits for them.
    It counts the running trials before it looks for a round: counted after, a trial that ended in between
    ended the launch with the round that trial completed still to be queued (by another launcher, whose
    trials this launch then called "still to run").
    """
    while spec.adaptive is not None and not unheld_failures(study, [trial.number for trial in watcher.failed]):
        running = watcher.update(bar).running
        share = start_launch(spec, study)
        if share.budget:
            log.info("%s", replicates.describe(spec, adaptive_plan(spec, study)))
            return share
        if not running:
            break
        time.sleep(POLL_S)
    return None


def _savings(spec: SweepSpec, study) -> replicates.Savings | None:
    return record_savings(spec, study) if spec.adaptive else None


def sized_execution(spec: SweepSpec, gpus: list[int]) -> Execution:
    """The spec's execution with trials_per_gpu "auto" measured on `gpus` (on the CPU, cpu_workers counts)."""
    if spec.execution.trials_per_gpu != "auto" or not gpus:
        return spec.execution
    per_gpu, sizing = auto_trials_per_gpu(spec, gpus)
    log.info("%s", sizing)
    return dataclasses.replace(spec.execution, trials_per_gpu=per_gpu)


def check_data(spec: SweepSpec) -> CopyBaselines | None:
    """Decode every data set the trials use once, before any worker, so a data problem stops the launch; returns
    the copy baselines of the validation video every trial is scored on (None where trials differ in their data).

    The default data root is generated when missing, as `python -m cvae train` does. Sampled sweeps
    are checked with their base configuration.
    """
    baselines = {}  # data fields -> the copy baselines of that data's validation video
    for cell in spec.cells or ({},):
        cfg = train_config(spec, cell, spec.seeds[0])
        key = tuple(getattr(cfg, name) for name in DATA_FIELDS)
        if key in baselines:
            continue
        if cfg.DR == TrainConfig.DR:
            ensure_dataset(cfg.DR)
        baselines[key] = load_video_data(cfg).baselines
    sampled_data = not spec.is_grid and any(parameter.name in DATA_FIELDS for parameter in spec.parameters)
    return next(iter(baselines.values())) if len(baselines) == 1 and not sampled_data else None


def _run_workers(jobs: list[WorkerJob], watcher: "_Watcher", bar: tqdm) -> None:
    """Start a loky process per job (a fork of the forkserver) and watch the study until all have returned.

    A new pool each time: a process keeps the GPU its first job bound. On Ctrl-C the workers stop their
    trials themselves (`_stop_workers`); on any other error they are killed.
    """
    executor = ProcessPoolExecutor(max_workers=len(jobs), context=worker_context())
    futures = [executor.submit(run_worker, job) for job in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            watcher.update(bar)
            for future in done:
                future.result()  # a worker's own error (not a trial's) ends the launch
    except KeyboardInterrupt:
        _stop_workers(executor, futures)
        raise
    except BaseException:
        executor.shutdown(wait=True, kill_workers=True)
        raise
    executor.shutdown(wait=True)


def _stop_workers(executor: ProcessPoolExecutor, futures: list) -> None:
    """Let every worker fail its trial and close its MLflow run before it goes, then kill what is left.

    A terminal's Ctrl-C reaches the workers too (one process group); a SIGINT or SIGTERM sent to the
    launcher alone is passed on to them after STOP_GRACE_S. Killing a worker outright could leave the
    journal's lock file held, which the next launch would wait on.
    """
    stopped = False
    try:
        if wait(futures, timeout=float(os.environ.get(STOP_GRACE_ENV, STOP_GRACE_S))).not_done:
            for process in multiprocessing.active_children():
                os.kill(process.pid, signal.SIGINT)  # an idle worker ignores it (run_worker)
        stopped = not wait(futures, timeout=STOP_TIMEOUT_S).not_done
    finally:
        executor.shutdown(wait=True, kill_workers=not stopped)


class _Watcher:
    """Reads the study for the progress bar and reports each trial that fails, once."""

    def __init__(self, spec: SweepSpec, study, start: Progress):
        self.spec, self.study = spec, study
        self.known = {trial.number for trial in start.failed}
        self.failed: list[FailedTrial] = []

    def update(self, bar: tqdm) -> Progress:
        """The study's progress, shown on the bar (whose total grows with the rounds of adaptive seeds)."""
        now = progress(self.spec, self.study)
        for trial in now.failed:
            if trial.number in self.known:
                continue
            self.known.add(trial.number)
            failed = FailedTrial(trial.number, group_label(trial.params), trial.user_attrs[SEED],
                                 trial.user_attrs.get(ERROR_ATTR, "its worker stopped"))
            self.failed.append(failed)
            log.warning("trial %d (%s, seed %s) FAILED: %s", failed.number, failed.configuration, failed.seed,
                        failed.error)
        bar.total = now.total
        bar.update(now.done - bar.n)
        best = "-" if now.best is None else f"{now.best:.3f}"
        bar.set_postfix_str(f"running {now.running}, failed {len(self.failed)}, best {self.spec.metric} {best}",
                            refresh=True)
        return now


def _clean_up(study, parent: ParentRun, why: str) -> None:
    """Fail the trials this launch's killed workers left RUNNING, and close their MLflow runs.

    Another launcher's trials in the same study are left to it.
    """
    failed = fail_running(study, launch_id(os.getpid()))
    close_orphans(parent, why, launch=launch_id(os.getpid()))
    if failed:
        log.info("failed %d trials that were running: %s", len(failed), ", ".join(str(t.number) for t in failed))


def _parent_tags(spec: SweepSpec) -> dict[str, str]:
    return {SWEEP_NAME: spec.name, SWEEP_SPEC: spec.source, SWEEP_STORAGE: spec.storage,
            SWEEP_SAMPLER: spec.sampler, SWEEP_PRUNER: spec.pruner, SWEEP_N_TRIALS: str(spec.n_trials),
            SWEEP_METRIC: spec.metric, SWEEP_DIRECTION: spec.direction}


def _spec_text(spec: SweepSpec) -> str:
    try:
        return Path(spec.source).read_text(encoding="utf-8")
    except OSError:
        return ""


# ---------------------------------------------------------------- the closing report


def describe_outcome(outcome: Outcome, command: str) -> str:
    """What the script prints at the end: the table of configurations, failures, how to resume, where MLflow is."""
    spec, done = outcome.spec, outcome.progress
    minutes, seconds = divmod(round(outcome.seconds), 60)
    lines = [f"{spec.name}: {done.done} of {done.total} trials done; this launch took {minutes}m{seconds:02d}s"]
    floor = objective_metric(spec.metric).baseline
    if len(outcome.table):
        table = outcome.table.copy()
        if floor and outcome.baselines is not None:  # each configuration against the copy baseline of its metric
            table[f"vs copy-{floor}"] = table["mean"] - getattr(outcome.baselines, f"{floor}_mean")
        lines += ["", f"{spec.metric} by configuration, mean and std over seeds, best first:",
                  table.to_string(index=False, float_format=lambda value: f"{value:.3f}")]
    if outcome.baselines is not None:
        lines.append(outcome.baselines.describe())
    if len(outcome.table) or outcome.baselines is not None:
        lines.append("")
    if outcome.failed:
        lines.append(f"{len(outcome.failed)} trials failed in this launch:")
        lines += [f"  trial {t.number} ({t.configuration}, seed {t.seed}): {t.error}" for t in outcome.failed]
    if outcome.interrupted:
        lines.append(f"interrupted. Completed trials are kept; resume with: {command}")
    elif not outcome.complete:
        lines.append(f"{done.total - done.done} trials still to run; run them with: {command}")
    if outcome.savings is not None:
        saved = outcome.savings
        lines.append(f"adaptive seeds: {saved.trials} trials of the {saved.trials_at_max} that {saved.max_seeds} seeds "
                     f"of every configuration would take; {saved.saved} saved" + ("" if saved.finished else " so far"))
    if outcome.parent is not None:
        ui = "mlflow ui" if spec.tracking_uri == absolute_location(DEFAULT_TRACKING_URI) else \
            f"mlflow ui --backend-store-uri {spec.tracking_uri}"
        lines.append(f"MLflow: experiment {spec.name!r}, parent run {outcome.parent.run_id}; browse with `{ui}`, "
                     f"then open {UI_ADDRESS}/#/experiments/{outcome.parent.experiment_id}/runs?workflowType=machine_learning "
                     "(MLflow 3.17's UI opens an experiment on its GenAI pages unless the link names the workflow)")
    return "\n".join(lines)

