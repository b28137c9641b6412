"""Threat models: the L∞ ball each dataset is conventionally attacked in, and how robust numbers name it.

A dataset declares its :class:`ThreatModel` next to its classes and size (``DatasetInfo.threat_model``);
``TrainConfig.eps``/``alpha``/``steps`` left at ``None`` take it at train time (``resolve_config``). The
values and their sources are in ``docs/threat-models.md``. Every ``metrics.json`` records the threat
model its numbers were measured in (:func:`threat_record`), so no robust accuracy travels without its ε.

Part of the portable core (plain data and string logic): the engine, the zoo, the studies and the figures
all read ε, the evaluation radius and the headline attack from here, so each rule is written once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from .attack_names import attack_rank

__all__ = ["NORM", "ThreatModel", "evaluation_eps", "format_eps", "strongest_attack", "threat_record"]

NORM = "Linf"


@dataclass(frozen=True)
class ThreatModel:
    """An L∞ threat model in [0, 1] pixel units: radius ``eps``, training-attack step ``alpha`` and
    training-attack ``steps`` (PGD iterations), with the ``source`` the values come from."""

    eps: float
    alpha: float
    steps: int
    source: str = ""
    norm: str = NORM

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ValueError(f"threat model eps must be in (0, 1] (pixel units), got {self.eps!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and 0 < self.alpha <= 1):
            raise ValueError(f"threat model alpha (attack step) must be in (0, 1], got {self.alpha!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"threat model steps must be an int >= 1, got {self.steps!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_eps(eps: float | None) -> str:
    """``8/255`` for a multiple of 1/255 (how CIFAR-style radii are written), else ``0.1``; ``?`` if unknown."""
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "?"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{round(k)}/255"
    frac = Fraction(eps).limit_denominator(1000)
    return f"{float(frac):g}"


def strongest_attack(metrics: Iterable[str] | Mapping[str, Any]) -> str | None:
    """The headline robust metric among ``metrics`` (names, or a name → value mapping whose non-numeric
    entries are skipped): aa > aa-rand > apgd-ce+t > apgd-t > apgd-ce > pgdK (most steps) > cw > fgsm;
    ``None`` when none of them was evaluated (clean only, or L2 attacks only)."""
    if isinstance(metrics, Mapping):
        metrics = [m for m, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    ranked = [(r, m) for m in metrics if (r := attack_rank(m.lower())) is not None]
    return min(ranked)[1] if ranked else None


def evaluation_eps(config: Mapping[str, Any]) -> float | None:
    """The L∞ radius a run's final evaluation used, from its (resolved) config fields: ``eval_eps``, else
    the training ``eps``; ``None`` when neither is a number. The one statement of that fallback, for a
    ``TrainConfig`` (``TrainConfig.eval_radius``), a ``config.json``, a study job's ``train`` table or an
    activation set's ``train_config``."""
    for key in ("eval_eps", "eps"):
        value = config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def threat_record(*, eps: float, train_eps: float, alpha: float, steps: int, attacks: Iterable[str]) -> dict[str, Any]:
    """The ``metrics.json["threat_model"]`` entry: evaluation radius ``eps``, training radius, step and
    steps, and the headline robust ``attack`` (the strongest evaluated; ``None`` for clean only)."""
    return {
        "norm": NORM,
        "eps": float(eps),
        "train_eps": float(train_eps),
        "alpha": float(alpha),
        "steps": int(steps),
        "attack": strongest_attack(attacks),
    }
