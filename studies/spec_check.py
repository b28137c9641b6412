"""The checks behind :func:`studies.spec.parse_spec`: one function per part of a study TOML, each adding
every problem it finds to a :class:`Checker` as ``key: what is wrong`` (with a suggestion where a name is
close to a known one), so that a spec is reported whole, not one error at a time."""

from __future__ import annotations

import difflib
import re
from typing import Any

from .spec import (
    BASELINE_IN_PLACE,
    EVAL_TRAIN_KEYS,
    MAX_SEEDS,
    STUDY_OWNED_TRAIN_KEYS,
    BaselineSpec,
    SourceSpec,
    TargetSpec,
    TransferSpec,
)
from .zoo_sources import zoo_source

__all__ = [
    "Checker", "TOP_KEYS", "baselines", "name", "policies", "runs", "seeds", "sweep", "transfers",
]  # fmt: skip

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
TOP_KEYS = (
    "name", "description", "seeds", "policies", "baselines", "train", "eval", "sources", "targets", "transfers",
    "sweep", "plugins",
)  # fmt: skip
MAX_SWEEP_POINTS = 64  # combinations a [sweep] may cross (each one is the whole study again)
_SOURCE_KEYS = ("arch", "dataset", "activation", "variant", "options", "train")
_TARGET_KEYS = ("arch", "dataset", "train")
_BASELINE_KEYS = ("activation", "variant", "options", "train", "label")
_TRANSFER_KEYS = ("source", "target", "policies")


