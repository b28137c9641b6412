"""Row and column labels of a study: what a reader sees in matrices, tables and figures.

A row is an activation *configuration* (an activation, its options and the per-row training keys a reading
of it needs), so its label says all three, readably: ``Sparta (in place)``, ``Sparta (in place, 1×1 gate)``,
``Sparta full (in place)``, ``Sparta (in place, act wd 0)``, ``PSSiLU``. A transferred source reads
``Sparta dw ← resnet18/digits [stage]``, one from a zoo entry ``Sparta dw ← zoo:digits-r18@2 [stage]``. A
dataset that is a path reads as its scheme and last component: ``folder:/data/pets`` is ``folder:pets``. A row
may also carry a label of its own.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "ACTIVATION_LABELS",
    "FREEZING_CONTROL",
    "activation_label",
    "baseline_label",
    "column_label",
    "dataset_label",
    "point_label",
    "source_label",
    "transfer_label",
    "zoo_source_label",
]

ACTIVATION_LABELS = {
    "relu": "ReLU", "silu": "SiLU", "gelu": "GELU", "softplus": "Softplus", "prelu": "PReLU",
    "frelu": "FReLU", "sparta": "Sparta", "pssilu": "PSSiLU", "psoftplus": "PSoftplus",
}  # fmt: skip
# Suffix of a transfer back into its source's own (arch, dataset): it measures freezing, not portability.
FREEZING_CONTROL = "freezing control"
# Per-row training keys, as a label says them.
_TRAIN_WORDS = {
    "activation_weight_decay": lambda v: f"act wd {v:g}",
    "activation_lr_scale": lambda v: f"act lr ×{v:g}",
    "attack_bn_mode": lambda v: f"BN {v} in attack",
}


def column_label(arch: str, dataset: str, point: dict[str, Any] | None = None) -> str:
    """``resnet18 / digits``; at a point of a study's ``[sweep]``, ``resnet18 / digits [eps=0.05]``: a column
    per point, so a matrix never pools two settings into one cell."""
    return f"{arch} / {dataset_label(dataset)}" + (f" [{point_label(point)}]" if point else "")


def dataset_label(dataset: str) -> str:
    """``digits``; a dataset that is a path, by its scheme and last component: ``folder:/data/pets`` →
    ``folder:pets``, ``npz:/data/digits.npz`` → ``npz:digits.npz`` (the results table keeps the whole name)."""
    scheme, sep, rest = dataset.partition(":")
    if not sep or ("/" not in rest and "\\" not in rest):
        return dataset
    path = PurePosixPath(rest.replace("\\", "/").rstrip("/"))
    return f"{scheme}:{path.name}"


def point_label(point: dict[str, Any]) -> str:
    """``eps=0.05, lr=0.1``: a point of a ``[sweep]``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def _option_words(activation: str, options: dict[str, Any]) -> list[str]:
    words = []
    for key, value in sorted(options.items()):
        if key == "variant":
            continue
        if activation == "sparta" and key == "kernel_size":
            words.append(f"{value}×{value} gate")
        elif activation == "sparta" and key == "beta":
            words.append(f"β₀ {value:g}")
        else:
            words.append(f"{key}={value}")
    return words


def _train_words(train: dict[str, Any]) -> list[str]:
    return [_TRAIN_WORDS[k](v) if k in _TRAIN_WORDS else f"{k}={v}" for k, v in sorted(train.items())]


def activation_label(activation: str, config: dict[str, Any]) -> str:
    """``Sparta dw``, ``Sparta portable (3×3 gate)``, ``PReLU``: the activation with its variant and options."""
    name = ACTIVATION_LABELS.get(activation, activation)
    words = ", ".join(_option_words(activation, config))
    return " ".join(p for p in (name, config.get("variant"), f"({words})" if words else "") if p)


def source_label(activation: str, config: dict[str, Any], arch: str, dataset: str) -> str:
    return f"{activation_label(activation, config)} ← {arch}/{dataset_label(dataset)}"


def zoo_source_label(activation: str, config: dict[str, Any], ref: str) -> str:
    """``Sparta dw ← zoo:digits-r18@2``: a source that is a stored zoo entry (``NAME@VERSION``), not trained. The
    entry stands for its options (its card records every one, defaults included): the label says the variant."""
    variant = {"variant": config["variant"]} if config.get("variant") else {}
    return f"{activation_label(activation, variant)} ← zoo:{ref}"


def transfer_label(source: str, policy: str, freezing_control: bool = False) -> str:
    """``Sparta dw ← resnet18/digits [stage]``, with ``(freezing control)`` for a transfer into the source's
    own (arch, dataset)."""
    return f"{source} [{policy}]" + (f" ({FREEZING_CONTROL})" if freezing_control else "")


def baseline_label(activation: str, config: dict[str, Any], train: dict[str, Any]) -> str:
    """The row of a baseline trained in place: ``ReLU``, ``Sparta (in place)``, ``Sparta portable (in
    place)``, ``Sparta (in place, 1×1 gate, act wd 0)``, ``PSSiLU (per_channel=True)``."""
    name = ACTIVATION_LABELS.get(activation, activation)
    words = _option_words(activation, config) + _train_words(train)
    if activation == "sparta":
        variant = config.get("variant") or "dw"
        head = "Sparta" if variant == "dw" else f"Sparta {variant}"
        return f"{head} ({', '.join(['in place', *words])})"
    return f"{name} ({', '.join(words)})" if words else name
