"""Study specs: a TOML file, parsed with ``tomllib`` and validated before anything trains.

Every problem found is reported at once, each naming its key (``sources[1].arch``) and what is allowed
there. The layout (see ``docs/studies.md``)::

    name = "quickstart"
    seeds = [0, 1, 2]
    policies = ["stage"]                     # exact | stage | depth | shared
    baselines = ["relu", "sparta-in-place"]  # + any registry activation, "sparta-in-place:<variant>"

    [train]                                  # any TrainConfig field
    epochs = 2

    [eval]
    attacks = ["clean", "fgsm", "pgd20"]
    n = 500
    sanity = false                           # true or {n = 200, …}: gradient-masking checks per job

    [[sources]]
    arch = "resnet18"
    dataset = "digits"
    activation = "sparta"                    # default
    variant = "dw"                           # default (Sparta only)

    [[targets]]
    arch = "resnet34"
    dataset = "digits"
    train = { lr = 0.01 }                    # per-target (and per-source) train overrides
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BASELINE_IN_PLACE",
    "EVAL_TRAIN_KEYS",
    "SANITY_OPTIONS",
    "STUDY_OWNED_TRAIN_KEYS",
    "SourceSpec",
    "SpecError",
    "StudySpec",
    "TargetSpec",
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
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TOP_KEYS = ("name", "description", "seeds", "policies", "baselines", "train", "eval", "sources", "targets")
_SOURCE_KEYS = ("arch", "dataset", "activation", "variant", "options", "train")
_TARGET_KEYS = ("arch", "dataset", "train")
_EVAL_KEYS = ("attacks", "n", "batch_size", "eps", "sanity")
# attacks: the engine's DEFAULT_EVAL_ATTACKS; sanity: None (off), or the options of the gradient-masking
# checks each job then writes to sanity.json (`true` = {}: the defaults; transfer.engine.sanity)
_DEFAULT_EVAL = {"n": None, "batch_size": 256, "eps": None, "sanity": None}
# [eval] sanity = {…} options → sanity_check keywords (n: the test images checked, default all of [eval] n)
SANITY_OPTIONS = ("n", "steps", "restarts", "square_queries", "noise_samples", "apgd_iter", "tolerance")


class SpecError(ValueError):
    """A study spec is invalid; ``problems`` lists each one as ``key: what is wrong``."""

    def __init__(self, problems: list[str], origin: str = "study spec") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{origin} is invalid ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class SourceSpec:
    """A source run: ``activation`` (``variant``, ``options``) trained in place on ``arch``/``dataset``."""

    arch: str
    dataset: str
    activation: str = "sparta"
    variant: str | None = "dw"
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

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
class StudySpec:
    name: str
    seeds: list[int]
    train: dict[str, Any]
    eval: dict[str, Any]
    sources: list[SourceSpec]
    targets: list[TargetSpec]
    policies: list[str]
    baselines: list[str]
    description: str = ""
    source_text: str = ""
    path: str | None = None


def train_fields() -> dict[str, Any]:
    """``TrainConfig`` field name → resolved type annotation."""
    from transfer.engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainConfig)}


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
    return text or str(hint).replace("typing.", "")


def _suggest(value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def unknown(self, key: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                self.add(
                    where, f"unknown key{_suggest(k, list(allowed))}; allowed keys: {', '.join(allowed)}"
                )

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.add(key, f"expected {what}, got {type(value).__name__} {value!r}")
        return ok

    def arch(self, key: str, arch: Any) -> None:
        if not self.typed(key, arch, str, "a timm model name (string)"):
            return
        import timm

        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('resnet*')"
            self.add(key, f"unknown arch {arch!r}: timm has no such model{hint}")

    def dataset(self, key: str, name: Any) -> str | None:
        if not self.typed(key, name, str, "a dataset name (string)"):
            return None
        from transfer.engine.data import dataset_info, list_datasets

        try:
            return dataset_info(name).name
        except ValueError:
            self.add(
                key,
                f"unknown dataset {name!r}{_suggest(name, list_datasets())}; "
                f"allowed: {', '.join(list_datasets())}",
            )
            return None

    def train(self, key: str, table: Any, fields: dict[str, Any]) -> dict[str, Any]:
        from transfer.engine.config import value_fits

        if not self.typed(key, table, dict, "a table of TrainConfig fields"):
            return {}
        allowed = [f for f in fields if f not in STUDY_OWNED_TRAIN_KEYS and f not in EVAL_TRAIN_KEYS]
        for k, v in table.items():
            if k in EVAL_TRAIN_KEYS:
                self.add(f"{key}.{k}", f"set it in the [eval] table as {EVAL_TRAIN_KEYS[k]!r}")
            elif k in STUDY_OWNED_TRAIN_KEYS and k in fields:
                self.add(
                    f"{key}.{k}",
                    "is set by the study (from sources, targets, seeds and policies); "
                    "remove it from the train table",
                )
            elif k not in fields:
                self.add(
                    f"{key}.{k}",
                    f"not a TrainConfig field{_suggest(k, allowed)}; allowed: {', '.join(allowed)}",
                )
            elif not value_fits(v, fields[k], sequences=(list,), comma_string=False):
                self.add(f"{key}.{k}", f"expected {_type_name(fields[k])}, got {type(v).__name__} {v!r}")
        return dict(table)


def _has_parameters(activation: str) -> bool:
    from transfer.activations import create_activation

    return any(True for _ in create_activation(activation, 4).parameters())


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _table_list(c: _Checker, key: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        c.add(key, f"expected an array of tables ([[{key}]] blocks), got {type(value).__name__}")
        return []
    return value


def _arch_and_dataset(c: _Checker, key: str, table: dict[str, Any], what: str) -> tuple[str, str]:
    """Check a source's or target's required ``arch`` and ``dataset``; the dataset comes back canonical."""
    for req in ("arch", "dataset"):
        if req not in table:
            c.add(f"{key}.{req}", f"missing (every {what} needs arch and dataset)")
    if "arch" in table:
        c.arch(f"{key}.arch", table["arch"])
    dataset = c.dataset(f"{key}.dataset", table["dataset"]) if "dataset" in table else None
    return str(table.get("arch", "")), dataset or str(table.get("dataset", ""))


def _sources(c: _Checker, raw: Any, fields: dict[str, Any]) -> list[SourceSpec]:
    from transfer.activations import SPARTA_VARIANTS, list_activations

    out = []
    for i, s in enumerate(_table_list(c, "sources", raw)):
        key = f"sources[{i}]"
        c.unknown(key, s, _SOURCE_KEYS)
        arch, dataset = _arch_and_dataset(c, key, s, "source")
        activation = s.get("activation", "sparta")
        acts = list_activations()
        if c.typed(f"{key}.activation", activation, str, "an activation name") and activation not in acts:
            c.add(
                f"{key}.activation",
                f"unknown activation {activation!r}{_suggest(activation, acts)}; allowed: {', '.join(acts)}",
            )
        if isinstance(activation, str) and activation in acts and not _has_parameters(activation):
            c.add(
                f"{key}.activation",
                f"{activation!r} has no parameters to transfer; a source trains a "
                "learnable activation (sparta, prelu, frelu, …)",
            )
        variant = s.get("variant", "dw" if activation == "sparta" else None)
        if activation == "sparta":
            if variant not in SPARTA_VARIANTS:
                c.add(
                    f"{key}.variant",
                    f"unknown Sparta variant {variant!r}; allowed: {', '.join(SPARTA_VARIANTS)}",
                )
        elif "variant" in s:
            c.add(f"{key}.variant", f"only Sparta has variants; remove it for activation {activation!r}")
        options = s.get("options", {})
        c.typed(f"{key}.options", options, dict, "a table of activation options (e.g. {kernel_size = 5})")
        train = c.train(f"{key}.train", s.get("train", {}), fields)
        out.append(
            SourceSpec(
                arch,
                dataset,
                str(activation),
                variant,
                dict(options) if isinstance(options, dict) else {},
                train,
            )
        )
    return out


def _targets(c: _Checker, raw: Any, fields: dict[str, Any]) -> list[TargetSpec]:
    out = []
    for i, t in enumerate(_table_list(c, "targets", raw)):
        key = f"targets[{i}]"
        c.unknown(key, t, _TARGET_KEYS)
        arch, dataset = _arch_and_dataset(c, key, t, "target")
        train = c.train(f"{key}.train", t.get("train", {}), fields)
        out.append(TargetSpec(arch, dataset, train))
    return out


def _baselines(c: _Checker, raw: Any) -> list[str]:
    from transfer.activations import SPARTA_VARIANTS, list_activations

    if not isinstance(raw, list) or not all(isinstance(b, str) for b in raw):
        c.add("baselines", f"expected a list of strings, got {raw!r}")
        return []
    allowed = ["relu", BASELINE_IN_PLACE, *(f"{BASELINE_IN_PLACE}:{v}" for v in SPARTA_VARIANTS)]
    allowed += [a for a in list_activations() if a not in ("relu", "sparta")]
    for b in raw:
        if b not in allowed:
            c.add("baselines", f"unknown baseline {b!r}{_suggest(b, allowed)}; allowed: {', '.join(allowed)}")
    if len(set(raw)) != len(raw):
        c.add("baselines", f"lists a baseline twice: {raw}")
    if "relu" not in raw:
        c.add("baselines", "must include 'relu': the ReLU row is the reference every difference is taken to")
    return list(raw)


def _eval(c: _Checker, raw: Any) -> dict[str, Any]:
    from transfer.engine.evaluation import DEFAULT_EVAL_ATTACKS

    defaults = {"attacks": list(DEFAULT_EVAL_ATTACKS), **_DEFAULT_EVAL}
    if not c.typed("eval", raw, dict, "a table"):
        return defaults
    c.unknown("eval", raw, _EVAL_KEYS)
    ev = {**defaults, **{k: v for k, v in raw.items() if k in _EVAL_KEYS}}
    attacks = ev["attacks"]
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks):
        c.add("eval.attacks", f"expected a non-empty list of attack names, got {attacks!r}")
    else:
        from transfer.engine.attacks import list_attacks, parse_attack

        for a in attacks:
            if a == "clean":
                continue
            try:
                parse_attack(a)
            except ValueError as exc:
                c.add("eval.attacks", f"{a!r}: {exc} (known attacks: clean, {', '.join(list_attacks())})")
    if ev["n"] is not None and (not isinstance(ev["n"], int) or isinstance(ev["n"], bool) or ev["n"] < 1):
        c.add("eval.n", f"expected a positive integer (test images evaluated), got {ev['n']!r}")
    if not isinstance(ev["batch_size"], int) or isinstance(ev["batch_size"], bool) or ev["batch_size"] < 1:
        c.add("eval.batch_size", f"expected a positive integer, got {ev['batch_size']!r}")
    if ev["eps"] is not None and (isinstance(ev["eps"], bool) or not isinstance(ev["eps"], int | float)):
        c.add("eval.eps", f"expected a number (L∞ radius in [0, 1] pixels), got {ev['eps']!r}")
    ev["sanity"] = _sanity(c, ev["sanity"])
    return ev


def _sanity(c: _Checker, raw: Any) -> dict[str, Any] | None:
    """``[eval] sanity``: false/absent → None; true → {} (default options); a table of options → itself."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return {}
    if not isinstance(raw, dict):
        c.add("eval.sanity", f"expected true, false or a table of options ({', '.join(SANITY_OPTIONS)}), got {raw!r}")
        return None
    c.unknown("eval.sanity", raw, SANITY_OPTIONS)
    for k, v in raw.items():
        if k == "tolerance":
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                c.add("eval.sanity.tolerance", f"expected a number >= 0 (percentage points), got {v!r}")
        elif k in SANITY_OPTIONS and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            c.add(f"eval.sanity.{k}", f"expected a positive integer, got {v!r}")
    return dict(raw)


