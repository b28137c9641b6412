"""A rehearsal of a study (``sparta study run CONFIG --rehearse``): every job of the config, at toy size.

The plan keeps the config's whole structure — every source, target, baseline, transfer, seed, mapping policy
and attack of its ``[eval]`` list, the same rows, columns and dependencies — while each job is shrunk:
:data:`TRAIN_SETTINGS` (one epoch of a few small batches), :data:`TINY_WIDTH` where every arch of the study takes
a ``width`` (the ResNet families: transfers then map as they do at full width), :data:`EVAL_IMAGES` test
images, and quick gradient-masking checks (:data:`SANITY_SETTINGS`) where ``[eval] sanity`` asks for them.
The jobs keep their datasets' names, so the matrices have the real run's rows and columns; the job
function (:func:`run_rehearsal_job`) trains each on ``synthetic:<dataset>`` instead (random images of the
dataset's classes, channels, size and threat model: ``transfer.engine.dataset_synthetic``), and runs the
official AutoAttack's stages at :data:`AA_ITERATIONS` iterations, :data:`AA_QUERIES` Square queries and
:data:`AA_TARGETS` target class(es) (``transfer.engine.autoattack.plumbing_budget``).

What a rehearsal shows: that the config plans and builds, that each dataset is where the real run will look
(:func:`data_check`, which reads each real dataset's test split and never downloads), and that training,
checkpoints, the study zoo, transfers, evaluation, results, matrices and figures work end to end. Its numbers
are meaningless: the study directory (default ``<name>-rehearsal``, never a real run's) holds a
:data:`MARKER` file that says so, and a real run refuses that directory.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jobs import Job
from .spec import SpecError, StudySpec
from .training_job import run_training_job

__all__ = [
    "AA_ITERATIONS",
    "AA_QUERIES",
    "AA_TARGETS",
    "EVAL_IMAGES",
    "MARKER",
    "REHEARSAL_FIGURES",
    "REHEARSAL_THREADS",
    "Rehearsal",
    "SANITY_SETTINGS",
    "SUFFIX",
    "TINY_WIDTH",
    "TRAIN_SETTINGS",
    "check_out_dir",
    "data_check",
    "default_out",
    "prepare_rehearsal",
    "rehearsal_notes",
    "rehearsal_spec",
    "run_rehearsal_job",
    "structure_differences",
    "write_marker",
]

MARKER = "REHEARSAL"  # the file in a rehearsal's study directory that says its numbers are meaningless
SUFFIX = "-rehearsal"  # appended to the study's name: the name of its plan and figures, and the default --out
# TrainConfig fields every job of a rehearsal trains with (per-run overrides of these are replaced too)
TRAIN_SETTINGS: dict[str, Any] = {"epochs": 1, "batch_size": 8, "train_subset": 16}
VAL_IMAGES = 8  # robust validation images per epoch, where the config validates at all
TINY_WIDTH = 4  # backbone width where every arch of the study takes one (the ResNet families)
EVAL_IMAGES = 8  # test images every attack of [eval] runs on
AA_ITERATIONS = 2  # iterations of each official APGD/FAB stage (standard: 100)
AA_QUERIES = 8  # queries of the official Square stage (standard: 5,000)
AA_TARGETS = 1  # target classes of the official APGD-T and FAB-T stages (standard: 9; apgd-tK keeps its K)
# torch threads per job unless --threads says otherwise: a toy model's passes are too small to share out, and
# extra threads only wait for each other (several times the CPU time on a busy 2-core machine)
REHEARSAL_THREADS = 1
# the figures' file format: every figure is drawn, but not written twice (png and pdf took a third more time)
REHEARSAL_FIGURES = "png"
# [eval] sanity options of a rehearsal, where the config asks for the checks
SANITY_SETTINGS: dict[str, Any] = {
    "n": EVAL_IMAGES,
    "steps": 4,
    "restarts": 1,
    "square_queries": AA_QUERIES,
    "apgd_iter": AA_ITERATIONS,
    "noise_samples": 2,
}
_SHRUNK = (*TRAIN_SETTINGS, "val_subset", "width")


def default_out(spec: StudySpec) -> Path:
    """``<name>-rehearsal`` in the working directory: never the directory of a real run of the config."""
    return Path(spec.name + SUFFIX)


def _takes_width(arch: str) -> bool:
    from transfer.backbones import WIDTH_ADAPTERS

    return ":" not in arch and any(arch.startswith(family) for family in WIDTH_ADAPTERS)


def _shrunk(train: dict[str, Any], base: dict[str, Any], width: int | None) -> dict[str, Any]:
    """``train`` (a run's or the study's overrides) with the rehearsal's settings in place of its own."""
    out = {k: v for k, v in train.items() if k not in _SHRUNK}
    out.update(base)
    if width is not None:
        out["width"] = width
    return out


