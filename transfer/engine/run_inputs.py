"""What a run is built from, each checked before anything is written: the device, the config as run
(the dataset's size, channels, threat model and fingerprint filled in), the model (built from its
``arch``, or given as an object) with its activation injected, and the data (the dataset's own ``val``
split or ``val_subset`` held out of the train split, fixed-seed subsets).

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
from ..model_info import sparta_info
from ..own_models import check_logits, given_model_arch
from ..workarounds import make_safe
from .config import TrainConfig
from .data import DatasetInfo, TensorData, create_dataset, dataset_info, holdout_split

__all__ = [
    "DatasetChangedError", "check_fingerprint", "resolve_device", "load_weights", "resolve_config", "create_model",
    "inject_activation", "build_model", "load_data", "load_test_data",
]  # fmt: skip


class DatasetChangedError(ValueError):
    """The files of a ``folder:``/``npz:`` dataset changed since a run or study job was set up on them."""


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
        raise ValueError(
            f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s): "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
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


def check_fingerprint(config: TrainConfig, info: DatasetInfo) -> None:
    """A :class:`DatasetChangedError` when ``config`` recorded a dataset fingerprint the data no longer has."""
    recorded = config.dataset_fingerprint
    if recorded and recorded != info.fingerprint:
        raise DatasetChangedError(
            f"dataset {config.dataset!r} changed since this run or study job was set up on it (fingerprint "
            f"{recorded[:12]}… then, {info.fingerprint[:12]}… now: files added, removed or edited); restore it, "
            "or start afresh on the new data (another --out; a study plans new jobs for it)"
        )


def resolve_config(
    config: TrainConfig, activation_set: ActivationSet | None = None, model: nn.Module | None = None
) -> TrainConfig:
    """The config as run: the dataset's size, channels, threat model (``eps``/``alpha``/``steps`` left
    ``None``) and fingerprint filled in, the activation set's name/options, and for a ``model`` given as an
    object its ``arch`` record (``given:<module>.<class>``). A dataset without a threat model needs ``eps``
    (``TrainConfig.with_threat_model``); a fingerprint the config already holds must still be the data's."""
    info = dataset_info(config.dataset)
    check_fingerprint(config, info)
    config = config.with_threat_model()
    changes: dict[str, Any] = {
        "input_size": config.input_size or info.image_size,
        "in_chans": config.in_chans or info.in_chans,
        "dataset_fingerprint": info.fingerprint,
    }
    if activation_set is not None:
        changes.update(
            activation=activation_set.activation,
            activation_config=dict(activation_set.config),
            transfer_source=config.transfer_source or activation_set.source or "activation set",
        )
    if model is not None:
        if config.width is not None or config.model_kwargs:
            raise ValueError(
                "width and model_kwargs build a model from its arch; a model given to train() is used "
                "as it is: leave them unset"
            )
        changes["arch"] = given_model_arch(model)
    return replace(config, **changes)


def create_model(config: TrainConfig, num_classes: int, model: nn.Module | None = None) -> nn.Module:
    """The backbone of a resolved config (on the CPU), or ``model`` prepared as one: its input shape
    recorded for site tracing, :func:`transfer.make_safe` applied, its logits checked to be
    ``[N, num_classes]``. A given model is used as it is (no normalisation added: it sees [0, 1] pixels)."""
    shape = (config.in_chans, config.input_size, config.input_size)
    if model is None:
        return create_backbone(
            config.arch,
            num_classes=num_classes,
            in_chans=config.in_chans,
            input_size=config.input_size,
            width=config.width,
            **config.model_kwargs,
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    info = sparta_info(model)
    if info.input_shape not in (None, shape):
        raise ValueError(
            f"the model given to train() was built for input shape {info.input_shape}, the run's data "
            f"is {shape} (in_chans, input_size, input_size)"
        )
    model.sparta_info = replace(info, input_shape=shape)
    make_safe(model)
    check_logits(model, "the model given to train()", num_classes, shape)
    return model


def inject_activation(model: nn.Module, config: TrainConfig, activation_set: ActivationSet | None) -> InjectionReport:
    """``activation_set`` (with ``config.policy``/``config.freeze``), else a fresh ``config.activation``, at
    every site of ``model``."""
    if activation_set is not None:
        return inject(model, activation_set, policy=config.policy, freeze=config.freeze)
    return inject(model, config.activation, **config.activation_config)


def build_model(
    config: TrainConfig,
    num_classes: int,
    activation_set: ActivationSet | None = None,
    *,
    model: nn.Module | None = None,
) -> tuple[nn.Module, InjectionReport]:
    """The backbone of a resolved config (or ``model``, :func:`create_model`) with its activation injected at
    every site (on the CPU); like every model ``create_backbone`` and ``inject`` return, made safe from
    oneDNN's 1×1 bug (docs/known-issues.md). ``init_from`` is not loaded here (``training`` does, for a new
    run only)."""
    model = create_model(config, num_classes, model)
    return model, inject_activation(model, config, activation_set)


def load_data(
    config: TrainConfig, device: torch.device | str = "cpu"
) -> tuple[TensorData, TensorData | None, TensorData]:
    """Train, validation and test data. Validation is ``val_subset`` images (at most a tenth of the train
    split) held out of the train split; ``None`` when ``val_subset`` is 0 or unset.

    A dataset with a ``val`` split of its own (``folder:PATH/val``, ``npz`` ``x_val``) gives the validation
    images instead, at most ``val_subset`` of them (stratified, fixed seed).

    Raises the data layer's ``DatasetNotFoundError`` before anything else is built.
    """
    common = {
        "data_dir": config.data_dir,
        "download": config.download,
        "input_size": config.input_size,
        "in_chans": config.in_chans,
    }
    info = dataset_info(config.dataset)
    check_fingerprint(config, info)
    full = create_dataset(config.dataset, "train", **common)
    val = None
    n_val = min(config.val_subset or 0, len(full) // 10)
    if "val" in info.splits and config.val_subset:
        val = create_dataset(config.dataset, "val", **common)
        if config.val_subset < len(val):
            val = val.subset(config.val_subset, seed=_DATA_SEED)
    elif n_val:
        train_idx, val_idx = holdout_split(full.labels, n_val, _DATA_SEED)
        val = TensorData(full.images[val_idx], full.labels[val_idx], full.info)
        full = TensorData(full.images[train_idx], full.labels[train_idx], full.info)
    if config.train_subset is not None and config.train_subset < len(full):
        full = full.subset(config.train_subset, seed=_DATA_SEED)
    return full.to(device), (val.to(device) if val is not None else None), load_test_data(config, device)


def load_test_data(config: TrainConfig, device: torch.device | str = "cpu") -> TensorData:
    """The test split, cut to ``config.test_subset`` (stratified, fixed seed) when that is smaller; a
    :class:`DatasetChangedError` if the data changed since ``config`` recorded its fingerprint."""
    check_fingerprint(config, dataset_info(config.dataset))
    test = create_dataset(
        config.dataset,
        "test",
        data_dir=config.data_dir,
        download=config.download,
        input_size=config.input_size,
        in_chans=config.in_chans,
    )
    if config.test_subset is not None and config.test_subset < len(test):
        test = test.subset(config.test_subset, seed=_DATA_SEED)
    return test.to(device)
