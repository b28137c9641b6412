"""Mapping policies: which source site feeds each target site (``SPARTA.md`` §5.4).

Pure functions over site tables. ``compatible(source, target)`` says whether a source site's
parameters fit the activation built at a target site (equal widths for ``dw``/``full``, anything for
``portable``); sites are only ever matched to compatible ones, and a target site left without a
match is an error naming it, never a silent partial injection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .sites import Site

__all__ = ["POLICIES", "MappingError", "map_sites"]

Compatible = Callable[[Site, Site], bool]


class MappingError(ValueError):
    """A mapping policy could not find a source site for some target sites."""

    def __init__(self, policy: str, unmatched: Sequence[Site], sources: Sequence[Site], why: str) -> None:
        self.unmatched = list(unmatched)
        shown = ", ".join(f"{s.name} (C={s.channels}, stage {s.stage})" for s in unmatched[:12])
        more = f" and {len(unmatched) - 12} more" if len(unmatched) > 12 else ""
        widths = sorted({s.channels for s in sources})
        super().__init__(
            f"policy {policy!r} cannot map {len(unmatched)} target site(s): {shown}{more}. {why} "
            f"Source widths: {widths}. Use a width-free activation (Sparta variant 'portable'), or a "
            "policy that fits these models ('stage', 'depth', 'shared')."
        )


def _positions(sites: Sequence[Site]) -> dict[str, float]:
    """Relative position of each site within its stage, in [0, 1]."""
    by_stage: dict[int, list[Site]] = {}
    for s in sites:
        by_stage.setdefault(s.stage, []).append(s)
    pos: dict[str, float] = {}
    for group in by_stage.values():
        n = len(group)
        for i, s in enumerate(group):
            pos[s.name] = i / (n - 1) if n > 1 else 0.0
    return pos


def _nearest(candidates: list[Site], key: Callable[[Site], float]) -> Site | None:
    """The candidate with the smallest key; ties go to the earlier site (stable, deterministic)."""
    return min(candidates, key=key) if candidates else None


def map_exact(sources: Sequence[Site], targets: Sequence[Site], compatible: Compatible) -> dict[str, str]:
    by_name = {s.name: s for s in sources}
    mapping, bad = {}, []
    for t in targets:
        s = by_name.get(t.name)
        if s is None or not compatible(s, t):
            bad.append(t)
        else:
            mapping[t.name] = s.name
    if bad:
        raise MappingError("exact", bad, sources, "Exact needs the same site names with fitting widths (same arch).")
    return mapping


def map_stage(sources: Sequence[Site], targets: Sequence[Site], compatible: Compatible) -> dict[str, str]:
    src_pos, tgt_pos = _positions(sources), _positions(targets)
    mapping, bad = {}, []
    for t in targets:
        cands = [s for s in sources if s.stage == t.stage and compatible(s, t)]
        best = _nearest(cands, lambda s, t=t: abs(src_pos[s.name] - tgt_pos[t.name]))
        if best is None:
            bad.append(t)
        else:
            mapping[t.name] = best.name
    if bad:
        raise MappingError("stage", bad, sources, "No source site of the same stage fits them.")
    return mapping


def map_depth(sources: Sequence[Site], targets: Sequence[Site], compatible: Compatible) -> dict[str, str]:
    mapping, bad = {}, []
    for t in targets:
        cands = [s for s in sources if compatible(s, t)]
        best = _nearest(cands, lambda s, t=t: abs(s.relative_depth - t.relative_depth))
        if best is None:
            bad.append(t)
        else:
            mapping[t.name] = best.name
    if bad:
        raise MappingError("depth", bad, sources, "No source site fits them at any depth.")
    return mapping


def map_shared(sources: Sequence[Site], targets: Sequence[Site], compatible: Compatible) -> dict[str, str]:
    """One source site per compatibility class (per width for ``dw``): the first in forward order."""
    mapping, bad = {}, []
    for t in targets:
        first = next((s for s in sources if compatible(s, t)), None)
        if first is None:
            bad.append(t)
        else:
            mapping[t.name] = first.name
    if bad:
        raise MappingError("shared", bad, sources, "No source site has a fitting width.")
    return mapping


POLICIES: dict[str, Callable[[Sequence[Site], Sequence[Site], Compatible], dict[str, str]]] = {
    "exact": map_exact,
    "stage": map_stage,
    "depth": map_depth,
    "shared": map_shared,
}


def map_sites(sources: Sequence[Site], targets: Sequence[Site], policy: str, compatible: Compatible) -> dict[str, str]:
    """target site name → source site name under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown mapping policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if not sources:
        raise ValueError("the activation set has no sites to map from")
    return POLICIES[policy](sources, targets, compatible)
