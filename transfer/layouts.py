"""Where the channels and the spatial grid of an activation site are: NCHW maps, channels-last maps and
tokens, and the view that lets one activation run on all three.

A site sees one of three layouts (``Site.layout``):

- ``NCHW``: a convolutional feature map (N, C, H, W), or (N, C) after global pooling;
- ``NHWC``: a channels-last map (N, H, W, C), fed by an ``nn.Linear`` on a 4-D tensor (ConvNeXt's MLP);
- ``NLC``: tokens (N, L, C), channels last. The first ``prefix_tokens`` tokens (class, distillation and
  register tokens) have no place on the grid; the other L − P tokens are an (H, W) grid, row-major
  (``Site.spatial``). A token site whose grid cannot be found has ``spatial == (L,)``.

The grid of a token site is read from the model, never guessed from L alone (:class:`GridFinder`):
the nearest enclosing module's ``input_resolution``/``feat_size`` (Swin and kin), then the patch
embedding's ``grid_size`` (ViT, DeiT, BEiT, EVA, …), then, latest first, the grids the same forward
pass showed: 4-D convolution outputs (hierarchical models that run convolutions between token blocks),
resolutions a module declares as it runs (LeViT), and the patch grid of a module with a ``patch_size``
that receives a map (MobileViT, NaFlex/Gemma-style embeddings); each only where it accounts for exactly
L − P tokens. P is the model's ``num_prefix_tokens`` (or the number of its class/distillation/register
token parameters), else 0. Prefix tokens lead, grid tokens follow in row-major order, as timm lays them
out; a model that reorders its tokens (Hiera's mask-unit "unroll") has no grid that reads them right,
and its token sites are left without one.

:class:`LayoutView` runs an activation written for NCHW maps on the other layouts without copying the
grid: ``x.permute(0, 3, 1, 2)`` of an NHWC map is an NCHW tensor in channels-last memory, which
convolutions take directly, and the output is permuted back to the input's layout. Prefix tokens go
through the activation as 1×1 maps of their own: a k×k Sparta gate there sees only its centre tap and
bias, the self-gate of a 1×1 neighbourhood (``docs/sparta.md`` §3). The view holds no parameters, so
an activation's ``state_dict`` and its transfer between layouts are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "LAYOUTS",
    "SPATIAL_ACTIVATIONS",
    "GridFinder",
    "LayoutView",
    "SiteLayout",
    "arch_name",
    "layout_problem",
    "ungridded",
    "unwrap",
]

LAYOUTS = ("NCHW", "NHWC", "NLC")
# Registry activations that mix neighbouring positions: they need a grid, so token sites without one
# refuse them. Every other activation acts on each position alone (per channel at most).
SPATIAL_ACTIVATIONS = ("sparta", "frelu")
# (H, W) a module works at: read from every enclosing module of a site, and recorded whenever one runs.
_ENCLOSING_ATTRS = ("input_resolution", "feat_size")
_DECLARED_ATTRS = (*_ENCLOSING_ATTRS, "resolution_out", "resolution")
_PREFIX_PARAMS = ("cls_token", "dist_token", "reg_token")


def _pair(obj: Any, attr: str) -> tuple[int, int] | None:
    """``obj.attr`` as an (H, W) pair of ints, or None where it is not one."""
    value = getattr(obj, attr, None)
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _prefix_candidates(model: nn.Module) -> list[int]:
    """Numbers of leading non-grid tokens to try, the model's own first: ``num_prefix_tokens``, else the
    tokens of its class/distillation/register parameters (all of them at the root; each one alone where a
    stage has its own, as CoaT's ``cls_token1``…); then 0 (blocks that run before the class token joins,
    as in CaiT)."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return list(dict.fromkeys([declared, 0]))
    root = [getattr(model, n, None) for n in _PREFIX_PARAMS]
    found = [sum(int(p.shape[1]) for p in root if isinstance(p, torch.Tensor) and p.dim() == 3)]
    for name, p in model.named_parameters():
        leaf = name.rpartition(".")[2].rstrip("0123456789_")
        if leaf in _PREFIX_PARAMS and p.dim() == 3:
            found.append(int(p.shape[1]))
    return list(dict.fromkeys([*(n for n in found if n > 0), 0]))


