"""Backbones: any timm CNN, sized for small inputs, taking [0, 1] pixels.

``create_backbone`` returns the timm model itself (so ``feature_info``, ``forward_features`` and
the module names timm users know all stay), with these additions:

- input normalisation inside the model — buffers ``pixel_mean``/``pixel_std`` and a forward pre-hook —
  so attacks work in [0, 1] pixel space and ε means pixels;
- for small inputs, a CIFAR-style stem where the family allows it (3×3 stride-1 conv, no max-pool),
  chosen from a small table of stem adapters keyed by model class;
- the workarounds for bugs below torch (:func:`transfer.workarounds.make_safe`), so any training loop
  may use the model as it is, channels-last included.

Families built for one input size (ViT, DeiT, Swin, BEiT, EVA, …; timm's ``fixed_input_size``) have their
position embeddings, patch grids and attention windows sized at construction, so a ViT built for 224 px
fails on a 32 px image. They are built for ``input_size`` (``img_size``), and, for small inputs, a patch
embedding whose grid would have fewer than :data:`MIN_GRID` tokens a side gets smaller patches — the
patch-embedding counterpart of the CIFAR stem (``vit_tiny_patch16_224`` at 32 px: 4 px patches, an 8×8
grid, instead of 2×2). Keyword arguments given by the caller always win; a family whose constructor does
not take ``img_size``/``patch_size`` (it says so with its own "unexpected keyword argument" error) is built
without them.

What it built for (input shape, stem) is recorded in ``model.sparta_info``
(:class:`~transfer.model_info.SpartaInfo`), the way timm records ``model.pretrained_cfg``.

An ``arch`` that is not timm's — a factory ``module.path:function`` or a name a plugin registered — is
built by its factory (``own_models.py``) and gets the same normalisation, record and workarounds.
Weights timm would load (``pretrained=True``, ``checkpoint_path``) are refused where the small-input stem
would silently replace some of them; ``transfer.load_init_weights`` loads a checkpoint into the built
model instead and reports what it kept.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import timm
import torch
from torch import nn

from .model_info import SpartaInfo, sparta_info
from .own_models import GIVEN_MODEL_PREFIX, build_from_factory, check_logits, factory_for
from .plugins import MODELS_GROUP, failure_note
from .workarounds import make_safe

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "MAX_INPUT_SIZE",
    "MAX_IN_CHANS",
    "MAX_NUM_CLASSES",
    "MIN_GRID",
    "STEM_ADAPTERS",
    "WIDTH_ADAPTERS",
    "check_arch",
    "create_backbone",
    "small_input_stem_modules",
]

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)
# Bounds of create_backbone's sizes: beyond them a model is a typo, not a plan (a 100000 px side would take
# the first forward pass terabytes).
MAX_INPUT_SIZE = 4096
MAX_IN_CHANS = 1024
MAX_NUM_CLASSES = 1_000_000
MIN_GRID = 8  # tokens a side below which a small-input patch embedding gets smaller patches


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
# the modules each stem adapter builds afresh (the others only change a stride, keeping the weights)
_STEM_REPLACES = {"ResNet": ("conv1",)}


def small_input_stem_modules(model: nn.Module) -> tuple[str, ...]:
    """The module paths ``create_backbone``'s small-input stem built afresh in ``model`` (ResNet: ``conv1``),
    ``()`` where it kept timm's stem or only changed a stride."""
    if sparta_info(model).stem != "cifar":
        return ()
    return _STEM_REPLACES.get(type(model).__name__, ())


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


