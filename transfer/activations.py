"""The activation family: one registry of names → classes and one factory, in the shape of timm's
``layers/create_act.py``.

Every activation here takes the channel count of its site (those that do not need it ignore it), keeps
its learnable parameters in an ordinary ``state_dict``, and can be *frozen*: parameters stop requiring
gradients and the module stays in eval mode whatever ``model.train()`` says (FReLU's BatchNorm would
otherwise update its running statistics).

Sparta follows ``docs/sparta.md`` §2–3: ``Sparta(X) = X ⊙ sigmoid(gate(X))``. At initialisation every
variant equals Swish/SiLU with slope ``beta`` (``x · σ(βx)``), so an untrained Sparta is a known
activation, never noise.

Every option is checked where the activation is built, so a typo is a clear error rather than a traceback
from inside a convolution or a NaN in the first forward pass: kernel sizes are odd ints from 1 to
:data:`MAX_KERNEL_SIZE`; slopes and initial values are finite numbers of magnitude at most :data:`MAX_SCALE`
(PReLU's ``init``, PSSiLU's ``init_alpha``), Sparta's ``beta`` in [0, MAX_SCALE], Softplus's ``beta`` in
[:data:`MIN_SOFTPLUS_BETA`, MAX_SCALE] (its output is divided by it), PSoftplus's ``init_alpha`` in
(0, MAX_SCALE], PSSiLU's ``init_beta`` in (0, 0.99); switches are bools.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import NameRegistry

__all__ = [
    "Activation",
    "Sparta",
    "PSSiLU",
    "PSoftplus",
    "PerCallActivation",
    "register_activation",
    "create_activation",
    "list_activations",
    "get_activation_class",
    "SPARTA_VARIANTS",
    "MAX_KERNEL_SIZE",
    "MAX_SCALE",
    "MIN_SOFTPLUS_BETA",
]

_REGISTRY: NameRegistry[type[Activation]] = NameRegistry("activation", {"swish": "silu"})

SPARTA_VARIANTS = ("dw", "full", "portable")
MAX_KERNEL_SIZE = 31  # 31×31 already spans a whole 32 px map; a wider gate costs k² per pixel and reaches no further
MAX_SCALE = 1000.0  # |slopes| and initial values: at β = 1000 Sparta is within 3e-4 of ReLU, a larger β buys nothing
MIN_SOFTPLUS_BETA = 1e-3  # softplus(βx)/β: a smaller β is a division by (almost) zero


def _number(owner: str, name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float, or a ValueError unless it is a finite real number in [low, high]."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{owner} {name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _kernel_size(owner: str, value: Any) -> int:
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or not 1 <= value <= MAX_KERNEL_SIZE or value % 2 == 0:
        raise ValueError(f"{owner} kernel_size must be an odd int from 1 to {MAX_KERNEL_SIZE}, got {value!r}")
    return int(value)


def _switch(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner} {name} must be true or false, got {value!r}")
    return value


def register_activation(name: str) -> Callable[[type[Activation]], type[Activation]]:
    """Class decorator adding an activation to the registry under ``name``."""

    return _REGISTRY.register(name)


def list_activations(pattern: str = "*") -> list[str]:
    """Registered activation names matching a shell-style ``pattern``, sorted."""
    return _REGISTRY.names(pattern)


def get_activation_class(name: str) -> type[Activation]:
    return _REGISTRY.get(name)


def create_activation(name: str, channels: int, **config: Any) -> Activation:
    """Build activation ``name`` for a site with ``channels`` channels.

    ``config`` holds the activation's own options (for Sparta: ``variant``, ``kernel_size``, ``beta``,
    ``self_gate``); an option the activation does not take is an error, not silently dropped.
    """
    cls = get_activation_class(name)
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    unknown = set(config) - set(cls.config_keys)
    if unknown:
        allowed = ", ".join(cls.config_keys) or "none"
        raise ValueError(f"activation {name!r} got unknown option(s) {sorted(unknown)}; it takes: {allowed}")
    return cls(channels, **config)


class Activation(nn.Module):
    """Base of every registry activation: a channel count, a JSON-safe config, and freezing."""

    registry_name: str = ""  # set by register_activation
    config_keys: tuple[str, ...] = ()
    site_name: str = ""  # the call site inject put this activation at ("" for one built alone)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.frozen = False

    @property
    def config(self) -> dict[str, Any]:
        """Creation options (without ``channels``), enough to rebuild this activation."""
        return {k: getattr(self, k) for k in self.config_keys}

    def freeze(self) -> Activation:
        """Stop learning: no gradients, eval mode kept through ``train()``."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Activation:
        return super().train(mode and not self.frozen)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{self.channels}" + (f", {opts}" if opts else "") + (", frozen" if self.frozen else "")


