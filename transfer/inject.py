"""Putting activations into any model, and taking trained ones out.

``inject`` replaces the activation at every call site (``find_sites``) after the model is built, so
no model code needs to know about Sparta. A module called several times per forward becomes a
:class:`PerCallActivation` holding one activation per call. ``extract`` takes the activation
parameters back out as an :class:`ActivationSet`, apart from the backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .activation_set import ActivationSet, tensor_key
from .activations import Activation, PerCallActivation, create_activation
from .mapping import map_sites
from .sites import Site, find_sites

__all__ = [
    "inject",
    "extract",
    "InjectionEntry",
    "InjectionReport",
    "activation_modules",
    "param_groups",
]


def _reset_call_counters(root: nn.Module, args: Any) -> None:
    """Forward pre-hook of an injected model. A module-level function, so ``deepcopy`` stays safe."""
    for m in root.modules():
        if isinstance(m, PerCallActivation):
            m.reset()


@dataclass
class InjectionEntry:
    target: str
    source: str | None
    channels: int
    frozen: bool


@dataclass
class InjectionReport:
    """What ``inject`` did: every target site and the source site that fed it (``None`` = fresh)."""

    activation: str
    config: dict[str, Any]
    policy: str | None
    source: str
    entries: list[InjectionEntry] = field(default_factory=list)

    @property
    def mapping(self) -> dict[str, str | None]:
        return {e.target: e.source for e in self.entries}

    def to_dict(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "config": self.config,
            "policy": self.policy,
            "source": self.source,
            "entries": [asdict(e) for e in self.entries],
        }

    def __str__(self) -> str:
        head = f"injected {self.activation} {self.config} from {self.source or 'fresh'}"
        head += f" (policy {self.policy})" if self.policy else ""
        width = max((len(e.target) for e in self.entries), default=6)
        rows = [
            f"  {e.target:<{width}}  <- {e.source or '(fresh)'}  C={e.channels}{'  frozen' if e.frozen else ''}"
            for e in self.entries
        ]
        return "\n".join([head, *rows])


def _device_of(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    if p is None:
        return torch.device("cpu"), torch.float32
    return p.device, (p.dtype if p.is_floating_point() else torch.float32)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def _sites_of(model: nn.Module, input_size: tuple[int, ...] | int | None) -> list[Site]:
    if input_size is None:
        input_size = getattr(model, "sparta_input_size", None)
    if input_size is None:
        raise ValueError(
            "input_size is needed to trace the model's activation sites; pass input_size=(C, H, W) "
            "(models from transfer.create_backbone remember theirs)"
        )
    return find_sites(model, input_size)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def inject(
    model: nn.Module,
    activation: str | ActivationSet,
    *,
    policy: str = "exact",
    freeze: bool = False,
    input_size: tuple[int, ...] | int | None = None,
    **config: Any,
) -> InjectionReport:
    """Replace the activation at every site of ``model`` in place.

    ``activation`` is a registry name (a fresh activation at every site, built with ``**config``) or
    an :class:`ActivationSet` (each target site takes the parameters of the source site chosen by
    ``policy``: ``exact``, ``stage``, ``depth`` or ``shared``). ``freeze=True`` makes the injected
    activations untrainable (see :meth:`Activation.freeze`).
    """
    sites = _sites_of(model, input_size)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no activation sites to inject into")
    nhwc = [s.name for s in sites if s.layout != "NCHW"]
    if nhwc:
        raise ValueError(
            f"{len(nhwc)} activation site(s) see channels-last (NHWC) maps, e.g. {nhwc[:3]}: their dim 1 is the "
            "height, not the channels, so per-channel and spatial activations would be wrong there. "
            "Use a CNN whose activations see NCHW maps (docs/portability.md lists the families)."
        )
    device, dtype = _device_of(model)

    if isinstance(activation, str):
        name, act_config, source_label, used_policy = activation, dict(config), "", None
        mapping: dict[str, str | None] = {s.name: None for s in sites}
    elif isinstance(activation, ActivationSet):
        if config:
            raise ValueError(f"options {sorted(config)} conflict with the activation set's own config")
        aset = activation
        name, act_config, source_label, used_policy = aset.activation, dict(aset.config), aset.source, policy
        fresh_shapes: dict[int, dict[str, tuple[int, ...]]] = {}

        def compatible(src: Site, tgt: Site) -> bool:
            if tgt.channels not in fresh_shapes:
                fresh_shapes[tgt.channels] = _shapes(create_activation(name, tgt.channels, **act_config).state_dict())
            return _shapes(aset.state_for(src.name)) == fresh_shapes[tgt.channels]

        mapping = dict(map_sites(aset.sites, sites, policy, compatible))
    else:
        raise TypeError(f"activation must be a registry name or an ActivationSet, got {type(activation).__name__}")

    report = InjectionReport(activation=name, config=act_config, policy=used_policy, source=source_label)
    per_module: dict[str, list[tuple[Site, nn.Module]]] = {}
    for site in sites:
        act = create_activation(name, site.channels, **act_config)
        src = mapping[site.name]
        if src is not None:
            act.load_state_dict(activation.state_for(src))  # type: ignore[union-attr]
        if freeze:
            act.freeze()
        act.sparta_site = site.name
        per_module.setdefault(site.module_path, []).append((site, act.to(device=device, dtype=dtype)))
        report.entries.append(InjectionEntry(site.name, src, site.channels, freeze))

    needs_reset = False
    for path, calls in per_module.items():
        calls.sort(key=lambda sa: sa[0].call_index)
        if len(calls) == 1 and calls[0][0].name == path:
            _set_module(model, path, calls[0][1])
        else:
            _set_module(model, path, PerCallActivation([a for _, a in calls]))
            needs_reset = True
    if needs_reset and not getattr(model, "_sparta_reset_hook", False):
        model.register_forward_pre_hook(_reset_call_counters)
        model._sparta_reset_hook = True
    model.sparta_sites = sites
    model.sparta_injection = report
    return report


def _module_at(model: nn.Module, site: Site) -> nn.Module:
    module = model.get_submodule(site.module_path)
    if isinstance(module, PerCallActivation):
        return module.activations[site.call_index]
    return module


def extract(
    model: nn.Module, *, input_size: tuple[int, ...] | int | None = None, meta: dict[str, Any] | None = None
) -> ActivationSet:
    """The activation parameters of every site of ``model``, with its site table, without the backbone.

    Every site must hold a registry activation of one name and config (as ``inject`` leaves them).
    """
    sites = getattr(model, "sparta_sites", None) if input_size is None else None
    if sites is None:
        sites = _sites_of(model, input_size)
    acts = [(s, _module_at(model, s)) for s in sites]
    wrong = [f"{s.name} ({type(m).__name__})" for s, m in acts if not isinstance(m, Activation)]
    if wrong:
        raise ValueError(
            f"sites {wrong[:8]} hold activations outside the registry; inject a registry activation "
            "(transfer.inject) before extracting"
        )
    kinds = {(m.registry_name, tuple(sorted(m.config.items()))) for _, m in acts}
    if len(kinds) != 1:
        raise ValueError(f"sites hold different activations {sorted(kinds)}; an activation set holds one kind")
    first = acts[0][1]
    tensors = {tensor_key(s.name, k): v.detach().to("cpu").clone() for s, m in acts for k, v in m.state_dict().items()}
    return ActivationSet(
        activation=first.registry_name,
        config=dict(first.config),
        sites=list(sites),
        tensors=tensors,
        meta=dict(meta or {}),
    )


def activation_modules(model: nn.Module) -> Iterator[Activation]:
    """Every registry activation inside ``model``."""
    return (m for m in model.modules() if isinstance(m, Activation))


def param_groups(
    model: nn.Module, weight_decay: float, activation_weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with trainable parameters only (frozen activations are left out).

    Backbone weights get ``weight_decay``; backbone biases and norm parameters (1-D) get none;
    activation parameters get ``activation_weight_decay`` (default: ``weight_decay``).
    """
    act_params = {id(p) for m in activation_modules(model) for p in m.parameters()}
    decay, no_decay, act = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in act_params:
            act.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    act_wd = weight_decay if activation_weight_decay is None else activation_weight_decay
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "backbone"},
        {"params": no_decay, "weight_decay": 0.0, "name": "backbone_no_decay"},
        {"params": act, "weight_decay": act_wd, "name": "activation"},
    ]
    return [g for g in groups if g["params"]]
