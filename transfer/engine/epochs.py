"""One epoch of a run: the optimizer, mixed precision, the training steps with their divergence checks,
and robust validation.

Mixed precision covers training only: the forward and backward passes and the training attack run
under ``torch.autocast`` (fp32 master weights) on CUDA as ``TrainConfig.amp`` says (bf16 or fp16), and on
a CPU that computes bf16 natively when ``TrainConfig.cpu_bf16`` asks for it (opt-in until a parity
benchmark on such a CPU backs it). Asked for where it cannot run, training runs in fp32 and
:attr:`Precision.why_fp32` says why. Validation here and the final evaluation never autocast: a
low-precision input gradient can weaken an attack and look like robustness (docs/evaluation.md).

Divergence: after every optimizer step the trainable parameters are checked for NaN/inf, after every
epoch the buffers (BatchNorm statistics) too, and the loss before each step; the first non-finite value
is a :class:`TrainingDivergedError` naming it, raised before anything of that epoch is saved.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..inject import param_groups
from ..model_info import eval_mode
from .attacks import AutocastFactory, create_attack
from .checkpoint import derive_seed
from .config import TrainConfig
from .cpu_bf16 import CpuBf16, cpu_bf16
from .data import TensorData
from .recipes import Recipe

__all__ = [
    "Precision",
    "TrainingDivergedError",
    "autocast_setup",
    "autocast_factory",
    "create_optimizer",
    "first_non_finite",
    "amp_ran",
    "train_epoch",
    "training_precision",
    "validate",
]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def create_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the model's trainable parameters in ``transfer.inject.param_groups``' groups;
    the lr of each epoch is set by ``schedule.set_learning_rate``."""
    groups = param_groups(model, config.weight_decay, config.activation_weight_decay)
    if config.optimizer == "adamw":  # vision transformers barely move under SGD in a short run
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


@dataclass(frozen=True)
class Precision:
    """What a run's training computes in: ``amp`` and ``cpu_bf16`` as configured, the device type, what
    ``cpu_bf16()`` found (``None`` off the CPU) and ``ran``: ``bf16``, ``fp16`` or ``fp32``."""

    amp: str
    device: str
    cpu: CpuBf16 | None
    ran: str
    cpu_bf16: bool = False

    @property
    def native_bf16(self) -> str | None:
        """The CPU's native bf16 feature as a short name (``avx512_bf16``, ``none (AVX2)``); ``None`` off the CPU."""
        return self.cpu.name if self.cpu is not None else None

    @property
    def why_fp32(self) -> str | None:
        """One line saying why training runs in fp32 although the config asked for more; ``None`` otherwise
        (also on the CPU without ``cpu_bf16``: ``amp`` is CUDA's setting, fp32 is what the CPU was asked for)."""
        if self.ran != "fp32":
            return None
        if self.device == "cpu":
            if not self.cpu_bf16:
                return None
            capability = self.cpu.capability if self.cpu else "unknown"
            return f"cpu_bf16 asked for; this CPU has no native bf16 ({capability}): training runs in fp32"
        if self.amp == "off":
            return None
        return f"amp {self.amp} asked for; autocast is used on CUDA only, not on {self.device}: training runs in fp32"

    def record(self) -> dict[str, Any]:
        """The ``precision`` entry of ``metrics.json``."""
        return {
            "amp": self.amp,
            "cpu_bf16": self.cpu_bf16,
            "device": self.device,
            "native_bf16": self.native_bf16,
            "ran": self.ran,
        }


def training_precision(amp: str, device: torch.device, cpu_bf16_asked: bool = False) -> Precision:
    """What training runs in on ``device``: ``amp`` on CUDA; on the CPU bf16 when ``TrainConfig.cpu_bf16``
    (``cpu_bf16_asked``) asks for it and the CPU computes bf16 natively, else fp32; fp32 elsewhere."""
    cpu = cpu_bf16() if device.type == "cpu" else None
    if device.type == "cuda":
        ran = "fp32" if amp == "off" else amp
    elif device.type == "cpu":
        ran = "bf16" if cpu_bf16_asked and cpu is not None and cpu.native else "fp32"
    else:
        ran = "fp32"
    return Precision(amp, device.type, cpu, ran, cpu_bf16_asked)


def autocast_factory(device_type: str, ran: str) -> AutocastFactory:
    """A zero-argument factory of the autocast context computing in ``ran`` (no autocast for ``fp32``)."""
    if ran == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if ran == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type, dtype=dtype)


def autocast_setup(config: TrainConfig, device: torch.device) -> tuple[Any, float, torch.amp.GradScaler | None]:
    """Autocast factory, attack loss scale and grad scaler of training (``training_precision``): fp16 (CUDA
    only) with a GradScaler and a scaled attack loss, so that input gradients do not underflow."""
    precision = training_precision(config.amp, device, config.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda") if precision.ran == "fp16" else None
    return autocast_factory(device.type, precision.ran), (1024.0 if scaler else 1.0), scaler


def amp_ran(config: TrainConfig, model: nn.Module) -> bool:
    """Whether training ``model`` with ``config`` runs under autocast (``training_precision``)."""
    param = next(model.parameters(), None)
    return param is not None and training_precision(config.amp, param.device, config.cpu_bf16).ran != "fp32"


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
    state = f"lr {lr:.4g}, autocast" if amp_ran(config, model) else f"lr {lr:.4g}"
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
