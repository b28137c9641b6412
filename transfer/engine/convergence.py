"""Has a run's robust validation accuracy plateaued? The criterion every run records, and the one
``until_plateau`` training stops on (``docs/evaluation.md``, "Convergence").

With robust validation accuracies r_1 … r_E (percent, one per epoch), patience k and tolerance t
(``TrainConfig.patience`` = 3 epochs, ``plateau_tol`` = 1 percentage point), the run has **plateaued**
after epoch E when E > k and its last k epochs did not raise the best before them by t or more::

    max(r_{E-k+1} … r_E) < max(r_1 … r_{E-k}) + t

This is the patience rule of early stopping (Keras' ``EarlyStopping``, ``ReduceLROnPlateau``): more
epochs at this learning rate stopped paying. A run whose last k epochs fell t or more below its best
(robust overfitting) has plateaued too — it is past its peak, and ``best.pt`` keeps the peak — and its
record says so (``declined``). A two-sided rule (also calling a decline "not converged") never stops on
noisy validation: the best of many noisy epochs sits above the best of the last few by chance.
**Epochs needed** is the first epoch within t of the run's best robust validation accuracy: how long
the run took to get (nearly) as good as it got. A run without validation (``val_subset`` 0) cannot be
judged: its ``converged`` is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["convergence_record", "declined", "plateau_epoch", "plateaued", "robust_curve"]


def robust_curve(history: Sequence[Mapping[str, Any]]) -> list[float] | None:
    """The robust validation accuracy of each epoch of a run's history, or None if it has no validation."""
    values = [h.get("val_robust") for h in history]
    if not values or any(v is None for v in values):
        return None
    return [float(v) for v in values]


def plateaued(values: Sequence[float], patience: int, tol: float) -> bool:
    """Whether the curve ``values`` (one value per epoch) has plateaued at its end (criterion above)."""
    if len(values) <= patience:
        return False
    return max(values[-patience:]) < max(values[:-patience]) + tol


def declined(values: Sequence[float], patience: int, tol: float) -> bool:
    """Whether the last ``patience`` epochs of ``values`` all lie ``tol`` or more below the best before
    them: robust overfitting (the run plateaued past its peak)."""
    if len(values) <= patience:
        return False
    return max(values[-patience:]) <= max(values[:-patience]) - tol


def plateau_epoch(values: Sequence[float], patience: int, tol: float, start: int = 0) -> int | None:
    """The first epoch E (1-based, at least ``start + patience + 1``) after which ``values[:E]`` has
    plateaued; None if it never does. ``start`` looks for a plateau after a change at that epoch (a
    learning-rate decay) only once ``patience + 1`` epochs have passed since it."""
    for end in range(start + patience + 1, len(values) + 1):
        if plateaued(values[:end], patience, tol):
            return end
    return None


def convergence_record(history: Sequence[Mapping[str, Any]], patience: int, tol: float) -> dict[str, Any]:
    """The ``metrics.json["convergence"]`` entry of a run: whether it had plateaued when it ended, how
    many epochs it trained, whether it ended below its peak (``declined``), the epoch of its best robust
    validation accuracy and the epochs it needed."""
    values = robust_curve(history)
    record: dict[str, Any] = {"epochs": len(history), "patience": int(patience), "tolerance": float(tol)}
    if values is None:
        unknown = ("converged", "declined", "best_epoch", "epochs_needed", "best_val_robust")
        return {**record, **dict.fromkeys(unknown)}
    best = max(values)
    return {
        **record,
        "converged": plateaued(values, patience, tol),
        "declined": declined(values, patience, tol),
        "best_epoch": values.index(best) + 1,
        "epochs_needed": next(i + 1 for i, v in enumerate(values) if v > best - tol),
        "best_val_robust": best,
    }
