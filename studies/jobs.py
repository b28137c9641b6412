"""Study jobs: what one training run of a study is, its stable id, and how it runs in a worker.

A :class:`Job` is plain data (it travels to process and Ray workers as a dict). Its id is a short hash
of everything that decides its result — the resolved training config, the evaluation settings, the
policy and the id of the source job it depends on — so an unchanged job keeps its id across re-plans
and its finished result is reused, while any change to it (or to its source) gives a new id.

:func:`execute_job` is the worker entry point: it records the job's state in ``status.json``, sends
the job's output to ``job.log``, imports the study's plugins (``studies.plugins``: a process-pool or Ray
worker never imported them), calls the job function, and writes ``result.json`` atomically *last*:
a job is finished exactly when its ``result.json`` exists, so a study killed at any moment loses no
finished job and redoes only unfinished ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transfer.atomic import read_json, write_json

from .labels import dataset_label
from .plugins import load_job_plugins

__all__ = [
    "JOB_KINDS",
    "MAX_ID_LENGTH",
    "Job",
    "JobFn",
    "execute_job",
    "id_part",
    "job_dir",
    "job_id",
    "read_record",
    "read_result",
    "read_status",
]

JOB_KINDS = ("source", "target", "baseline")
RESULT_FILE, STATUS_FILE, LOG_FILE = "result.json", "status.json", "job.log"


@dataclass(frozen=True)
class Job:
    """One training run of a study. ``train`` holds the resolved ``TrainConfig`` fields."""

    id: str
    kind: str
    seed: int
    arch: str
    dataset: str
    activation: str
    variant: str | None
    policy: str | None
    source_job: str | None
    row: str
    column: str
    train: dict[str, Any]
    eval: dict[str, Any]
    deps: tuple[str, ...] = ()
    zoo_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # further rows this job's training stands for (one training, one job): {"kind", "row", "column"} each,
    # e.g. the "Sparta (in place)" baseline row of a source job that trains exactly that
    also: list[dict[str, str]] = field(default_factory=list)
    # the study's plugins (module names, .py files as absolute paths): imported before the job runs, in
    # whichever process runs it (studies.plugins)
    plugins: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deps"] = list(self.deps)
        d["plugins"] = list(self.plugins)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            **{
                **data,
                "deps": tuple(data.get("deps", ())),
                "also": [dict(a) for a in data.get("also", [])],
                "plugins": tuple(data.get("plugins", ())),
            }
        )

    def rows(self) -> list[dict[str, str]]:
        """Every (kind, row, column) this job's results are shown under: its own, then ``also``."""
        return [{"kind": self.kind, "row": self.row, "column": self.column}, *self.also]


JobFn = Callable[[Job, Path, Path], dict[str, Any]]
"""``job_fn(job, job_dir, study_dir) -> result``; the result holds ``metrics`` (name → percent)."""


MAX_ID_LENGTH = 100  # a job id names a directory and, for a source, a zoo entry (zoo.names.MAX_NAME_LENGTH)


def id_part(name: str, limit: int | None = None) -> str:
    """An arch or dataset name as a part of a job id, which is a directory and a zoo entry name: ``resnet18``
    and ``digits`` as they are, ``folder:/data/pets`` as ``folder-pets``, ``mymodels:small_cnn`` as
    ``mymodels-small_cnn`` (lower case; anything but ``a-z 0-9 . _ -`` becomes ``-``)."""
    part = re.sub(r"[^a-z0-9._-]+", "-", dataset_label(name).lower()).strip("-.")  # a path: its last component
    return (part[:limit].rstrip("-.") if limit else part) or "x"


