"""Backbones: any timm CNN, sized for small inputs, taking [0, 1] pixels.

``create_backbone`` returns the timm model itself (so ``feature_info``, ``forward_features`` and
the module names timm users know all stay), with two additions:

- input normalisation inside the model — buffers ``pixel_mean``/``pixel_std`` and a forward pre-hook —
  so attacks work in [0, 1] pixel space and ε means pixels;
- for small inputs, a CIFAR-style stem where the family allows it (3×3 stride-1 conv, no max-pool),
  chosen from a small table of stem adapters keyed by model class.

What it built for (input shape, stem) is recorded in ``model.sparta_info``
(:class:`~transfer.model_info.SpartaInfo`), the way timm records ``model.pretrained_cfg``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from .model_info import SpartaInfo
from .sizing import create_for_size

__all__ = ["create_backbone", "STEM_ADAPTERS", "WIDTH_ADAPTERS", "DEFAULT_MEAN", "DEFAULT_STD"]

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


def _normalize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: (x - mean) / std. Module-level so models stay deep-copyable and picklable."""
    x, *rest = args
    return ((x - module.pixel_mean) / module.pixel_std, *rest)


def _resnet_cifar_stem(model: nn.Module, in_chans: int) -> bool:
    """One 3×3 stride-1 conv into the stem's width (plain or deep stem alike), no max-pool."""
    bn1 = getattr(model, "bn1", None)
    if not isinstance(bn1, nn.BatchNorm2d) or not hasattr(model, "conv1"):
        return False
    model.conv1 = nn.Conv2d(in_chans, bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return True


def _conv_stem_stride1(*attrs: str) -> Callable[[nn.Module, int], bool]:
    """Families whose stem is one strided conv, at the first of ``attrs`` that is a conv
    (EfficientNet, MobileNet, GhostNet: ``conv_stem``; RegNet: ``stem.conv``, regnetv: ``stem``)."""

    def adapt(model: nn.Module, in_chans: int) -> bool:
        for attr in attrs:
            try:
                conv = model.get_submodule(attr)
            except AttributeError:
                continue
            if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
                conv.stride = (1, 1)
                return True
        return False

    return adapt


def _stem_adapters() -> dict[str, Callable[[nn.Module, int], bool]]:
    return {
        "ResNet": _resnet_cifar_stem,
        "EfficientNet": _conv_stem_stride1("conv_stem"),
        "MobileNetV3": _conv_stem_stride1("conv_stem"),
        "GhostNet": _conv_stem_stride1("conv_stem"),
        "RegNet": _conv_stem_stride1("stem.conv", "stem"),
    }


STEM_ADAPTERS = _stem_adapters()


def _resnet_width(w: int) -> dict[str, Any]:
    """timm's plain ResNet stem is always 64 wide; its deep stem is 2·stem_width, so a width-W model
    asks for a deep stem of W/2 (replaced by the one-conv CIFAR stem for small inputs)."""
    if w % 2:
        raise ValueError(f"width must be even for the ResNet family, got {w}")
    return {"channels": (w, 2 * w, 4 * w, 8 * w), "stem_type": "deep", "stem_width": w // 2}


# How `width` reaches each family's constructor: a width W for a tiny test model.
WIDTH_ADAPTERS: dict[str, Callable[[int], dict[str, Any]]] = {
    "resnet": _resnet_width,
    "wide_resnet": _resnet_width,
    "seresnet": _resnet_width,
    "resnext": _resnet_width,
}


def _width_kwargs(arch: str, width: int) -> dict[str, Any]:
    family = next((f for f in sorted(WIDTH_ADAPTERS, key=len, reverse=True) if arch.startswith(f)), None)
    if family is None:
        raise ValueError(
            f"width={width} is not supported for {arch!r}; width works for the families "
            f"{sorted(WIDTH_ADAPTERS)} (leave width unset for the model's own widths)"
        )
    if not isinstance(width, int) or isinstance(width, bool) or width < 2:
        raise ValueError(f"width must be a positive even int, got {width!r}")
    return WIDTH_ADAPTERS[family](width)


def _check_arch(arch: str) -> None:
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models('resnet*') for names."
    raise ValueError(f"unknown arch {arch!r}: timm has no such model.{hint}")


def create_backbone(
    arch: str,
    num_classes: int,
    in_chans: int = 3,
    input_size: int = 32,
    width: int | None = None,
    *,
    cifar_stem: bool | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build ``arch`` through ``timm.create_model`` for ``in_chans``×``input_size``² inputs in [0, 1].

    ``input_size`` is the side of the square image in pixels (the model records its ``input_shape``,
    ``(in_chans, input_size, input_size)``, in ``model.sparta_info``). ``cifar_stem`` defaults to
    ``input_size <= 64``; ``width`` scales the ResNet family for tiny test models
    (``channels=(W, 2W, 4W, 8W)``); ``mean``/``std`` default to 0.5/0.25 per channel. Families built
    for one size (ViT, Swin, …) are built for ``input_size``, with smaller patches for small inputs
    (:mod:`transfer.sizing`).
    """
    _check_arch(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    kwargs = dict(timm_kwargs)
    if width is not None:
        kwargs.update(_width_kwargs(arch, width))
    small_input = input_size <= 64 if cifar_stem is None else cifar_stem
    build = functools.partial(
        timm.create_model, arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
    )
    try:
        model, small_patches = create_for_size(build, arch, input_size, small_input, kwargs)
    except TypeError as exc:  # a keyword the family's constructor does not take
        raise ValueError(f"{arch} cannot be built with {sorted(timm_kwargs)}: {exc}") from None
    stem = "cifar" if small_patches else _fit_stem(model, arch, in_chans, small_input, cifar_stem)
    _normalise_inside(model, in_chans, mean, std)
    model.sparta_info = SpartaInfo(input_shape=(in_chans, input_size, input_size), stem=stem)
    return model


def _fit_stem(model: nn.Module, arch: str, in_chans: int, small_input: bool, required: bool | None) -> str:
    """Put in the small-input stem when ``small_input`` and the family has one: ``"cifar"`` if it did,
    ``"timm"`` if the model keeps timm's stem (an error when ``required`` asked for one it lacks)."""
    if not small_input:
        return "timm"
    adapter = next((a for cls, a in STEM_ADAPTERS.items() if type(model).__name__ == cls), None)
    if adapter is not None and adapter(model, in_chans):
        return "cifar"
    if required:
        raise ValueError(
            f"cifar_stem=True is not available for {arch!r} ({type(model).__name__}); "
            f"families with a small-input stem: {sorted(STEM_ADAPTERS)}"
        )
    return "timm"


def _normalise_inside(
    model: nn.Module, in_chans: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> None:
    """Buffers ``pixel_mean``/``pixel_std`` and the forward pre-hook that applies them."""
    mean_t = torch.tensor(mean if mean is not None else DEFAULT_MEAN[:1] * in_chans, dtype=torch.float32)
    std_t = torch.tensor(std if std is not None else DEFAULT_STD[:1] * in_chans, dtype=torch.float32)
    if mean_t.numel() != in_chans or std_t.numel() != in_chans:
        raise ValueError(f"mean and std need {in_chans} values (one per input channel)")
    model.register_buffer("pixel_mean", mean_t.view(1, in_chans, 1, 1))
    model.register_buffer("pixel_std", std_t.view(1, in_chans, 1, 1))
    model.register_forward_pre_hook(_normalize_input)
