"""Study specs: a TOML file, parsed with ``tomllib`` and validated before anything trains.

Every problem found is reported at once, each naming its key (``sources[1].arch``) and what is allowed
there (the checks are in ``studies/spec_check.py``; ``[eval]``'s in ``spec_eval.py``, ``plugins``' in
``plugins.py``, a zoo source's in ``zoo_sources.py``). The layout (see ``docs/studies.md``)::

    name = "quickstart"
    seeds = [0, 1, 2]
    policies = ["role"]                      # exact | stage | role | depth | shared (default: role)
    baselines = [                            # rows trained in place on every target
        "relu", "silu", "sparta-in-place",   # a name: any registry activation, "sparta-in-place[:<variant>]"
        { activation = "sparta", options = { kernel_size = 1 } },   # or a configuration of one
        { activation = "sparta", train = { activation_weight_decay = 0.0 }, label = "Sparta, no gate wd" },
    ]

    [train]                                  # any TrainConfig field
    epochs = 2

    [eval]
    attacks = ["clean", "fgsm", "pgd20"]
    n = 500
    sanity = false                           # true or {n = 200, …}: gradient-masking checks per job

    plugins = ["my_plugins"]                 # optional: modules registering datasets/models (studies.plugins)

    [[sources]]
    arch = "resnet18"
    dataset = "digits"
    activation = "sparta"                    # default
    variant = "dw"                           # default (Sparta only)

    [[sources]]                              # or a stored zoo entry: trains nothing (studies.zoo_sources)
    zoo = "digits-resnet18-sparta-dw@2"

    [[targets]]
    arch = "resnet34"
    dataset = "digits"
    train = { lr = 0.01 }                    # per-target (and per-source, per-baseline) train overrides

    [[transfers]]                            # optional: which (source, target) cells to run; default all
    source = "resnet18/digits"               # "arch/dataset" of a source, or its index
    target = "resnet34/digits"
    policies = ["stage", "role"]             # default: the study's policies

    [sweep]                                  # optional: every job once per combination of these values
    eps = [0.05, 0.1]                        # any TrainConfig field the study does not own
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BASELINE_IN_PLACE",
    "DEFAULT_POLICY",
    "EVAL_TRAIN_KEYS",
    "MAX_SEEDS",
    "SANITY_OPTIONS",
    "STUDY_OWNED_TRAIN_KEYS",
    "BaselineSpec",
    "SourceSpec",
    "SpecError",
    "StudySpec",
    "TargetSpec",
    "TransferSpec",
    "load_spec",
    "parse_spec",
    "train_fields",
]

BASELINE_IN_PLACE = "sparta-in-place"
# TrainConfig fields a study sets itself from its sources, targets, seeds and policies.
STUDY_OWNED_TRAIN_KEYS = (
    "arch", "dataset", "seed", "activation", "activation_config", "policy", "freeze", "in_chans",
    "num_classes",
)  # fmt: skip
# TrainConfig fields the [eval] table sets (TrainConfig field → [eval] key).
EVAL_TRAIN_KEYS = {
    "eval_attacks": "attacks",
    "test_subset": "n",
    "eval_batch_size": "batch_size",
    "eval_eps": "eps",
}
# [eval] sanity = {…} options → sanity_check keywords (n: the test images checked, default all of [eval] n)
SANITY_OPTIONS = ("n", "steps", "restarts", "square_queries", "noise_samples", "apgd_iter", "tolerance")
MAX_SEEDS = 1000  # seeds a study may list: each one trains every job of the study once more
# The default mapping policy of a study's transfers: `role` (docs/sparta.md §5.4) keeps a gate trained after a
# residual add after one; `stage` mixes the two roles in about 14 of ResNet-34's 33 sites.
DEFAULT_POLICY = "role"


class SpecError(ValueError):
    """A study spec is invalid; ``problems`` lists each one as ``key: what is wrong``."""

    def __init__(self, problems: list[str], origin: str = "study spec") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{origin} is invalid ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class SourceSpec:
    """A source run: ``activation`` (``variant``, ``options``) trained in place on ``arch``/``dataset``; or, with
    ``zoo`` (a pinned ``NAME@VERSION``), a stored zoo entry that trains nothing (arch and dataset from its card,
    ``""`` where the card records none)."""

    arch: str
    dataset: str
    activation: str = "sparta"
    variant: str | None = "dw"
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    zoo: str | None = None

    @property
    def activation_config(self) -> dict[str, Any]:
        """Creation kwargs of the activation (``variant`` folded in for Sparta)."""
        extra = {"variant": self.variant} if self.variant is not None else {}
        return {**self.options, **extra}


@dataclass(frozen=True)
class TargetSpec:
    arch: str
    dataset: str
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BaselineSpec:
    """A row trained in place on every target: an activation configuration (``activation``, ``variant``,
    ``options``) with per-row ``train`` keys (e.g. ``activation_weight_decay``) and an optional ``label``."""

    activation: str
    variant: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def activation_config(self) -> dict[str, Any]:
        extra = {"variant": self.variant} if self.variant is not None else {}
        return {**self.options, **extra}

    @classmethod
    def from_name(cls, name: str) -> BaselineSpec:
        """``relu``, ``silu``, …; ``sparta-in-place`` (Sparta dw), ``sparta-in-place:<variant>``."""
        if name.startswith(BASELINE_IN_PLACE):
            return cls("sparta", name.partition(":")[2] or "dw")
        return cls(name)


@dataclass(frozen=True)
class TransferSpec:
    """One declared transfer cell: source index → target index, under ``policies``."""

    source: int
    target: int
    policies: tuple[str, ...]


@dataclass(frozen=True)
class StudySpec:
    name: str
    seeds: list[int]
    train: dict[str, Any]
    eval: dict[str, Any]
    sources: list[SourceSpec]
    targets: list[TargetSpec]
    policies: list[str]
    baselines: list[BaselineSpec]
    description: str = ""
    source_text: str = ""
    path: str | None = None
    # the (source, target) cells to run; None: every source into every target under every policy
    transfers: list[TransferSpec] | None = None
    # TrainConfig field → the values every job is trained at, crossed (a source and its transfers at one point)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    # modules of the user's imported where the spec is read and in every job's process (studies.plugins)
    plugins: list[str] = field(default_factory=list)

    def sweep_points(self) -> list[dict[str, Any]]:
        """Every combination of the sweep's values, in the order given (``[{}]`` without a sweep)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.sweep.items():
            points = [{**point, key: value} for point in points for value in values]
        return points

    def transfer_cells(self) -> list[TransferSpec]:
        """The declared transfers, or every source × target under the study's policies."""
        if self.transfers is not None:
            return list(self.transfers)
        return [
            TransferSpec(si, ti, tuple(self.policies))
            for ti in range(len(self.targets))
            for si in range(len(self.sources))
        ]


