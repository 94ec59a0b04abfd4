"""Worker processes: GPU slots resolved without CUDA, and the loop that runs trials on one device.

The launcher never initialises CUDA: "auto" GPUs come from nvidia-smi or CUDA_VISIBLE_DEVICES, and
each worker process sets CUDA_VISIBLE_DEVICES to its one GPU ("" for a CPU worker) before anything
in it touches CUDA. Workers are loky processes forked from the launcher's forkserver (`worker_context`),
a clean process that imported this module, and so torch, Optuna and MLflow, once: a new worker starts
in a fraction of a second instead of importing them again, and nothing the launcher did, CUDA
included, is in it. A worker looks for work before it binds its device, so a process loky hands a
second job after the queue ran dry never needs another GPU.
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import re
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from cvae.metrics import SSIM_MODULE
from experiments.errors import SpecError, SweepError
from experiments.objective import Objective, describe_error
from experiments.schema import ERROR_ATTR
from experiments.spec import Execution, SweepSpec
from experiments.study import Launch, launch_id, open_study, work_left
from experiments.tracking import ParentRun

WATCH_S = 1.0  # how often a worker checks that its launcher is still alive, where there are no pidfds
ORPHAN_GRACE_S = 10.0  # how long a worker whose launcher died has to close its trial
# what the forkserver imports for every worker: this module (torch, Optuna, MLflow), the SSIM that
# cvae.metrics imports at a process's first validation (2 s) and the store behind MLflow's default
# sqlite:// tracking URI, which MlflowClient imports at the objective's start (0.9 s)
PRELOAD = [__name__, SSIM_MODULE, "mlflow.store.tracking.sqlalchemy_store"]
log = logging.getLogger(__name__)
_watching: set[int] = set()
_job_ended = threading.Event()
_stop_asked = False  # a Ctrl-C came in this job
_in_objective = False  # the job is inside the objective, where a Ctrl-C is raised at once


@dataclass(frozen=True)
class WorkerJob:
    """What one worker process needs; the launcher made every path in it absolute."""

    spec: SweepSpec
    runs_dir: str
    parent: ParentRun
    launch: Launch
    slot: int
    gpu: int | None
    threads: int  # torch intra-op threads: the CPU cores shared out between the slots
    launcher_pid: int


def run_worker(job: WorkerJob) -> int:
    """Run trials of the shared study on the job's device until the launch's work is done; returns how many.

    Ctrl-C fails the running trial and ends the job (`_on_interrupt`); between jobs the process ignores
    it, so a Ctrl-C never kills an idle loky worker with a traceback.
    """
    global _stop_asked
    _job_ended.clear()
    _stop_asked = False
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        return _run_trials(job)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _job_ended.set()


def _on_interrupt(signum: int, frame) -> None:
    """SIGINT in a job: KeyboardInterrupt inside the objective, which fails its trial; elsewhere a stop
    once Optuna has finished writing the study.

    A KeyboardInterrupt in the middle of Optuna's ask (the next trial just made RUNNING) or tell (a
    trial's end being written) would leave a RUNNING trial that no worker holds any more.
    """
    global _stop_asked
    _stop_asked = True
    if _in_objective:
        raise KeyboardInterrupt


def _interruptible(objective: Objective):
    """The objective with Ctrl-C raised inside it: at once, or at its start when it came while Optuna wrote."""
    def run(trial: optuna.Trial) -> float:
        global _in_objective
        _in_objective = True
        try:
            if _stop_asked:
                interrupted = KeyboardInterrupt()
                trial.set_user_attr(ERROR_ATTR, describe_error(interrupted))  # as the objective says it
                raise interrupted
            return objective(trial)
        finally:
            _in_objective = False
    return run


def _run_trials(job: WorkerJob) -> int:
    # what is alive now, the preloaded libraries' 650,000 objects, is never garbage: left out of every
    # collection, the one after each trial takes microseconds instead of 0.3 s
    gc.freeze()
    _exit_with_launcher(job.launcher_pid)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the launcher reports every trial's end
    study = open_study(job.spec, worker=job.slot)
    if not work_left(job.spec, study, job.launch):
        return 0
    bind_device(job.gpu, job.threads)
    objective = Objective(job.spec, Path(job.runs_dir), job.parent, job.slot, job.gpu, launch_id(job.launcher_pid))
    ran = 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        gc.collect()  # a failed trial's model and optimizer are only garbage once its traceback is gone
        if job.gpu is not None:
            torch.cuda.empty_cache()  # give an out-of-memory trial's blocks back before the next one
        if _stop_asked or not work_left(job.spec, study, job.launch):
            study.stop()

    # catch=(Exception,): a failed trial is recorded FAIL (its error in user attrs and MLflow) and the
    # worker goes on; KeyboardInterrupt is not caught, so Ctrl-C fails the trial and stops the worker.
    if not _stop_asked:
        study.optimize(_interruptible(objective), catch=(Exception,), callbacks=[after_trial])
    if _stop_asked:
        raise KeyboardInterrupt  # the job ends as an interrupted one, whenever the Ctrl-C came
    return ran


def bind_device(gpu: int | None, threads: int) -> None:
    """Show this process only its GPU (or none) and limit its CPU threads; SweepError if the GPU is not there."""
    visible = "" if gpu is None else str(gpu)
    if torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != visible:
        raise RuntimeError(f"this worker process already initialised CUDA with CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} and cannot switch to GPU {visible!r}")
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # nvidia-smi's numbering, which resolve_gpus used
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    torch.set_num_threads(threads)
    if gpu is not None and torch.cuda.device_count() != 1:
        raise SweepError(f"execution.gpus: the worker for GPU {gpu} sees {torch.cuda.device_count()} CUDA "
                         f"devices instead of 1; is there a GPU {gpu}? (`nvidia-smi -L` lists them)")


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of worker processes: forks of a forkserver that has imported PRELOAD.

    Python starts the forkserver at the launcher's first pool and keeps it for the launcher's
    lifetime, so the rounds of adaptive seeds, and every launch of a process that launches several,
    start their workers without importing anything.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _exit_with_launcher(launcher_pid: int) -> None:
    """Stop this process when the launcher dies (kill -9): an orphan would go on taking trials from the study.

    The running trial is interrupted as by Ctrl-C, so it is failed and its MLflow run closed, and the
    next launch runs its cell again; the process exits once the job has ended, or after ORPHAN_GRACE_S.
    """
    if launcher_pid in _watching:
        return
    _watching.add(launcher_pid)

    def watch() -> None:
        _wait_for_exit(launcher_pid)
        os.kill(os.getpid(), signal.SIGINT)  # ignored between jobs (run_worker)
        _job_ended.wait(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()


def _wait_for_exit(pid: int) -> None:
    """Return once process `pid` has ended, killed or not reaped (a zombie) included.

    The launcher is not this process's parent (the forkserver is), so its end is watched through a
    pidfd where the system has them (Linux), else by asking every WATCH_S whether the pid is still taken.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while _pid_taken(pid):
            time.sleep(WATCH_S)
        return
    try:
        select.select([pidfd], [], [])  # readable once the process has ended
    finally:
        os.close(pidfd)


