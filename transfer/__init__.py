"""What Sparta is and how it moves: activations, sites, injection, backbones, data, attacks, training."""

from .activation_set import ActivationSet, load_activation_set, save_activation_set
from .activations import Activation, Sparta, create_activation, list_activations, register_activation
from .attacks import create_attack, list_attacks, parse_attack
from .backbones import create_backbone
from .data import TensorData, create_dataset, dataset_info, list_datasets
from .evaluation import evaluate
from .inject import InjectionReport, PerCallActivation, extract, inject, param_groups
from .mapping import POLICIES, MappingError
from .sites import Site, find_sites
from .training import TrainConfig, load_run, train

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
    "TensorData",
    "TrainConfig",
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
    "load_run",
    "param_groups",
    "parse_attack",
    "register_activation",
    "save_activation_set",
    "train",
]
