"""The long results table: one row per (job, metric), built from the finished jobs of a study.

Columns (``docs/architecture.md``): ``job_id``, ``kind``, ``row``, ``column``, ``arch``, ``dataset``,
``activation``, ``variant``, ``policy``, ``source_job``, ``seed``, ``metric``, ``value``. Metrics are
accuracies in percent. Only finished jobs (those with a ``result.json``) contribute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from transfer.atomic import atomic_write

from .jobs import Job, read_result
from .matrix import RESULT_COLUMNS, list_metrics, write_matrices

__all__ = ["collect_results", "write_results", "finalize_study"]


def collect_results(study_dir: str | os.PathLike[str], jobs: Sequence[Job]) -> pd.DataFrame:
    """The long table of every finished job in ``jobs`` (unfinished ones are left out)."""
    records = []
    for job in jobs:
        result = read_result(study_dir, job.id)
        if result is None:
            continue
        for metric, value in result["metrics"].items():
            records.append(
                {
                    "job_id": job.id,
                    "kind": job.kind,
                    "row": job.row,
                    "column": job.column,
                    "arch": job.arch,
                    "dataset": job.dataset,
                    "activation": job.activation,
                    "variant": job.variant or "",
                    "policy": job.policy or "",
                    "source_job": job.source_job or "",
                    "seed": job.seed,
                    "metric": str(metric),
                    "value": float(value),
                }
            )
    frame = pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))
    return frame.astype({"seed": "int64", "value": "float64"})


def write_results(results: pd.DataFrame, study_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``results.csv`` and ``results.parquet`` atomically; returns the paths written."""
    root = Path(study_dir)
    written = []
    written.append(atomic_write(root / "results.csv", lambda tmp: results.to_csv(tmp, index=False)))
    parquet = root / "results.parquet"
    try:
        written.append(atomic_write(parquet, lambda tmp: results.to_parquet(tmp, index=False)))
    except ImportError:  # no pyarrow/fastparquet: the CSV is the table
        parquet.unlink(missing_ok=True)
    return written


def finalize_study(study_dir: str | os.PathLike[str], jobs: Sequence[Job]) -> pd.DataFrame:
    """Rebuild the results table and every metric's matrix from the finished jobs."""
    root = Path(study_dir)
    results = collect_results(root, jobs)
    write_results(results, root)
    if len(results):
        write_matrices(results, root / "matrices", list_metrics(results))
    return results