def _pid_taken(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def cpu_count() -> int:
    """The CPU threads this process may hand out: the cores it may run on (a container's or taskset's share, not
    the machine's), or fewer where OMP_NUM_THREADS says so, as it does for torch's own thread count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


# ---------------------------------------------------------------- GPU slots, without CUDA



def resolve_gpus(execution: Execution) -> list[int]:
    """GPU indices for `execution.gpus`, resolving "auto" without initialising CUDA.

    "auto" is CUDA_VISIBLE_DEVICES when set (CUDA's rules: a negative index ends the list; UUIDs
    are looked up in `nvidia-smi -L`), else every GPU nvidia-smi lists; no driver means no GPUs.
    Indices follow nvidia-smi (PCI bus order); workers should set CUDA_DEVICE_ORDER=PCI_BUS_ID.
    """
    if execution.gpus != "auto":
        return list(execution.gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [index for index, _ in _nvidia_smi_gpus()]
    gpus: list[int] = []
    listed: list[tuple[int, str]] | None = None
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            break
        if re.fullmatch(r"-?\d+", entry):
            if int(entry) < 0:
                break
            gpus.append(int(entry))
            continue
        listed = _nvidia_smi_gpus() if listed is None else listed
        matches = [index for index, uuid in listed if entry and uuid.startswith(entry)]
        if len(matches) != 1:
            raise SpecError(f"execution.gpus: auto cannot map CUDA_VISIBLE_DEVICES entry {entry!r} to a GPU "
                            "index; list the GPUs in the spec (execution.gpus: [0, 1])")
        gpus.append(matches[0])
    return gpus


def worker_gpus(execution: Execution, gpus: list[int]) -> list[int | None]:
    """One entry per worker slot: its GPU, round-robin so a short queue spreads over GPUs; None = CPU.

    With GPUs, trials_per_gpu must be a number: the launcher sizes "auto" first (`launcher.sized_execution`).
    """
    if not gpus:
        return [None] * execution.cpu_workers
    return [gpus[i % len(gpus)] for i in range(len(gpus) * execution.trials_per_gpu)]


def _nvidia_smi_gpus() -> list[tuple[int, str]]:
    """(index, UUID) of each GPU nvidia-smi lists; [] where there is no driver or no GPU."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    found = re.findall(r"^GPU (\d+):.*?\(UUID: ([^)\s]+)\)", done.stdout, flags=re.MULTILINE)
    return [(int(index), uuid) for index, uuid in found]