def _width(spec: StudySpec) -> int | None:
    archs = [run.arch for run in (*spec.sources, *spec.targets)]
    return TINY_WIDTH if archs and all(_takes_width(a) for a in archs) else None


def rehearsal_notes(spec: StudySpec) -> list[str]:
    """What a rehearsal of ``spec`` is, in words: the header of its ``study.toml`` and of its marker."""
    settings = {**TRAIN_SETTINGS, "val_subset": f"{VAL_IMAGES} (0 where the config does not validate)"}
    if (width := _width(spec)) is not None:
        settings["width"] = width
    return [
        f"REHEARSAL of {spec.path or 'a study given as a Python object'} (study {spec.name!r}): every job at toy "
        "size on synthetic images; every number in this directory is meaningless.",
        "Each job trained with " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + f"; [eval] n = "
        f"{EVAL_IMAGES}; the official AutoAttack's stages at {AA_ITERATIONS} iterations, {AA_QUERIES} Square queries "
        f"and {AA_TARGETS} target class(es); figures as {REHEARSAL_FIGURES} only.",
    ]


def rehearsal_spec(spec: StudySpec) -> StudySpec:
    """``spec`` at toy size (module docstring): the same sources, targets, baselines, transfers, seeds,
    policies, sweep and ``[eval]`` attacks; each job one epoch of a few batches at a tiny width."""
    validates = bool(spec.train.get("val_subset", 1000))  # TrainConfig validates on 1000 images unless told not to
    study = _shrunk(spec.train, {**TRAIN_SETTINGS, "val_subset": VAL_IMAGES if validates else 0}, _width(spec))
    # a run's own overrides of a shrunk field give way to the study's rehearsal settings
    sources = [dataclasses.replace(s, train=_shrunk(s.train, {}, None)) for s in spec.sources]
    targets = [dataclasses.replace(t, train=_shrunk(t.train, {}, None)) for t in spec.targets]
    baselines = [dataclasses.replace(b, train=_shrunk(b.train, {}, None)) for b in spec.baselines]
    ev = {**spec.eval, "n": EVAL_IMAGES}
    if ev.get("sanity") is not None:
        ev["sanity"] = {**ev["sanity"], **SANITY_SETTINGS}
    header = "".join(f"# {line}\n" for line in rehearsal_notes(spec)) + "# The config as given:\n"
    return dataclasses.replace(
        spec,
        name=spec.name + SUFFIX,
        train=study,
        eval=ev,
        sources=sources,
        targets=targets,
        baselines=baselines,
        source_text=header + spec.source_text,
    )


def structure_differences(real: list[Job], rehearsal: list[Job]) -> list[str]:
    """The (kind, row, column, seed) of jobs one plan has and the other lacks: empty when the rehearsal runs
    the real plan's structure (it does unless per-run overrides of a shrunk field made two rows one)."""

    def shape(jobs: list[Job]) -> Counter[tuple[str, str, str, int]]:
        return Counter((j.kind, j.row, j.column, j.seed) for j in jobs)

    a, b = shape(real), shape(rehearsal)
    lines = [f"only in the real plan: {k[0]} {k[1]} → {k[2]}, seed {k[3]}" for k in (a - b)]
    return lines + [f"only in the rehearsal: {k[0]} {k[1]} → {k[2]}, seed {k[3]}" for k in (b - a)]


def run_rehearsal_job(job: Job, job_dir: Path, study_dir: Path) -> dict[str, Any]:
    """The study job function of a rehearsal: ``job`` trained on the synthetic stand-in of its dataset, with
    the official AutoAttack's stages at the rehearsal's budget. Module level, so it travels to process and
    Ray workers."""
    from transfer.engine.autoattack import plumbing_budget
    from transfer.engine.dataset_synthetic import synthetic_name

    stand_in = dataclasses.replace(job, train={**job.train, "dataset": synthetic_name(job.train["dataset"])})
    print(f"REHEARSAL: {job.dataset} replaced by {stand_in.train['dataset']}; the numbers are meaningless")
    with plumbing_budget(n_iter=AA_ITERATIONS, n_queries=AA_QUERIES, n_target_classes=AA_TARGETS):
        return run_training_job(stand_in, job_dir, study_dir)


