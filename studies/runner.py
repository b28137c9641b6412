"""Run a planned study: dependency order, resumable, on any executor.

The study directory is the state. A job is finished when ``jobs/<id>/result.json`` exists (written
last and atomically by :func:`studies.jobs.execute_job`), so re-running a study skips finished jobs
and runs again those that failed or were interrupted (a training job resumes from its checkpoint).
A job whose dependency failed is *blocked* and left pending for the next run. A file lock keeps two
runners out of one directory.

Two refusals come before the lock, each saying what is really wrong: :func:`run_study` called by a worker
process that is still starting (a script without a ``__main__`` guard, which spawn imports again in every
worker: :class:`UnguardedScriptError`, not the lock's "another run is using …"), and a study directory whose
jobs trained on a ``folder:``/``npz:`` dataset whose files have changed since (``DatasetChangedError``).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from transfer.atomic import write_json, write_text

from .executors import Executor, create_executor
from .jobs import Job, JobFn, execute_job, job_dir, read_record, read_result, read_status
from .matrix import list_metrics, write_matrices
from .paired import PerImageStore
from .planner import Plan, plan_study
from .results import collect_results, write_results
from .reuse import reuse_finished
from .spec import StudySpec, load_spec
from .training_job import changed_dataset_error, run_training_job

__all__ = [
    "JOB_STATES",
    "StudyBusyError",
    "StudyRun",
    "UnguardedScriptError",
    "finalize_study",
    "job_states",
    "load_plan",
    "prepare_study",
    "run_plan",
    "run_study",
]

JOB_STATES = ("done", "running", "failed", "interrupted", "pending")


class StudyBusyError(ValueError):
    """Another runner holds the study directory's lock."""


class UnguardedScriptError(RuntimeError):
    """:func:`run_study` was called while this process was starting as a worker of a process pool: the user's
    script runs the study at import time, and spawn imports the script again in every worker."""


@dataclass
class StudyRun:
    """What one ``run`` did: jobs already finished before it, finished now, failed, blocked."""

    study_dir: Path
    reused: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    imported: dict[str, str] = field(default_factory=dict)  # reused from another study (--reuse): id → its dir
    results: pd.DataFrame | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_dir": str(self.study_dir),
            "reused": self.reused,
            "finished": self.finished,
            "failed": self.failed,
            "blocked": self.blocked,
            "imported": self.imported,
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
        }


def load_plan(study_dir: str | os.PathLike[str]) -> list[Job]:
    """The jobs of a study directory, from its ``plan.json``."""
    path = Path(study_dir) / "plan.json"
    data = read_record(path)
    if data is None or not isinstance(data.get("jobs"), list):
        raise FileNotFoundError(
            f"{path} is missing or unreadable; is {study_dir} a study directory "
            "(made by `sparta study run CONFIG --out DIR`)?"
        )
    return [_job_record(record, path, i) for i, record in enumerate(data["jobs"])]


_JOB_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str, "kind": str, "seed": int, "arch": str, "dataset": str, "activation": str, "row": str,
    "column": str, "train": dict, "eval": dict, "variant": (str, type(None)), "policy": (str, type(None)),
    "source_job": (str, type(None)), "zoo_name": (str, type(None)), "deps": list, "extra": dict, "also": list,
    "plugins": list,
}  # fmt: skip


