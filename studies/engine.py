"""The default job function: one study job as a ``transfer.engine.training.train`` run.

- source: train the source's activation in place, then store the run's activation set in the study
  zoo (``DIR/zoo``) under the job's ``zoo_name``; the entry reference goes into the result.
- target: load the entry its source job stored (the exact version that job recorded), inject it
  into a fresh target backbone with the job's policy, frozen, and train the backbone.
- baseline: train the target with a fresh activation (ReLU, Sparta in place, …).

The job directory is the run directory, so an interrupted job resumes from its ``checkpoint.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .jobs import Job, read_result

__all__ = ["run_training_job", "study_zoo"]


def study_zoo(study_dir: str | Path) -> Any:
    """The study-local zoo registry (``DIR/zoo``; bundled entries left out)."""
    from zoo.registry import Registry

    return Registry(root=Path(study_dir) / "zoo", bundled_root=None)


def run_training_job(job: Job, job_dir: Path, study_dir: Path) -> dict[str, Any]:
    """Train ``job`` into ``job_dir``; returns ``{"metrics", "train_metrics", ["zoo_entry"]}``."""
    from transfer.activation_set import load_activation_set
    from transfer.engine.attacks import metric_name
    from transfer.engine.config import TrainConfig
    from transfer.engine.training import train

    config = TrainConfig.from_dict(job.train)
    registry = study_zoo(study_dir)
    activation_set = None
    entry = None
    if job.kind == "target":
        source = read_result(study_dir, job.source_job or "")
        if source is None or not source.get("zoo_entry"):
            raise RuntimeError(
                f"source job {job.source_job} has not finished; run the study in dependency order"
            )
        entry = source["zoo_entry"]
        activation_set = registry.load(entry)
        print(f"transfer: {entry} → {job.arch} / {job.dataset} with policy {job.policy!r}, frozen")
    metrics = train(config, job_dir, activation_set=activation_set, progress=False)
    names = [metric_name(a) for a in config.eval_attacks]
    result: dict[str, Any] = {
        "metrics": {name: float(metrics[name]) for name in names},
        "train_metrics": metrics,
    }
    if job.kind == "source":
        aset = load_activation_set(job_dir / "activation.safetensors")
        ref = registry.save(
            job.zoo_name or job.id,
            aset,
            card={"description": f"study source {job.id}: {job.row} on {job.column}", "tags": ["study"]},
        )
        result["zoo_entry"] = str(ref)
        print(f"stored the activation set as {ref} in {registry.root}")
    elif entry is not None:
        result["zoo_entry"] = entry
    return result
