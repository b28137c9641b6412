"""Models of one's own, built by a factory instead of timm: ``arch = "module.path:function"``, or a name a
plugin registered with :func:`register_backbone`.

A factory is called ``factory(num_classes, in_chans, input_size, **model_kwargs)`` and returns an
``nn.Module`` that maps ``[N, in_chans, input_size, input_size]`` images to ``[N, num_classes]`` logits;
``width`` is passed as a keyword when it is set, and only to a factory that takes it (a ``width``
parameter or ``**kwargs``). ``create_backbone`` gives the model what it gives a timm model: the input
normalisation inside it, ``model.sparta_info`` and :func:`transfer.make_safe`; and it checks the logits'
shape with one forward pass, so a factory that ignores ``num_classes`` fails there, not in training.

A model handed over as an object (``transfer.train(config, out, model=module)``) has no name to be built
from again; its runs record ``arch = "given:<module>.<class>"`` (:data:`GIVEN_MODEL_PREFIX`), which
:func:`factory_for` refuses with what to do instead.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .model_info import eval_mode, model_device, model_dtype
from .plugins import MODELS_GROUP, load_entry_points

__all__ = [
    "GIVEN_MODEL_PREFIX",
    "ModelFactory",
    "build_from_factory",
    "check_logits",
    "factory_for",
    "given_model_arch",
    "list_backbones",
    "register_backbone",
]

ModelFactory = Callable[..., nn.Module]
GIVEN_MODEL_PREFIX = "given:"
_FACTORIES: dict[str, ModelFactory] = {}


def register_backbone(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, in_chans, input_size, **kwargs) -> nn.Module`` as
    ``arch = name`` (e.g. in a ``sparta.models`` plugin). A name timm already has, or one with a ``:``
    (the ``module:function`` form), is refused."""
    import timm

    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a backbone name is a non-empty string without ':', got {name!r}")
    if name in _FACTORIES or timm.is_model(name):
        raise ValueError(
            f"backbone {name!r} is already registered ({'here' if name in _FACTORIES else 'by timm'}); "
            "choose another name"
        )

    def wrap(factory: ModelFactory) -> ModelFactory:
        if not callable(factory):
            raise TypeError(f"register_backbone({name!r}) decorates a function, got {type(factory).__name__}")
        _FACTORIES[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    """Names registered with :func:`register_backbone` (plugins' included), sorted."""
    load_entry_points(MODELS_GROUP)
    return sorted(_FACTORIES)


def given_model_arch(model: nn.Module) -> str:
    """The ``arch`` a run records for a model given as an object: ``given:<module>.<class>``."""
    cls = type(model)
    return f"{GIVEN_MODEL_PREFIX}{cls.__module__}.{cls.__qualname__}"


def factory_for(arch: str) -> ModelFactory | None:
    """The factory ``arch`` names (``module.path:function`` or a registered name), or ``None`` for a name
    timm has to build. A recorded given model (``given:…``) or a factory that cannot be imported is a
    ``ValueError`` that says what to do."""
    if arch.startswith(GIVEN_MODEL_PREFIX):
        raise ValueError(
            f"arch {arch!r} records a model that was given to transfer.train(model=...) as an object; it cannot be "
            "built again from its name. Pass the same module again: transfer.train(config, out_dir, model=...) to "
            "resume, transfer.load_run(run_dir, model=...) to load. (A factory, arch = 'module.path:function', "
            "is rebuilt from its name.)"
        )
    if ":" in arch:
        return _import_factory(arch)
    load_entry_points(MODELS_GROUP)
    return _FACTORIES.get(arch)


def _import_factory(arch: str) -> ModelFactory:
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ValueError(f"arch {arch!r}: a factory is named 'module.path:function', e.g. 'mymodels:small_cnn'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            raise ValueError(
                f"arch {arch!r}: module {module_name!r} not found; put the folder that holds it on PYTHONPATH "
                "(e.g. PYTHONPATH=. sparta train ...)"
            ) from None
        raise ValueError(f"arch {arch!r}: module {module_name!r} could not be imported: {exc}") from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"arch {arch!r}: module {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ValueError(f"arch {arch!r}: {attr!r} is a {type(factory).__name__}, not a function that builds a model")
    return factory


def _takes_width(factory: ModelFactory) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: let it decide
        return True
    return any(p.name == "width" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build_from_factory(
    arch: str,
    factory: ModelFactory,
    num_classes: int,
    in_chans: int,
    input_size: int,
    width: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``factory(num_classes, in_chans, input_size, **kwargs)`` (with ``width=`` when set), checked to be an
    ``nn.Module``; a ``width`` the factory does not take is a ``ValueError``."""
    kwargs = dict(kwargs)
    if width is not None:
        if not _takes_width(factory):
            raise ValueError(
                f"arch {arch!r}: width={width} was set, but its factory takes no width parameter; leave width "
                "unset, or add a `width` keyword to the factory"
            )
        kwargs["width"] = width
    try:
        model = factory(num_classes, in_chans, input_size, **kwargs)
    except TypeError as exc:
        bad = next((k for k in kwargs if f"unexpected keyword argument '{k}'" in str(exc)), None)
        if bad is None:
            raise
        raise ValueError(
            f"arch {arch!r}: its factory takes no keyword {bad!r} (model_kwargs {sorted(kwargs)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"arch {arch!r}: the factory returned a {type(model).__name__}, not a torch nn.Module")
    return model


def check_logits(model: nn.Module, what: str, num_classes: int, input_shape: tuple[int, int, int]) -> None:
    """One forward pass of two blank images in eval mode: the output must be logits ``[2, num_classes]``."""
    x = torch.zeros(2, *input_shape, device=model_device(model), dtype=model_dtype(model))
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"{what} fails on a batch of {input_shape[0]}×{input_shape[1]}×{input_shape[2]} images "
            f"({type(exc).__name__}: {reason}); it must take [N, in_chans, input_size, input_size] images"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{what} returns {got} for 2 images; it must return logits of shape (N, num_classes) = (2, {num_classes})"
        )
