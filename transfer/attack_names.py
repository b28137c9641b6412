"""The one table and grammar of attack names, read by every layer: which specs exist and their other
spellings (:func:`metric_name`), how a spec parses (:func:`parse_spec`), which L∞ attack is the headline
robust number (:func:`attack_rank`), the order reports list metrics in (:func:`order_metrics`), and the
names of the official APGD-T with K target classes and of its worst case with APGD-CE
(:func:`parse_apgd_t`). Pure string logic, part of the portable core: the training engine, the studies,
the figures and the zoo all read names this way. A spec is also the metric name its accuracy is reported
under, in one spelling.

The grammar: the named specs of :data:`NAMED_SPECS` (one attack with its defaults), ``pgdK`` and
``pgdK-l2`` (K steps of PGD; ``pgd`` is ``pgd20``), ``cwK`` (PGD on the CW margin loss; ``cw`` is 20
steps), ``apgd-tK`` (the official APGD-T with K target classes) and ``apgd-ce+tK`` (the worst case of
the official APGD-CE and APGD-T, run as AutoAttack runs its stages: APGD-T only on the images APGD-CE left
robust; ``apgd-ce+t`` has the standard 9 target classes). K is at most :data:`MAX_STEPS` steps: a larger
count is refused rather than left to run for hours. ``apgd-ce+tK`` is also the name of that worst case
derived from the per-image bits of ``apgd-ce`` and ``apgd-tK`` evaluated separately (the same metric).

The ranking, strongest first, as commonly ranked for L∞ evaluation: AutoAttack (standard, then its
randomised version), the worst case of its first two stages, its targeted and untargeted APGD stages
(with K target classes ranked below the standard's 9), PGD (more steps first), CW-∞, FGSM. Square
(black-box) is a sanity check, not a headline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_STEPS", "MAX_STEPS", "METRIC_ORDER", "NAMED_SPECS", "SPEC_ALIASES", "SPEC_FAMILIES",
    "STANDARD_TARGETS", "AttackSpec", "attack_rank", "metric_name", "order_metrics", "parse_apgd_t", "parse_spec",
]  # fmt: skip

STANDARD_TARGETS = 9  # target classes of the standard AutoAttack's APGD-T
DEFAULT_STEPS = 20  # steps of `pgd` and `cw` written without K
MAX_STEPS = 10_000  # the most steps a pgdK / cwK spec may ask for (pgd100000 would run for hours)

# Specs that name one attack with its defaults → what they are (the attack registry maps each to a class;
# the official AutoAttack's register themselves from transfer.engine.autoattack).
NAMED_SPECS = {
    "clean": "no attack",
    "fgsm": "one signed-gradient step",
    "aa": "the official AutoAttack, standard version",
    "aa-rand": "the official AutoAttack for randomised defences",
    "apgd-ce": "AutoAttack's APGD-CE stage alone",
    "apgd-t": f"AutoAttack's APGD-T stage alone, {STANDARD_TARGETS} target classes",
    "apgd-ce+t": f"APGD-CE, then APGD-T ({STANDARD_TARGETS} target classes) on the images APGD-CE left robust: "
    "their worst case, reported with apgd-ce",
    "square": "AutoAttack's black-box Square stage alone",
}
# The specs with a step or class count K, as the error for an unknown spec lists them.
SPEC_FAMILIES = {
    "pgdK": f"K steps of PGD, e.g. pgd20, pgd7 (pgd: {DEFAULT_STEPS})",
    "pgdK-l2": "PGD in the L2 ball",
    "cwK": f"PGD on the CW margin loss (cw: {DEFAULT_STEPS} steps)",
    "apgd-tK": "the official APGD-T with K target classes",
    "apgd-ce+tK": "apgd-ce+t with K target classes, e.g. apgd-ce+t3",
}
# Other spellings of a spec → the spec (see :func:`metric_name`).
SPEC_ALIASES = {
    "none": "clean", "autoattack": "aa", "apgd": "apgd-ce", "pgd": "pgd20", "pgd-l2": "pgd20-l2", "cw20": "cw",
}  # fmt: skip
# The order tables and reports list metrics in: clean first, then attacks from weakest to strongest.
METRIC_ORDER = ("clean", "fgsm", "pgd20", "cw", "apgd-ce", "apgd-t", "apgd-ce+t", "aa")

_FIXED_RANK = {"aa": 0, "aa-rand": 1, "apgd-ce+t": 2, "apgd-t": 3, "apgd-ce": 4}
_PGD = re.compile(r"pgd(\d+)")
_CW = re.compile(r"cw(\d+)?")
_STEPPED = re.compile(r"(?P<kind>pgd|cw)(?P<steps>\d+)?(?:-(?P<norm>linf|l2))?")
_APGD_T = re.compile(r"apgd-(ce\+)?t(\d{0,6})")


@dataclass(frozen=True)
class AttackSpec:
    """A parsed spec: its ``metric`` name, and ``family`` — a named spec (``"clean"``, ``"aa"``, …), or
    ``"pgd"``/``"cw"`` with ``steps`` and ``norm`` (as written, ``None`` when not), or ``"apgd-t"`` /
    ``"apgd-ce+t"`` with ``targets`` classes."""

    metric: str
    family: str
    steps: int | None = None
    norm: str | None = None
    targets: int | None = None


def metric_name(spec: str) -> str:
    """The spec in its one spelling, the metric it reports under: ``"PGD"`` → ``pgd20``, ``"autoattack"`` →
    ``aa``, ``"cw20"`` → ``cw``."""
    s = spec.strip().lower()
    return SPEC_ALIASES.get(s, s)


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut at ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _unknown(spec: str) -> ValueError:
    named = ", ".join(f"{name} ({what})" for name, what in NAMED_SPECS.items())
    families = ", ".join(f"{name} ({what})" for name, what in SPEC_FAMILIES.items())
    aliases = ", ".join(f"{alias} = {name}" for alias, name in SPEC_ALIASES.items())
    return ValueError(
        f"cannot parse attack spec {_shown(spec)}; use one of: {named}; or {families} (aliases: {aliases})"
    )


def parse_spec(spec: str) -> AttackSpec:
    """The parsed form of an attack spec (any spelling, any case); a ``ValueError`` that lists the
    grammar for anything else, and for a step count above :data:`MAX_STEPS` or a count of 0."""
    s = metric_name(spec)
    if s in NAMED_SPECS:
        return AttackSpec(s, s)
    if apgd := parse_apgd_t(s):
        if apgd[1] < 1:
            raise ValueError(f"attack spec {_shown(spec)}: the number of target classes must be >= 1")
        return AttackSpec(s, "apgd-ce+t" if apgd[0] else "apgd-t", targets=apgd[1])
    m = _STEPPED.fullmatch(s)
    if m is None:
        raise _unknown(spec)
    digits = (m["steps"] or str(DEFAULT_STEPS)).lstrip("0") or "0"
    if len(digits) > len(str(MAX_STEPS)) or int(digits) > MAX_STEPS:
        raise ValueError(
            f"attack spec {_shown(spec)}: at most {MAX_STEPS:,} steps; a strong "
            "evaluation uses 20 to 100 (pgd100), or the official AutoAttack (aa)"
        )
    if int(digits) < 1:
        raise ValueError(f"attack spec {_shown(spec)}: the number of steps must be >= 1")
    if m["kind"] == "cw" and m["norm"] == "l2":
        raise ValueError(f"attack spec {_shown(spec)}: cw is L∞ only; use pgdK-l2 for the L2 ball")
    return AttackSpec(s, m["kind"], steps=int(digits), norm=m["norm"])


def order_metrics(names: Iterable[str]) -> list[str]:
    """``names`` (metric names, repeats dropped) in :data:`METRIC_ORDER`, any others after them as given."""
    present = list(dict.fromkeys(names))
    return [m for m in METRIC_ORDER if m in present] + [m for m in present if m not in METRIC_ORDER]


def parse_apgd_t(metric: str) -> tuple[bool, int] | None:
    """``apgd-t`` → ``(False, 9)``, ``apgd-t3`` → ``(False, 3)``, ``apgd-ce+t`` → ``(True, 9)``,
    ``apgd-ce+t3`` → ``(True, 3)``: whether the name is the worst case with APGD-CE, and APGD-T's number
    of target classes; ``None`` for any other name (as written, no case folding)."""
    m = _APGD_T.fullmatch(metric)
    if m is None:
        return None
    return bool(m.group(1)), int(m.group(2)) if m.group(2) else STANDARD_TARGETS


def attack_rank(metric: str) -> tuple[int, int] | None:
    """A sort key, smaller = stronger, for the metric name ``metric`` as written (no case folding);
    ``None`` for clean accuracy, L2 attacks and unknown names, which are not L∞ robust accuracies."""
    if metric in _FIXED_RANK:
        return (_FIXED_RANK[metric], 0)
    if apgd := parse_apgd_t(metric):
        worst_case, targets = apgd
        return (_FIXED_RANK["apgd-ce+t" if worst_case else "apgd-t"], STANDARD_TARGETS - targets)
    if pgd := _PGD.fullmatch(metric):
        return (5, -int(pgd.group(1)))
    if cw := _CW.fullmatch(metric):
        return (6, -int(cw.group(1) or DEFAULT_STEPS))
    if metric == "fgsm":
        return (7, 0)
    return None