def data_check(spec: StudySpec) -> list[str]:
    """One line per dataset of ``spec``: whether the real run will find it where it looks (the study's
    ``data_dir``, else the default). Each dataset's test split is read, so a truncated file shows too;
    nothing is downloaded. The rehearsal itself needs none of them."""
    from transfer.engine.data import create_dataset

    data_dir = spec.train.get("data_dir")
    lines = []
    for name in dict.fromkeys(run.dataset for run in (*spec.sources, *spec.targets)):
        try:
            test = create_dataset(name, "test", data_dir=data_dir, download=False)
        except Exception as exc:  # whatever keeps the real run from reading it, reported, not raised
            first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
            hint = " (the real run may download it: download = true)" if spec.train.get("download") else ""
            lines.append(f"{name}: NOT FOUND — {first}{hint}")
        else:
            lines.append(f"{name}: found, {len(test)} test images from {test.info.source}")
    return lines


def check_out_dir(out: Path, rehearse: bool) -> None:
    """A rehearsal never writes into a real study's directory, nor a real run into a rehearsal's."""
    marked = (out / MARKER).is_file()
    if rehearse and not marked and (out / "plan.json").is_file():
        raise ValueError(f"{out} holds a real study; give the rehearsal another --out (default: <name>{SUFFIX})")
    if not rehearse and marked:
        raise ValueError(
            f"{out} holds a rehearsal (its numbers are meaningless; see {out / MARKER}); "
            "give the real run another --out"
        )


def write_marker(out: Path, spec: StudySpec, data: list[str]) -> Path:
    """The :data:`MARKER` file of a rehearsal of ``spec`` (the real one): what was rehearsed, at which
    settings, and where the real run will find its data (:func:`data_check`)."""
    from transfer.atomic import write_text

    out.mkdir(parents=True, exist_ok=True)
    lines = [*rehearsal_notes(spec), "data check (where the real run will look):", *(f"  {line}" for line in data)]
    return write_text(out / MARKER, "\n".join(lines) + "\n")


@dataclass
class Rehearsal:
    """A rehearsal ready to run: its spec, study directory, the data check's lines and any difference between
    its plan and the real one."""

    spec: StudySpec
    out: Path
    notes: list[str]
    data: list[str]
    differences: list[str]

    def lines(self) -> list[str]:
        """What to tell the user before the jobs run."""
        out = [*self.notes, f"study directory: {self.out}", "data check (where the real run will look):"]
        out += [f"  {line}" for line in self.data]
        out += [f"WARNING: the rehearsal's plan is not the real one's: {line}" for line in self.differences]
        return out

    def verdict(self, ok: bool, seconds: float) -> str:
        """The last line of a rehearsal: whether every job ran, and that its numbers mean nothing."""
        return (
            f"REHEARSAL {'passed' if ok else 'FAILED'} (jobs {seconds:.0f}s): the numbers above are meaningless "
            f"({self.out / MARKER})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "marker": str(self.out / MARKER),
            "data": self.data,
            "plan_differences": self.differences,
            "note": "a rehearsal: every number is meaningless",
        }


def prepare_rehearsal(spec: StudySpec, out: str | Path | None) -> Rehearsal:
    """Check ``spec`` (the real config: it must plan), its data and the study directory (default
    :func:`default_out`), write the marker, and return the rehearsal to run with :func:`run_rehearsal_job`."""
    from .planner import plan_study

    out_dir = Path(out) if out is not None else default_out(spec)
    check_out_dir(out_dir, rehearse=True)
    rehearsal = rehearsal_spec(spec)
    real = plan_study(spec, check_mapping=False)
    try:
        toy = plan_study(rehearsal, check_mapping=False)
    except SpecError as exc:  # per-run overrides of a shrunk field made two rows train the same
        raise ValueError(
            f"the rehearsal cannot keep the plan of {spec.path or spec.name}: at toy size ({'; '.join(exc.problems)})"
        ) from None
    differences = structure_differences(real.jobs, toy.jobs)
    data = data_check(spec)
    write_marker(out_dir, spec, data)
    return Rehearsal(rehearsal, out_dir, rehearsal_notes(spec), data, differences)
