"""What a run trains and how: ``TrainConfig`` (every knob) and the training-recipe registry.

Recipes follow timm's registry shape (``register_recipe``, ``create_recipe``, ``list_recipes``). A recipe
turns a clean mini-batch into the loss the optimizer minimises (and the logits whose accuracy
the progress bar shows): ``standard`` (clean cross-entropy), ``pgd`` (Madry et al. PGD-AT), ``trades``
(Zhang et al., KL attack, ``beta`` configurable) and ``fgsm-rs`` (Wong et al. fast AT: one FGSM step of
1.25ε from a uniform random start).

The inner maximisation is written for training speed: during the attack the model is in eval mode
(BatchNorm statistics are not touched by adversarial intermediates) and every parameter has
``requires_grad`` off, so autograd computes the input gradient only — no weight gradients are built,
accumulated and zeroed at each attack step. Evaluation attacks live in ``transfer.attacks``; the
training attacks are here because TRADES needs its own (KL) objective and AMP loss scaling.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from . import attacks
from .activations import create_activation
from .data import dataset_info
from .mapping import POLICIES
from .registry import NameRegistry

__all__ = [
    "TrainConfig",
    "RESUME_MAY_CHANGE",
    "SCHEDULES",
    "AMP_MODES",
    "Recipe",
    "register_recipe",
    "create_recipe",
    "list_recipes",
    "perturb_linf",
]

_REGISTRY: NameRegistry[type[Recipe]] = NameRegistry("recipe")

AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator adding a training recipe to the registry under ``name``."""

    return _REGISTRY.register(name)


def list_recipes(pattern: str = "*") -> list[str]:
    """Registered recipe names matching a shell-style ``pattern``, sorted."""
    return _REGISTRY.names(pattern)


def create_recipe(name: str, **config: Any) -> Recipe:
    """Build recipe ``name``. ``config``: ``eps``, ``alpha``, ``steps``, ``trades_beta``, ``fgsm_step``
    (in units of ε), ``autocast`` (a zero-argument context-manager factory) and ``loss_scale``."""
    return _REGISTRY.get(name)(**config)