class GridFinder:
    """Reads a site's layout from the tensor an activation gets, and the grid of token sites from the
    model (see the module docstring). Its hooks collect the grids a tracing pass shows, in call order."""

    def __init__(self, model: nn.Module) -> None:
        self.prefixes = _prefix_candidates(model)
        self.patch_grid = _pair(getattr(model, "patch_embed", None), "grid_size")
        # Hiera-style models put their tokens in mask-unit order, not row-major: no grid reads them right.
        self.unrolled = any(type(m).__name__ == "Unroll" for m in model.modules())
        self.resolutions: dict[str, tuple[int, int]] = {}
        for path, module in model.named_modules():
            pair = next((p for p in (_pair(module, a) for a in _ENCLOSING_ATTRS) if p is not None), None)
            if pair is not None:
                self.resolutions[path] = pair
        self.seen: list[tuple[int, int]] = []  # grids shown during the pass, latest last

    def hooks(self, model: nn.Module) -> list[Any]:
        """Hooks recording, in call order, the (H, W) of every 2-D convolution output, the resolutions a
        module declares when it runs (LeViT's ``resolution``, and its subsampled grid where the module has a
        ``stride``), and the patch grid of
        every module with a ``patch_size`` that gets a 4-D map (MobileViT blocks, NaFlex/Gemma embeddings)."""
        handles = []
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(self._on_conv))
            if any(hasattr(module, a) for a in (*_DECLARED_ATTRS, "patch_size")):
                handles.append(module.register_forward_pre_hook(self._on_call))
        return handles

    def _on_conv(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            self.seen.append((int(out.shape[2]), int(out.shape[3])))

    def _on_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.seen.extend(p for p in (_pair(module, a) for a in _DECLARED_ATTRS) if p is not None)
        resolution, stride = _pair(module, "resolution"), getattr(module, "stride", None)
        if resolution is not None and isinstance(stride, int) and stride > 1:  # LeViT's subsampling
            self.seen.append((-(-resolution[0] // stride), -(-resolution[1] // stride)))
        patch = getattr(module, "patch_size", None)
        patch = (patch, patch) if isinstance(patch, int) else _pair(module, "patch_size")
        x = args[0] if args else None
        if patch is not None and isinstance(x, torch.Tensor) and x.dim() == 4 and min(patch) > 0:
            self.seen.append((int(x.shape[-2]) // patch[0], int(x.shape[-1]) // patch[1]))

    def grid(self, path: str, tokens: int) -> tuple[tuple[int, ...], int] | None:
        """``(grid, prefix_tokens)`` for a site at module ``path`` seeing ``tokens`` tokens: grid ``()``
        when every token is a prefix token; ``None`` when no grid of the model accounts for them."""
        if self.unrolled:
            return None
        ancestors = [p for p in self.resolutions if p == "" or path == p or path.startswith(p + ".")]
        nearest = [self.resolutions[p] for p in sorted(ancestors, key=len, reverse=True)]
        candidates = [*nearest, *([self.patch_grid] if self.patch_grid else []), *reversed(self.seen)]
        for prefix in self.prefixes:
            rest = tokens - prefix
            if rest == 0 and prefix > 0:
                return (), prefix
            match = next((g for g in candidates if rest > 0 and g[0] * g[1] == rest), None)
            if match is not None:
                return match, prefix
        return ((1, 1), 0) if tokens == 1 else None  # one token (attention pooling) has one place: a 1×1 grid

    def read(self, x: torch.Tensor, path: str, from_linear: bool) -> dict[str, Any]:
        """The :class:`~transfer.sites.Site` fields ``channels``, ``spatial``, ``layout`` and
        ``prefix_tokens`` of an activation call at ``path`` on ``x`` (``from_linear``: ``x`` is the
        output of an ``nn.Linear``, so a 4-D ``x`` is channels-last)."""
        shape = tuple(int(s) for s in x.shape)
        if x.dim() == 4 and from_linear:
            return {"channels": shape[3], "spatial": shape[1:3], "layout": "NHWC", "prefix_tokens": 0}
        if x.dim() == 3:
            found = self.grid(path, shape[1])
            spatial, prefix = found if found is not None else ((shape[1],), 0)
            return {"channels": shape[2], "spatial": tuple(spatial), "layout": "NLC", "prefix_tokens": prefix}
        channels = shape[1] if len(shape) > 1 else 1
        return {"channels": channels, "spatial": shape[2:], "layout": "NCHW", "prefix_tokens": 0}


def ungridded(layout: str, spatial: tuple[int, ...]) -> bool:
    """A token site whose grid could not be found (its ``spatial`` is the token count alone)."""
    return layout == "NLC" and len(spatial) == 1


def arch_name(model: nn.Module) -> str:
    """timm's architecture name of ``model`` (its ``pretrained_cfg``), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None)
    return str(cfg.get("architecture") or type(model).__name__) if isinstance(cfg, dict) else type(model).__name__


def layout_problem(activation: str, sites: list[Any], model_name: str = "the model") -> str | None:
    """Why ``activation`` cannot go to every one of ``sites`` (:class:`~transfer.sites.Site`), or None:
    a spatial activation needs the grid of every token site."""
    if activation not in SPATIAL_ACTIVATIONS:
        return None
    lost = [s for s in sites if ungridded(s.layout, s.spatial)]
    if not lost:
        return None
    shown = ", ".join(f"{s.name} (L={s.spatial[0]}, C={s.channels})" for s in lost[:3])
    return (
        f"{model_name}: {len(lost)} activation site(s) see (N, L, C) tokens whose spatial grid could not be found "
        f"in the model, e.g. {shown}: none of its input_resolution/feat_size, patch_embed.grid_size (with "
        f"num_prefix_tokens) or convolution outputs accounts for L tokens, so {activation!r}, which mixes "
        "neighbouring positions, cannot be placed there. Use a pointwise activation (relu, silu, pssilu, ...) "
        "for this model, or a model whose token grid is known (docs/portability.md lists the families)"
    )


@dataclass(frozen=True)
class SiteLayout:
    """How an NCHW activation sees one non-NCHW site: its layout, grid and number of prefix tokens."""

    layout: str
    grid: tuple[int, ...] = ()  # (H, W) of the grid tokens of an NLC site; () when it has none
    prefix_tokens: int = 0

    @classmethod
    def of(cls, layout: str, spatial: tuple[int, ...], prefix_tokens: int = 0) -> SiteLayout:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown site layout {layout!r}; one of {', '.join(LAYOUTS)}")
        grid = tuple(spatial) if layout == "NLC" and len(spatial) == 2 else ()
        return cls(layout, grid, int(prefix_tokens))

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` (written for NCHW) applied to ``x`` in this layout; the result has ``x``'s layout."""
        if self.layout == "NCHW":
            return fn(x)
        if self.layout == "NHWC":
            if x.dim() != 4:
                raise ValueError(f"an NHWC site expects (N, H, W, C) maps, got shape {tuple(x.shape)}")
            return fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self._tokens(fn, x)

    def _tokens(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"a token site expects (N, L, C) tokens, got shape {tuple(x.shape)}")
        n, length, c = x.shape
        if not self.grid:  # no grid: every token on its own (pointwise activations only; see inject)
            return fn(x.reshape(n * length, c, 1, 1)).reshape(n, length, c)
        h, w = self.grid
        prefix = self.prefix_tokens
        if length != prefix + h * w:
            raise ValueError(
                f"a token site traced with {prefix} prefix + {h}x{w} grid tokens got {length} tokens; run the "
                "model at the input size it was injected at (or inject again at the new size)"
            )
        # The prefix tokens go first, so the activation's last call of a forward pass sees the grid (what a
        # forward hook on it, such as the gate maps of plots/gates.py, captures).
        head = fn(x[:, :prefix].reshape(n * prefix, c, 1, 1)).reshape(n, prefix, c) if prefix else None
        grid = x[:, prefix:].reshape(n, h, w, c).permute(0, 3, 1, 2)
        out = fn(grid).permute(0, 2, 3, 1).reshape(n, h * w, c)
        return out if head is None else torch.cat([head, out], dim=1)


class LayoutView(nn.Module):
    """An activation at a channels-last or token site: it sees NCHW maps, the model sees its own layout.
    Holds no parameters of its own (``activation``'s ``state_dict`` keys gain the prefix
    ``activation.`` inside the model only; activation sets are keyed by site)."""

    def __init__(self, activation: nn.Module, layout: SiteLayout) -> None:
        super().__init__()
        self.activation = activation
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layout.apply(self.activation, x)

    def extra_repr(self) -> str:
        grid = "x".join(map(str, self.layout.grid))
        return (
            self.layout.layout
            + (f", grid={grid}" if grid else "")
            + (f", prefix_tokens={self.layout.prefix_tokens}" if self.layout.prefix_tokens else "")
        )


def unwrap(module: nn.Module) -> nn.Module:
    """The activation inside a :class:`LayoutView`, or ``module`` itself."""
    return module.activation if isinstance(module, LayoutView) else module