def job_id(kind: str, arch: str, dataset: str, seed: int, config: dict[str, Any]) -> str:
    """``<kind>-<arch>-<dataset>-s<seed>-<hash>``: readable (:func:`id_part`), and stable for an unchanged
    config. Arch and dataset are shortened where the whole would be longer than :data:`MAX_ID_LENGTH`."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8]
    jid = f"{kind}-{id_part(arch)}-{id_part(dataset)}-s{seed}-{digest}"
    if len(jid) > MAX_ID_LENGTH:
        jid = f"{kind}-{id_part(arch, 32)}-{id_part(dataset, 32)}-s{seed}-{digest}"
    return jid


def job_dir(study_dir: str | os.PathLike[str], jid: str) -> Path:
    return Path(study_dir) / "jobs" / jid


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object a job recorded at ``path``, or None when there is none yet: missing, unreadable
    (``transfer.atomic.read_json``'s errors, e.g. a file another host is still writing), or not an object.
    A job's state is "not recorded" then, never an error."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_result(study_dir: str | os.PathLike[str], jid: str) -> dict[str, Any] | None:
    """The finished result of job ``jid``, or None if it has not finished."""
    data = read_record(job_dir(study_dir, jid) / RESULT_FILE)
    if data is None or data.get("job_id") != jid or not isinstance(data.get("metrics"), dict):
        return None
    return data


def read_status(study_dir: str | os.PathLike[str], jid: str) -> dict[str, Any] | None:
    return read_record(job_dir(study_dir, jid) / STATUS_FILE)


@contextlib.contextmanager
def _job_output(log_path: Path):
    """Send stdout, stderr and log records of this job to its log file."""
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            root.removeHandler(handler)


def execute_job(job: dict[str, Any], study_dir: str, job_fn: JobFn) -> dict[str, Any]:
    """Run one job in this process with ``job_fn`` and return its outcome; never raises for a failing job.

    The outcome is ``{"job_id", "state": "done" | "failed", "seconds", "error"}``. ``job_fn`` travels
    to process workers by pickle, so there it must be a module-level function; the runner's default,
    :func:`studies.training_job.run_training_job`, is one, and imports the training engine in the worker.
    """
    spec = Job.from_dict(job)
    directory = job_dir(study_dir, spec.id)
    directory.mkdir(parents=True, exist_ok=True)
    previous = read_status(study_dir, spec.id) or {}
    attempt = int(previous.get("attempts", 0)) + 1
    started = time.time()
    base = {"job_id": spec.id, "attempts": attempt, "host": socket.gethostname(), "pid": os.getpid()}
    write_json(directory / STATUS_FILE, {**base, "state": "running", "started": started})
    try:
        with _job_output(directory / LOG_FILE) as log:
            print(f"== job {spec.id} (attempt {attempt}) on {base['host']} pid {base['pid']}", file=log)
            if spec.plugins:
                load_job_plugins(spec.plugins)
            result = job_fn(spec, directory, Path(study_dir))
            if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
                raise TypeError(f"job function returned {type(result).__name__}, not a dict with 'metrics'")
            print(f"== done in {time.time() - started:.1f}s: {result['metrics']}", file=log)
    except Exception as exc:  # a failing job is recorded, never allowed to stop the study
        seconds = time.time() - started
        error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError), open(directory / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        write_json(
            directory / STATUS_FILE,
            {
                **base,
                "state": "failed",
                "started": started,
                "seconds": seconds,
                "error": error,
                "traceback": traceback.format_exc(),
            },
        )
        return {"job_id": spec.id, "state": "failed", "seconds": seconds, "error": error}
    seconds = time.time() - started
    record = {
        "job_id": spec.id,
        "kind": spec.kind,
        "seconds": seconds,
        "finished": time.time(),
        "attempts": attempt,
        "host": base["host"],
        **result,
        "job": spec.to_dict(),
    }
    write_json(directory / RESULT_FILE, record)
    write_json(directory / STATUS_FILE, {**base, "state": "done", "started": started, "seconds": seconds})
    sys.stdout.flush()
    return {"job_id": spec.id, "state": "done", "seconds": seconds, "error": None}
