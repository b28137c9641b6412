"""Attack metric names read by more than one layer: which L∞ attack is the headline robust number
(:func:`attack_rank`), and the names of the official APGD-T with K target classes and of its per-image
worst case with APGD-CE (:func:`parse_apgd_t`). Pure string logic, part of the portable core: the
training engine, the studies, the figures and the zoo all read names this way.

The ranking, strongest first, as commonly ranked for L∞ evaluation: AutoAttack (standard, then its
randomised version), the worst case of its first two stages, its targeted and untargeted APGD stages
(with K target classes ranked below the standard's 9), PGD (more steps first), CW-∞, FGSM. Square
(black-box) is a sanity check, not a headline.
"""

from __future__ import annotations

import re

__all__ = ["STANDARD_TARGETS", "attack_rank", "parse_apgd_t"]

STANDARD_TARGETS = 9  # target classes of the standard AutoAttack's APGD-T
_FIXED_RANK = {"aa": 0, "aa-rand": 1, "apgd-ce+t": 2, "apgd-t": 3, "apgd-ce": 4}
_PGD = re.compile(r"pgd(\d+)")
_CW = re.compile(r"cw(\d+)?")
_APGD_T = re.compile(r"apgd-(ce\+)?t(\d*)")


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
        return (6, -int(cw.group(1) or 20))
    if metric == "fgsm":
        return (7, 0)
    return None
