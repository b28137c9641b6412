"""Finding every activation *call* site of a CNN.

A site is one call of an activation module during a forward pass, not one module: timm's ``dla34``
and ``hrnet_w18_small`` call the same ``nn.ReLU`` several times on different tensors (even of
different widths), and each of those calls is its own site. Sites are found by tracing one forward
pass with hooks, so any timm (or plain torch) model works without knowing its code.

Tracing runs one forward pass. A model built for a fixed size (a ViT's patch grid) or one that downsamples
below 1×1 on a small image (ConvNeXt at 16 px) fails there with an ``AssertionError`` or a ``RuntimeError``
deep inside its code; :func:`find_sites` then raises an :class:`InputSizeError` naming the model, the size
tried, the smallest of a few candidate sizes that runs, and what to change (or re-raises the model's own
error when no candidate runs either: not a size problem).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .activations import Activation, PerCallActivation
from .layouts import GridFinder, LayoutView, arch_name, unwrap
from .model_info import eval_mode, model_device, model_dtype

__all__ = [
    "ACTIVATION_TYPES",
    "InputSizeError",
    "Site",
    "find_sites",
    "input_shape_argument",
    "is_activation_module",
    "module_at",
    "site_name",
]

DEFAULT_INPUT_SHAPE = (3, 32, 32)
_LARGEST_PROBED = 512  # the largest side InputSizeError looks for


def _activation_types() -> tuple[type[nn.Module], ...]:
    """Pointwise nonlinearities that act on feature maps. Gates (sigmoid, hard-sigmoid, tanh) used by
    squeeze-excite blocks are deliberately absent: they are attention, not activations."""
    torch_names = [
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
        "Hardswish", "Softplus",
    ]  # fmt: skip
    types: list[type[nn.Module]] = [getattr(nn, n) for n in torch_names if hasattr(nn, n)]
    types.append(Activation)
    try:
        from timm.layers import activations as timm_act
        from timm.layers import activations_me as timm_act_me

        timm_names = [
            "Swish", "Mish", "HardSwish", "HardMish", "PReLU", "GELU", "GELUTanh", "QuickGELU",
            "SwishMe", "MishMe", "HardSwishMe", "HardMishMe",
        ]  # fmt: skip
        for mod in (timm_act, timm_act_me):
            types.extend(getattr(mod, n) for n in timm_names if hasattr(mod, n))
    except ImportError:  # timm is a dependency; this only guards odd installs
        pass
    return tuple(dict.fromkeys(types))


ACTIVATION_TYPES = _activation_types()


def is_activation_module(module: nn.Module) -> bool:
    """A pointwise activation (torch, timm or registry) or an injected per-call slot."""
    return isinstance(module, ACTIVATION_TYPES + (PerCallActivation, LayoutView))


def site_name(module_path: str, call_index: int, n_calls: int) -> str:
    """``layer1.0.act1`` for a module called once; ``dla_up.ida_0.relu#1`` for its 2nd of several calls."""
    return module_path if n_calls == 1 else f"{module_path}#{call_index}"


