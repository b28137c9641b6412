"""The long results table: one row per (job, metric), built from the finished jobs of a study.

Columns (:data:`RESULT_COLUMNS`, ``docs/architecture.md``): ``job_id``, ``kind``, ``row``, ``column``,
``sweep`` (the job's point of the study's ``[sweep]``, ``eps=0.05``; empty without one), ``arch``,
``dataset``, ``activation``, ``variant``, ``policy``, ``source_job`` (for a transfer from a zoo source, the
entry, ``zoo:NAME@VERSION``), ``seed``, ``norm``, ``eps`` (the job's evaluation threat model, from its
``metrics.json``), ``epochs`` (trained), ``converged`` (1 if its robust validation accuracy had plateaued, 0 if
not, empty if unknown) and ``epochs_needed`` (first epoch within the plateau tolerance of its best;
``transfer.engine.convergence``), ``metric``, ``value``. Metrics are
accuracies in percent. Only finished jobs (those with a ``result.json``) contribute. A job evaluated before
ensemble metrics existed (``apgd-ce+t``, ``transfer.engine.per_image.ensembles_of``) gets them from its
per-image bits. This module builds, writes and reads the table; ``studies.matrix`` pivots it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from transfer.atomic import atomic_write
from transfer.threat_model import evaluation_eps

from .jobs import Job, read_result
from .labels import point_label

__all__ = ["RESULT_COLUMNS", "collect_results", "load_results", "write_results"]

RESULT_COLUMNS = (
    "job_id",
    "kind",
    "row",
    "column",
    "sweep",
    "arch",
    "dataset",
    "activation",
    "variant",
    "policy",
    "source_job",
    "seed",
    "norm",
    "eps",
    "epochs",
    "converged",
    "epochs_needed",
    "metric",
    "value",
)


def _threat(result: dict, job: Job) -> tuple[str, float]:
    """Norm and evaluation radius of a finished job: what its ``metrics.json`` recorded, else (a job
    finished before threat models were recorded) its resolved config's evaluation radius."""
    train_metrics = result.get("train_metrics") or {}
    threat = train_metrics.get("threat_model") or {}
    if threat.get("eps") is not None:
        return str(threat.get("norm", "Linf")), float(threat["eps"])
    eps = train_metrics.get("eps")
    if eps is None:
        eps = evaluation_eps(job.train)
    return "Linf", float("nan") if eps is None else float(eps)


def _convergence(result: dict) -> dict[str, float]:
    """Epochs trained, plateaued (1/0, NaN if unknown) and epochs needed, from ``metrics.json``."""
    train_metrics = result.get("train_metrics") or {}
    record = train_metrics.get("convergence") or {}

    def number(value: float | int | bool | None) -> float:
        return float("nan") if value is None else float(value)

    return {
        "epochs": number(record.get("epochs", train_metrics.get("epoch"))),
        "converged": number(record.get("converged")),
        "epochs_needed": number(record.get("epochs_needed")),
    }


def _metrics(study_dir: str | os.PathLike[str], job_id: str, result: dict) -> dict[str, float]:
    """The job's metrics, with the ensembles its per-image bits can form and its metrics lack."""
    from transfer.engine.per_image import PER_IMAGE_FILE, ensemble_metrics, ensembles_of, load_per_image

    metrics = dict(result["metrics"])
    path = Path(study_dir) / "jobs" / job_id / PER_IMAGE_FILE
    missing = [name for name in ensembles_of(metrics) if name not in metrics]
    if missing and path.is_file():
        try:
            derived = ensemble_metrics(load_per_image(path))
        except ValueError:  # an unreadable file: the paired tests warn about it; the table goes without
            derived = {}
        metrics.update({name: derived[name] for name in missing if name in derived})
    return metrics


def collect_results(study_dir: str | os.PathLike[str], jobs: Sequence[Job]) -> pd.DataFrame:
    """The long table of every finished job in ``jobs`` (unfinished ones are left out); a job that stands
    for several rows (``Job.also``) is listed under each."""
    records = []
    for job in jobs:
        result = read_result(study_dir, job.id)
        if result is None:
            continue
        norm, eps = _threat(result, job)
        convergence = _convergence(result)
        metrics = _metrics(study_dir, job.id, result)
        for shown, (metric, value) in itertools.product(job.rows(), metrics.items()):
            records.append(
                {
                    "job_id": job.id,
                    **shown,
                    "sweep": point_label(job.extra.get("sweep") or {}),
                    "arch": job.arch,
                    "dataset": job.dataset,
                    "activation": job.activation,
                    "variant": job.variant or "",
                    "policy": job.policy or "",
                    "source_job": job.source_job or job.extra.get("zoo_source") or "",
                    "seed": job.seed,
                    "norm": norm,
                    "eps": eps,
                    **convergence,
                    "metric": str(metric),
                    "value": float(value),
                }
            )
    frame = pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))
    numbers = ("eps", "epochs", "converged", "epochs_needed", "value")
    return frame.astype({"seed": "int64", **dict.fromkeys(numbers, "float64")})


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


def _read_csv(path: Path) -> pd.DataFrame:
    """``results.csv`` as :func:`write_results` wrote it: text stays text (an empty ``policy`` is ``""``
    and a row called ``NA`` is ``"NA"``, as in the parquet table); only an empty number is NaN."""
    numbers = ("seed", "eps", "epochs", "converged", "epochs_needed", "value")
    return pd.read_csv(
        path,
        dtype={c: str for c in RESULT_COLUMNS if c not in numbers},
        keep_default_na=False,
        na_values={c: [""] for c in numbers},
    )


def load_results(study_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The long results table of a study directory (``results.parquet``, else ``results.csv``).

    A study still running has no table yet: ``sparta study matrix DIR`` rebuilds it from the finished jobs.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"study directory {root} does not exist")
    parquet, csv = root / "results.parquet", root / "results.csv"
    if parquet.is_file():
        try:
            return pd.read_parquet(parquet)
        except (ImportError, ValueError):
            if not csv.is_file():
                raise
    if csv.is_file():
        return _read_csv(csv)
    raise FileNotFoundError(
        f"{root} has no results.parquet or results.csv; run `sparta study run CONFIG --out {root}` "
        f"(or `sparta study matrix {root}` to build the table from the jobs finished so far)"
    )