def check_arch(arch: str) -> None:
    """A ``ValueError`` unless ``arch`` names a model: timm's (plugins' included), a registered backbone, a
    factory ``module.path:function`` that imports, or the record of a given model (``given:…``, which only
    :func:`create_backbone` refuses, saying how to load such a run)."""
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a model name, got {arch!r}")
    if arch.startswith(GIVEN_MODEL_PREFIX) or factory_for(arch) is not None or timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models('resnet*') for names."
    raise ValueError(
        f"unknown arch {arch!r}: timm has no such model.{hint} A model of your own is named "
        "'module.path:function', a plugin's needs its module loaded first (--plugin MODULE); "
        f"docs/own-data.md.{failure_note(MODELS_GROUP)}"
    )


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
    (module docstring). ``num_classes``, ``in_chans`` and ``input_size`` are ints from 1 to
    :data:`MAX_NUM_CLASSES`, :data:`MAX_IN_CHANS` and :data:`MAX_INPUT_SIZE`. The model comes with the
    workarounds for bugs below torch applied (:func:`transfer.make_safe`).

    ``arch`` may also be a factory ``module.path:function`` or a name registered with
    :func:`transfer.register_backbone` (``own_models.py``): it builds the model (``width`` passed to a
    factory that takes it), and the output is checked to be ``[N, num_classes]`` logits. ``pretrained``
    or ``checkpoint_path`` with a small-input stem that would replace loaded weights needs ``cifar_stem``
    set either way.
    """
    check_arch(arch)
    _check_size("num_classes", num_classes, MAX_NUM_CLASSES, "the number of classes")
    _check_size("in_chans", in_chans, MAX_IN_CHANS, "the number of input channels")
    _check_size("input_size", input_size, MAX_INPUT_SIZE, "the side of the square image in pixels")
    factory = factory_for(arch)
    if factory is not None:
        if cifar_stem or pretrained:
            raise ValueError(
                f"arch {arch!r} is built by its factory, which chooses its own stem and weights; "
                "drop cifar_stem/pretrained (load a checkpoint with transfer.load_init_weights)"
            )
        model = build_from_factory(arch, factory, num_classes, in_chans, input_size, width, timm_kwargs)
        stem = ""
    else:
        model, stem = _create_timm(arch, num_classes, in_chans, input_size, width, cifar_stem, pretrained, timm_kwargs)
    _normalise_inside(model, in_chans, mean, std)
    model.sparta_info = SpartaInfo(input_shape=(in_chans, input_size, input_size), stem=stem)
    make_safe(model)
    if factory is not None:
        check_logits(model, f"the model of arch {arch!r}", num_classes, (in_chans, input_size, input_size))
    return model


def _create_timm(
    arch: str,
    num_classes: int,
    in_chans: int,
    input_size: int,
    width: int | None,
    cifar_stem: bool | None,
    pretrained: bool,
    timm_kwargs: dict[str, Any],
) -> tuple[nn.Module, str]:
    """``timm.create_model`` sized for the input (module docstring), and the stem it ended with."""
    kwargs = dict(timm_kwargs)
    if width is not None:
        kwargs.update(_width_kwargs(arch, width))
    small_input = input_size <= 64 if cifar_stem is None else cifar_stem
    loads_weights = pretrained or kwargs.get("checkpoint_path")
    if kwargs.get("pretrained_cfg_overlay") and not pretrained:
        raise ValueError(
            "pretrained_cfg_overlay only acts with pretrained=True, so it would be ignored; to start "
            "from a local checkpoint, build the model and call transfer.load_init_weights(model, path)"
        )
    build = functools.partial(
        timm.create_model, arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
    )
    try:
        model, small_patches = _create_for_size(build, arch, input_size, small_input, kwargs)
    except TypeError as exc:
        if _unexpected_keyword(exc, timm_kwargs) is None:  # a genuine TypeError inside the model's code
            raise
        raise ValueError(f"{arch} cannot be built with {sorted(timm_kwargs)}: {exc}") from None
    except RuntimeError as exc:
        if not kwargs.get("checkpoint_path") or "state_dict" not in str(exc):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"checkpoint_path {kwargs['checkpoint_path']} does not fit {arch} with num_classes={num_classes}, "
            f"in_chans={in_chans} ({detail}): timm loads it strictly. Build the model without it and call "
            "transfer.load_init_weights(model, path), which re-initialises a classifier of another shape"
        ) from None
    if loads_weights and cifar_stem is None and small_input and type(model).__name__ in _STEM_REPLACES:
        replaced = ", ".join(_STEM_REPLACES[type(model).__name__])
        raise ValueError(
            f"{arch} at input_size {input_size} gets the small-input stem, which would replace the loaded weights "
            f"of {replaced} with fresh ones; choose: cifar_stem=False keeps timm's stem and its weights, "
            "cifar_stem=True takes the fresh small-input stem"
        )
    stem = "cifar" if small_patches else _fit_stem(model, arch, in_chans, small_input, cifar_stem)
    return model, stem


def _check_size(name: str, value: Any, largest: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(f"{name} ({meaning}) must be an int in [1, {largest}], got {value!r}")


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


def _fixed_input_size(arch: str) -> bool:
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


def _unexpected_keyword(error: TypeError, names: Iterable[str]) -> str | None:
    """Which of ``names`` a constructor refused (Python's "got an unexpected keyword argument 'x'"), if any."""
    return next((n for n in names if f"unexpected keyword argument '{n}'" in str(error)), None)


def _build_with(build: Callable[..., nn.Module], kwargs: dict[str, Any], extra: dict[str, Any]) -> nn.Module | None:
    """``build(**kwargs, **extra)``, or None where the constructor does not take one of the ``extra``
    keywords. Any other TypeError is the model's own and propagates."""
    try:
        return build(**kwargs, **extra)
    except TypeError as exc:
        if _unexpected_keyword(exc, extra) is None:
            raise
        return None


def _create_for_size(
    build: Callable[..., nn.Module], arch: str, input_size: int, small_input: bool, kwargs: dict[str, Any]
) -> tuple[nn.Module, bool]:
    """``build(**kwargs)`` (``timm.create_model`` bound to ``arch``) sized for ``input_size`` px inputs
    where the family is built for one size; True with it when it got the small-input patch embedding."""
    if not _fixed_input_size(arch) or "img_size" in kwargs:
        return build(**kwargs), False
    model = _build_with(build, kwargs, {"img_size": input_size})
    if model is None:
        return build(**kwargs), False
    sizes = _patch_grid(model)
    if not small_input or "patch_size" in kwargs or sizes is None or sizes[1] >= MIN_GRID:
        return model, False
    patch = _small_patch(input_size, sizes[0])
    if patch >= sizes[0]:
        return model, False
    smaller = _build_with(build, kwargs, {"img_size": input_size, "patch_size": patch})
    return (smaller, True) if smaller is not None else (model, False)