def _suggest(value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _type_name(hint: Any) -> str:
    import typing

    text = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
    return text or str(hint).replace("typing.", "")


class Checker:
    """Collects every problem of a spec, each as ``key: what is wrong``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def unknown(self, key: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                self.add(where, f"unknown key{_suggest(k, list(allowed))}; allowed keys: {', '.join(allowed)}")

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.add(key, f"expected {what}, got {type(value).__name__} {value!r}")
        return ok

    def arch(self, key: str, arch: Any) -> None:
        """A timm model, a plugin's (``plugins``) or a factory ``module.path:function`` (docs/own-data.md)."""
        if not self.typed(key, arch, str, "a model name (string)"):
            return
        import timm

        from transfer.backbones import check_arch

        try:
            check_arch(arch)
        except ValueError as exc:
            if ":" in arch:  # a factory that does not import: its own message says why
                self.add(key, str(exc))
                return
            close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('resnet*')"
            self.add(
                key,
                f"unknown arch {arch!r}: timm has no such model{hint} (a model of your own: "
                "'module.path:function'; a plugin's: load its module with plugins = [...])",
            )

    def dataset(self, key: str, name: Any) -> str | None:
        if not self.typed(key, name, str, "a dataset name (string)"):
            return None
        from transfer.engine.data import dataset_info, list_datasets

        try:
            return dataset_info(name).name
        except (ValueError, OSError) as exc:
            if ":" in name:  # folder:PATH, npz:PATH: what is wrong with the files, in the dataset's own words
                self.add(key, str(exc))
                return None
            self.add(
                key,
                f"unknown dataset {name!r}{_suggest(name, list_datasets())}; allowed: {', '.join(list_datasets())}",
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
                    "is set by the study (from sources, targets, seeds and policies); remove it from the train table",
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


def _table_list(c: Checker, key: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        c.add(key, f"expected an array of tables ([[{key}]] blocks), got {type(value).__name__}")
        return []
    return value


def _arch_and_dataset(c: Checker, key: str, table: dict[str, Any], what: str) -> tuple[str, str]:
    """Check a source's or target's required ``arch`` and ``dataset``; the dataset comes back canonical."""
    for req in ("arch", "dataset"):
        if req not in table:
            c.add(f"{key}.{req}", f"missing (every {what} needs arch and dataset)")
    if "arch" in table:
        c.arch(f"{key}.arch", table["arch"])
    dataset = c.dataset(f"{key}.dataset", table["dataset"]) if "dataset" in table else None
    return str(table.get("arch", "")), dataset or str(table.get("dataset", ""))


def _activation(c: Checker, key: str, table: dict[str, Any], default: str | None) -> tuple[str, str | None, dict]:
    """A table's ``activation`` (registry name), ``variant`` (Sparta only) and ``options``, checked: the
    options must build the activation (an unknown or out-of-range option is named here, at plan time)."""
    from transfer.activations import SPARTA_VARIANTS, create_activation, list_activations

    activation = table.get("activation", default)
    acts = list_activations()
    if activation is None:
        c.add(f"{key}.activation", f"missing; name a registry activation ({', '.join(acts)})")
        return "", None, {}
    if c.typed(f"{key}.activation", activation, str, "an activation name") and activation not in acts:
        c.add(
            f"{key}.activation",
            f"unknown activation {activation!r}{_suggest(activation, acts)}; allowed: {', '.join(acts)}",
        )
    variant = table.get("variant", "dw" if activation == "sparta" else None)
    if activation == "sparta":
        if variant not in SPARTA_VARIANTS:
            c.add(f"{key}.variant", f"unknown Sparta variant {variant!r}; allowed: {', '.join(SPARTA_VARIANTS)}")
    elif "variant" in table:
        c.add(f"{key}.variant", f"only Sparta has variants; remove it for activation {activation!r}")
    options = table.get("options", {})
    if not c.typed(f"{key}.options", options, dict, "a table of activation options (e.g. {kernel_size = 5})"):
        options = {}
    elif activation in acts and (activation != "sparta" or variant in SPARTA_VARIANTS):
        config = {**options, **({"variant": variant} if variant is not None else {})}
        try:
            create_activation(activation, 4, **config)
        except (ValueError, TypeError) as exc:
            c.add(f"{key}.options", str(exc))
    return str(activation), variant, dict(options)


def _sources(c: Checker, raw: Any, fields: dict[str, Any]) -> list[SourceSpec]:
    out = []
    for i, s in enumerate(_table_list(c, "sources", raw)):
        key = f"sources[{i}]"
        if "zoo" in s:  # a stored entry: trains nothing
            out.extend(x for x in [zoo_source(c, key, s)] if x is not None)
            continue
        c.unknown(key, s, (*_SOURCE_KEYS, "zoo"))
        arch, dataset = _arch_and_dataset(c, key, s, "source")
        activation, variant, options = _activation(c, key, s, "sparta")
        if activation and _known_activation(activation) and not _has_parameters(activation):
            c.add(
                f"{key}.activation",
                f"{activation!r} has no parameters to transfer; a source trains a "
                "learnable activation (sparta, prelu, frelu, …)",
            )
        train = c.train(f"{key}.train", s.get("train", {}), fields)
        out.append(SourceSpec(arch, dataset, activation, variant, options, train))
    return out


def _known_activation(name: str) -> bool:
    from transfer.activations import list_activations

    return name in list_activations()


def _targets(c: Checker, raw: Any, fields: dict[str, Any]) -> list[TargetSpec]:
    out = []
    for i, t in enumerate(_table_list(c, "targets", raw)):
        key = f"targets[{i}]"
        c.unknown(key, t, _TARGET_KEYS)
        arch, dataset = _arch_and_dataset(c, key, t, "target")
        train = c.train(f"{key}.train", t.get("train", {}), fields)
        out.append(TargetSpec(arch, dataset, train))
    return out


def baselines(c: Checker, raw: Any, fields: dict[str, Any]) -> list[BaselineSpec]:
    """``baselines``: names (``relu``, ``sparta-in-place[:<variant>]``, any registry activation) or tables
    ``{activation, variant, options, train, label}`` (an activation configuration trained in place)."""
    from transfer.activations import SPARTA_VARIANTS, list_activations

    if not isinstance(raw, list) or not raw or not all(isinstance(b, str | dict) for b in raw):
        c.add("baselines", f"expected a list of activation names or tables, got {raw!r}")
        return []
    allowed = ["relu", BASELINE_IN_PLACE, *(f"{BASELINE_IN_PLACE}:{v}" for v in SPARTA_VARIANTS)]
    allowed += [a for a in list_activations() if a not in ("relu", "sparta")]
    names = [b for b in raw if isinstance(b, str)]
    if len(set(names)) != len(names):
        c.add("baselines", f"lists a baseline twice: {names}")
    out = []
    for i, b in enumerate(raw):
        if isinstance(b, str):
            if b not in allowed:
                c.add("baselines", f"unknown baseline {b!r}{_suggest(b, allowed)}; allowed: {', '.join(allowed)}")
            else:
                out.append(BaselineSpec.from_name(b))
            continue
        key = f"baselines[{i}]"
        c.unknown(key, b, _BASELINE_KEYS)
        activation, variant, options = _activation(c, key, b, None)
        train = c.train(f"{key}.train", b.get("train", {}), fields)
        label = b.get("label")
        if label is not None and not (c.typed(f"{key}.label", label, str, "a row label") and label.strip()):
            label = None
        out.append(BaselineSpec(activation, variant, options, train, label))
    if not any(b.activation == "relu" and not b.options and not b.train for b in out):
        c.add("baselines", "must include 'relu': the ReLU row is the reference every difference is taken to")
    return out


def transfers(
    c: Checker, raw: Any, sources: list[SourceSpec], targets: list[TargetSpec], study_policies: list[str]
) -> list[TransferSpec] | None:
    """``[[transfers]]``: the (source, target) cells to run, each ``source``/``target`` an index or an
    ``arch/dataset`` that names exactly one; ``policies`` default to the study's. Absent: ``None`` (all);
    ``transfers = []``: none (an ablation of rows trained in place)."""
    if raw is None:
        return None
    out = []
    seen: set[tuple[int, int]] = set()
    for i, t in enumerate(_table_list(c, "transfers", raw)):
        key = f"transfers[{i}]"
        c.unknown(key, t, _TRANSFER_KEYS)
        names = [f"zoo:{s.zoo}" if s.zoo else f"{s.arch}/{s.dataset}" for s in sources]
        si = _pick(c, f"{key}.source", t.get("source"), names, "sources")
        ti = _pick(c, f"{key}.target", t.get("target"), [f"{x.arch}/{x.dataset}" for x in targets], "targets")
        chosen = policies(c, t["policies"], key=f"{key}.policies") if "policies" in t else list(study_policies)
        if si is None or ti is None:
            continue
        if (si, ti) in seen:
            c.add(key, f"declares sources[{si}] → targets[{ti}] again; list its policies in one block")
        seen.add((si, ti))
        out.append(TransferSpec(si, ti, tuple(chosen)))
    return out  # [] declares none: an in-place study (its sources are rows trained in place, no transfer)


def _pick(c: Checker, key: str, ref: Any, labels: list[str], what: str) -> int | None:
    """The index of the run ``ref`` names: an index, or the ``arch/dataset`` (a zoo source: ``zoo:NAME``, with
    or without its ``@VERSION``) of exactly one run."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        if 0 <= ref < len(labels):
            return ref
        c.add(key, f"index {ref} is out of range: {what} has {len(labels)} entries (0 to {len(labels) - 1})")
        return None
    if not isinstance(ref, str):
        c.add(key, f"missing or not a name; give an index or one of: {', '.join(labels)}")
        return None
    wanted = ref.replace(" ", "")
    matches = [i for i, label in enumerate(labels) if wanted in (label, label.partition("@")[0])]
    if len(matches) == 1:
        return matches[0]
    why = f"names {len(matches)} {what}; give its index" if matches else f"is not one of the {what}"
    c.add(key, f"{ref!r} {why} ({', '.join(labels)})")
    return None


def name(c: Checker, value: Any) -> Any:
    if value is None:
        c.add("name", "missing; give the study a name (lower case, digits, '.', '_', '-')")
    elif c.typed("name", value, str, "a string") and not _NAME.fullmatch(value):
        c.add("name", f"{value!r} may contain only lower-case letters, digits, '.', '_' and '-'")
    return value


def seeds(c: Checker, seeds: Any) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        c.add("seeds", f"expected a non-empty list of integers, got {seeds!r}")
        return [0]
    if len(seeds) > MAX_SEEDS:
        c.add(
            "seeds",
            f"lists {len(seeds)} seeds; a study takes at most {MAX_SEEDS} (each seed trains every job "
            "once more): split it into several studies",
        )
        return list(seeds[:MAX_SEEDS])
    if len(set(seeds)) != len(seeds):
        c.add("seeds", f"lists a seed twice: {seeds}")
    return list(seeds)


def policies(c: Checker, policies: Any, key: str = "policies") -> list[str]:
    from transfer.mapping import POLICIES

    if not isinstance(policies, list) or not policies or not all(isinstance(p, str) for p in policies):
        c.add(key, f"expected a non-empty list of policies ({', '.join(POLICIES)}), got {policies!r}")
        return []
    for p in policies:
        if p not in POLICIES:
            c.add(key, f"unknown policy {p!r}{_suggest(p, list(POLICIES))}; allowed: {', '.join(POLICIES)}")
    if len(set(policies)) != len(policies):
        c.add(key, f"lists a policy twice: {policies}")
    return list(policies)


def runs(c: Checker, data: dict[str, Any], fields: dict[str, Any]) -> tuple[list[SourceSpec], list[TargetSpec]]:
    """The ``[[sources]]`` and ``[[targets]]`` blocks; a study needs at least one of each."""
    sources = _sources(c, data.get("sources", []), fields)
    if "sources" not in data or not sources:
        c.add("sources", "no sources: add at least one [[sources]] block with arch and dataset")
    targets = _targets(c, data.get("targets", []), fields)
    if not targets:
        c.add("targets", "no targets: add at least one [[targets]] block with arch and dataset")
    return sources, targets


def sweep(
    c: Checker,
    raw: Any,
    fields: dict[str, Any],
    sources: list[SourceSpec],
    targets: list[TargetSpec],
    rows: list[BaselineSpec],
) -> dict[str, list[Any]]:
    """``[sweep]``: TrainConfig field → a non-empty list of distinct values; a key the study owns, or that a
    source, target or row also sets, is refused (which value would win?)."""
    from transfer.engine.config import value_fits

    if not c.typed("sweep", raw, dict, "a table of TrainConfig fields, each a list of values"):
        return {}
    out: dict[str, list[Any]] = {}
    points = 1
    for key, values in raw.items():
        where = f"sweep.{key}"
        if key in STUDY_OWNED_TRAIN_KEYS or key in EVAL_TRAIN_KEYS or key not in fields:
            c.add(
                where,
                "not a TrainConfig field a study may sweep (the study owns arch, dataset, seed, activation, "
                "policy; [eval] keys are not swept)",
            )
            continue
        if not isinstance(values, list) or not values:
            c.add(where, f"expected a non-empty list of values, got {values!r}")
            continue
        wrong = [v for v in values if not value_fits(v, fields[key], sequences=(list,), comma_string=False)]
        if wrong:
            c.add(where, f"values {wrong} do not fit the field ({_type_name(fields[key])})")
            continue
        if len({repr(v) for v in values}) != len(values):
            c.add(where, f"lists a value twice: {values}")
        setters = [f"sources[{i}]" for i, s in enumerate(sources) if key in s.train]
        setters += [f"targets[{i}]" for i, t in enumerate(targets) if key in t.train]
        setters += [f"baselines[{i}]" for i, b in enumerate(rows) if key in b.train]
        if setters:
            c.add(where, f"is also set by {', '.join(setters)}; set it in one place")
        points *= len(values)
        out[key] = list(values)
    if points > MAX_SWEEP_POINTS:
        c.add("sweep", f"crosses {points} combinations, more than {MAX_SWEEP_POINTS}; split the study")
    return out
