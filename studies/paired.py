"""The paired outcomes of a row and its reference row (``docs/evaluation.md``), the input of every
statistic of a transfer matrix (``studies.stats``).

Every row of a matrix column is evaluated on the same test images: the column's dataset's test split,
cut to the same stratified subset for every row and seed (``TrainConfig.test_subset`` is drawn with a
fixed seed), and each job stores which images its final model got right under each metric
(``per_image.safetensors``, with a fingerprint of the images; a pair whose fingerprints or lengths differ
is not compared). :func:`paired_outcomes` lines up a row and the reference of one column as two
(seeds × images) arrays of correctness bits, paired by seed and by image — or, for jobs without per-image
files, as (seeds × 1) arrays of accuracies.

Also here, as a description of a single pair of models: the discordant images of one seed (``better``
b: A right, R wrong; ``worse`` c: A wrong, R right) and McNemar's exact test on them,
``binomtest(b, b + c, 1/2)`` (``<metric>.paired.csv``). It says whether two *trained models* differ
beyond the luck of the test draw. Summing b and c over seeds (a "pooled" McNemar test) is not offered:
it treats seed-to-seed training noise as image noise (``studies.stats``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PAIRED_COLUMNS", "PairedOutcomes", "PerImageStore", "discordant", "mcnemar_exact", "paired_image_tests",
    "paired_outcomes",
]  # fmt: skip

PAIRED_COLUMNS = ("row", "column", "reference", "scope", "seed", "n_images", "better", "worse", "diff", "p_value")


def mcnemar_exact(better: int, worse: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when both are 0)."""
    if better < 0 or worse < 0:
        raise ValueError(f"discordant counts must be >= 0, got {better}, {worse}")
    if better + worse == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(better), int(better + worse), 0.5).pvalue)