@dataclass(frozen=True)
class Site:
    """One activation call in forward order."""

    name: str  # module_path, plus "#<call_index>" when the module runs more than once per forward
    module_path: str  # path of the activation module in model.named_modules()
    call_index: int  # which call of that module, from 0
    channels: int  # C of the tensor the call sees: dim 1 (NCHW), the last dim (NHWC, NLC); 1 for a 1-D input
    # (H, W) of a feature map or token grid, () after global pooling; (L,) for tokens without a known grid
    spatial: tuple[int, ...]
    stage: int  # timm feature stages completed before the call (or rank of its resolution)
    relative_depth: float  # position in forward order, 0 for the first site and 1 for the last
    kind: str = ""  # class name of the module found there, e.g. "ReLU"
    layout: str = "NCHW"  # "NCHW", "NHWC" (channels-last maps) or "NLC" (tokens); see transfer/layouts.py
    prefix_tokens: int = 0  # NLC: leading class/register tokens, off the grid
    # "after-add": the call sees a sum (a residual connection's output, ResNet's act2); "plain": any other
    # input; "": not recorded (a site table traced before roles existed). The `role` mapping policy reads it.
    role: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record; ``prefix_tokens`` and ``role`` only where set, so the site tables (and their
        checksums) of models traced before those fields existed read as they did."""
        d = asdict(self)
        d["spatial"] = list(self.spatial)
        for key in ("prefix_tokens", "role"):
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Site:
        required = {"name", "module_path", "call_index", "channels", "spatial", "stage", "relative_depth"}
        missing = required - set(d)
        if missing:
            raise ValueError(f"site record lacks {sorted(missing)}: {d!r}")
        return cls(
            name=str(d["name"]),
            module_path=str(d["module_path"]),
            call_index=int(d["call_index"]),
            channels=int(d["channels"]),
            spatial=tuple(int(s) for s in d["spatial"]),
            stage=int(d["stage"]),
            relative_depth=float(d["relative_depth"]),
            kind=str(d.get("kind", "")),
            layout=str(d.get("layout", "NCHW")),
            prefix_tokens=int(d.get("prefix_tokens", 0)),
            role=str(d.get("role", "")),
        )


def module_at(model: nn.Module, site: Site) -> nn.Module:
    """The module that runs at ``site``: its own per-call module inside a :class:`PerCallActivation`,
    else the module at the site's path (the activation itself where a layout view holds it)."""
    module = model.get_submodule(site.module_path)
    if isinstance(module, PerCallActivation):
        module = module.activations[site.call_index]
    return unwrap(module)


def _stage_modules(model: nn.Module) -> list[str]:
    """Module paths that close each feature stage (timm's ``feature_info``), in order."""
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    if isinstance(info, list):
        names = [str(f.get("module", "")) for f in info if isinstance(f, dict) and f.get("module")]
    elif info is not None and hasattr(info, "module_name"):
        try:
            names = list(info.module_name())
        except Exception:  # noqa: BLE001 - feature_info shapes vary across timm versions
            names = []
    modules = dict(model.named_modules())
    return [n for n in names if n in modules]


def find_sites(
    model: nn.Module, input_shape: tuple[int, int, int] | None = None, *, input_size: Any = None
) -> list[Site]:
    """Trace one forward pass and return every activation call, in forward order.

    ``input_shape`` is the (C, H, W) of one input, without the batch (default ``(3, 32, 32)``;
    ``create_backbone``'s ``input_size`` is the side H = W alone). ``input_size=(C, H, W)`` is its old,
    deprecated name (:func:`input_shape_argument`). The stage of a site is the number of timm feature
    stages (``feature_info``) completed before the call; models without ``feature_info`` get stages from
    their spatial downsampling. The model is left as it was (every submodule's training flag restored, no
    hooks left, BatchNorm statistics untouched). A model that cannot run at ``input_shape`` but runs at a
    larger size raises :class:`InputSizeError`.
    """
    input_shape = input_shape_argument(input_shape, input_size, "find_sites")
    input_shape = DEFAULT_INPUT_SHAPE if input_shape is None else input_shape
    _check_input_shape(input_shape)
    stage_paths = _stage_modules(model)
    trace = _CallTrace(model, stage_paths)
    try:
        with torch.no_grad():
            trace.run(model, input_shape)
    except Exception as exc:  # the model's own code failed: say which input size it needs, if that is it
        error = _input_size_error(model, tuple(input_shape), exc)
        if error is None:
            raise
        raise error from None
    records = _feature_calls(trace.records)
    if stage_paths:
        _clamp_stages(records, last=len(stage_paths) - 1)
    else:
        _stages_from_resolution(records)
    return _numbered_sites(records, trace.calls)


