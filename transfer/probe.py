"""When a model cannot run at an input size: which size it can run at, as a clear error.

Tracing sites runs one forward pass. A model built for a fixed size (a ViT's patch grid) or one that
downsamples below 1×1 on a small image (ConvNeXt at 16 px) fails there with an ``AssertionError`` or a
``RuntimeError`` deep inside its code. :func:`input_size_error` turns such a failure into an
:class:`InputSizeError` naming the model, the size tried, the smallest size of a few candidates that
runs, and what to change; it returns ``None`` when no candidate runs either (not a size problem, so
the caller re-raises the original error).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["InputSizeError", "input_size_error", "candidate_sizes"]

_LARGEST = 512


class InputSizeError(ValueError):
    """A model cannot run at the requested input size; ``needed`` is a size it runs at."""

    def __init__(self, message: str, name: str, tried: int, needed: int) -> None:
        super().__init__(message)
        self.name, self.tried, self.needed = name, tried, needed


def _own_size(model: nn.Module) -> int | None:
    """The side a model was built for, where it says: a patch embedding's ``img_size`` or timm's
    ``pretrained_cfg['input_size']``."""
    patch = getattr(model, "patch_embed", None)
    size = getattr(patch, "img_size", None)
    if isinstance(size, tuple | list) and size:
        return int(size[0])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    shape = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(shape[-1]) if isinstance(shape, tuple | list) and shape else None


def candidate_sizes(model: nn.Module, tried: int) -> list[int]:
    """Sides to probe above ``tried``: its doublings up to 512, and the model's own size."""
    sizes = set()
    side = max(tried, 1) * 2
    while side <= _LARGEST:
        sizes.add(side)
        side *= 2
    own = _own_size(model)
    if own is not None and own > tried:
        sizes.add(own)
    return sorted(sizes)


@torch.no_grad()
def _runs(model: nn.Module, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> bool:
    try:
        model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False
    return True


def input_size_error(
    model: nn.Module, input_shape: tuple[int, int, int], error: BaseException, name: str | None = None
) -> InputSizeError | None:
    """The error to raise when ``model`` failed (``error``) on a ``(C, H, W)`` input: which size it runs
    at and what to change; ``None`` if it runs at none of :func:`candidate_sizes` either."""
    c, h, _ = input_shape
    name = name or _model_name(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        needed = next((s for s in candidate_sizes(model, h) if _runs(model, (c, s, s), device, dtype)), None)
    finally:
        model.train(was_training)
    if needed is None:
        return None
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = (
        f"{name} cannot run on {h}x{h} px inputs ({type(error).__name__}: {reason[:160]}); it runs at "
        f"{needed}x{needed} px: set input_size to {needed}, or pick a model that runs at {h} px"
    )
    return InputSizeError(message, name, h, needed)


def _model_name(model: Any) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__) if isinstance(cfg, dict) else type(model).__name__
