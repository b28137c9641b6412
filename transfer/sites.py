"""Finding every activation *call* site of a CNN.

A site is one call of an activation module during a forward pass, not one module: timm's ``dla34``
and ``hrnet_w18_small`` call the same ``nn.ReLU`` several times on different tensors (even of
different widths), and each of those calls is its own site. Sites are found by tracing one forward
pass with hooks, so any timm (or plain torch) model works without knowing its code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .activations import Activation, PerCallActivation

__all__ = ["Site", "find_sites", "is_activation_module", "site_name", "ACTIVATION_TYPES"]


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

    return isinstance(module, ACTIVATION_TYPES + (PerCallActivation,))


def site_name(module_path: str, call_index: int, n_calls: int) -> str:
    """``layer1.0.act1`` for a module called once; ``dla_up.ida_0.relu#1`` for its 2nd of several calls."""
    return module_path if n_calls == 1 else f"{module_path}#{call_index}"


_SITE_NAME = re.compile(r"^(?P<path>[^#]+?)(?:#(?P<call>\d+))?$")


@dataclass(frozen=True)
class Site:
    """One activation call in forward order."""

    name: str
    module_path: str
    call_index: int
    channels: int
    spatial: tuple[int, ...]
    stage: int
    relative_depth: float
    kind: str = ""
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spatial"] = list(self.spatial)
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
        )


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


@torch.no_grad()
def find_sites(model: nn.Module, input_size: tuple[int, ...] | int = (3, 32, 32)) -> list[Site]:
    """Trace one forward pass and return every activation call, in forward order.

    ``input_size`` is (C, H, W) without the batch (an int means (3, s, s)). The stage of a site is
    the number of timm feature stages (``feature_info``) completed before the call; models without
    ``feature_info`` get stages from their spatial downsampling. The model is left as it was
    (training flag restored, no hooks left, BatchNorm statistics untouched).
    """
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    paths = _outermost_activations(model)
    stage_paths = _stage_modules(model)
    modules = dict(model.named_modules())
    records: list[dict[str, Any]] = []
    calls: dict[str, int] = {}
    stages_done = [0]

    def on_activation(module: nn.Module, args: tuple[Any, ...]) -> None:
        path = paths[module]
        x = args[0]
        idx = calls.get(path, 0)
        calls[path] = idx + 1
        shape = tuple(x.shape)
        records.append(
            {
                "module_path": path,
                "call_index": idx,
                "channels": int(shape[1]) if len(shape) > 1 else 1,
                "spatial": tuple(int(s) for s in shape[2:]),
                "stage": stages_done[0],
                "kind": type(module).__name__,
                "layout": "NHWC" if x.dim() == 4 and any(x is o for o in linear_outputs) else "NCHW",
            }
        )

    def on_linear(module: nn.Module, args: Any, out: Any) -> None:
        linear_outputs.append(out)

    def on_stage_end(module: nn.Module, args: Any, out: Any) -> None:
        stages_done[0] += 1

    # An nn.Linear on a 4-D tensor works on its last dim: an activation fed straight from one sees
    # channels-last (NHWC) maps (ConvNeXt's MLP), where dim 1 is the height, not the channels.
    linear_outputs: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(on_activation) for m in paths]
    handles += [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    handles += [modules[p].register_forward_hook(on_stage_end) for p in stage_paths]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    if not stage_paths:
        _stages_from_resolution(records)
    elif records:
        last = max(0, len(stage_paths) - 1)
        for r in records:
            r["stage"] = min(r["stage"], last)
    n = len(records)
    return [
        Site(
            name=site_name(r["module_path"], r["call_index"], calls[r["module_path"]]),
            relative_depth=i / (n - 1) if n > 1 else 0.0,
            **r,
        )
        for i, r in enumerate(records)
    ]


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


def _stages_from_resolution(records: list[dict[str, Any]]) -> None:
    """Stage = rank of the spatial size among those seen (largest first)."""
    sizes = sorted({r["spatial"][0] if r["spatial"] else 1 for r in records}, reverse=True)
    rank = {s: i for i, s in enumerate(sizes)}
    for r in records:
        r["stage"] = rank[r["spatial"][0] if r["spatial"] else 1]


def parse_site_name(name: str) -> tuple[str, int | None]:
    """``"a.b#2"`` → ``("a.b", 2)``; ``"a.b"`` → ``("a.b", None)``."""
    m = _SITE_NAME.match(name)
    if not m:
        raise ValueError(f"not a site name: {name!r}")
    call = m.group("call")
    return m.group("path"), (int(call) if call is not None else None)