def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size | None]:
    """Spatial activations see (N, C) inputs (after global pooling) as (N, C, 1, 1)."""
    if x.dim() == 4:
        return x, None
    if x.dim() == 2:
        return x[:, :, None, None], x.shape
    if x.dim() == 3:
        return x[:, :, :, None], x.shape
    raise ValueError(f"expected an (N, C[, H[, W]]) tensor, got shape {tuple(x.shape)}")


@register_activation("relu")
class ReLU(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@register_activation("silu")
class SiLU(Activation):
    """Swish with slope 1, x·σ(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@register_activation("gelu")
class GELU(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


@register_activation("softplus")
class Softplus(Activation):
    config_keys = ("beta",)

    def __init__(self, channels: int, beta: float = 1.0) -> None:
        super().__init__(channels)
        self.beta = _number("Softplus", "beta", beta, MIN_SOFTPLUS_BETA, MAX_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=self.beta)


@register_activation("prelu")
class PReLU(Activation):
    """Leaky ReLU with a learnable slope per channel."""

    config_keys = ("init",)

    def __init__(self, channels: int, init: float = 0.25) -> None:
        super().__init__(channels)
        self.init = _number("PReLU", "init", init, -MAX_SCALE, MAX_SCALE)
        self.weight = nn.Parameter(torch.full((channels,), self.init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


@register_activation("frelu")
class FReLU(Activation):
    """Funnel activation (Ma et al. 2020): max(x, BN(DWConv_k(x))), a spatial-context peer of Sparta."""

    config_keys = ("kernel_size",)

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(channels)
        self.kernel_size = _kernel_size("FReLU", kernel_size)
        k = self.kernel_size
        self.conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, shape = _as_4d(x)
        y = torch.maximum(x4, self.bn(self.conv(x4)))
        return y if shape is None else y.reshape(shape)


@register_activation("sparta")
class Sparta(Activation):
    """Spatially attentive activation: ``X ⊙ σ(gate(X))``.

    Variants (``docs/sparta.md`` §3):

    - ``dw``: depthwise k×k conv on X, C·k² + C parameters.
    - ``full``: full k×k conv C→C, C²·k² + C parameters.
    - ``portable``: k×k conv on [mean_c(X), max_c(X)] (2→1), broadcast over C, 2·k² + 1 parameters
      whatever the width. With ``self_gate=True`` (default) the gate also sees ``beta·X`` itself —
      a fixed term, not a parameter — so that, like the others, it starts as Swish; with
      ``self_gate=False`` it is the pure spatial gate σ(conv([mean, max]) + b) and starts as X/2.

    Initialisation: every tap zero but the centre, which is ``beta`` (per channel for ``dw``, the
    diagonal for ``full``); bias zero. Hence Sparta(X) = X·σ(βX), Swish with slope β.

    X is an NCHW map. At channels-last and token sites ``inject`` wraps Sparta in a
    :class:`~transfer.layouts.LayoutView`: NHWC maps are gated through their NCHW view (no copy); the
    grid tokens of a ViT are gated as the (N, C, H, W) map they form, and its class/register tokens
    each as a 1×1 map, i.e. by the self-gate alone — the centre tap and bias, since a prefix token has
    no neighbours on the grid (``docs/sparta.md`` §7).
    """

    config_keys = ("variant", "kernel_size", "beta", "self_gate")

    def __init__(
        self,
        channels: int,
        variant: str = "dw",
        kernel_size: int = 3,
        beta: float = 1.0,
        self_gate: bool = True,
    ) -> None:
        super().__init__(channels)
        if variant not in SPARTA_VARIANTS:
            raise ValueError(f"unknown Sparta variant {variant!r}; choose one of {', '.join(SPARTA_VARIANTS)}")
        self.variant = variant
        self.kernel_size = _kernel_size("Sparta", kernel_size)
        self.beta = _number("Sparta", "beta", beta, 0.0, MAX_SCALE)
        self.self_gate = _switch("Sparta", "self_gate", self_gate)
        k, c, centre = self.kernel_size, channels, self.kernel_size // 2
        if variant == "dw":
            weight = torch.zeros(c, 1, k, k)
            weight[:, 0, centre, centre] = self.beta
            bias = torch.zeros(c)
        elif variant == "full":
            weight = torch.zeros(c, c, k, k)
            weight[torch.arange(c), torch.arange(c), centre, centre] = self.beta
            bias = torch.zeros(c)
        else:
            weight = torch.zeros(1, 2, k, k)
            bias = torch.zeros(1)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size // 2
        if self.variant == "dw":
            return F.conv2d(x, self.weight, self.bias, padding=pad, groups=self.channels)
        if self.variant == "full":
            return F.conv2d(x, self.weight, self.bias, padding=pad)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        logits = F.conv2d(pooled, self.weight, self.bias, padding=pad)
        return logits + self.beta * x if self.self_gate else logits

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map A = σ(gate logits), same shape as X (broadcast over C for ``portable``
        without ``self_gate``)."""
        x4, shape = _as_4d(x)
        a = torch.sigmoid(self.gate_logits(x4))
        return a if shape is None else a.expand_as(x4).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, shape = _as_4d(x)
        y = x4 * torch.sigmoid(self.gate_logits(x4))
        return y if shape is None else y.reshape(shape)


class PerCallActivation(nn.Module):
    """Stands in for one activation module that the model calls several times per forward pass:
    call *i* goes to ``activations[i]``. The counter is reset at the start of every forward of the
    injected model (a pre-hook on its root) and wraps around as a safeguard.

    It compiles: ``torch.compile`` traces the counter as a side effect on the module, each call picks its
    activation at trace time, and the guard on the counter's value at the start of a forward always sees
    the 0 that the reset hook leaves, so one graph serves every call (``tests/test_compile.py``)."""

    def __init__(self, activations: list[nn.Module]) -> None:
        super().__init__()
        self.activations = nn.ModuleList(activations)
        self._next_call = 0

    def reset(self) -> None:
        self._next_call = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = self._next_call % len(self.activations)
        self._next_call = i + 1
        return self.activations[i](x)


def _per_layer_or_channel(value: float, channels: int, per_channel: bool) -> nn.Parameter:
    """A learnable scalar for the whole site (shape ``(1,)``) or one per channel (shape ``(C,)``)."""
    return nn.Parameter(torch.full((channels if per_channel else 1,), float(value)))


def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``p`` shaped to broadcast over ``x`` (N, C, ...) along the channel dimension."""
    return p.view(1, -1, *[1] * (x.dim() - 2)) if p.numel() > 1 else p


@register_activation("pssilu")
class PSSiLU(Activation):
    """Parametric shifted SiLU (Dai et al. 2022, "Parameterizing activation functions for adversarial
    robustness"): ``x · (σ(|α|·x) − β) / (1 − β)`` with learnable α and β ∈ [0, 1).

    α and β enter as |α| and min(|β|, ``BETA_MAX``), as in the public implementation of the paper's
    activations: β stays in [0, 1) with a gradient everywhere but at 0 itself (hence ``init_beta``
    0.1, that implementation's fixed shift, not 0), weight decay pulls it towards 0 as there, and
    1/(1 − β) ≤ 100 stays finite in float32 and bf16. For β > 0 large negative inputs give positive
    outputs (−β·x/(1 − β)), the shape the paper links to robustness. Parameters are per layer (one α
    and one β per site) by default — the paper shares two for the whole network, and scalars move
    between widths like ``portable`` Sparta; ``per_channel=True`` gives one pair per channel, the
    learnable pointwise counterpart of the centre tap of ``dw`` Sparta. See ``docs/studies.md`` (Controls).
    """

    config_keys = ("init_alpha", "init_beta", "per_channel")
    BETA_MAX = 0.99

    def __init__(
        self, channels: int, init_alpha: float = 1.0, init_beta: float = 0.1, per_channel: bool = False
    ) -> None:
        super().__init__(channels)
        self.init_alpha = _number("PSSiLU", "init_alpha", init_alpha, -MAX_SCALE, MAX_SCALE)
        if not (isinstance(init_beta, numbers.Real) and 0 < init_beta < self.BETA_MAX):
            raise ValueError(f"PSSiLU init_beta must be in (0, {self.BETA_MAX}), got {init_beta!r}")
        self.init_beta = float(init_beta)
        self.per_channel = _switch("PSSiLU", "per_channel", per_channel)
        self.alpha = _per_layer_or_channel(self.init_alpha, channels, self.per_channel)
        self.beta = _per_layer_or_channel(self.init_beta, channels, self.per_channel)

    def shift(self) -> torch.Tensor:
        """The shift β actually used: min(|β|, BETA_MAX), in [0, 1)."""
        return self.beta.abs().clamp(max=self.BETA_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = _channel_view(self.alpha.abs(), x), _channel_view(self.shift(), x)
        return x * (torch.sigmoid(alpha * x) - beta) / (1 - beta)


@register_activation("psoftplus")
class PSoftplus(Activation):
    """Parametric softplus (Dai et al. 2022): ``softplus(|α|·x) / |α|`` with learnable α (init 1: plain
    softplus), per layer by default as :class:`PSSiLU`. Large α tends to ReLU, small α to a shifted
    linear function; |α| is kept ≥ 1e-3 so 1/|α| stays finite."""

    config_keys = ("init_alpha", "per_channel")

    def __init__(self, channels: int, init_alpha: float = 1.0, per_channel: bool = False) -> None:
        super().__init__(channels)
        self.init_alpha = _number("PSoftplus", "init_alpha", init_alpha, 0.0, MAX_SCALE)
        if not self.init_alpha > 0:
            raise ValueError(f"PSoftplus init_alpha must be > 0, got {init_alpha!r}")
        self.per_channel = _switch("PSoftplus", "per_channel", per_channel)
        self.alpha = _per_layer_or_channel(self.init_alpha, channels, self.per_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = _channel_view(self.alpha.abs().clamp_min(1e-3), x)
        return F.softplus(alpha * x) / alpha
