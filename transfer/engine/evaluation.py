"""Clean and robust accuracy of a model under attack specs (``transfer.engine.attacks.parse_attack``).

Metric names are the normalised specs (``clean``, ``fgsm``, ``pgd20``, ``pgd20-l2``, ``cw``, ``aa``,
``apgd-ce``) and values are accuracies in percent (0–100), the units of every results table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import create_attack, parse_attack
from .data import TensorData

__all__ = ["evaluate", "metric_name", "DEFAULT_ATTACKS"]

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw")
_ALIASES = {"none": "clean", "autoattack": "aa", "apgd": "apgd-ce", "pgd": "pgd20", "cw20": "cw"}


def metric_name(spec: str) -> str:
    """The metric a spec reports under: ``"PGD"`` → ``pgd20``, ``"autoattack"`` → ``aa``, ``"cw20"`` → ``cw``."""
    s = spec.strip().lower()
    s = _ALIASES.get(s, s)
    if s == "pgd-l2":
        return "pgd20-l2"
    return s


def _memory_format(model: nn.Module) -> torch.memory_format:
    """Channels-last inputs for a model whose conv weights are channels-last (no layout conversions)."""
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] * p.shape[2] * p.shape[3] > 1]
    if weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        return torch.channels_last
    return torch.contiguous_format


def evaluate(
    model: nn.Module,
    data: TensorData,
    attacks: Sequence[str] | str = DEFAULT_ATTACKS,
    *,
    eps: float,
    n: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy (percent) of ``model`` on ``data`` under each attack spec at L∞ (or L2) radius ``eps``.

    ``n`` evaluates a stratified subset of that many images (seed 0). The model runs on its own device
    in eval mode and gets its modes back; every attack sees the same images.
    """
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    names = list(dict.fromkeys(metric_name(a) for a in attacks))
    if not names:
        raise ValueError("evaluate needs at least one attack spec, e.g. ('clean', 'pgd20')")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if n is not None and n < len(data):
        data = data.subset(n, seed=0)
    if len(data) == 0:
        raise ValueError("evaluate got an empty dataset")
    built = {}
    for name in names:
        kind, config = parse_attack(name)
        if kind in ("autoattack", "apgd-ce"):
            config.setdefault("n_classes", data.num_classes)
        built[name] = None if kind == "clean" else create_attack(kind, eps=eps, **config)

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    fmt = _memory_format(model)
    correct = dict.fromkeys(names, 0)
    saved_modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total = math.ceil(len(data) / batch_size) * len(names)
    try:
        with tqdm(total=total, desc="evaluate", disable=not progress, leave=False) as bar:
            for x, y in data.batches(batch_size):
                x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
                for name, attack in built.items():
                    x_in = x if attack is None else attack(model, x, y)
                    with torch.no_grad():
                        correct[name] += int((model(x_in).argmax(dim=1) == y).sum())
                    bar.update(1)
                    bar.set_postfix_str(name)
    finally:
        for m, training in saved_modes:
            m.training = training
    return {name: 100.0 * correct[name] / len(data) for name in names}
