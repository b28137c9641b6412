"""Models built for one input size (ViT, DeiT, Swin, BEiT, EVA, …): built for the size asked for.

timm marks such models ``fixed_input_size`` in their pretrained config: their position embeddings, patch
grids and attention windows are sized at construction, so a ViT built for 224 px fails on a 32 px image.
:func:`create_for_size` passes ``img_size`` (the input side) to them, and, for small inputs, gives a
patch embedding whose grid would have fewer than :data:`MIN_GRID` tokens a side smaller patches — the
patch-embedding counterpart of the CIFAR stem of CNNs (``vit_tiny_patch16_224`` at 32 px: 4 px patches,
an 8×8 grid, instead of a 2×2 grid). Keyword arguments given by the caller always win; a model whose
constructor does not take ``img_size``/``patch_size`` is built without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
from torch import nn

__all__ = ["MIN_GRID", "create_for_size", "fixed_input_size"]

MIN_GRID = 8  # tokens a side below which a small-input patch embedding gets smaller patches


def fixed_input_size(arch: str) -> bool:
    """Whether timm builds ``arch`` for one input size (``pretrained_cfg.fixed_input_size``)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False


def _small_patch(side: int, patch: int) -> int:
    """The largest patch below ``patch`` that divides ``side`` into at least :data:`MIN_GRID` patches."""
    fits = [p for p in range(1, patch) if side % p == 0 and side // p >= MIN_GRID]
    return max(fits, default=1)


def _patch_grid(model: nn.Module) -> tuple[int, int] | None:
    """(patch side, grid side) of the model's patch embedding, where it has a square one."""
    embed = getattr(model, "patch_embed", None)
    patch, grid = getattr(embed, "patch_size", None), getattr(embed, "grid_size", None)
    pairs = isinstance(patch, tuple | list) and isinstance(grid, tuple | list) and len(patch) == len(grid) == 2
    if pairs and patch[0] == patch[1] and grid[0] == grid[1]:
        return int(patch[0]), int(grid[0])
    return None


def _build(build: Callable[..., nn.Module], kwargs: dict[str, Any], extra: dict[str, Any]) -> nn.Module | None:
    """``build(**kwargs, **extra)``, or None where the constructor does not take the ``extra`` keywords."""
    try:
        return build(**kwargs, **extra)
    except TypeError:  # this family's constructor has no img_size/patch_size
        return None


def create_for_size(
    build: Callable[..., nn.Module], arch: str, input_size: int, small_input: bool, kwargs: dict[str, Any]
) -> tuple[nn.Module, bool]:
    """``build(**kwargs)`` (``timm.create_model`` bound to ``arch``) sized for ``input_size`` px inputs
    where the family is built for one size; True with it when it got the small-input patch embedding."""
    if not fixed_input_size(arch) or "img_size" in kwargs:
        return build(**kwargs), False
    model = _build(build, kwargs, {"img_size": input_size})
    if model is None:
        return build(**kwargs), False
    sizes = _patch_grid(model)
    if not small_input or "patch_size" in kwargs or sizes is None or sizes[1] >= MIN_GRID:
        return model, False
    patch = _small_patch(input_size, sizes[0])
    smaller = _build(build, kwargs, {"img_size": input_size, "patch_size": patch}) if patch < sizes[0] else None
    return (smaller, True) if smaller is not None else (model, False)
