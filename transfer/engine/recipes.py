"""How a run trains: the training-recipe registry (the knobs themselves are ``TrainConfig`` in ``config.py``).

Recipes follow timm's registry shape (``register_recipe``, ``create_recipe``, ``list_recipes``). A recipe
turns a clean mini-batch into the loss the optimizer minimises (and the logits whose accuracy
the progress bar shows): ``standard`` (clean cross-entropy), ``pgd`` (Madry et al. PGD-AT), ``trades``
(Zhang et al., KL attack, ``beta`` configurable) and ``fgsm-rs`` (Wong et al. fast AT: one FGSM step of
1.25ε from a uniform random start).

The inner maximisation is written for training speed: during the attack the model is in eval mode
(BatchNorm statistics are not touched by adversarial intermediates; ``attack_bn_mode="train"`` uses
batch statistics instead, as some AT codebases do) and every parameter has ``requires_grad`` off, so
autograd computes the input gradient only — no weight gradients are built, accumulated and zeroed at
each attack step. The loop is the evaluation attacks' own
(``transfer.engine.attacks.projected_gradient_ascent``); recipes give it their objective (TRADES: KL),
start point, autocast and AMP loss scale.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import NameRegistry
from . import attacks

__all__ = [
    "Recipe",
    "register_recipe",
    "create_recipe",
    "list_recipes",
]

_REGISTRY: NameRegistry[type[Recipe]] = NameRegistry("recipe")


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator adding a training recipe to the registry under ``name``."""

    return _REGISTRY.register(name)


def list_recipes(pattern: str = "*") -> list[str]:
    """Registered recipe names matching a shell-style ``pattern``, sorted."""
    return _REGISTRY.names(pattern)


def create_recipe(name: str, **config: Any) -> Recipe:
    """Build recipe ``name``. ``config``: ``eps``, ``alpha``, ``steps``, ``trades_beta``, ``fgsm_step``
    (in units of ε), ``attack_bn_mode`` (``eval`` or ``train``: BatchNorm during the attack), ``autocast``
    (a zero-argument context-manager factory) and ``loss_scale``."""
    return _REGISTRY.get(name)(**config)


class Recipe(ABC):
    """Computes ``(loss, logits)`` for one clean batch; the model is in train mode on entry and exit.

    ``logits`` are those of the inputs the loss is trained on (adversarial ones for adversarial
    recipes), so the reported training accuracy is the robust one there.
    """

    registry_name: str = ""

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        trades_beta: float = 6.0,
        fgsm_step: float = 1.25,
        attack_bn_mode: str = "eval",
        autocast: attacks.AutocastFactory = contextlib.nullcontext,
        loss_scale: float = 1.0,
    ) -> None:
        if attack_bn_mode not in ("eval", "train"):
            raise ValueError(f"attack_bn_mode must be 'eval' or 'train', got {attack_bn_mode!r}")
        self.attack_bn_mode = attack_bn_mode
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.trades_beta, self.fgsm_step = float(trades_beta), float(fgsm_step)
        self.autocast, self.loss_scale = autocast, float(loss_scale)

    @abstractmethod
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` for one clean batch."""

    def _ce_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
        with attacks.attack_mode(model, self.attack_bn_mode):
            return self._ascend(
                model,
                x,
                lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"),
                attacks.random_start(x, self.eps),
                alpha,
                steps,
            )

    def _ascend(
        self,
        model: nn.Module,
        x: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
        start: torch.Tensor,
        alpha: float,
        steps: int,
    ) -> torch.Tensor:
        """The shared PGD loop in the L∞ ball of radius ``eps``, under the recipe's autocast and loss scale."""
        return attacks.projected_gradient_ascent(
            model,
            x,
            objective,
            start,
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
        with attacks.attack_mode(model, self.attack_bn_mode):
            with torch.no_grad(), self.autocast():
                p_clean = F.softmax(model(x).float(), dim=1)

            def kl(logits: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")

            x_adv = self._ascend(model, x, kl, x + 0.001 * torch.randn_like(x), self.alpha, self.steps)
        with self.autocast():  # two forwards, as in the reference code: BatchNorm sees each batch alone
            logits_clean, logits_adv = model(x).float(), model(x_adv).float()
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + self.trades_beta * robust, logits_adv
