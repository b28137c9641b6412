"""What Sparta is and how it moves.

The portable core (activations, sites, mapping, injection, activation sets, backbones) is imported here;
the adversarial-training engine (``transfer.engine``: data, attacks, recipes, training, evaluation) is
loaded on first use of one of its names, so ``import transfer`` (and ``zoo``) never pulls it in.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import threads

# First, before anything below imports torch: OpenMP reads its wait policy once, when torch loads it (threads.py).
threads.prefer_passive_wait()

from .activation_set import ActivationSet, load_activation_set, save_activation_set  # noqa: E402
from .activations import (  # noqa: E402
    Activation,
    PerCallActivation,
    Sparta,
    create_activation,
    list_activations,
    register_activation,
)
from .backbones import check_arch, create_backbone  # noqa: E402
from .init_weights import InitReport, load_init_weights  # noqa: E402
from .inject import InjectionReport, extract, inject, param_groups  # noqa: E402
from .mapping import POLICIES, MappingError  # noqa: E402
from .own_models import register_backbone  # noqa: E402
from .plugins import load_plugins  # noqa: E402
from .sites import Site, find_sites  # noqa: E402
from .workarounds import make_safe  # noqa: E402

try:
    __version__ = version("sparta-transfer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_ENGINE_NAMES = {
    "create_attack": "attacks",
    "list_attacks": "attacks",
    "parse_attack": "attacks",
    "DatasetChangedError": "run_inputs",
    "TensorData": "data",
    "create_dataset": "data",
    "dataset_info": "data",
    "list_datasets": "data",
    "evaluate": "evaluation",
    "TrainConfig": "config",
    "load_run": "training",
    "train": "training",
}


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        value = getattr(import_module(f".engine.{_ENGINE_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")


__all__ = [
    "Activation",
    "ActivationSet",
    "DatasetChangedError",
    "InitReport",
    "InjectionReport",
    "MappingError",
    "POLICIES",
    "PerCallActivation",
    "Site",
    "Sparta",
    "TensorData",
    "TrainConfig",
    "check_arch",
    "create_activation",
    "create_attack",
    "create_backbone",
    "create_dataset",
    "dataset_info",
    "evaluate",
    "extract",
    "find_sites",
    "inject",
    "list_activations",
    "list_attacks",
    "list_datasets",
    "load_activation_set",
    "load_init_weights",
    "load_plugins",
    "load_run",
    "make_safe",
    "param_groups",
    "parse_attack",
    "register_activation",
    "register_backbone",
    "save_activation_set",
    "train",
]
