"""Putting activations into any model, and taking trained ones out.

``inject`` replaces the activation at every call site (``find_sites``) after the model is built, so
no model code needs to know about Sparta. A module called several times per forward becomes a
:class:`PerCallActivation` holding one activation per call. ``extract`` takes the activation
parameters back out as an :class:`ActivationSet`, apart from the backbone. What ``inject`` found and
did is kept in ``model.sparta_info`` (:class:`~transfer.model_info.SpartaInfo`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .activation_set import ActivationSet, tensor_key
from .activations import Activation, PerCallActivation, create_activation
from .layouts import LayoutView, SiteLayout, arch_name, layout_problem
from .mapping import MappingError, check_policy, map_sites
from .model_info import model_device, model_dtype, sparta_info
from .sites import Site, find_sites, input_shape_argument, module_at
from .workarounds import make_safe

__all__ = [
    "advised",
    "inject",
    "extract",
    "InjectionEntry",
    "InjectionReport",
    "activation_modules",
    "model_sites",
    "param_groups",
    "traced_sites",
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


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def traced_sites(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[Site]:
    """``find_sites`` at ``input_shape``, by default the one the model records (``model.sparta_info``)."""
    shape = input_shape if input_shape is not None else sparta_info(model).input_shape
    if shape is None:
        raise ValueError(
            "input_shape is needed to trace the model's activation sites; pass input_shape=(C, H, W) "
            "(models from transfer.create_backbone remember theirs)"
        )
    return find_sites(model, shape)


def model_sites(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[Site]:
    """The sites the model's last injection found, or traced afresh (at ``input_shape`` if given, else
    at the shape the model records) when it has no such record or ``input_shape`` is given."""
    recorded = sparta_info(model).sites
    if input_shape is None and recorded is not None:
        return recorded
    return traced_sites(model, input_shape)


def inject(
    model: nn.Module,
    activation: str | ActivationSet,
    *,
    policy: str = "exact",
    freeze: bool = False,
    input_shape: tuple[int, int, int] | None = None,
    input_size: Any = None,
    **config: Any,
) -> InjectionReport:
    """Replace the activation at every site of ``model`` in place.

    ``activation`` is a registry name (a fresh activation at every site, built with ``**config``) or
    an :class:`ActivationSet` (each target site takes the parameters of the source site chosen by
    ``policy``: ``exact``, ``stage``, ``depth`` or ``shared``; checked either way). ``freeze=True`` makes
    the injected activations untrainable (see :meth:`Activation.freeze`); each injected activation takes
    the training mode of the module it replaces. The sites are traced at ``input_shape``, (C, H, W)
    without the batch, by default the one ``create_backbone`` recorded on the model (``input_size=`` is
    its deprecated old name). The sites and the report are recorded in ``model.sparta_info``. The model
    gets the workarounds for bugs below torch (:func:`transfer.make_safe`).
    """
    check_policy(policy)
    input_shape = input_shape_argument(input_shape, input_size, "inject")
    sites = _injectable_sites(model, input_shape)
    report = _plan(activation, sites, policy, freeze, config)
    if problem := layout_problem(report.activation, sites, arch_name(model)):
        raise ValueError(problem)
    built = _build_activations(report, sites, activation, model_device(model), model_dtype(model))
    has_per_call = _place_activations(model, built)
    info = sparta_info(model)
    if has_per_call and not info.resets_call_counters:
        model.register_forward_pre_hook(_reset_call_counters)
    model.sparta_info = replace(
        info, sites=sites, injection=report, resets_call_counters=info.resets_call_counters or has_per_call
    )
    make_safe(model)
    return report


def _injectable_sites(model: nn.Module, input_shape: tuple[int, int, int] | None) -> list[Site]:
    """The model's sites, traced afresh; an error if there are none. Channels-last and token sites are
    injected through a :class:`~transfer.layouts.LayoutView`."""
    sites = traced_sites(model, input_shape)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no activation sites to inject into")
    return sites


def _plan(
    activation: str | ActivationSet, sites: list[Site], policy: str, freeze: bool, config: dict[str, Any]
) -> InjectionReport:
    """What goes to every site, and from which source site, decided before the model is touched."""
    if isinstance(activation, str):
        report = InjectionReport(activation=activation, config=dict(config), policy=None, source="")
        mapping: dict[str, str | None] = {s.name: None for s in sites}
    elif isinstance(activation, ActivationSet):
        if config:
            raise ValueError(f"options {sorted(config)} conflict with the activation set's own config")
        report = InjectionReport(
            activation=activation.activation, config=dict(activation.config), policy=policy, source=activation.source
        )
        try:
            mapping = dict(map_sites(activation.sites, sites, policy, _fits(activation)))
        except MappingError as exc:
            raise advised(exc, activation.activation, activation.config) from None
    else:
        raise TypeError(f"activation must be a registry name or an ActivationSet, got {type(activation).__name__}")
    report.entries = [InjectionEntry(s.name, mapping[s.name], s.channels, freeze) for s in sites]
    return report


def _width_free(activation: str, config: dict[str, Any]) -> bool:
    """Whether the activation has the same parameter shapes at every width (Sparta 'portable')."""
    return _shapes(create_activation(activation, 4, **config).state_dict()) == _shapes(
        create_activation(activation, 8, **config).state_dict()
    )


def advised(error: MappingError, activation: str, config: dict[str, Any]) -> MappingError:
    """``error`` again, ending with what to do for this activation: for a per-channel one, its name and the
    widths on both sides; Sparta's width-free variant only where it applies (Sparta itself). For any caller
    of :func:`transfer.mapping.map_sites` that knows the activation (``inject``, a study's planner)."""
    name = f"{activation}{f' {config}' if config else ''}"
    if _width_free(activation, config):
        advice = (
            f"{name} fits any width, so these sites lack a source of their stage or role, not of their width: "
            "use a policy that fits these models ('stage', 'depth', 'shared')."
        )
        return MappingError(error.policy, error.unmatched, error.sources, error.why, advice)
    have = sorted({s.channels for s in error.sources})
    need = sorted({s.channels for s in error.unmatched})
    what = f"{name} holds parameters per channel: this set has them for widths {have}, these sites need {need}."
    if set(need) <= set(have):
        what += " Policy 'depth' or 'shared' takes a source of a fitting width from any stage."
    if activation == "sparta":
        advice = f"{what} Sparta's variant 'portable' is width-free and maps anywhere."
    else:
        advice = (
            f"{what} A site takes {activation} parameters only at its own width: transfer between models of the "
            f"same widths (same arch and width), or train {activation} on a model with the target's widths."
        )
    return MappingError(error.policy, error.unmatched, error.sources, error.why, advice)


def _fits(aset: ActivationSet) -> Callable[[Site, Site], bool]:
    """``compatible(source, target)`` for :func:`map_sites`: the source site's tensors have the shapes
    of a fresh activation of the set's kind at the target's width."""
    fresh_shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def compatible(src: Site, tgt: Site) -> bool:
        if tgt.channels not in fresh_shapes:
            fresh = create_activation(aset.activation, tgt.channels, **aset.config)
            fresh_shapes[tgt.channels] = _shapes(fresh.state_dict())
        return _shapes(aset.state_for(src.name)) == fresh_shapes[tgt.channels]

    return compatible


def _build_activations(
    report: InjectionReport,
    sites: list[Site],
    activation: str | ActivationSet,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, list[tuple[Site, nn.Module]]]:
    """One activation per site (loaded from its source site where it has one), by module path; at a
    channels-last or token site it sits in a :class:`~transfer.layouts.LayoutView`."""
    per_module: dict[str, list[tuple[Site, nn.Module]]] = {}
    for site, entry in zip(sites, report.entries, strict=True):
        act = create_activation(report.activation, site.channels, **report.config)
        if entry.source is not None:
            act.load_state_dict(activation.state_for(entry.source))  # type: ignore[union-attr]
        if entry.frozen:
            act.freeze()
        act.site_name = site.name
        placed: nn.Module = act.to(device=device, dtype=dtype)
        if site.layout != "NCHW":
            placed = LayoutView(placed, SiteLayout.of(site.layout, site.spatial, site.prefix_tokens))
        per_module.setdefault(site.module_path, []).append((site, placed))
    return per_module


def _place_activations(model: nn.Module, per_module: dict[str, list[tuple[Site, nn.Module]]]) -> bool:
    """Put the activations in the model: in place of a module called once, or as a
    :class:`PerCallActivation` for one called several times. True if any module got one."""
    has_per_call = False
    for path, calls in per_module.items():
        calls.sort(key=lambda sa: sa[0].call_index)
        if len(calls) == 1 and calls[0][0].name == path:
            new: nn.Module = calls[0][1]
        else:
            new = PerCallActivation([a for _, a in calls])
            has_per_call = True
        new.train(model.get_submodule(path).training)  # an eval-mode part of a training model stays so
        _set_module(model, path, new)
    return has_per_call


def extract(
    model: nn.Module,
    *,
    input_shape: tuple[int, int, int] | None = None,
    meta: dict[str, Any] | None = None,
    input_size: Any = None,
) -> ActivationSet:
    """The activation parameters of every site of ``model``, with its site table, without the backbone.

    The sites are those the last ``inject`` recorded, or traced at ``input_shape`` (C, H, W) when it is
    given (``input_size=`` is its deprecated old name). Every site must hold a registry activation of one
    name and config (as ``inject`` leaves them).
    """
    sites = model_sites(model, input_shape_argument(input_shape, input_size, "extract"))
    acts = [(s, module_at(model, s)) for s in sites]
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
    aset = ActivationSet(
        activation=first.registry_name,
        config=dict(first.config),
        sites=list(sites),
        tensors=tensors,
        meta=dict(meta or {}),
    )
    aset.validate()  # e.g. a diverged model's NaN never leaves it as an activation set
    return aset


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
