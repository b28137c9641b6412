"""The planner: a validated spec → a DAG of jobs with stable ids, checked before anything trains.

Per seed, with S sources, T targets, B baselines and the declared transfer cells (every source into every
target under every policy when ``[[transfers]]`` is absent: S·T·P):

- S **source** jobs: each source's activation trained in place on its arch/dataset; its activation set
  goes to the study zoo (``DIR/zoo``);
- one **target** (transfer) job per cell and policy: a fresh target backbone with the source's stored
  activation injected by the policy and frozen, trained with the study recipe; it depends on its source;
- B·T **baseline** jobs: each target trained with ReLU, Sparta in place, … — once per target and seed.

A source that is a zoo entry (``zoo = "NAME@VERSION"``, ``studies.zoo_sources``) has no source job: its
transfer jobs inject the stored set and depend on nothing; its card's threat model must be each target's.

**One training, one job.** A baseline that would train exactly what a source trains (Sparta in place on
the source's own arch and dataset, with the same settings) is not planned again: the source job shows in
the baseline's row too (``Job.also``). Two baselines that would train the same thing are an error.

**The freezing control.** A transfer back into its source's own arch and dataset would otherwise share the
source's initialisation and batch order, and measure freezing alone. It trains with its own seed
(``derive_seed(seed, FREEZING_CONTROL_STREAM)``) and its row says ``(freezing control)``; its ``seed``
column stays the study seed, so it pairs with the other rows of its seed.

A (source, target, policy) whose sites cannot be mapped — e.g. ``dw`` Sparta between architectures of
different widths under ``exact`` — is found here by building both backbones and mapping their site
tables, and is left out of the plan and listed in ``Plan.incompatible`` with the reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from . import labels
from .backbone_checks import SiteTables, build_problem, mapping_problem, set_mapping_problem
from .jobs import Job, job_id
from .plugins import job_plugins
from .spec import EVAL_TRAIN_KEYS, BaselineSpec, SourceSpec, SpecError, StudySpec, TargetSpec
from .zoo_sources import ZOO_PREFIX, load_zoo_source, threat_problem

__all__ = ["EVAL_TO_TRAIN", "FREEZING_CONTROL_STREAM", "MAX_JOBS", "Plan", "column_label", "plan_study"]

column_label = labels.column_label
# [eval] key → TrainConfig field (train() evaluates the final model on the test split).
EVAL_TO_TRAIN = {key: name for name, key in EVAL_TRAIN_KEYS.items()}
# Fields that do not change a job's result, so they stay out of its id.
_NOT_HASHED = ("device", "data_dir", "download", "transfer_source", "compile")  # how a job runs, not what
# Fields added after studies were run, with their defaults: hashed only when they differ from the default,
# so the ids of those studies stay as they were.
_HASHED_UNLESS_DEFAULT: dict[str, Any] = {
    "model_kwargs": {}, "optimizer": "sgd", "activation_lr_scale": 1.0, "attack_bn_mode": "eval",
    "cpu_bf16": False, "init_from": None, "dataset_fingerprint": "",
}  # fmt: skip
FREEZING_CONTROL_STREAM = 1  # derive_seed(seed, this): the training seed of a freezing-control transfer
MAX_JOBS = 20_000  # jobs one study may plan (a typo in `seeds` should not plan a million)


@dataclass
class Plan:
    """The jobs of a study in a runnable order (every job after the jobs it depends on)."""

    name: str
    jobs: list[Job]
    incompatible: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        kinds = {k: sum(j.kind == k for j in self.jobs) for k in ("source", "target", "baseline")}
        shared = sum(len(j.also) for j in self.jobs)
        n_seeds = max(len(self.seeds), 1)
        return {
            "total": len(self.jobs),
            "seeds": len(self.seeds),
            **kinds,
            "shared": shared,  # rows shown by a job of another row (one training, one job)
            "per_seed": {k: v // n_seeds for k, v in kinds.items()},
            "incompatible": len(self.incompatible),
        }

    def job(self, jid: str) -> Job:
        for j in self.jobs:
            if j.id == jid:
                return j
        raise KeyError(f"no job {jid!r} in study {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seeds": self.seeds,
            "counts": self.counts(),
            "incompatible": self.incompatible,
            "jobs": [j.to_dict() for j in self.jobs],
        }


class _Resolver:
    """Builds, validates and resolves each job's TrainConfig; problems are collected as spec errors."""

    def __init__(self, spec: StudySpec) -> None:
        from transfer.engine.config import TrainConfig
        from transfer.engine.training import resolve_config

        self.spec, self._cls, self._resolve = spec, TrainConfig, resolve_config
        self.problems: list[str] = []
        self.eval = {EVAL_TO_TRAIN[k]: v for k, v in spec.eval.items() if v is not None and k in EVAL_TO_TRAIN}

    def __call__(self, key: str, overrides: dict[str, Any], owned: dict[str, Any]) -> dict[str, Any] | None:
        raw = {**self.spec.train, **overrides, **self.eval, **owned}
        try:
            config = self._cls.from_dict(raw).validate()
            return self._resolve(config).to_dict()
        except (ValueError, TypeError) as exc:
            problem = f"{key}: {exc}"
            if problem not in self.problems:
                self.problems.append(problem)
            return None


