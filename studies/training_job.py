"""The default job function: one study job as a ``transfer.engine.training.train`` run.

- source: train the source's activation in place, then store the run's activation set in the study
  zoo (``DIR/zoo``) under the job's ``zoo_name``; the entry reference goes into the result.
- target: load the entry its source job stored (the exact version that job recorded) — or, for a zoo
  source, the pinned entry of the user's zoo (``extra["zoo_source"]``) — inject it into a fresh target
  backbone with the job's policy, frozen, and train the backbone.
- baseline: train the target with a fresh activation (ReLU, Sparta in place, …).

The job directory is the run directory, so an interrupted job resumes from its ``checkpoint.pt``.
With ``[eval] sanity``, each job then runs the gradient-masking checks of ``transfer.engine.sanity`` on
its model and writes them to ``sanity.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .jobs import Job, read_result
from .jobs import job_dir as run_dir_of
from .zoo_sources import ZOO_PREFIX, load_zoo_source

__all__ = ["SANITY_FILE", "changed_dataset_error", "run_sanity", "run_training_job", "study_zoo"]

SANITY_FILE = "sanity.json"


def study_zoo(study_dir: str | Path) -> Any:
    """The study-local zoo registry (``DIR/zoo``; bundled entries left out)."""
    from zoo.registry import Registry

    return Registry(root=Path(study_dir) / "zoo", bundled_root=None)


def run_training_job(job: Job, job_dir: Path, study_dir: Path) -> dict[str, Any]:
    """Train ``job`` into ``job_dir``; returns ``{"metrics", "train_metrics", ["zoo_entry"]}``."""
    from transfer.activation_set import load_activation_set
    from transfer.attack_names import metric_name
    from transfer.engine.config import TrainConfig
    from transfer.engine.run_inputs import DatasetChangedError
    from transfer.engine.training import train

    config = TrainConfig.from_dict(job.train)
    registry = study_zoo(study_dir)
    activation_set = None
    entry = None
    if job.kind == "target" and job.extra.get("zoo_source"):
        entry = str(job.extra["zoo_source"])
        activation_set = load_zoo_source(entry.removeprefix(ZOO_PREFIX))
        print(f"transfer: {entry} (the user's zoo) → {job.arch} / {job.dataset} with policy {job.policy!r}, frozen")
    elif job.kind == "target":
        source = read_result(study_dir, job.source_job or "")
        if source is None or not source.get("zoo_entry"):
            raise RuntimeError(f"source job {job.source_job} has not finished; run the study in dependency order")
        entry = source["zoo_entry"]
        activation_set = _load_or_repair(registry, entry, source, Path(study_dir))
        print(f"transfer: {entry} → {job.arch} / {job.dataset} with policy {job.policy!r}, frozen")
    try:
        metrics = train(config, job_dir, activation_set=activation_set, progress=False)
    except DatasetChangedError as exc:  # in the study's words: what to do is about the study, not one run
        from transfer.engine.data import dataset_info

        now = dataset_info(config.dataset).fingerprint
        raise changed_dataset_error(
            config.dataset, config.dataset_fingerprint, now, "the study planned this job on it"
        ) from exc
    names = [metric_name(a) for a in config.eval_attacks]
    result: dict[str, Any] = {
        "metrics": {name: float(metrics[name]) for name in names},
        "train_metrics": metrics,
    }
    if job.kind == "source":
        aset = load_activation_set(job_dir / "activation.safetensors")
        ref = registry.save(job.zoo_name or job.id, aset, card=_source_card(job.id, job.row, job.column))
        result["zoo_entry"] = str(ref)
        print(f"stored the activation set as {ref} in {registry.root}")
    elif job.extra.get("zoo_source"):
        result["zoo_source"] = entry
    elif entry is not None:
        result["zoo_entry"] = entry
    if job.eval.get("sanity") is not None:
        result["sanity"] = run_sanity(job_dir, dict(job.eval["sanity"]))
    return result


def changed_dataset_error(dataset: str, then: str, now: str, since: str) -> Exception:
    """The ``DatasetChangedError`` of a study whose ``folder:``/``npz:`` dataset changed ``since`` something,
    in one line: which dataset, both fingerprints, and what to do."""
    from transfer.engine.run_inputs import DatasetChangedError

    return DatasetChangedError(
        f"dataset {dataset!r} changed since {since} (fingerprint {then[:12]}… then, {now[:12]}… now: files added, "
        "removed or edited); restore the files and run the study again to resume it, or run it into another --out "
        "to start afresh on the new data"
    )


def _source_card(job_id: str, row: str, column: str) -> dict[str, Any]:
    return {"description": f"study source {job_id}: {row} on {column}", "tags": ["study"]}


def _load_or_repair(registry: Any, entry: str, source: dict[str, Any], study_dir: Path) -> Any:
    """The study-zoo entry a source job stored; if it is corrupt or gone, it is written again from the
    source job's own run directory (its ``activation.safetensors``), under the same reference."""
    from transfer.activation_set import load_activation_set
    from zoo.errors import ZooError

    try:
        return registry.load(entry)
    except ZooError as exc:
        problem = exc
    spec = source.get("job") or {}
    run_file = run_dir_of(study_dir, source["job_id"]) / "activation.safetensors"
    try:
        aset = load_activation_set(run_file)
        registry.repair(
            entry, None, aset, card=_source_card(source["job_id"], spec.get("row", ""), spec.get("column", ""))
        )
    except (ValueError, OSError) as exc:
        raise RuntimeError(
            f"the study zoo entry {entry} is broken ({problem}) and the source run cannot restore it ({exc}); "
            f"delete {run_file.parent / 'result.json'} and run the study again to retrain the source"
        ) from exc
    print(f"repaired the study zoo entry {entry} from {run_file} (it was: {problem})")
    return registry.load(entry)


def run_sanity(job_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The gradient-masking checks of a finished job's model (``[eval] sanity``), written to
    ``sanity.json`` in its directory; returns whether they passed and which failed."""
    from transfer.atomic import write_json
    from transfer.engine.sanity import sanity_check_run

    report = sanity_check_run(job_dir, **options)
    write_json(job_dir / SANITY_FILE, {"options": options, **report.to_dict()})
    for line in report.lines():
        print(f"sanity: {line}")
    return {"passed": report.passed, "failed": report.failed}
