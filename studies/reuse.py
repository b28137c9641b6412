"""Finished jobs of other studies, reused: one training, one job, across studies too.

A job's id hashes everything that decides its result (``studies.jobs.job_id``), so a job of another study
directory with the same id *is* this job, trained already. :func:`reuse_finished` links (or copies) such a
finished job's directory into this study before it runs, and the runner then counts it as done. A reused
source job's study-zoo entry is not copied: a transfer that needs it restores it from the source run's own
``activation.safetensors`` (``studies.training_job``), under the same reference.

``sparta study run CONFIG --out DIR --reuse OTHER_DIR`` (repeatable) is how an ablation study that shares its
ReLU, SiLU and in-place rows with a verdicts study runs only its new rows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .jobs import Job, job_dir, read_result

__all__ = ["reuse_finished"]


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where both lie on one file system (finished files are only ever replaced by rename, never
    written in place, so the two studies cannot change each other's), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reuse_finished(
    jobs: Sequence[Job], study_dir: str | os.PathLike[str], others: Sequence[str | os.PathLike[str]]
) -> dict[str, Path]:
    """Bring into ``study_dir`` every job of ``jobs`` that is not finished here but is finished in one of the
    ``others`` (the first that has it); returns job id → the study it came from. A partial copy never counts:
    the directory is assembled beside its place and renamed into it, and ``result.json`` (a job's "finished"
    mark) is part of it."""
    root = Path(study_dir)
    sources = [Path(o) for o in others]
    for other in sources:
        if not (other / "plan.json").is_file():
            raise FileNotFoundError(f"--reuse {other}: not a study directory (no plan.json)")
        if other.resolve() == root.resolve():
            raise ValueError(f"--reuse {other} is the study directory itself")
    reused: dict[str, Path] = {}
    for job in jobs:
        if read_result(root, job.id) is not None:
            continue
        other = next((o for o in sources if read_result(o, job.id) is not None), None)
        if other is None:
            continue
        target = job_dir(root, job.id)
        staging = target.with_name(f".{job.id}.reuse")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(job_dir(other, job.id), staging, copy_function=_link_or_copy)
        shutil.rmtree(target, ignore_errors=True)  # an unfinished attempt of this study: replaced by the finished one
        os.replace(staging, target)
        reused[job.id] = other
    return reused
