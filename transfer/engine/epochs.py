"""One epoch of a run: the optimizer, mixed precision, the training steps with their divergence checks,
and robust validation.

Divergence: after every optimizer step the trainable parameters are checked for NaN/inf, after every
epoch the buffers (BatchNorm statistics) too, and the loss before each step; the first non-finite value
is a :class:`TrainingDivergedError` naming it, raised before anything of that epoch is saved.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..inject import param_groups
from ..model_info import eval_mode
from .attacks import create_attack
from .checkpoint import derive_seed
from .config import TrainConfig
from .data import TensorData
from .recipes import Recipe

__all__ = ["TrainingDivergedError", "autocast_setup", "create_optimizer", "first_non_finite", "amp_ran",
           "train_epoch", "validate"]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def create_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the model's trainable parameters in ``transfer.inject.param_groups``' groups;
    the lr of each epoch is set by ``schedule.set_learning_rate``."""
    groups = param_groups(model, config.weight_decay, config.activation_weight_decay)
    if config.optimizer == "adamw":  # vision transformers barely move under SGD in a short run
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def autocast_setup(config: TrainConfig, device: torch.device) -> tuple[Any, float, torch.amp.GradScaler | None]:
    """Autocast factory, attack loss scale and grad scaler: AMP on CUDA only, fp16 with a GradScaler."""
    if device.type != "cuda" or config.amp == "off":
        return contextlib.nullcontext, 1.0, None
    dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), (1024.0 if scaler else 1.0), scaler


def amp_ran(config: TrainConfig, model: nn.Module) -> bool:
    """Whether mixed precision was on: asked for, and on CUDA (on the CPU ``amp`` is ignored)."""
    param = next(model.parameters(), None)
    return config.amp != "off" and param is not None and param.device.type == "cuda"


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or ``None`` (one sync in all)."""
    items = [(n, t) for n, t in named if t.is_floating_point()]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])
    return None if bool(finite.all()) else items[int((~finite).nonzero()[0, 0])][0]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    recipe: Recipe,
    data: TensorData,
    config: TrainConfig,
    epoch: int,
    lr: float,
    progress: bool,
) -> tuple[float, float]:
    """One epoch (0-based ``epoch``, at learning rate ``lr``); returns mean loss and accuracy (percent) on
    the inputs the loss was computed on."""
    model.train()
    generator = torch.Generator().manual_seed(derive_seed(config.seed, epoch, 1))
    n_batches = math.ceil(len(data) / config.batch_size)
    state = f"lr {lr:.4g}, amp {config.amp}" if amp_ran(config, model) else f"lr {lr:.4g}"
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for step, (x, y) in enumerate(data.batches(config.batch_size, shuffle=True, generator=generator)):
            if len(y) < 2:  # BatchNorm cannot normalise a batch of one in train mode
                continue
            x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
            loss, logits = recipe(model, x, y)
            value = float(loss.detach())
            where = f"at epoch {epoch + 1}, step {step + 1} ({state})"
            if not math.isfinite(value):
                raise TrainingDivergedError(f"training loss became {value} {where}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            bad = first_non_finite((n, p) for n, p in model.named_parameters() if p.requires_grad)
            if bad is not None:
                raise TrainingDivergedError(f"parameter {bad!r} became non-finite (NaN or inf) in the update {where}")
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    finally:
        bar.close()
    bad = first_non_finite(model.named_buffers())  # BatchNorm statistics, before anything is saved
    if bad is not None:
        raise TrainingDivergedError(f"buffer {bad!r} became non-finite (NaN or inf) during epoch {epoch + 1} ({state})")
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def validate(model: nn.Module, data: TensorData, config: TrainConfig) -> tuple[float, float]:
    """Clean and PGD accuracy (percent) with the training attack's ε, step and steps, model in eval mode
    (each submodule's own mode restored afterwards)."""
    attack = create_attack("pgd", eps=config.eps, alpha=config.alpha, steps=config.steps)
    clean = robust = 0
    with eval_mode(model):
        for x, y in data.batches(config.eval_batch_size):
            x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
            clean += _correct(model, x, y)
            robust += _correct(model, attack(model, x, y), y)
    return 100.0 * clean / len(data), 100.0 * robust / len(data)