def _hashed_train(train: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides a job's result."""
    return {
        k: v
        for k, v in train.items()
        if k not in _NOT_HASHED and not (k in _HASHED_UNLESS_DEFAULT and v == _HASHED_UNLESS_DEFAULT[k])
    }


def _hash_config(
    kind: str, train: dict[str, Any], source: str | None, sanity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a job's id hashes; the sanity checks' options only when asked for, so ids stay as they were."""
    config = {"kind": kind, "source": source, "train": _hashed_train(train)}
    return config if sanity is None else {**config, "sanity": sanity}


def _check_labels(spec: StudySpec) -> None:
    """Sources, targets and baselines each name distinct rows and columns."""
    problems = []
    seen: dict[str, str] = {}
    rows = [(f"sources[{i}]", _source_label(s)) for i, s in enumerate(spec.sources)]
    rows += [(f"baselines[{i}]", _baseline_label(b)) for i, b in enumerate(spec.baselines)]
    for key, label in rows:
        if label in seen:
            problems.append(
                f"{key}: its row {label!r} is already {seen[label]}'s; give each its own arch, dataset, variant, "
                "options or label"
            )
        seen.setdefault(label, key)
    targets: dict[str, int] = {}
    for i, t in enumerate(spec.targets):
        column = column_label(t.arch, t.dataset)
        if column in targets:
            same = (spec.targets[targets[column]].arch, spec.targets[targets[column]].dataset) == (t.arch, t.dataset)
            problems.append(
                f"targets[{i}]: {column} is already targets[{targets[column]}]"
                + ("" if same else " (two datasets of one name: rename one of their folders or files)")
            )
        targets.setdefault(column, i)
    per_seed = sum(s.zoo is None for s in spec.sources) + len(spec.baselines) * len(spec.targets)
    per_seed += sum(len(cell.policies) for cell in spec.transfer_cells())
    runs = len(spec.seeds) * len(spec.sweep_points())
    if per_seed * runs > MAX_JOBS:
        problems.append(
            f"seeds: {runs} seed(s) and sweep point(s) × {per_seed} jobs each = {per_seed * runs} jobs, more "
            f"than the {MAX_JOBS} one study may plan; use fewer seeds or split the study"
        )
    if problems:
        raise SpecError(problems, origin=spec.path or "study spec")


def _source_label(s: SourceSpec) -> str:
    if s.zoo is not None:
        return labels.zoo_source_label(s.activation, s.activation_config, s.zoo)
    return labels.source_label(s.activation, s.activation_config, s.arch, s.dataset)


def _baseline_label(b: BaselineSpec) -> str:
    return b.label or labels.baseline_label(b.activation, b.activation_config, b.train)


class _Planner:
    """Expands one spec; collects configuration problems and unmappable transfers on the way."""

    def __init__(self, spec: StudySpec, check_mapping: bool) -> None:
        self.spec, self.check = spec, check_mapping
        self.resolve = _Resolver(spec)
        self.tables = SiteTables()
        self.build_problems: list[str] = []
        self.incompatible: list[dict[str, Any]] = []
        self._mapping: dict[tuple[Any, ...], str | None] = {}
        self.point: dict[str, Any] = {}  # the point of the [sweep] being planned
        self.plugins = job_plugins(spec.plugins)

    def planned(
        self,
        key: str,
        kind: str,
        seed: int,
        arch: str,
        dataset: str,
        overrides: dict[str, Any],
        owned: dict[str, Any],
        zoo_source: str | None = None,
        **fields: Any,
    ) -> Job | None:
        """The one build-and-check of every job: resolve its config (problems collected), build its
        backbone once (on the first seed) to catch settings it cannot take, and make the job (at the
        current point of the study's sweep). A transfer from a zoo entry names it in ``zoo_source``
        (``zoo:NAME@VERSION``): in its id's hash, its config's ``transfer_source`` and ``extra``."""
        if zoo_source is not None:
            owned = {**owned, "transfer_source": zoo_source}
        train = self.resolve(key, {**overrides, **self.point}, {"arch": arch, "dataset": dataset, **owned})
        if train is None:
            return None
        if self.check and seed == self.spec.seeds[0]:
            problem = build_problem(self.tables, key, train)
            if problem and problem not in self.build_problems:
                self.build_problems.append(problem)
        source = fields.get("source_job") or zoo_source
        jid = job_id(kind, arch, dataset, seed, _hash_config(kind, train, source, self.spec.eval.get("sanity")))
        fields.setdefault("source_job", None)
        fields.setdefault("policy", None)
        if kind == "source":
            fields["zoo_name"] = jid
        extra: dict[str, Any] = {"sweep": dict(self.point)} if self.point else {}
        if zoo_source is not None:
            extra["zoo_source"] = zoo_source
        return Job(
            id=jid,
            kind=kind,
            seed=seed,
            arch=arch,
            dataset=dataset,
            train=train,
            eval=dict(self.spec.eval),
            column=column_label(arch, dataset, self.point),
            extra=extra,
            plugins=self.plugins,
            **fields,
        )

    def sources(self, seed: int) -> list[tuple[int, SourceSpec, Job]]:
        out = []
        for i, s in enumerate(self.spec.sources):
            if s.zoo is not None:  # stored already: nothing to train
                continue
            owned = {"seed": seed, "activation": s.activation, "activation_config": s.activation_config}
            row = f"{labels.activation_label(s.activation, s.activation_config)} (source)"
            job = self.planned(
                f"sources[{i}]",
                "source",
                seed,
                s.arch,
                s.dataset,
                s.train,
                owned,
                activation=s.activation,
                variant=s.variant,
                row=row,
            )
            if job is not None:
                out.append((i, s, job))
        return out

    def baselines(self, seed: int, ti: int, t: TargetSpec, sources: list[Job]) -> list[Job]:
        """The target's baselines; one that trains what a source job trains becomes a row of that job."""
        out: list[Job] = []
        seen: dict[str, str] = {}
        for bi, b in enumerate(self.spec.baselines):
            owned = {"seed": seed, "activation": b.activation, "activation_config": b.activation_config}
            job = self.planned(
                f"targets[{ti}]",
                "baseline",
                seed,
                t.arch,
                t.dataset,
                {**t.train, **b.train},
                owned,
                activation=b.activation,
                variant=b.variant,
                row=_baseline_label(b),
            )
            if job is None:
                continue
            same = _hashed_train(job.train)
            twin = next((s for s in sources if _hashed_train(s.train) == same), None)
            if twin is not None:
                twin.also.append({"kind": "baseline", "row": job.row, "column": job.column})
                continue
            key = repr(sorted(same.items()))
            problem = (
                f"baselines[{bi}]: trains the same as the row {seen.get(key)!r} on {t.arch} / {t.dataset} "
                "(one training, one row): remove one of them"
            )
            if key in seen and problem not in self.resolve.problems:
                self.resolve.problems.append(problem)
            seen.setdefault(key, job.row)
            out.append(job)
        return out

    def transfers(self, seed: int, ti: int, t: TargetSpec, sources: dict[int, tuple[SourceSpec, Job]]) -> list[Job]:
        out = []
        for cell in self.spec.transfer_cells():
            if cell.target == ti and self.spec.sources[cell.source].zoo is not None:
                out.extend(self.zoo_transfers(seed, cell.source, ti, t, cell.policies))
            if cell.target != ti or cell.source not in sources:
                continue
            s, src = sources[cell.source]
            freezing = (s.arch, s.dataset) == (t.arch, t.dataset)
            train_seed = _derive_seed(seed, FREEZING_CONTROL_STREAM) if freezing else seed
            for policy in cell.policies:
                owned = {
                    "seed": train_seed,
                    "activation": s.activation,
                    "activation_config": s.activation_config,
                    "policy": policy,
                    "freeze": True,
                }
                row = labels.transfer_label(_source_label(s), policy, freezing)
                job = self.planned(
                    f"targets[{ti}]",
                    "target",
                    seed,
                    t.arch,
                    t.dataset,
                    t.train,
                    owned,
                    activation=s.activation,
                    variant=s.variant,
                    policy=policy,
                    source_job=src.id,
                    row=row,
                    deps=(src.id,),
                    zoo_name=src.zoo_name,
                )
                if job is not None and self._maps(cell.source, s, src, ti, t, job.train, policy, seed):
                    out.append(job)
        return out

    def zoo_transfers(self, seed: int, si: int, ti: int, t: TargetSpec, policies: tuple[str, ...]) -> list[Job]:
        """The transfers of zoo source ``si`` into target ``ti``: no source job to wait for; the entry's threat
        model checked against the job's (a mismatch is a problem of the plan)."""
        s = self.spec.sources[si]
        ref = f"{ZOO_PREFIX}{s.zoo}"
        out = []
        for policy in policies:
            owned = {
                "seed": seed,
                "activation": s.activation,
                "activation_config": s.activation_config,
                "policy": policy,
                "freeze": True,
            }
            job = self.planned(
                f"targets[{ti}]",
                "target",
                seed,
                t.arch,
                t.dataset,
                t.train,
                owned,
                zoo_source=ref,
                activation=s.activation,
                variant=s.variant,
                policy=policy,
                row=labels.transfer_label(_source_label(s), policy),
            )
            if job is None:
                continue
            problem = threat_problem(f"sources[{si}]", str(s.zoo), f"targets[{ti}]", job.column, job.train)
            if problem is not None:
                if problem not in self.resolve.problems:
                    self.resolve.problems.append(problem)
            elif self._maps(si, s, None, ti, t, job.train, policy, seed):
                out.append(job)
        return out

    def _maps(
        self,
        si: int,
        s: SourceSpec,
        src: Job | None,
        ti: int,
        t: TargetSpec,
        train: dict[str, Any],
        policy: str,
        seed: int,
    ) -> bool:
        """Whether the transfer maps (from ``src``'s trained set, or from zoo source ``s``'s stored one); an
        unmappable one is recorded once (first seed) and left out."""
        if not self.check:
            return True
        key = (si, ti, policy, repr(sorted(self.point.items())))
        if key not in self._mapping and src is None:
            self._mapping[key] = set_mapping_problem(self.tables, load_zoo_source(str(s.zoo)), train, policy)
        if key not in self._mapping:
            self._mapping[key] = mapping_problem(self.tables, src.train, train, policy)
        reason = self._mapping[key]
        if reason is not None and seed == self.spec.seeds[0]:
            self.incompatible.append(
                {
                    "source": _source_label(s),
                    "target": column_label(t.arch, t.dataset, self.point),
                    "policy": policy,
                    "reason": reason,
                }
            )
        return reason is None


def _derive_seed(seed: int, stream: int) -> int:
    from transfer.engine.checkpoint import derive_seed

    return derive_seed(seed, stream)


def plan_study(spec: StudySpec, *, check_mapping: bool = True) -> Plan:
    """Expand ``spec`` into jobs, per seed: sources, then per target its baselines and transfers.

    ``check_mapping`` builds every backbone once (shapes only) to verify that it can be built with the
    study's settings and that each transfer maps; unmappable transfers are left out and listed.
    """
    _check_labels(spec)
    planner = _Planner(spec, check_mapping)
    jobs: list[Job] = []
    for point, seed in itertools.product(spec.sweep_points(), spec.seeds):
        planner.point = point
        sources = planner.sources(seed)
        jobs.extend(job for _, _, job in sources)
        by_index = {i: (s, job) for i, s, job in sources}
        for ti, t in enumerate(spec.targets):
            same_place = [job for _, s, job in sources if (s.arch, s.dataset) == (t.arch, t.dataset)]
            jobs.extend(planner.baselines(seed, ti, t, same_place))
            jobs.extend(planner.transfers(seed, ti, t, by_index))
    origin = spec.path or "study spec"
    problems = planner.resolve.problems + planner.build_problems
    if problems:
        raise SpecError(problems, origin=origin)
    if spec.transfer_cells() and not any(j.kind == "target" for j in jobs):
        pairs = "; ".join(f"{i['source']} → {i['target']} [{i['policy']}]" for i in planner.incompatible[:6])
        raise SpecError(
            [
                f"policies: no (source, target, policy) can be mapped ({pairs}); use Sparta variant "
                "'portable' for transfers between widths, or a policy that fits (stage, depth, shared)"
            ],
            origin=origin,
        )
    return Plan(name=spec.name, jobs=jobs, incompatible=planner.incompatible, seeds=list(spec.seeds))
