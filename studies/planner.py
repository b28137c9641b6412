"""The planner: a validated spec → a DAG of jobs with stable ids, checked before anything trains.

Per seed, with S sources, T targets, P policies and B baselines:

- S **source** jobs: each source's activation trained in place on its arch/dataset; its activation
  set goes to the study zoo (``DIR/zoo``);
- S·T·P **target** (transfer) jobs: a fresh target backbone with the source's stored activation
  injected by a policy and frozen, trained with the study recipe; each depends on its source job;
- B·T **baseline** jobs: each target trained with ReLU, Sparta in place, … — once per target and
  seed, not per source.

S + S·T·P + B·T jobs per seed (S + S·T + B·T with one policy). A (source, target, policy) whose
sites cannot be mapped — e.g. ``dw`` Sparta between architectures of different widths under
``exact`` — is found here by building both backbones and mapping their site tables, and is left out
of the plan and listed in ``Plan.incompatible`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobs import Job, job_id
from .spec import BASELINE_IN_PLACE, EVAL_TRAIN_KEYS, SourceSpec, SpecError, StudySpec, TargetSpec

__all__ = ["ACTIVATION_LABELS", "EVAL_TO_TRAIN", "Plan", "column_label", "plan_study"]

ACTIVATION_LABELS = {
    "relu": "ReLU", "silu": "SiLU", "gelu": "GELU", "softplus": "Softplus", "prelu": "PReLU",
    "frelu": "FReLU", "sparta": "Sparta", "pssilu": "PSSiLU", "psoftplus": "PSoftplus",
}  # fmt: skip
# [eval] key → TrainConfig field (train() evaluates the final model on the test split).
EVAL_TO_TRAIN = {key: name for name, key in EVAL_TRAIN_KEYS.items()}
# Fields that do not change a job's result, so they stay out of its id.
_NOT_HASHED = ("device", "data_dir", "download", "transfer_source", "compile")  # how a job runs, not what
# Fields added after studies were run, with their defaults: hashed only when they differ from the default,
# so the ids of those studies stay as they were.
_HASHED_UNLESS_DEFAULT: dict[str, Any] = {"model_kwargs": {}, "optimizer": "sgd"}


@dataclass
class Plan:
    """The jobs of a study in a runnable order (every job after the jobs it depends on)."""

    name: str
    jobs: list[Job]
    incompatible: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        kinds = {k: sum(j.kind == k for j in self.jobs) for k in ("source", "target", "baseline")}
        n_seeds = max(len(self.seeds), 1)
        return {
            "total": len(self.jobs),
            "seeds": len(self.seeds),
            **kinds,
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


def column_label(arch: str, dataset: str) -> str:
    return f"{arch} / {dataset}"


def _activation_label(activation: str, config: dict[str, Any]) -> str:
    name = ACTIVATION_LABELS.get(activation, activation)
    variant = config.get("variant")
    rest = ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if k != "variant")
    return " ".join(p for p in (name, variant, f"({rest})" if rest else "") if p)


def _source_label(src: SourceSpec) -> str:
    return f"{_activation_label(src.activation, src.activation_config)} ← {src.arch}/{src.dataset}"


def _baseline(name: str) -> tuple[str, dict[str, Any], str]:
    """Baseline name → (activation, config, row label)."""
    if name.startswith(BASELINE_IN_PLACE):
        variant = name.partition(":")[2] or "dw"
        label = "Sparta (in place)" if variant == "dw" else f"Sparta {variant} (in place)"
        return "sparta", {"variant": variant}, label
    return name, {}, ACTIVATION_LABELS.get(name, name)


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


def _hash_config(
    kind: str, train: dict[str, Any], source: str | None, sanity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a job's id hashes; the sanity checks' options only when asked for, so ids stay as they were."""
    hashed = {
        k: v for k, v in train.items()
        if k not in _NOT_HASHED and not (k in _HASHED_UNLESS_DEFAULT and v == _HASHED_UNLESS_DEFAULT[k])
    }
    config = {"kind": kind, "source": source, "train": hashed}
    return config if sanity is None else {**config, "sanity": sanity}


def _check_labels(spec: StudySpec) -> None:
    problems = []
    seen: dict[str, int] = {}
    for i, s in enumerate(spec.sources):
        label = _source_label(s)
        if label in seen:
            problems.append(
                f"sources[{i}]: same arch, dataset and activation as sources[{seen[label]}] "
                f"({label}); give each source its own arch, dataset, variant or options"
            )
        seen.setdefault(label, i)
    targets: dict[tuple[str, str], int] = {}
    for i, t in enumerate(spec.targets):
        if (t.arch, t.dataset) in targets:
            problems.append(
                f"targets[{i}]: {t.arch} / {t.dataset} is already targets[{targets[t.arch, t.dataset]}]"
            )
        targets.setdefault((t.arch, t.dataset), i)
    if problems:
        raise SpecError(problems, origin=spec.path or "study spec")


