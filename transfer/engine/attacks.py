"""Adversarial attacks on models that take [0, 1] pixels: one registry, one factory, spec strings.

Our own attacks (``fgsm``, ``pgd``, ``cw``) and the training recipes' inner maximisation share one loop,
:func:`projected_gradient_ascent`, written for training speed: the whole batch at once, a Python loop
over steps only, gradients taken with ``torch.autograd.grad`` with respect to the input alone (no
parameter ``.grad`` is ever touched), and no host–device synchronisation inside the loop. They run
under ``torch.autocast`` when the caller enables it. AutoAttack and its stages are the official code
(``pyautoattack``), configured in ``transfer.engine.autoattack``, not rewritten.

Every attack, by default, runs the model in eval mode (BatchNorm uses and keeps its running
statistics) and puts every submodule back in the mode it had. ``bn_mode="train"`` attacks in train mode
(batch statistics, running statistics updated — what some adversarial-training recipes do) and
``bn_mode="current"`` leaves the model's mode as it is.

Spec strings (``parse_attack``) are also the metric names: ``clean``, ``fgsm``, ``pgd20``, ``pgd7``,
``pgd20-l2``, ``cw`` (= ``cw20``), and the official AutoAttack's ``aa`` (standard version), ``aa-rand``
(for randomised defences), ``apgd-ce``, ``apgd-t`` and ``square`` (one stage alone: cheaper, and not
AutoAttack).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attack_names import NAMED_SPECS, SPEC_ALIASES, parse_spec
from ..model_info import modes_restored
from ..registry import NameRegistry

__all__ = [
    "Attack",
    "PGD",
    "FGSM",
    "CW",
    "Clean",
    "register_attack",
    "create_attack",
    "list_attacks",
    "parse_attack",
    "spec_attacks",
    "attack_mode",
    "projected_gradient_ascent",
    "random_start",
    "margin_loss",
    "BN_MODES",
    "NORMS",
    "LOSSES",
]

BN_MODES = ("eval", "train", "current")
NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
DEFAULT_EPS = 8 / 255

AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]

# The registry knows every spelling of a named spec (attack_names.NAMED_SPECS) as an alias of its class:
# create_attack("aa"), ("apgd"), ("none"). register_attack(name, spec=...) adds them.
_REGISTRY: NameRegistry[type[Attack]] = NameRegistry("attack")
_SPEC_ATTACKS: dict[str, type[Attack]] = {}  # named spec → the attack class it runs


def register_attack(name: str, *, spec: str | None = None) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator adding an attack to the registry under ``name``; ``spec``: the named spec of
    ``transfer.attack_names.NAMED_SPECS`` that runs it with its defaults (its spellings become aliases)."""
    if spec is not None and spec not in NAMED_SPECS:
        raise ValueError(f"attack spec {spec!r} is not in transfer.attack_names.NAMED_SPECS; add it there first")
    if spec in _SPEC_ATTACKS:
        raise ValueError(f"attack spec {spec!r} is already registered (as {_SPEC_ATTACKS[spec].registry_name!r})")

    def wrap(cls: type[Attack]) -> type[Attack]:
        _REGISTRY.register(name)(cls)
        if spec is not None:
            _SPEC_ATTACKS[spec] = cls
            spellings = [spec, *(alias for alias, target in SPEC_ALIASES.items() if target == spec)]
            _REGISTRY.aliases.update({s: name for s in spellings if s != name})
        return cls

    return wrap


