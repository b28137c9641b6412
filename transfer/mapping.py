"""Mapping policies: which source site feeds each target site (``docs/sparta.md`` §5.4).

Pure functions over site tables. ``compatible(source, target)`` says whether a source site's
parameters fit the activation built at a target site (equal widths for ``dw``/``full``, anything for
``portable``); sites are only ever matched to compatible ones, and a target site left without a
match is an error naming it, never a silent partial injection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .sites import Site

__all__ = ["DEFAULT_ADVICE", "POLICIES", "MappingError", "PolicyRule", "check_policy", "map_sites"]

Compatible = Callable[[Site, Site], bool]


# What to do when sites are left unmatched, unless the caller knows better (inject names the activation)
DEFAULT_ADVICE = (
    "Use a width-free activation (Sparta variant 'portable'), or a policy that fits these models "
    "('stage', 'depth', 'shared')."
)


class MappingError(ValueError):
    """A mapping policy could not find a source site for some target sites. ``advice`` ends the message
    with what to do (default :data:`DEFAULT_ADVICE`); ``policy``, ``why``, ``unmatched`` and ``sources``
    stay on the error so a caller can raise it again with advice of its own."""

    def __init__(
        self, policy: str, unmatched: Sequence[Site], sources: Sequence[Site], why: str, advice: str = DEFAULT_ADVICE
    ) -> None:
        self.policy, self.why = policy, why
        self.unmatched, self.sources = list(unmatched), list(sources)
        shown = ", ".join(f"{s.name} (C={s.channels}, stage {s.stage})" for s in unmatched[:12])
        more = f" and {len(unmatched) - 12} more" if len(unmatched) > 12 else ""
        widths = sorted({s.channels for s in sources})
        super().__init__(
            f"policy {policy!r} cannot map {len(unmatched)} target site(s): {shown}{more}. {why} "
            f"Source widths: {widths}. {advice}"
        )


@dataclass(frozen=True)
class PolicyRule:
    """How one policy picks the source of a target: among the sources that ``may_feed`` it and are
    compatible, the one at the smallest ``distance`` (ties to the earlier site in forward order), or the
    first one when ``distance`` is None. ``why`` explains, in the error, a target left without one."""

    may_feed: Callable[[Site, Site], bool]  # (source, target)
    distance: Callable[[Site, Site], float] | None  # (source, target)
    why: str


def _positions(sites: Sequence[Site], key: Callable[[Site], Any] = lambda s: s.stage) -> dict[str, float]:
    """Relative position of each site within its group (by default its stage), in [0, 1]."""
    by_stage: dict[Any, list[Site]] = {}
    for s in sites:
        by_stage.setdefault(key(s), []).append(s)
    pos: dict[str, float] = {}
    for group in by_stage.values():
        n = len(group)
        for i, s in enumerate(group):
            pos[s.name] = i / (n - 1) if n > 1 else 0.0
    return pos


def exact_rule(sources: Sequence[Site], targets: Sequence[Site]) -> PolicyRule:
    """The source site of the same name (the same architecture)."""
    return PolicyRule(
        may_feed=lambda s, t: s.name == t.name,
        distance=None,
        why="Exact needs the same site names with fitting widths (same arch).",
    )


def stage_rule(sources: Sequence[Site], targets: Sequence[Site]) -> PolicyRule:
    """The source site of the same stage nearest in relative position within the stage."""
    src_pos, tgt_pos = _positions(sources), _positions(targets)
    return PolicyRule(
        may_feed=lambda s, t: s.stage == t.stage,
        distance=lambda s, t: abs(src_pos[s.name] - tgt_pos[t.name]),
        why="No source site of the same stage fits them.",
    )


def role_rule(sources: Sequence[Site], targets: Sequence[Site]) -> PolicyRule:
    """``stage``, but within each stage only between sites of the same role: a site after a residual add
    takes a source site after one, any other site a source site that is not (``Site.role``); nearest in
    relative position among the sites of that stage and role. ResNet-18 → ResNet-34: each block's
    ``act2`` (after the add) from an ``act2``, each ``act1`` from an ``act1``."""
    unknown = [s.name for s in (*sources, *targets) if not s.role]
    if unknown:
        raise ValueError(
            f"policy 'role' needs the role of every site (after a residual add or not), and {len(unknown)} site(s) "
            f"were recorded without one (e.g. {unknown[0]!r}): the activation set was extracted before roles "
            "existed. Re-extract it from its model (train it again, or transfer.extract), or use policy 'stage'"
        )
    group = lambda s: (s.stage, s.role)  # noqa: E731
    src_pos, tgt_pos = _positions(sources, group), _positions(targets, group)
    return PolicyRule(
        may_feed=lambda s, t: group(s) == group(t),
        distance=lambda s, t: abs(src_pos[s.name] - tgt_pos[t.name]),
        why="No source site of the same stage and role (after a residual add or not) fits them.",
    )


def depth_rule(sources: Sequence[Site], targets: Sequence[Site]) -> PolicyRule:
    """The source site nearest in relative depth."""
    return PolicyRule(
        may_feed=lambda s, t: True,
        distance=lambda s, t: abs(s.relative_depth - t.relative_depth),
        why="No source site fits them at any depth.",
    )


def shared_rule(sources: Sequence[Site], targets: Sequence[Site]) -> PolicyRule:
    """One source site per compatibility class (per width for ``dw``): the first in forward order."""
    return PolicyRule(may_feed=lambda s, t: True, distance=None, why="No source site has a fitting width.")


POLICIES: dict[str, Callable[[Sequence[Site], Sequence[Site]], PolicyRule]] = {
    "exact": exact_rule,
    "stage": stage_rule,
    "role": role_rule,
    "depth": depth_rule,
    "shared": shared_rule,
}


def check_policy(policy: object) -> None:
    """A ValueError naming the known policies unless ``policy`` is one of them."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"unknown mapping policy {policy!r}; choose one of {', '.join(POLICIES)}")


def map_sites(sources: Sequence[Site], targets: Sequence[Site], policy: str, compatible: Compatible) -> dict[str, str]:
    """target site name → source site name under ``policy``; a :class:`MappingError` naming every
    target site that no compatible source may feed."""
    check_policy(policy)
    if not sources:
        raise ValueError("the activation set has no sites to map from")
    rule = POLICIES[policy](sources, targets)
    mapping: dict[str, str] = {}
    unmatched: list[Site] = []
    for t in targets:
        best = _pick(rule, (s for s in sources if rule.may_feed(s, t) and compatible(s, t)), t)
        if best is None:
            unmatched.append(t)
        else:
            mapping[t.name] = best.name
    if unmatched:
        raise MappingError(policy, unmatched, sources, rule.why)
    return mapping


def _pick(rule: PolicyRule, candidates: Iterator[Site], target: Site) -> Site | None:
    if rule.distance is None:
        return next(candidates, None)
    distance = rule.distance
    return min(candidates, key=lambda s: distance(s, target), default=None)