class _SiteTables:
    """Site tables of the backbones a study builds, built once per (arch, channels, size, width)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], Any] = {}

    def __call__(self, train: dict[str, Any]) -> list[Any]:
        import torch

        from transfer.backbones import create_backbone
        from transfer.engine.data import dataset_info
        from transfer.sites import find_sites

        num_classes = dataset_info(train["dataset"]).num_classes
        model_kwargs = dict(train.get("model_kwargs") or {})
        key = (train["arch"], train["in_chans"], train["input_size"], train["width"], num_classes,
               repr(sorted(model_kwargs.items())))
        if key not in self._cache:
            arch, c, size, width, _, _ = key
            try:  # shapes only: on the meta device nothing is allocated or initialised
                with torch.device("meta"):
                    model = create_backbone(
                        arch, num_classes=num_classes, in_chans=c, input_size=size, width=width, **model_kwargs
                    )
                sites = find_sites(model.eval(), (c, size, size))
            except ValueError:  # a setting the backbone refuses, with its own message
                raise
            except Exception:  # an op without a meta kernel, or a model that cannot run here: try the CPU
                model = create_backbone(
                    arch, num_classes=num_classes, in_chans=c, input_size=size, width=width, **model_kwargs
                )
                sites = find_sites(model.eval(), (c, size, size))
            self._cache[key] = sites
        return self._cache[key]


def _mapping_problem(
    tables: _SiteTables, src_train: dict[str, Any], tgt_train: dict[str, Any], policy: str
) -> str | None:
    """Why ``policy`` cannot map the source's sites onto the target's, or None if it can."""
    from transfer.activations import create_activation
    from transfer.mapping import MappingError, map_sites

    name, config = src_train["activation"], src_train["activation_config"]
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def shape(channels: int) -> dict[str, tuple[int, ...]]:
        if channels not in shapes:
            state = create_activation(name, channels, **config).state_dict()
            shapes[channels] = {k: tuple(v.shape) for k, v in state.items()}
        return shapes[channels]

    try:
        source_sites, target_sites = tables(src_train), tables(tgt_train)
    except ValueError:  # a backbone that cannot be built is reported once, as a build problem
        return None
    try:
        map_sites(source_sites, target_sites, policy, lambda s, t: shape(s.channels) == shape(t.channels))
    except MappingError as exc:
        return str(exc)
    return None


def _build_problem(tables: _SiteTables, key: str, train: dict[str, Any]) -> str | None:
    from transfer.layouts import layout_problem
    from transfer.sites import InputSizeError

    try:
        sites = tables(train)
    except InputSizeError as exc:
        return f"{key} ({train['arch']} on {train['dataset']}): {exc} (in [train], or in {key}.train)"
    except ValueError as exc:
        return f"{key} ({train['arch']} on {train['dataset']}): {exc}"
    if problem := layout_problem(train["activation"], sites, train["arch"]):  # a token grid it cannot find
        return f"{key} ({train['arch']} on {train['dataset']}): {problem}"
    return None


class _Planner:
    """Expands one spec; collects configuration problems and unmappable transfers on the way."""

    def __init__(self, spec: StudySpec, check_mapping: bool) -> None:
        self.spec, self.check = spec, check_mapping
        self.resolve = _Resolver(spec)
        self.tables = _SiteTables()
        self.build_problems: list[str] = []
        self.incompatible: list[dict[str, Any]] = []
        self._mapping: dict[tuple[int, int, str], str | None] = {}

    def _checked(self, key: str, train: dict[str, Any], first: bool) -> None:
        """Build the backbone (on the first seed; built once, cached) to catch settings it cannot take and
        activations its sites cannot hold."""
        problem = _build_problem(self.tables, key, train) if self.check and first else None
        if problem and problem not in self.build_problems:
            self.build_problems.append(problem)

    def _job(
        self, kind: str, seed: int, arch: str, dataset: str, train: dict[str, Any], **fields: Any
    ) -> Job:
        source = fields.get("source_job")
        jid = job_id(kind, arch, dataset, seed, _hash_config(kind, train, source, self.spec.eval.get("sanity")))
        fields.setdefault("source_job", None)
        fields.setdefault("policy", None)
        if kind == "source":
            fields["zoo_name"] = jid
        return Job(
            id=jid,
            kind=kind,
            seed=seed,
            arch=arch,
            dataset=dataset,
            train=train,
            eval=dict(self.spec.eval),
            **fields,
        )

    def sources(self, seed: int) -> list[tuple[int, SourceSpec, Job]]:
        out = []
        for i, s in enumerate(self.spec.sources):
            owned = {
                "arch": s.arch,
                "dataset": s.dataset,
                "seed": seed,
                "activation": s.activation,
                "activation_config": s.activation_config,
            }
            train = self.resolve(f"sources[{i}]", s.train, owned)
            if train is None:
                continue
            self._checked(f"sources[{i}]", train, seed == self.spec.seeds[0])
            row = f"{_activation_label(s.activation, s.activation_config)} (source)"
            job = self._job(
                "source",
                seed,
                s.arch,
                s.dataset,
                train,
                activation=s.activation,
                variant=s.variant,
                row=row,
                column=column_label(s.arch, s.dataset),
            )
            out.append((i, s, job))
        return out

    def baselines(self, seed: int, ti: int, t: TargetSpec) -> list[Job]:
        out = []
        for b in self.spec.baselines:
            activation, config, label = _baseline(b)
            owned = {
                "arch": t.arch,
                "dataset": t.dataset,
                "seed": seed,
                "activation": activation,
                "activation_config": config,
            }
            train = self.resolve(f"targets[{ti}]", t.train, owned)
            if train is None:
                continue
            self._checked(f"targets[{ti}]", train, seed == self.spec.seeds[0])
            out.append(
                self._job(
                    "baseline",
                    seed,
                    t.arch,
                    t.dataset,
                    train,
                    activation=activation,
                    variant=config.get("variant"),
                    row=label,
                    column=column_label(t.arch, t.dataset),
                )
            )
        return out

    def transfers(
        self, seed: int, ti: int, t: TargetSpec, sources: list[tuple[int, SourceSpec, Job]]
    ) -> list[Job]:
        out = []
        for si, s, src in sources:
            for policy in self.spec.policies:
                owned = {
                    "arch": t.arch,
                    "dataset": t.dataset,
                    "seed": seed,
                    "activation": s.activation,
                    "activation_config": s.activation_config,
                    "policy": policy,
                    "freeze": True,
                }
                train = self.resolve(f"targets[{ti}]", t.train, owned)
                if train is not None:
                    self._checked(f"targets[{ti}]", train, seed == self.spec.seeds[0])
                if train is None or not self._maps(si, s, src, ti, t, train, policy, seed):
                    continue
                out.append(
                    self._job(
                        "target",
                        seed,
                        t.arch,
                        t.dataset,
                        train,
                        activation=s.activation,
                        variant=s.variant,
                        policy=policy,
                        source_job=src.id,
                        row=f"{_source_label(s)} [{policy}]",
                        column=column_label(t.arch, t.dataset),
                        deps=(src.id,),
                        zoo_name=src.zoo_name,
                    )
                )
        return out

    def _maps(
        self,
        si: int,
        s: SourceSpec,
        src: Job,
        ti: int,
        t: TargetSpec,
        train: dict[str, Any],
        policy: str,
        seed: int,
    ) -> bool:
        """Whether the transfer maps; an unmappable one is recorded once (first seed) and left out."""
        if not self.check:
            return True
        key = (si, ti, policy)
        if key not in self._mapping:
            self._mapping[key] = _mapping_problem(self.tables, src.train, train, policy)
        reason = self._mapping[key]
        if reason is not None and seed == self.spec.seeds[0]:
            self.incompatible.append(
                {
                    "source": _source_label(s),
                    "target": column_label(t.arch, t.dataset),
                    "policy": policy,
                    "reason": reason,
                }
            )
        return reason is None


def plan_study(spec: StudySpec, *, check_mapping: bool = True) -> Plan:
    """Expand ``spec`` into jobs, per seed: sources, then per target its baselines and transfers.

    ``check_mapping`` builds every backbone once (shapes only) to verify that it can be built with the
    study's settings and that each transfer maps; unmappable transfers are left out and listed.
    """
    _check_labels(spec)
    planner = _Planner(spec, check_mapping)
    jobs: list[Job] = []
    for seed in spec.seeds:
        sources = planner.sources(seed)
        jobs.extend(job for _, _, job in sources)
        for ti, t in enumerate(spec.targets):
            jobs.extend(planner.baselines(seed, ti, t))
            jobs.extend(planner.transfers(seed, ti, t, sources))
    origin = spec.path or "study spec"
    problems = planner.resolve.problems + planner.build_problems
    if problems:
        raise SpecError(problems, origin=origin)
    if not any(j.kind == "target" for j in jobs):
        pairs = "; ".join(f"{i['source']} → {i['target']} [{i['policy']}]" for i in planner.incompatible[:6])
        raise SpecError(
            [
                f"policies: no (source, target, policy) can be mapped ({pairs}); use Sparta variant "
                "'portable' for transfers between widths, or a policy that fits (stage, depth, shared)"
            ],
            origin=origin,
        )
    return Plan(name=spec.name, jobs=jobs, incompatible=planner.incompatible, seeds=list(spec.seeds))