def _name(c: _Checker, name: Any) -> Any:
    if name is None:
        c.add("name", "missing; give the study a name (lower case, digits, '.', '_', '-')")
    elif c.typed("name", name, str, "a string") and not _NAME.fullmatch(name):
        c.add("name", f"{name!r} may contain only lower-case letters, digits, '.', '_' and '-'")
    return name


def _seeds(c: _Checker, seeds: Any) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        c.add("seeds", f"expected a non-empty list of integers, got {seeds!r}")
        return [0]
    if len(set(seeds)) != len(seeds):
        c.add("seeds", f"lists a seed twice: {seeds}")
    return list(seeds)


def _policies(c: _Checker, policies: Any) -> list[str]:
    from transfer.mapping import POLICIES

    if not isinstance(policies, list) or not policies or not all(isinstance(p, str) for p in policies):
        c.add("policies", f"expected a non-empty list of policies ({', '.join(POLICIES)}), got {policies!r}")
        return []
    for p in policies:
        if p not in POLICIES:
            c.add(
                "policies",
                f"unknown policy {p!r}{_suggest(p, list(POLICIES))}; allowed: {', '.join(POLICIES)}",
            )
    if len(set(policies)) != len(policies):
        c.add("policies", f"lists a policy twice: {policies}")
    return list(policies)


