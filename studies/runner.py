"""Run a planned study: dependency order, resumable, on any executor.

The study directory is the state. A job is finished when ``jobs/<id>/result.json`` exists (written
last and atomically by :func:`studies.jobs.execute_job`), so re-running a study skips finished jobs
and runs again those that failed or were interrupted (a training job resumes from its checkpoint).
A job whose dependency failed is *blocked* and left pending for the next run. A file lock keeps two
runners out of one directory.
"""

from __future__ import annotations

import concurrent.futures as cf
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

from transfer.atomic import write_text

from .executors import Executor, create_executor
from .jobs import Job, JobFn, atomic_write_json, execute_job, read_result, read_status
from .planner import Plan, plan_study
from .results import finalize_study
from .spec import StudySpec, load_spec

__all__ = [
    "JOB_STATES",
    "StudyBusyError",
    "StudyRun",
    "job_states",
    "load_plan",
    "prepare_study",
    "run_plan",
    "run_study",
]

JOB_STATES = ("done", "running", "failed", "interrupted", "pending")


class StudyBusyError(ValueError):
    """Another runner holds the study directory's lock."""


@dataclass
class StudyRun:
    """What one ``run`` did: jobs already finished before it, finished now, failed, blocked."""

    study_dir: Path
    reused: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
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
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
        }


def load_plan(study_dir: str | os.PathLike[str]) -> list[Job]:
    """The jobs of a study directory, from its ``plan.json``."""
    from .jobs import read_json

    path = Path(study_dir) / "plan.json"
    data = read_json(path)
    if data is None or not isinstance(data.get("jobs"), list):
        raise FileNotFoundError(
            f"{path} is missing or unreadable; is {study_dir} a study directory "
            "(made by `sparta study run CONFIG --out DIR`)?"
        )
    return [Job.from_dict(j) for j in data["jobs"]]


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
    text = (
        spec.source_text or f"# study {spec.name!r} was given as a Python object; plan.json holds its jobs\n"
    )
    write_text(root / "study.toml", text)
    atomic_write_json(root / "plan.json", plan.to_dict())
    return root


def run_plan(
    plan: Plan,
    study_dir: str | os.PathLike[str],
    executor: Executor,
    *,
    job_fn: JobFn | None = None,
    progress: bool = True,
) -> StudyRun:
    """Run every unfinished job of ``plan`` in dependency order; finished jobs are skipped."""
    root = Path(study_dir)
    started = time.time()
    run = StudyRun(study_dir=root)
    by_id = {j.id: j for j in plan.jobs}
    done = {j.id for j in plan.jobs if read_result(root, j.id) is not None}
    run.reused = [j.id for j in plan.jobs if j.id in done]
    pending = [j for j in plan.jobs if j.id not in done]
    bad: set[str] = set()
    running: dict[cf.Future, str] = {}
    broken: str | None = None
    bar = tqdm(
        total=len(plan.jobs),
        initial=len(done),
        desc=f"study {plan.name}",
        unit="job",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        while pending or running:
            for job in [j for j in pending if any(d in bad for d in j.deps)]:
                pending.remove(job)
                bad.add(job.id)
                run.blocked.append(job.id)
                bar.write(f"blocked {job.id}: a job it needs failed")
            for job in [j for j in pending if all(d in done for d in j.deps)]:
                if broken is not None or (executor.slots is not None and len(running) >= executor.slots):
                    break
                pending.remove(job)
                bar.set_postfix_str(job.id, refresh=True)
                try:
                    running[executor.submit(execute_job, job.to_dict(), str(root), job_fn)] = job.id
                except Exception as exc:  # the executor itself is gone (a broken pool, a lost cluster)
                    broken = f"{executor.describe()} cannot start jobs: {type(exc).__name__}: {exc}"
                    run.failed[job.id] = broken
                    bad.add(job.id)
                    bar.write(f"FAILED {job.id}: {broken}; no further jobs are started")
            if not running:
                if broken is not None:
                    run.blocked.extend(j.id for j in pending)
                elif pending:  # only possible with a dependency outside the plan
                    missing = sorted({d for j in pending for d in j.deps if d not in by_id})
                    raise RuntimeError(f"jobs depend on jobs that are not in the plan: {missing}")
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                jid = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker itself died (killed, out of memory, lost node)
                    outcome = {"state": "failed", "error": f"worker lost: {type(exc).__name__}: {exc}"}
                if outcome["state"] == "done":
                    done.add(jid)
                    run.finished.append(jid)
                else:
                    bad.add(jid)
                    run.failed[jid] = outcome.get("error") or "unknown error"
                    bar.write(f"FAILED {jid}: {run.failed[jid]} (log: {root / 'jobs' / jid / 'job.log'})")
                bar.update(1)
    finally:
        bar.close()
    run.results = finalize_study(root, plan.jobs)
    run.seconds = time.time() - started
    return run


def run_study(
    spec: StudySpec | str | os.PathLike[str],
    study_dir: str | os.PathLike[str],
    *,
    executor: str | Executor = "local",
    executor_config: dict[str, Any] | None = None,
    job_fn: JobFn | None = None,
    progress: bool = True,
    check_mapping: bool = True,
) -> StudyRun:
    """Validate and plan ``spec``, then run it into ``study_dir`` (resuming what is there)."""
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    plan = plan_study(spec, check_mapping=check_mapping)
    root = Path(study_dir)
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
        prepare_study(spec, root, plan)
        if isinstance(executor, str):
            executor = create_executor(executor, **(executor_config or {}))
        with executor:
            return run_plan(plan, root, executor, job_fn=job_fn, progress=progress)
    finally:
        lock.release()