def discordant(a: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """``(better, worse)``: images ``a`` gets right and ``reference`` wrong, and the other way round."""
    a, reference = np.asarray(a, dtype=bool), np.asarray(reference, dtype=bool)
    if a.shape != reference.shape:
        raise ValueError(f"per-image vectors differ in shape: {a.shape} vs {reference.shape}")
    return int((a & ~reference).sum()), int((~a & reference).sum())


class PerImageStore:
    """Per-image correctness of a study's jobs (``jobs/<id>/per_image.safetensors``), read when asked
    for; or of jobs given directly (``PerImageStore.from_mapping``, for tests and notebooks)."""

    def __init__(self, study_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(study_dir) if study_dir is not None else None
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_mapping(cls, per_job: Mapping[str, Mapping[str, np.ndarray]], fingerprint: str = "") -> PerImageStore:
        """A store of ``{job_id: {metric: bool vector}}``, every vector measured on the same images."""
        from transfer.engine.per_image import PerImage

        store = cls()
        store._cache = {jid: PerImage(bits, fingerprint) for jid, bits in per_job.items()}
        return store

    def _job(self, job_id: str) -> Any:
        if job_id not in self._cache:
            from transfer.engine.per_image import PER_IMAGE_FILE, load_per_image, with_ensembles

            self._cache[job_id] = None
            if self.root is not None and (path := self.root / "jobs" / job_id / PER_IMAGE_FILE).is_file():
                try:
                    self._cache[job_id] = with_ensembles(load_per_image(path))
                except ValueError as exc:
                    warnings.warn(f"per-image file of job {job_id} skipped: {exc}", stacklevel=2)
        return self._cache[job_id]

    def get(self, job_id: str, metric: str) -> tuple[np.ndarray, str] | None:
        """The job's correctness vector for ``metric`` and the fingerprint of its images, or None."""
        record = self._job(job_id)
        if record is None or metric not in record:
            return None
        return record[metric], record.fingerprint


def _job_ids(sel: pd.DataFrame) -> dict[tuple[str, str, int], str]:
    """(row, column, seed) → the first job id of that cell and seed."""
    first = sel.drop_duplicates(["row", "column", "seed"])
    return {
        (str(r), str(c), int(s)): str(j)
        for r, c, s, j in zip(first["row"], first["column"], first["seed"], first["job_id"], strict=True)
    }


@dataclass(frozen=True)
class PairedOutcomes:
    """A row and its reference in one column: (seeds × images) arrays, paired by seed and image
    (``unit == "images"``: correctness bits), or (seeds × 1) accuracies as fractions
    (``unit == "accuracies"``, where per-image files are missing)."""

    row: np.ndarray
    ref: np.ndarray
    seeds: tuple[int, ...]
    unit: str
    fingerprint: str | None = None  # of the test images (unit "images"): two studies pair image by image only if equal

    def accuracies(self) -> PairedOutcomes:
        """The same seeds as (seeds × 1) accuracies."""
        if self.unit == "accuracies":
            return self
        return PairedOutcomes(
            self.row.mean(axis=1, keepdims=True), self.ref.mean(axis=1, keepdims=True), self.seeds, "accuracies"
        )

    def select(self, seeds: Sequence[int]) -> PairedOutcomes:
        """Only ``seeds`` (each one of this pair's), in that order."""
        index = [self.seeds.index(s) for s in seeds]
        return PairedOutcomes(self.row[index], self.ref[index], tuple(seeds), self.unit, self.fingerprint)


def paired_outcomes(
    sel: pd.DataFrame, metric: str, row: str, column: str, reference: str, store: PerImageStore | None
) -> PairedOutcomes | None:
    """The outcomes of ``row`` and ``reference`` in ``column`` for ``metric``, over the seeds both have:
    per-image bits where every such seed has comparable files (same images, same count), else the seeds'
    accuracies; ``None`` when no seed is shared."""
    sel = sel.loc[sel["metric"].astype(str) == metric]
    values = sel.groupby(["row", "column", "seed"], sort=False)["value"].mean()
    jobs = _job_ids(sel) if "job_id" in sel.columns else {}
    seeds = sorted(
        int(s) for (r, c, s) in values.index if (r, c) == (row, column) and (reference, column, s) in values.index
    )
    if not seeds:
        return None
    if store is not None and jobs:
        pairs = [
            (store.get(jobs[row, column, s], metric), store.get(jobs[reference, column, s], metric))
            for s in seeds
            if (row, column, s) in jobs and (reference, column, s) in jobs
        ]
        comparable = len(pairs) == len(seeds) and all(a is not None and b is not None for a, b in pairs)
        if comparable:
            fingerprints = {f for a, b in pairs for _, f in (a, b)}
            lengths = {len(v) for a, b in pairs for v, _ in (a, b)}
            if len(fingerprints) == 1 and len(lengths) == 1:
                return PairedOutcomes(
                    np.stack([a[0] for a, _ in pairs]).astype(float),
                    np.stack([b[0] for _, b in pairs]).astype(float),
                    tuple(seeds),
                    "images",
                    str(next(iter(fingerprints))),
                )
    row_acc = np.array([[values[row, column, s] / 100.0] for s in seeds])
    ref_acc = np.array([[values[reference, column, s] / 100.0] for s in seeds])
    return PairedOutcomes(row_acc, ref_acc, tuple(seeds), "accuracies")


def paired_image_tests(results: pd.DataFrame, metric: str, reference: str, store: PerImageStore) -> pd.DataFrame:
    """McNemar's exact test of every row against the ``reference`` row (a row label), per column and seed:
    a description of each pair of trained models (``scope`` ``seed``). ``diff`` is the accuracy difference
    in percentage points, (b − c) / images · 100. Pairs without per-image files, or measured on different
    images, are left out."""
    if "job_id" not in results.columns:
        return pd.DataFrame(columns=list(PAIRED_COLUMNS))
    sel = results.loc[results["metric"].astype(str) == metric]
    jobs = _job_ids(sel)
    records = []
    for (row, column, seed), jid in jobs.items():
        ref_jid = jobs.get((reference, column, seed))
        if row == reference or ref_jid is None:
            continue
        a, ref = store.get(jid, metric), store.get(ref_jid, metric)
        if a is None or ref is None or a[1] != ref[1] or len(a[0]) != len(ref[0]):
            continue
        better, worse = discordant(a[0], ref[0])
        records.append(_record(row, column, reference, "seed", seed, len(a[0]), better, worse))
    frame = pd.DataFrame.from_records(records, columns=list(PAIRED_COLUMNS))
    return frame.astype({"seed": "Int64"})


def _record(
    row: str, column: str, reference: str, scope: str, seed: int | None, n: int, better: int, worse: int
) -> dict[str, Any]:
    return {
        "row": row,
        "column": column,
        "reference": reference,
        "scope": scope,
        "seed": seed,
        "n_images": n,
        "better": better,
        "worse": worse,
        "diff": 100.0 * (better - worse) / n,
        "p_value": mcnemar_exact(better, worse),
    }
