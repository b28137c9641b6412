"""What a run is built from, each checked before anything is written: the device, the config as run
(the dataset's size, channels and threat model filled in), the model with its activation injected, and
the data (``val_subset`` held out of the train split, fixed-seed subsets).

Data subsets are drawn with a fixed seed, so every ``seed`` of a study sees the same images and seeds
measure training noise only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..activation_set import ActivationSet
from ..backbones import create_backbone
from ..inject import InjectionReport, inject
from .config import TrainConfig
from .data import TensorData, create_dataset, dataset_info, holdout_split

__all__ = ["resolve_device", "load_weights", "resolve_config", "build_model", "load_data", "load_test_data"]

_DATA_SEED = 0


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a ValueError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s): "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_weights(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(state)``, or a ValueError saying the checkpoint belongs to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(
            f"{path}: its weights do not fit the model of this run's config ({detail[:300]}); the file "
            "belongs to another run. Use the matching run directory, or another --out to start afresh"
        ) from None


def resolve_config(config: TrainConfig, activation_set: ActivationSet | None = None) -> TrainConfig:
    """The config as run: the dataset's size, channels and threat model (``eps``/``alpha``/``steps`` left
    ``None``) filled in, the activation set's name/options."""
    info = dataset_info(config.dataset)
    config = config.with_threat_model()
    changes: dict[str, Any] = {
        "input_size": config.input_size or info.image_size,
        "in_chans": config.in_chans or info.in_chans,
    }
    if activation_set is not None:
        changes.update(activation=activation_set.activation, activation_config=dict(activation_set.config),
                       transfer_source=config.transfer_source or activation_set.source or "activation set")
    return replace(config, **changes)


def build_model(
    config: TrainConfig, num_classes: int, activation_set: ActivationSet | None = None
) -> tuple[nn.Module, InjectionReport]:
    """The backbone of a resolved config with its activation injected at every site (on the CPU); like every
    model ``create_backbone`` and ``inject`` return, made safe from oneDNN's 1×1 bug (docs/known-issues.md)."""
    model = create_backbone(config.arch, num_classes=num_classes, in_chans=config.in_chans,
                            input_size=config.input_size, width=config.width, **config.model_kwargs)
    if activation_set is not None:
        report = inject(model, activation_set, policy=config.policy, freeze=config.freeze)
    else:
        report = inject(model, config.activation, **config.activation_config)
    return model, report


def load_data(
    config: TrainConfig, device: torch.device | str = "cpu"
) -> tuple[TensorData, TensorData | None, TensorData]:
    """Train, validation and test data. Validation is ``val_subset`` images (at most a tenth of the train
    split) held out of the train split; ``None`` when ``val_subset`` is 0 or unset.

    Raises the data layer's ``DatasetNotFoundError`` before anything else is built.
    """
    common = {"data_dir": config.data_dir, "download": config.download, "input_size": config.input_size,
              "in_chans": config.in_chans}
    full = create_dataset(config.dataset, "train", **common)
    val = None
    n_val = min(config.val_subset or 0, len(full) // 10)
    if n_val:
        train_idx, val_idx = holdout_split(full.labels, n_val, _DATA_SEED)
        val = TensorData(full.images[val_idx], full.labels[val_idx], full.info)
        full = TensorData(full.images[train_idx], full.labels[train_idx], full.info)
    if config.train_subset is not None and config.train_subset < len(full):
        full = full.subset(config.train_subset, seed=_DATA_SEED)
    return full.to(device), (val.to(device) if val is not None else None), load_test_data(config, device)


def load_test_data(config: TrainConfig, device: torch.device | str = "cpu") -> TensorData:
    """The test split, cut to ``config.test_subset`` (stratified, fixed seed) when that is smaller."""
    test = create_dataset(config.dataset, "test", data_dir=config.data_dir, download=config.download,
                          input_size=config.input_size, in_chans=config.in_chans)
    if config.test_subset is not None and config.test_subset < len(test):
        test = test.subset(config.test_subset, seed=_DATA_SEED)
    return test.to(device)
