"""Where, and in what precision, each finished job trained.

A job's id says *what* it trains, not on which device: the same job trains in fp32 on a CPU and under bf16
autocast on CUDA (``TrainConfig.amp``), and ``--reuse`` takes a finished job from any study directory. A
study can therefore hold jobs of one seed trained on different devices, and a paired difference between
two of them then measures the activation and the device together. Each run records its ``precision``
(device type and what training ran in; ``metrics.json``, copied into the job's ``result.json`` as
``train_metrics``); :func:`trained_in` reads it, :func:`trainings` for many jobs at once (each result read
once), :func:`mixed_pairs` finds the seeds where a comparison's two jobs trained differently (``sparta
study compare`` warns about them), and :func:`training_counts` counts a study's jobs per kind of training
(``sparta study status``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping

import pandas as pd

from .jobs import read_result

__all__ = ["UNKNOWN", "mixed_pairs", "trained_in", "training_counts", "trainings"]

UNKNOWN = "unknown"  # a job that records no precision (unfinished, or run by another job function)


def trained_in(study_dir: str | os.PathLike[str], job_id: str) -> str:
    """``"<device>/<precision>"`` of a finished job, e.g. ``"cpu/fp32"`` or ``"cuda/bf16"``; :data:`UNKNOWN`
    where its result does not say."""
    result = read_result(study_dir, job_id) or {}
    precision = (result.get("train_metrics") or {}).get("precision") or {}
    device, ran = precision.get("device"), precision.get("ran")
    return f"{device}/{ran}" if device and ran else UNKNOWN


def trainings(study_dir: str | os.PathLike[str], job_ids: Iterable[str]) -> dict[str, str]:
    """Job id → :func:`trained_in`, each job read once."""
    return {j: trained_in(study_dir, j) for j in dict.fromkeys(job_ids)}


def training_counts(study_dir: str | os.PathLike[str], job_ids: Iterable[str]) -> dict[str, int]:
    """How many of ``job_ids`` trained in each ``device/precision``, most common first."""
    return dict(Counter(trainings(study_dir, job_ids).values()).most_common())


def mixed_pairs(
    results: pd.DataFrame, training: Mapping[str, str], row: str, reference: str, column: str
) -> dict[int, tuple[str, str]]:
    """Seed → (row's training, reference's training) for each seed where the two jobs of the comparison
    ``row − reference`` in ``column`` trained on different devices or in different precisions (jobs whose
    precision is unknown are not counted as different). ``training``: job id → :func:`trained_in`, from
    :func:`trainings` over the jobs of ``results``."""
    in_column = results.loc[results["column"].astype(str) == column]

    def jobs_of(name: str) -> dict[int, str]:
        rows = in_column.loc[in_column["row"].astype(str) == name]
        return {int(seed): str(job) for seed, job in zip(rows["seed"], rows["job_id"], strict=True)}

    mine, theirs = jobs_of(row), jobs_of(reference)
    mixed = {}
    for seed in sorted(set(mine) & set(theirs)):
        a, b = training.get(mine[seed], UNKNOWN), training.get(theirs[seed], UNKNOWN)
        if a != b and UNKNOWN not in (a, b):
            mixed[seed] = (a, b)
    return mixed
