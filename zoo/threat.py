"""The threat model of a zoo entry, the key it is filed under beside its dataset (as RobustBench files
models under ``(dataset, threat_model)``): the norm, the radius ε of the evaluation and the attack
behind the headline robust accuracy.

A card records it as ``threat_model = {"norm", "eps", "attack"}``. Training runs write it into
``metrics.json`` (``transfer.threat_model``), and a card built from a run's activation set takes it from
there; for a set trained before threat models were recorded, it is read off the run's own numbers: the
evaluation radius (``metrics["eps"]``, else ``transfer.threat_model.evaluation_eps`` of its
``train_config``) and the strongest attack the run reports (``transfer.threat_model.strongest_attack``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from transfer.attack_names import attack_rank
from transfer.threat_model import evaluation_eps, format_eps, strongest_attack

__all__ = [
    "describe_threat", "headline_metric", "normalize_norm", "ordered_metric_names", "threat_matches",
    "threat_model_from_meta", "threat_model_of",
]  # fmt: skip

_NORMS = {"linf": "Linf", "l∞": "Linf", "l2": "L2"}


def normalize_norm(norm: str) -> str:
    """``linf``, ``Linf``, ``L∞`` → ``Linf``; ``l2`` → ``L2``; anything else is a ``ValueError``."""
    key = str(norm).strip().lower()
    if key not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; use Linf or L2")
    return _NORMS[key]


def headline_metric(metrics: dict[str, Any] | None, threat: dict[str, Any] | None) -> str | None:
    """The metric that is the entry's robust accuracy: the threat model's attack, else the strongest
    attack among ``metrics`` (``None`` if there is none)."""
    if threat and threat.get("attack"):
        return str(threat["attack"])
    return strongest_attack(metrics or {})


def ordered_metric_names(names: Iterable[str]) -> list[str]:
    """``names`` (repeats dropped) in the order the zoo lists metrics: ``clean`` first, then the L∞ attacks
    from weakest to strongest by :func:`transfer.attack_names.attack_rank` (the ranking that picks the
    headline, so the strongest attack comes last), then any other name in the order given."""
    present = list(dict.fromkeys(names))
    attacks = sorted((n for n in present if attack_rank(n) is not None), key=lambda n: attack_rank(n), reverse=True)
    others = [n for n in present if n != "clean" and attack_rank(n) is None]
    return [n for n in present if n == "clean"] + attacks + others


def threat_model_from_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"norm", "eps", "attack"}`` from an activation set's ``meta`` (a training run's), or ``None``
    when the meta says nothing about how the set was evaluated."""
    if not isinstance(meta, dict):
        return None
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    recorded = meta.get("threat_model") or metrics.get("threat_model")
    if isinstance(recorded, dict) and isinstance(recorded.get("eps"), int | float):
        return {
            "norm": normalize_norm(recorded.get("norm") or "Linf"),
            "eps": float(recorded["eps"]),
            "attack": recorded.get("attack") or strongest_attack(metrics),
        }
    eps = metrics.get("eps")
    if not isinstance(eps, int | float) or isinstance(eps, bool):
        eps = evaluation_eps(meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {})
    if eps is None:
        return None
    return {"norm": "Linf", "eps": float(eps), "attack": strongest_attack(metrics)}


def threat_model_of(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card's ``threat_model``; for a card stored before the field existed, read off its ``meta``."""
    recorded = card.get("threat_model")
    return dict(recorded) if isinstance(recorded, dict) else threat_model_from_meta(card.get("meta"))


def threat_matches(threat: dict[str, Any] | None, *, eps: float | None = None, norm: str | None = None) -> bool:
    """Whether ``threat`` has radius ``eps`` (to 0.1 %: ``0.0314`` finds 8/255) and ``norm``; an unknown
    threat model matches only when neither is asked for."""
    if eps is None and norm is None:
        return True
    if threat is None:
        return False
    if norm is not None and normalize_norm(threat.get("norm") or "Linf") != normalize_norm(norm):
        return False
    return eps is None or math.isclose(float(threat["eps"]), float(eps), rel_tol=1e-3)


def describe_threat(threat: dict[str, Any] | None) -> str:
    """``L∞ ε = 8/255, pgd20``; ``not recorded`` for ``None``."""
    if not threat:
        return "not recorded"
    norm = "L∞" if normalize_norm(threat.get("norm") or "Linf") == "Linf" else "L2"
    attack = f", {threat['attack']}" if threat.get("attack") else ""
    return f"{norm} ε = {format_eps(float(threat['eps']))}{attack}"
