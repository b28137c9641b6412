"""A study's results without its model checkpoints: small enough to keep in git, send to a co-author or
attach to a paper, and still a study directory.

A finished job of a study directory holds two model files (``checkpoint.pt``, the last epoch, and
``best.pt``, the best-robust one): about 2.3 MB for a width-8 ResNet-18, far more at paper scale, and
nothing that a matrix, a comparison, a power table or a transfer from it reads. :func:`archive_study`
copies a study directory leaving those out (and the lock files of jobs, and the study's own zoo, which a
transfer restores from a source run's ``activation.safetensors``). What stays per finished job: its
result, status and logs, the per-image correctness bits, the trained activation, the metrics, the
training history and the resolved configuration.

The archive reads as its study does: ``sparta study matrix|compare|power|status ARCHIVE``, and
``sparta study run CONFIG --out DIR --reuse ARCHIVE`` takes its finished jobs, a transfer from an archived
source included. What it cannot do: re-evaluate a model or run ``sparta sanity`` on one (the weights are
not there), or resume an unfinished job (unfinished jobs are left out, and are trained again).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.atomic import write_json

from .jobs import job_dir, read_result
from .runner import load_plan

__all__ = ["ARCHIVE_FILE", "LEFT_OUT", "ArchiveReport", "archive_study"]

ARCHIVE_FILE = "archive.json"
# What an archive leaves out of a finished job's directory: the model files and the run's lock files.
LEFT_OUT = ("checkpoint.pt", "best.pt", ".run.lock", ".run.holder.json")


@dataclass
class ArchiveReport:
    path: Path
    jobs: list[str] = field(default_factory=list)  # finished jobs archived
    unfinished: list[str] = field(default_factory=list)  # planned jobs left out (not finished)
    bytes: int = 0  # size of the archive
    left_out_bytes: int = 0  # size of the files left out of the archived jobs

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "jobs": len(self.jobs),
            "unfinished": self.unfinished,
            "bytes": self.bytes,
            "left_out_bytes": self.left_out_bytes,
        }


def _copy_job(src: Path, dst: Path) -> int:
    """Copy a finished job's directory without :data:`LEFT_OUT`; returns the bytes left out."""
    left = 0
    for path in sorted(src.rglob("*")):
        if path.is_dir() or path.is_symlink():
            continue
        if path.name in LEFT_OUT:
            left += path.stat().st_size
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return left


def archive_study(
    study_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False
) -> ArchiveReport:
    """Copy ``study_dir`` to ``dest`` without model checkpoints (module docstring). The archive is assembled
    beside ``dest`` and renamed into place, so ``dest`` is either the old one or the whole new one; an
    existing ``dest`` is replaced only with ``overwrite``."""
    root, out = Path(study_dir), Path(dest)
    jobs = load_plan(root)  # raises a clear error for a directory that is not a study
    if out.exists() and out.resolve() == root.resolve():
        raise ValueError(f"the archive {out} is the study directory itself: give another --out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: give another --out, or --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.archive-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    report = ArchiveReport(path=out)
    try:
        staging.mkdir()
        for path in sorted(root.iterdir()):  # the study's own files: plan, config, tables, matrices
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, staging / path.name)
        for job in jobs:
            if read_result(root, job.id) is None:
                report.unfinished.append(job.id)
                continue
            report.left_out_bytes += _copy_job(job_dir(root, job.id), job_dir(staging, job.id))
            report.jobs.append(job.id)
        write_json(
            staging / ARCHIVE_FILE,
            {
                "archived_from": str(root.resolve()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "jobs": len(report.jobs),
                "unfinished": report.unfinished,
                "left_out": list(LEFT_OUT),
                "note": "results without model checkpoints (studies/archive.py): matrices, comparisons, "
                "power and --reuse read it; models cannot be re-evaluated from it",
            },
        )
        report.bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
