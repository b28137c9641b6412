"""The learning rate of each epoch, and when an ``until_plateau`` run stops.

:func:`set_learning_rate` is the one place a run's learning rate is set: at the start of every epoch,
from the config and the history so far, for a fresh run and a resumed one alike (a resumed run that
changed ``lr`` or ``epochs`` follows the new schedule from its next epoch). No scheduler object keeps
state of its own, so there is nothing to save or restore beside the history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .config import TrainConfig
from .convergence import plateau_epoch, robust_curve

__all__ = [
    "ACTIVATION_GROUP",
    "lr_factor",
    "plateau_decay_epoch",
    "plateau_reached",
    "lr_decay_epoch",
    "set_learning_rate",
]

ACTIVATION_GROUP = "activation"  # the optimizer group of trainable activation parameters (transfer.inject)


def lr_factor(config: TrainConfig, epoch: int, history: Sequence[dict[str, Any]] = ()) -> float:
    """Multiplier of ``config.lr`` during ``epoch`` (0-based). A step milestone m falls at epoch
    ⌊m·epochs⌋ (0.5/0.75 of 200 → 100/150, Rice et al.; of 3 → 1/2), and never before epoch 1: the
    first epoch always trains at the full rate. The ``plateau`` schedule is ``gamma`` from the epoch
    after robust validation accuracy first plateaued in ``history`` (the epochs before ``epoch``) on."""
    if config.schedule == "step":
        return config.gamma ** sum(epoch >= max(1, int(m * config.epochs + 1e-9)) for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.schedule == "plateau":
        return config.gamma if plateau_decay_epoch(config, history[:epoch]) is not None else 1.0
    return 1.0


def plateau_decay_epoch(config: TrainConfig, history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch (1-based) after which the ``plateau`` schedule decays the lr (its first plateau in
    ``history``), or None."""
    values = robust_curve(history)
    return None if values is None else plateau_epoch(values, config.patience, config.plateau_tol)


def lr_decay_epoch(config: TrainConfig, history: Sequence[dict[str, Any]]) -> int | None:
    """For the ``plateau`` schedule: the first epoch (1-based, as ``history.json`` counts) that trained at
    ``lr × gamma``; None if no epoch of ``history`` did."""
    decayed = plateau_decay_epoch(config, history)
    return decayed + 1 if decayed is not None and decayed < len(history) else None


def plateau_reached(config: TrainConfig, history: Sequence[dict[str, Any]]) -> bool:
    """Whether an ``until_plateau`` run stops after ``history``: robust validation accuracy has
    plateaued — with the ``plateau`` schedule, a second time, ``patience + 1`` epochs after the decay."""
    values = robust_curve(history)
    if not config.until_plateau or values is None:
        return False
    decayed = plateau_epoch(values, config.patience, config.plateau_tol)
    if config.schedule != "plateau" or decayed is None:
        return decayed is not None
    return plateau_epoch(values, config.patience, config.plateau_tol, start=decayed) is not None


def set_learning_rate(
    optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int, history: Sequence[dict[str, Any]]
) -> float:
    """Set every group's lr for ``epoch`` (0-based; ``history``: the epochs before it) and return the
    backbone's: ``config.lr × lr_factor``, times ``activation_lr_scale`` for the activation group."""
    lr = config.lr * lr_factor(config, epoch, history)
    for group in optimizer.param_groups:
        group["lr"] = lr * config.activation_lr_scale if group.get("name") == ACTIVATION_GROUP else lr
    return lr