def _job_record(record: Any, path: Path, index: int) -> Job:
    """One job of ``plan.json``, checked field by field: an edited or foreign file is one clear error."""
    fix = "the file was edited or is not from this toolkit; `sparta study run CONFIG --out DIR` writes it again"
    if not isinstance(record, dict):
        raise ValueError(f"{path}: jobs[{index}] is not a job object (got {type(record).__name__}); {fix}")
    fields = dataclasses.fields(Job)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in record]
    unknown = sorted(set(record) - {f.name for f in fields})
    wrong = [
        k
        for k, t in _JOB_FIELD_TYPES.items()
        if k in record and (not isinstance(record[k], t) or (t is int and isinstance(record[k], bool)))
    ]
    if missing or unknown or wrong:
        detail = "; ".join(
            f"{what} {keys}"
            for what, keys in (("missing", missing), ("unknown", unknown), ("wrong type", wrong))
            if keys
        )
        raise ValueError(f"{path}: jobs[{index}] is malformed ({detail}); {fix}")
    if not all(isinstance(d, str) for d in [*record.get("deps", []), *record.get("plugins", [])]):
        raise ValueError(f"{path}: jobs[{index}].deps and .plugins must list strings; {fix}")
    also = record.get("also", [])
    if not all(isinstance(a, dict) and {"kind", "row", "column"} <= set(a) for a in also):
        raise ValueError(f"{path}: jobs[{index}].also must list {{kind, row, column}} records; {fix}")
    return Job.from_dict(record)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_states(study_dir: str | os.PathLike[str], jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """State of every job: ``done``, ``running``, ``failed``, ``interrupted`` (killed mid-run) or ``pending``.

    A job marked running by a process of this host that no longer exists was interrupted; one
    running on another host (a Ray worker) is taken at its word.
    """
    states = {}
    for job in jobs:
        result = read_result(study_dir, job.id)
        status = read_status(study_dir, job.id) or {}
        info: dict[str, Any] = {"attempts": status.get("attempts", 0)}
        if result is not None:
            info.update(state="done", seconds=result.get("seconds"), metrics=result.get("metrics"))
        elif status.get("state") == "failed":
            info.update(state="failed", error=status.get("error"))
        elif status.get("state") == "running":
            local = status.get("host") == socket.gethostname()
            alive = not local or _pid_alive(int(status.get("pid", -1)))
            info.update(state="running" if alive else "interrupted", since=status.get("started"))
        else:
            info.update(state="pending")
        states[job.id] = info
    return states


def prepare_study(spec: StudySpec, study_dir: str | os.PathLike[str], plan: Plan) -> Path:
    """Create the directory, write ``study.toml`` (the spec as given) and ``plan.json``."""
    root = Path(study_dir)
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    text = spec.source_text or f"# study {spec.name!r} was given as a Python object; plan.json holds its jobs\n"
    write_text(root / "study.toml", text)
    write_json(root / "plan.json", plan.to_dict())
    return root


@dataclass
class _Scheduler:
    """The moving parts of one :func:`run_plan`: which jobs are done, pending, running or bad.

    ``bad`` jobs failed or were blocked, so every job that needs one is blocked in turn; ``broken``
    says why the executor can start no more jobs (then the pending ones are blocked, not failed).
    """

    root: Path
    executor: Executor
    job_fn: JobFn
    run: StudyRun
    bar: tqdm
    done: set[str]
    pending: list[Job]
    bad: set[str] = field(default_factory=set)
    running: dict[cf.Future, str] = field(default_factory=dict)
    broken: str | None = None

    def block_dependents_of_failures(self) -> None:
        for job in [j for j in self.pending if any(d in self.bad for d in j.deps)]:
            self.pending.remove(job)
            self.bad.add(job.id)
            self.run.blocked.append(job.id)
            self.bar.write(f"blocked {job.id}: a job it needs failed")

    def _has_free_slot(self) -> bool:
        slots = self.executor.slots
        return self.broken is None and (slots is None or len(self.running) < slots)

    def submit_ready(self) -> None:
        """Hand every job whose dependencies are done to the executor, as far as it has slots."""
        for job in [j for j in self.pending if all(d in self.done for d in j.deps)]:
            if not self._has_free_slot():
                break
            self.pending.remove(job)
            self.bar.set_postfix_str(job.id, refresh=True)
            try:
                future = self.executor.submit(execute_job, job.to_dict(), str(self.root), self.job_fn)
            except Exception as exc:  # the executor itself is gone (a broken pool, a lost cluster)
                self.broken = f"{self.executor.describe()} cannot start jobs: {self.executor.explain(exc)}"
                self.run.failed[job.id] = self.broken
                self.bad.add(job.id)
                self.bar.write(f"FAILED {job.id}: {self.broken}; no further jobs are started")
            else:
                self.running[future] = job.id

    def give_up_on_pending(self, planned: set[str]) -> None:
        """Nothing runs and nothing more can start: block what is left, or say which dependency is missing."""
        if self.broken is not None:
            self.run.blocked.extend(j.id for j in self.pending)
        elif self.pending:  # only possible with a dependency outside the plan
            missing = sorted({d for j in self.pending for d in j.deps if d not in planned})
            raise RuntimeError(f"jobs depend on jobs that are not in the plan: {missing}")

    def collect_finished(self) -> None:
        """Wait for at least one running job and record how each finished job ended."""
        finished, _ = cf.wait(self.running, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            jid = self.running.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # the worker itself died (killed, out of memory, lost node)
                outcome = {"state": "failed", "error": f"worker lost: {self.executor.explain(exc)}"}
            if outcome["state"] == "done":
                self.done.add(jid)
                self.run.finished.append(jid)
            else:
                self.bad.add(jid)
                self.run.failed[jid] = outcome.get("error") or "unknown error"
                log = self.root / "jobs" / jid / "job.log"
                self.bar.write(f"FAILED {jid}: {self.run.failed[jid]} (log: {log})")
            self.bar.update(1)


def _progress_bar(plan: Plan, already_done: int, progress: bool) -> tqdm:
    return tqdm(
        total=len(plan.jobs),
        initial=already_done,
        desc=f"study {plan.name}",
        unit="job",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def finalize_study(study_dir: str | os.PathLike[str], jobs: Sequence[Job]) -> pd.DataFrame:
    """Rebuild the results table and every metric's matrix (with the per-image paired tests) from the
    finished jobs."""
    root = Path(study_dir)
    results = collect_results(root, jobs)
    write_results(results, root)
    if len(results):
        write_matrices(results, root / "matrices", list_metrics(results), per_image=PerImageStore(root))
    return results


def run_plan(
    plan: Plan,
    study_dir: str | os.PathLike[str],
    executor: Executor,
    *,
    job_fn: JobFn = run_training_job,
    progress: bool = True,
) -> StudyRun:
    """Run every unfinished job of ``plan`` in dependency order; finished jobs are skipped."""
    root = Path(study_dir)
    started = time.time()
    done = {j.id for j in plan.jobs if read_result(root, j.id) is not None}
    run = StudyRun(study_dir=root, reused=[j.id for j in plan.jobs if j.id in done])
    with _progress_bar(plan, len(done), progress) as bar:
        pending = [j for j in plan.jobs if j.id not in done]
        jobs = _Scheduler(root, executor, job_fn, run, bar, done, pending)
        while jobs.pending or jobs.running:
            jobs.block_dependents_of_failures()
            jobs.submit_ready()
            if not jobs.running:
                jobs.give_up_on_pending({j.id for j in plan.jobs})
                break
            jobs.collect_finished()
    run.results = finalize_study(root, plan.jobs)
    run.seconds = time.time() - started
    return run


def run_study(
    spec: StudySpec | str | os.PathLike[str],
    study_dir: str | os.PathLike[str],
    *,
    executor: str | Executor = "local",
    executor_config: dict[str, Any] | None = None,
    job_fn: JobFn = run_training_job,
    progress: bool = True,
    check_mapping: bool = True,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> StudyRun:
    """Validate and plan ``spec``, then run it into ``study_dir`` (resuming what is there). Jobs finished in
    the ``reuse`` study directories (same job id: the same training) are brought in instead of run again
    (``studies.reuse``)."""
    _refuse_in_a_starting_worker()
    root = Path(study_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is an existing file, not a study directory; give --out a directory path")
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    plan = plan_study(spec, check_mapping=check_mapping)
    root.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(root / ".study.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise StudyBusyError(
            f"another `sparta study run` is using {root} (lock {root / '.study.lock'}); wait for it or pick "
            "another --out"
        ) from None
    try:
        _refuse_changed_data(root, plan)
        imported = reuse_finished(plan.jobs, root, reuse) if reuse else {}  # checks the dirs before any write
        prepare_study(spec, root, plan)
        if isinstance(executor, str):
            executor = create_executor(executor, **(executor_config or {}))
        with executor:
            run = run_plan(plan, root, executor, job_fn=job_fn, progress=progress)
        run.imported = {jid: str(other) for jid, other in imported.items()}
        return run
    finally:
        lock.release()


def _refuse_in_a_starting_worker() -> None:
    """An :class:`UnguardedScriptError` when this process is a spawned worker still importing the main script
    (multiprocessing marks it ``_inheriting`` until it is ready): running the study here would only meet the
    parent's lock, or start workers of its own."""
    if getattr(mp.current_process(), "_inheriting", False):
        raise UnguardedScriptError(
            "run_study was called while a worker process of the process executor was starting: the script that "
            'calls run_study(..., executor="process") does so at import time, and every worker imports the script '
            'again (multiprocessing\'s spawn). Call it under `if __name__ == "__main__":` (docs/studies.md, '
            "Executors)"
        )


def _refuse_changed_data(root: Path, plan: Plan) -> None:
    """A ``DatasetChangedError`` when a job of ``root``'s last plan trained (a result, or a checkpoint) on a
    ``folder:``/``npz:`` dataset whose files have changed since: re-planned, every job on it would get a new
    id and train afresh beside the old ones, which would leave the results without a word."""
    old = read_record(root / "plan.json")
    now = {job.dataset: job.train.get("dataset_fingerprint") or "" for job in plan.jobs}
    for record in old.get("jobs", []) if old is not None and isinstance(old.get("jobs"), list) else []:
        train = record.get("train") if isinstance(record, dict) else None
        dataset, jid = (record.get("dataset"), record.get("id")) if isinstance(record, dict) else (None, None)
        then = train.get("dataset_fingerprint") if isinstance(train, dict) else None
        if not (then and isinstance(jid, str) and now.get(dataset, then) != then):
            continue
        if any((job_dir(root, jid) / name).is_file() for name in ("result.json", "checkpoint.pt")):
            raise changed_dataset_error(str(dataset), str(then), now[dataset], f"the study in {root} trained on it")