RESUME_MAY_CHANGE = frozenset({
    "epochs", "lr", "amp", "device", "data_dir", "download", "eval_attacks", "eval_eps", "eval_batch_size",
    "channels_last",
})
SCHEDULES = ("step", "cosine", "constant")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the paper-scale protocol (``SPARTA.md`` §6, Rice et al.).

    ``input_size``/``in_chans`` ``None`` take the dataset's own. ``milestones`` are fractions of
    ``epochs`` (step schedule). ``val_subset`` images are held out of the train split for robust
    validation each epoch (0/``None``: no validation, best = last). ``policy``/``freeze`` apply when
    ``train`` gets an activation set. ``amp`` acts on CUDA only; ``channels_last`` (NHWC memory
    layout) on every device.
    """

    arch: str = "resnet18"
    dataset: str = "cifar10"
    activation: str = "relu"
    activation_config: dict[str, Any] = field(default_factory=dict)
    width: int | None = None
    input_size: int | None = None
    in_chans: int | None = None
    recipe: str = "pgd"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    activation_weight_decay: float | None = None
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    trades_beta: float = 6.0
    fgsm_step: float = 1.25
    val_subset: int | None = 1000
    eval_attacks: tuple[str, ...] = ("clean", "fgsm", "pgd20", "cw")
    eval_eps: float | None = None
    eval_batch_size: int = 256
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    device: str = "auto"
    amp: str = "bf16"
    channels_last: bool = True
    policy: str = "stage"
    freeze: bool = True
    transfer_source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.eval_attacks, str):
            self.eval_attacks = tuple(a.strip() for a in self.eval_attacks.split(",") if a.strip())
        self.eval_attacks = tuple(self.eval_attacks)
        self.milestones = tuple(float(m) for m in self.milestones)
        self.activation_config = dict(self.activation_config or {})
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"], d["eval_attacks"] = list(self.milestones), list(self.eval_attacks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; allowed keys: {', '.join(allowed)}")
        return cls(**d)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad field and what it takes; return ``self``."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {what}")

        def pos_int(name: str, optional: bool = False, minimum: int = 1) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            need(isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                 f"{name} must be an int >= {minimum}{' or None' if optional else ''}, got {v!r}")

        for name in ("lr", "momentum", "weight_decay", "gamma", "eps", "alpha", "trades_beta", "fgsm_step"):
            v = getattr(self, name)
            need(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                 f"{name} must be a finite number, got {v!r}")
        need(timm.is_model(self.arch), f"unknown arch {self.arch!r}; see timm.list_models('resnet*')")
        dataset_info(self.dataset)
        create_activation(self.activation, 4, **self.activation_config)
        need(self.recipe in list_recipes(),
             f"unknown recipe {self.recipe!r}; choose one of {', '.join(list_recipes())}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        need(self.policy in POLICIES, f"policy must be one of {tuple(POLICIES)}, got {self.policy!r}")
        for name in ("epochs", "steps", "eval_batch_size"):
            pos_int(name)
        pos_int("batch_size", minimum=2)
        for name in ("width", "input_size", "train_subset", "test_subset"):
            pos_int(name, optional=True)
        pos_int("val_subset", optional=True, minimum=0)
        need(self.in_chans in (None, 1, 3), f"in_chans must be 1, 3 or None, got {self.in_chans!r}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "eps", "alpha", "fgsm_step"):
            need(float(getattr(self, name)) > 0, f"{name} must be > 0, got {getattr(self, name)!r}")
        need(self.eps <= 1, f"eps is in [0, 1] pixel units (8/255 = 0.0314), got {self.eps!r}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma!r}")
        need(all(0 < m <= 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
             f"milestones are increasing fractions of epochs in (0, 1], got {list(self.milestones)}")
        need(self.trades_beta >= 0, f"trades_beta must be >= 0, got {self.trades_beta!r}")
        need(bool(self.eval_attacks), "eval_attacks must name at least one attack (e.g. clean,pgd20)")
        for spec in self.eval_attacks:
            if spec != "clean":
                attacks.parse_attack(spec)
        need(self.eval_eps is None or 0 < self.eval_eps <= 1, f"eval_eps must be in (0, 1], got {self.eval_eps!r}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self


def perturb_linf(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    alpha: float,
    steps: int,
    start: torch.Tensor | None = None,
    autocast: AutocastFactory = contextlib.nullcontext,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """L∞ projected gradient ascent on ``objective(model(x_adv))`` (a scalar) from ``start``.

    ``start`` defaults to ``x`` plus uniform noise in [-ε, ε]. Call inside :func:`transfer.attacks.attack_mode`.
    ``loss_scale`` keeps fp16 input gradients from underflowing (the step uses their sign only).
    """
    if start is None:
        start = x + torch.empty_like(x).uniform_(-eps, eps)
    lower, upper = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    x_adv = torch.max(torch.min(start, upper), lower).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with autocast():
            loss = objective(model(x_adv))
        (grad,) = torch.autograd.grad(loss * loss_scale, x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() + alpha * grad.sign(), upper), lower)
    return x_adv.detach()


class Recipe(ABC):
    """Computes ``(loss, logits)`` for one clean batch; the model is in train mode on entry and exit.

    ``logits`` are those of the inputs the loss is trained on (adversarial ones for adversarial
    recipes), so the reported training accuracy is the robust one there.
    """

    name: str = ""
    adversarial: bool = True

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        trades_beta: float = 6.0,
        fgsm_step: float = 1.25,
        autocast: AutocastFactory = contextlib.nullcontext,
        loss_scale: float = 1.0,
    ) -> None:
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.trades_beta, self.fgsm_step = float(trades_beta), float(fgsm_step)
        self.autocast, self.loss_scale = autocast, float(loss_scale)

    @abstractmethod
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` for one clean batch."""

    def _ce_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
        with attacks.attack_mode(model, "eval"):
            return perturb_linf(
                model,
                x,
                lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"),
                eps=self.eps,
                alpha=alpha,
                steps=steps,
                autocast=self.autocast,
                loss_scale=self.loss_scale,
            )

    def _ce(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = model(x)
        return F.cross_entropy(logits.float(), y), logits


@register_recipe("standard")
class Standard(Recipe):
    """Clean cross-entropy: the non-robust reference."""

    adversarial = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ce(model, x, y)


@register_recipe("pgd")
class PGDTraining(Recipe):
    """Madry et al. PGD-AT: cross-entropy on PGD-``steps`` examples (step ``alpha``, random start)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ce(model, self._ce_attack(model, x, y, self.alpha, self.steps), y)


@register_recipe("fgsm-rs")
class FGSMRandomStart(Recipe):
    """Wong et al. "Fast is better than free": one FGSM step of ``fgsm_step``·ε from a uniform start."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ce(model, self._ce_attack(model, x, y, self.fgsm_step * self.eps, 1), y)


@register_recipe("trades")
class TRADES(Recipe):
    """Zhang et al. TRADES: CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximising that KL (start x + 0.001·N(0, 1))."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with attacks.attack_mode(model, "eval"):
            with torch.no_grad(), self.autocast():
                p_clean = F.softmax(model(x).float(), dim=1)

            def kl(logits: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")

            x_adv = perturb_linf(
                model,
                x,
                kl,
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
                start=x + 0.001 * torch.randn_like(x),
                autocast=self.autocast,
                loss_scale=self.loss_scale,
            )
        with self.autocast():  # two forwards, as in the reference code: BatchNorm sees each batch alone
            logits_clean, logits_adv = model(x).float(), model(x_adv).float()
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + self.trades_beta * robust, logits_adv