def spec_attacks() -> dict[str, type[Attack]]:
    """Named spec → the attack class it runs, for every named spec registered so far."""
    return dict(_SPEC_ATTACKS)


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching a shell-style ``pattern``, sorted."""
    return _REGISTRY.names(pattern)


def create_attack(name: str, **config: Any) -> Attack:
    """Build attack ``name`` with its options (``eps``, ``alpha``, ``steps``, ``norm``, ``loss``, …).

    An option the attack does not take is an error, not silently dropped.
    """
    cls = _REGISTRY.get(name)
    unknown = set(config) - set(cls.config_keys)
    if unknown:
        raise ValueError(
            f"attack {cls.registry_name!r} got unknown option(s) {sorted(unknown)}; "
            f"it takes: {', '.join(cls.config_keys)}"
        )
    return cls(**config)


def parse_attack(spec: str) -> tuple[str, dict[str, Any]]:
    """Turn an evaluation spec (grammar: ``transfer.attack_names``) into ``(registry name, config)`` for
    :func:`create_attack`.

    ``pgdK`` / ``cwK`` run K steps (``pgd`` alone: 20, ``cw``: 20; at most ``MAX_STEPS``), ``-l2``
    selects the L2 ball; evaluation specs keep, per sample, the first iterate that fooled the model
    (``keep_best``), so they are never weaker than plain final-iterate PGD. ``apgd-tK`` is the official
    APGD-T with K target classes (the K highest-scoring other classes; ``apgd-t`` is the standard 9): K
    times the cost of one targeted run, a cheaper and possibly weaker look than the standard stage.
    """
    parsed = parse_spec(spec)
    if parsed.targets is not None:
        return _REGISTRY.get(parsed.family).registry_name, {"n_target_classes": parsed.targets}
    if parsed.family in NAMED_SPECS:
        return _REGISTRY.get(parsed.family).registry_name, {}
    config: dict[str, Any] = {"steps": parsed.steps, "keep_best": True}
    if parsed.norm:
        config["norm"] = parsed.norm
    return parsed.family, config


@contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval") -> Iterator[nn.Module]:
    """Run ``model`` in ``bn_mode`` with no parameter requiring gradients inside the block; afterwards
    every submodule has its own mode back and every parameter its ``requires_grad``.

    Without ``requires_grad`` on the weights, autograd neither saves nor computes anything for them: an
    attack step costs a forward pass and an input-gradient backward, and no ``.grad`` is ever written.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    with modes_restored(model):
        try:
            for p in trainable:
                p.requires_grad_(False)
            if bn_mode != "current":
                model.train(bn_mode == "train")
            yield model
        finally:
            for p in trainable:
                p.requires_grad_(True)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-sample CW margin to maximise: ``max_{j≠y} z_j − z_y``, capped at ``kappa`` (Rice et al.'s 50)."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return (other - true).clamp(max=kappa)


def random_start(x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """A uniform point of the L∞ ball (``linf``) or a random direction at a uniform radius in the L2 ball
    around ``x``, clipped to [0, 1]."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        delta = torch.randn_like(x)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        radius = torch.rand(len(x), device=x.device, dtype=x.dtype).view_as(norms)
        delta = delta / norms * radius * eps
    return (x + delta).clamp_(0.0, 1.0)


def projected_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    keep_first_fooled: torch.Tensor | None = None,
    autocast: AutocastFactory = contextlib.nullcontext,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """The one PGD loop, for training recipes and evaluation attacks alike: ``steps`` ascent steps of
    size ``alpha`` on ``objective(model(x_adv))`` (a scalar) from ``start``, projected onto the ``norm``
    ball of radius ``eps`` around ``x`` and onto [0, 1].

    Call it inside :func:`attack_mode`: with no parameter requiring gradients, each step is one forward
    and one input-gradient backward. Element-wise updates keep ``x``'s memory format (channels-last
    stays channels-last). An L∞ ``start`` is clipped into the ball (TRADES' Gaussian start may leave
    it); an L2 ``start`` must lie in it. ``autocast`` wraps the forward and the objective;
    ``loss_scale`` multiplies the objective so fp16 input gradients do not underflow (L∞ steps use
    their sign only). With labels ``keep_first_fooled``, each sample returns the first iterate the
    model misclassified (read off the logits the step computes anyway), else the last.
    """
    shape = (-1, *[1] * (x.dim() - 1))
    if norm == "linf":
        lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        x_adv = torch.maximum(torch.minimum(start, hi), lo).detach()
    else:
        x_adv = start.detach()
    if keep_first_fooled is not None:
        best, fooled = x_adv, torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with autocast():
            logits = model(x_adv)
            loss = objective(logits)
        (grad,) = torch.autograd.grad(loss * loss_scale if loss_scale != 1.0 else loss, x_adv)
        x_adv = x_adv.detach()
        if keep_first_fooled is not None:
            wrong = logits.detach().argmax(dim=1) != keep_first_fooled
            best = torch.where((wrong & ~fooled).view(shape), x_adv, best)
            fooled = fooled | wrong
        if norm == "linf":
            x_adv = torch.maximum(torch.minimum(x_adv + alpha * grad.sign(), hi), lo)
        else:
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = x_adv + alpha * grad / g_norm - x
            d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            x_adv = (x + delta * (eps / d_norm).clamp(max=1.0)).clamp_(0.0, 1.0)
    if keep_first_fooled is not None:
        x_adv = torch.where(fooled.view(shape), best, x_adv)
    return x_adv


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise ValueError(f"x must be a float tensor [N, ...], got {x.dtype} {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or torch.is_floating_point(y):
        raise ValueError(f"y must be integer labels [N] with N = {len(x)}, got {y.dtype} {tuple(y.shape)}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must be pixels in [0, 1]; normalisation belongs inside the model")


class Attack(ABC):
    """Base of every attack: ``attack(model, x, y) -> x_adv``, detached, in [0, 1], mode restored."""

    registry_name: str = ""
    config_keys: tuple[str, ...] = ("eps", "bn_mode")

    def __init__(self, eps: float = DEFAULT_EPS, bn_mode: str = "eval") -> None:
        if not isinstance(eps, int | float) or eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        self.eps = float(eps)
        self.bn_mode = bn_mode

    @property
    def config(self) -> dict[str, Any]:
        """Creation options, JSON-safe, enough to rebuild this attack with :func:`create_attack`."""
        return {k: getattr(self, k) for k in self.config_keys}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, y)
        x, y = x.detach(), y.detach().long()
        with attack_mode(model, self.bn_mode), torch.enable_grad():
            x_adv = self.perturb(model, x, y)
        return x_adv.detach().clamp_(0.0, 1.0)

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack proper; the model is already in the attack's mode."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({opts})"


@register_attack("clean", spec="clean")
class Clean(Attack):
    """No attack: returns the inputs (so ``clean`` is one more spec for evaluation loops)."""

    config_keys = ("eps", "bn_mode")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.clone()


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al.) in the L∞ or L2 ball.

    ``alpha`` defaults to ``eps / 4`` (2/255 at ε = 8/255); ``loss="cw"`` maximises the CW margin
    instead of cross-entropy; ``keep_best`` returns, per sample, the first iterate that fooled the model
    (read off the logits the step computes anyway, so it costs no extra forward) instead of the last.
    """

    config_keys = ("eps", "alpha", "steps", "norm", "loss", "random_start", "keep_best", "kappa", "bn_mode")
    default_steps = 10
    default_loss = "ce"
    default_random_start = True

    def __init__(
        self,
        eps: float = DEFAULT_EPS,
        alpha: float | None = None,
        steps: int | None = None,
        norm: str = "linf",
        loss: str | None = None,
        random_start: bool | None = None,
        keep_best: bool = False,
        kappa: float = 50.0,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(eps, bn_mode)
        norm = norm.lower()
        loss = (loss or self.default_loss).lower()
        steps = self.default_steps if steps is None else steps
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        alpha = self._default_alpha() if alpha is None else alpha
        if not isinstance(alpha, int | float) or alpha < 0 or (alpha == 0 and self.eps > 0):
            raise ValueError(f"alpha (step size) must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.steps = steps
        self.norm = norm
        self.loss = loss
        self.random_start = self.default_random_start if random_start is None else bool(random_start)
        self.keep_best = bool(keep_best)
        self.kappa = float(kappa)

    def _default_alpha(self) -> float:
        return self.eps / 4

    def _objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A sum, not a mean: each sample's gradient does not depend on the batch size.
        if self.loss == "ce":
            return F.cross_entropy(logits.float(), y, reduction="sum")
        return margin_loss(logits, y, self.kappa).sum()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = random_start(x, self.eps, self.norm) if self.random_start else x
        return projected_gradient_ascent(
            model,
            x,
            lambda logits: self._objective(logits, y),
            start,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            norm=self.norm,
            keep_first_fooled=y if self.keep_best else None,
        )


@register_attack("fgsm", spec="fgsm")
class FGSM(PGD):
    """One signed-gradient step of size ``alpha`` (default ``eps``) from the clean input.

    With ``random_start=True`` and ``alpha=1.25·eps`` it is the FGSM-RS of Wong et al. 2020.
    """

    default_steps = 1
    default_random_start = False

    def _default_alpha(self) -> float:
        return self.eps


@register_attack("cw")
class CW(PGD):
    """CW-∞ as commonly reported: PGD (20 steps by default) on the CW margin loss."""

    default_steps = 20
    default_loss = "cw"