def train_fields() -> dict[str, Any]:
    """``TrainConfig`` field name → resolved type annotation."""
    from transfer.engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainConfig)}


def _train_fields_or_fail() -> dict[str, Any]:
    try:
        return train_fields()
    except ImportError as exc:
        raise SpecError([f"train: cannot read TrainConfig from transfer.engine.config ({exc})"]) from exc


def parse_spec(data: dict[str, Any], *, source_text: str = "", path: str | None = None) -> StudySpec:
    """Validate a parsed TOML document; raises :class:`SpecError` listing every problem."""
    from . import spec_check as check
    from .plugins import check_plugins
    from .spec_eval import evaluation

    c = check.Checker()
    c.unknown("", data, check.TOP_KEYS)
    plugins = check_plugins(c, data.get("plugins"))  # first: the sources and targets may name their datasets
    name = check.name(c, data.get("name"))
    seeds = check.seeds(c, data.get("seeds", [0]))
    description = data.get("description", "")
    c.typed("description", description, str, "a string")
    policies = check.policies(c, data.get("policies", [DEFAULT_POLICY]))
    fields = _train_fields_or_fail()
    baselines = check.baselines(c, data.get("baselines", ["relu", BASELINE_IN_PLACE]), fields)
    train = c.train("train", data.get("train", {}), fields)
    ev = evaluation(c, data.get("eval", {}))
    sources, targets = check.runs(c, data, fields)
    transfers = check.transfers(c, data.get("transfers"), sources, targets, policies)
    sweep = check.sweep(c, data.get("sweep", {}), fields, sources, targets, baselines)
    if c.problems:
        raise SpecError(c.problems, origin=path or "study spec")
    return StudySpec(
        name=name,
        seeds=list(seeds),
        train=train,
        eval=ev,
        sources=sources,
        targets=targets,
        policies=list(policies),
        baselines=baselines,
        description=description,
        source_text=source_text,
        path=path,
        transfers=transfers,
        sweep=sweep,
        plugins=plugins,
    )


def load_spec(path: str | os.PathLike[str]) -> StudySpec:
    """Read and validate a study TOML file (a path, or the name of a shipped config such as
    ``quickstart``)."""
    p = Path(path)
    if not p.is_file():
        shipped = Path(__file__).parent / "configs" / f"{p.name.removesuffix('.toml')}.toml"
        if p.suffix in ("", ".toml") and len(p.parts) == 1 and shipped.is_file():
            p = shipped
        else:
            names = sorted(f.stem for f in (Path(__file__).parent / "configs").glob("*.toml"))
            raise FileNotFoundError(f"no study config at {path}; shipped configs: {', '.join(names)}")
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"TOML syntax: {exc}"], origin=str(p)) from None
    return parse_spec(data, source_text=text, path=str(p))