def _feature_calls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls of activation modules that act on the image's features: a module none of whose calls
    depends on the image (Swin v2's continuous position bias, relative-position MLPs) holds no site, as
    squeeze-excite gates hold none. The ``on_image`` flag is dropped."""
    on_image = {r["module_path"] for r in records if r["on_image"]}
    return [{k: v for k, v in r.items() if k != "on_image"} for r in records if r["module_path"] in on_image]


def _check_input_shape(input_shape: Any) -> None:
    shape = tuple(input_shape) if isinstance(input_shape, tuple | list) else ()
    positive = all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in shape)
    if len(shape) != 3 or not positive:
        raise ValueError(
            f"input_shape must be (C, H, W) without the batch, three positive ints, got {input_shape!r}; "
            "for an image side S with C channels pass (C, S, S)"
        )


def input_shape_argument(input_shape: Any, input_size: Any, caller: str) -> Any:
    """The ``input_shape`` a caller (``find_sites``, ``inject``, ``extract``) was given, accepting for one
    release its old name ``input_size=(C, H, W)`` with a ``DeprecationWarning``: ``input_size`` now means
    the image side alone (``create_backbone``), so an int there, or both names at once, is an error."""
    if input_size is None:
        return input_shape
    if input_shape is not None:
        raise ValueError(
            f"{caller}() got both input_shape and input_size; pass input_shape=(C, H, W) alone "
            "(input_size is its old, deprecated name)"
        )
    if not isinstance(input_size, tuple | list):
        raise ValueError(
            f"{caller}(input_size=...) is the old name of input_shape, the (C, H, W) of one input, got "
            f"{input_size!r}; pass input_shape=(C, S, S) for an image side S with C channels"
        )
    warnings.warn(
        f"{caller}(input_size=...) is deprecated and will be removed in the next release; write "
        f"input_shape={tuple(input_size)!r} instead (input_size now means the image side alone)",
        DeprecationWarning,
        stacklevel=3,
    )
    return tuple(input_size)


class _CallTrace:
    """The hooks of one tracing pass and what they record: one dict of :class:`Site` fields (all but
    name and depth) per activation call, and the number of calls of each activation module."""

    def __init__(self, model: nn.Module, stage_paths: list[str]) -> None:
        self.paths = _outermost_activations(model)
        self.stage_paths = stage_paths
        self.records: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        self.stages_done = 0
        # An nn.Linear on a 4-D tensor works on its last dim: an activation fed straight from one sees
        # channels-last (NHWC) maps (ConvNeXt's MLP), where dim 1 is the height, not the channels.
        self.linear_outputs: list[torch.Tensor] = []
        # Token sites (N, L, C) take their grid from the model (transfer/layouts.py).
        self.grids = GridFinder(model)
        # Sums the forward pass computes: an activation that sees one is after a residual add (Site.role).
        self.sums = _SumRecorder()

    def run(self, model: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """One eval-mode forward pass of a zero image with the hooks on; modes restored, hooks removed."""
        modules = dict(model.named_modules())
        handles = [m.register_forward_pre_hook(self._on_activation) for m in self.paths]
        handles += [m.register_forward_hook(self._on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
        handles += self.grids.hooks(model)
        handles += [modules[p].register_forward_hook(self._on_stage_end) for p in self.stage_paths]
        learnable = [p for p in model.parameters() if p.requires_grad]
        try:
            # Only the image needs a gradient: an activation input that needs none does not depend on the
            # image (a position-bias MLP, say), and is no feature site (see _feature_calls).
            for p in learnable:
                p.requires_grad_(False)
            image = torch.zeros(1, *input_shape, device=model_device(model), dtype=model_dtype(model))
            with eval_mode(model), torch.enable_grad(), self.sums:
                model(image.requires_grad_())
        finally:
            for p in learnable:
                p.requires_grad_(True)
            for h in handles:
                h.remove()

    def _on_activation(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        path, x = self.paths[module], args[0]
        call_index = self.calls.get(path, 0)
        self.calls[path] = call_index + 1
        from_linear = any(x is o for o in self.linear_outputs)
        self.records.append(
            {
                "module_path": path,
                "call_index": call_index,
                "stage": self.stages_done,
                "kind": type(unwrap(module)).__name__,
                **self.grids.read(x, path, from_linear),
                "on_image": bool(x.requires_grad),
                "role": "after-add" if self.sums.produced(x) else "plain",
            }
        )

    def _on_linear(self, module: nn.Module, args: Any, out: Any) -> None:
        self.linear_outputs.append(out)

    def _on_stage_end(self, module: nn.Module, args: Any, out: Any) -> None:
        self.stages_done += 1


class _SumRecorder(TorchFunctionMode):
    """Remembers every tensor an addition produced during the tracing pass (``a + b``, ``a += b``,
    ``torch.add``), so that an activation whose input is one of them is known to follow a residual add —
    model-agnostic, with no knowledge of the block's code."""

    _ADDS = frozenset(
        {
            torch.add,
            torch.Tensor.add,
            torch.Tensor.add_,
            torch.Tensor.__add__,
            torch.Tensor.__iadd__,
            torch.Tensor.__radd__,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._sums: list[torch.Tensor] = []  # the tensors themselves: identity, not a reusable id()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in self._ADDS and isinstance(out, torch.Tensor) and all(isinstance(a, torch.Tensor) for a in args[:2]):
            self._sums.append(out)
        return out

    def produced(self, x: Any) -> bool:
        return any(x is t for t in self._sums)


def _outermost_activations(model: nn.Module) -> dict[nn.Module, str]:
    """Activation modules by path, skipping those nested inside another activation (the per-call
    activations an injection puts inside one slot are reached through their slot)."""
    found: dict[nn.Module, str] = {}
    outer: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(o + ".") for o in outer):
            continue
        if is_activation_module(module):
            found[module] = path
            outer.append(path)
    return found


def _clamp_stages(records: list[dict[str, Any]], last: int) -> None:
    """Calls after the last feature stage closed (the head) belong to the last stage."""
    for r in records:
        r["stage"] = min(r["stage"], last)


def _stages_from_resolution(records: list[dict[str, Any]]) -> None:
    """Stage = rank of the spatial size among those seen (largest first)."""
    sizes = sorted({r["spatial"][0] if r["spatial"] else 1 for r in records}, reverse=True)
    rank = {s: i for i, s in enumerate(sizes)}
    for r in records:
        r["stage"] = rank[r["spatial"][0] if r["spatial"] else 1]


def _numbered_sites(records: list[dict[str, Any]], calls: dict[str, int]) -> list[Site]:
    """Sites named by path (with the call number where a module runs more than once), at relative
    depth i / (n - 1) in forward order."""
    n = len(records)
    return [
        Site(
            name=site_name(r["module_path"], r["call_index"], calls[r["module_path"]]),
            relative_depth=i / (n - 1) if n > 1 else 0.0,
            **r,
        )
        for i, r in enumerate(records)
    ]


class InputSizeError(ValueError):
    """A model cannot run at the requested input size; ``needed`` is a size it runs at."""

    def __init__(self, message: str, name: str, tried: int, needed: int) -> None:
        super().__init__(message)
        self.name, self.tried, self.needed = name, tried, needed


def _own_size(model: nn.Module) -> int | None:
    """The side a model was built for, where it says: a patch embedding's ``img_size`` or timm's
    ``pretrained_cfg['input_size']``."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, tuple | list) and size:
        return int(size[0])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    shape = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(shape[-1]) if isinstance(shape, tuple | list) and shape else None


def _candidate_sizes(model: nn.Module, tried: int) -> list[int]:
    """Sides to try above ``tried``: its doublings up to 512, and the model's own size."""
    sizes = set()
    side = max(tried, 1) * 2
    while side <= _LARGEST_PROBED:
        sizes.add(side)
        side *= 2
    own = _own_size(model)
    if own is not None and own > tried:
        sizes.add(own)
    return sorted(sizes)


@torch.no_grad()
def _runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        model(torch.zeros(1, *shape, device=model_device(model), dtype=model_dtype(model)))
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False
    return True


def _input_size_error(
    model: nn.Module, input_shape: tuple[int, int, int], error: BaseException
) -> InputSizeError | None:
    """The error to raise when ``model`` failed (``error``) on a ``(C, H, W)`` input: which size it runs
    at and what to change; ``None`` if it runs at none of :func:`_candidate_sizes` either."""
    c, h, _ = input_shape
    with eval_mode(model):
        needed = next((s for s in _candidate_sizes(model, h) if _runs(model, (c, s, s))), None)
    if needed is None:
        return None
    name = arch_name(model)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = (
        f"{name} cannot run on {h}x{h} px inputs ({type(error).__name__}: {reason[:160]}); it runs at "
        f"{needed}x{needed} px: set input_size to {needed}, or pick a model that runs at {h} px"
    )
    return InputSizeError(message, name, h, needed)