def _train_fields_or_fail() -> dict[str, Any]:
    try:
        return train_fields()
    except ImportError as exc:
        raise SpecError([f"train: cannot read TrainConfig from transfer.engine.config ({exc})"]) from exc


def _runs(c: _Checker, data: dict[str, Any], fields: dict[str, Any]) -> tuple[list[SourceSpec], list[TargetSpec]]:
    """The ``[[sources]]`` and ``[[targets]]`` blocks; a study needs at least one of each."""
    sources = _sources(c, data.get("sources", []), fields)
    if "sources" not in data or not sources:
        c.add("sources", "no sources: add at least one [[sources]] block with arch and dataset")
    targets = _targets(c, data.get("targets", []), fields)
    if not targets:
        c.add("targets", "no targets: add at least one [[targets]] block with arch and dataset")
    return sources, targets


def parse_spec(data: dict[str, Any], *, source_text: str = "", path: str | None = None) -> StudySpec:
    """Validate a parsed TOML document; raises :class:`SpecError` listing every problem."""
    c = _Checker()
    c.unknown("", data, _TOP_KEYS)
    name = _name(c, data.get("name"))
    seeds = _seeds(c, data.get("seeds", [0]))
    description = data.get("description", "")
    c.typed("description", description, str, "a string")
    policies = _policies(c, data.get("policies", ["stage"]))
    baselines = _baselines(c, data.get("baselines", ["relu", BASELINE_IN_PLACE]))
    fields = _train_fields_or_fail()
    train = c.train("train", data.get("train", {}), fields)
    ev = _eval(c, data.get("eval", {}))
    sources, targets = _runs(c, data, fields)
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
