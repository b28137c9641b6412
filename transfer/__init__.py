"""What Sparta is and how it moves: activations, sites, injection, backbones, data, attacks, training."""

from .activation_set import ActivationSet, load_activation_set, save_activation_set
from .activations import Activation, Sparta, create_activation, list_activations, register_activation
from .backbones import create_backbone
from .inject import InjectionReport, PerCallActivation, extract, inject, param_groups
from .mapping import POLICIES, MappingError
from .sites import Site, find_sites

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ActivationSet",
    "InjectionReport",
    "MappingError",
    "POLICIES",
    "PerCallActivation",
    "Site",
    "Sparta",
    "create_activation",
    "create_backbone",
    "extract",
    "find_sites",
    "inject",
    "list_activations",
    "load_activation_set",
    "param_groups",
    "register_activation",
    "save_activation_set",
]
