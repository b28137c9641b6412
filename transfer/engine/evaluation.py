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

from ..attack_names import metric_name, parse_spec
from ..model_info import eval_mode, model_device
from .attacks import create_attack, parse_attack
from .autoattack import APGDCascade, is_official_metric
from .data import TensorData
from .per_image import PerImage, data_fingerprint, with_ensembles

__all__ = ["evaluate", "DEFAULT_EVAL_ATTACKS"]

# The attacks a run, ``sparta eval`` and a study evaluate unless told otherwise.
DEFAULT_EVAL_ATTACKS = ("clean", "fgsm", "pgd20", "cw")


def _memory_format(model: nn.Module) -> torch.memory_format:
    """Channels-last inputs for a model whose conv weights are channels-last (no layout conversions)."""
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] * p.shape[2] * p.shape[3] > 1]
    if weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        return torch.channels_last
    return torch.contiguous_format


def evaluate(
    model: nn.Module,
    data: TensorData,
    attacks: Sequence[str] | str = DEFAULT_EVAL_ATTACKS,
    *,
    eps: float,
    n: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    return_per_image: bool = False,
) -> dict[str, float] | tuple[dict[str, float], PerImage]:
    """Accuracy (percent) of ``model`` on ``data`` under each attack spec at L∞ (or L2) radius ``eps``.

    ``n`` evaluates a stratified subset of that many images (seed 0). The model runs on its own device
    in eval mode and gets its modes back; every attack sees the same images. An image counts as robust
    only if the model classifies it correctly both clean and attacked (AutoAttack's rule), so no attack
    can score above clean accuracy, even one whose perturbation happens to fix a misclassified image.
    The official AutoAttack's specs (``aa``, ``apgd-ce``, …) need their version recorded beside the
    numbers: ``transfer.engine.autoattack.attack_provenance(metrics)``.

    With ``return_per_image``, also which images were counted correct under each metric, in ``data``'s
    order (:class:`~transfer.engine.per_image.PerImage`, with the images' fingerprint): the input of
    the per-image paired tests (``studies.paired``).

    When every member of an ensemble was evaluated (``apgd-ce`` and ``apgd-t``), its worst case is
    reported too (``apgd-ce+t``, :func:`~transfer.engine.per_image.ensembles_of`): no attack runs again.
    The spec ``apgd-ce+tK`` computes the same worst case for less: APGD-CE on every image, APGD-T only on
    the images APGD-CE left robust (:class:`~transfer.engine.autoattack.APGDCascade`); ``apgd-ce`` is
    reported beside it, and runs once however many of the two are asked for.
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
    cascades = {name for name in names if parse_spec(name).family == "apgd-ce+t"}
    if cascades and "apgd-ce" not in names:  # the cascade's first stage, reported under its own name
        names.insert(min(names.index(c) for c in cascades), "apgd-ce")
    built = {}
    for name in names:
        kind, config = parse_attack(name)
        if is_official_metric(name):
            config.setdefault("n_classes", data.num_classes)
        built[name] = None if kind == "clean" else create_attack(kind, eps=eps, **config)

    device = model_device(model)
    fmt = _memory_format(model)
    correct: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    total = math.ceil(len(data) / batch_size) * len(names)
    with eval_mode(model), tqdm(total=total, desc="evaluate", disable=not progress, leave=False) as bar:
        for x, y in data.batches(batch_size):
            x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
            with torch.no_grad():
                clean_ok = model(x).argmax(dim=1) == y
            ok_of, adversarial = {}, {}
            for name in sorted(names, key=lambda name: name in cascades):  # APGD-CE before the cascades
                attack, ok = built[name], clean_ok
                if isinstance(attack, APGDCascade):
                    x_adv = attack.attack_survivors(model, x, y, adversarial["apgd-ce"], ok_of["apgd-ce"])
                    with torch.no_grad():
                        ok = ok_of["apgd-ce"] & (model(x_adv).argmax(dim=1) == y)
                elif attack is not None:
                    x_adv = adversarial[name] = attack(model, x, y)
                    with torch.no_grad():
                        ok = clean_ok & (model(x_adv).argmax(dim=1) == y)
                ok_of[name] = ok
                correct[name].append(ok.cpu())
                bar.update(1)
                bar.set_postfix_str(name)
    fingerprint = data_fingerprint(data) if return_per_image else ""  # hashing the images only when asked for
    bits = with_ensembles(PerImage({name: torch.cat(correct[name]).numpy() for name in names}, fingerprint))
    metrics = {name: 100.0 * int(bits[name].sum()) / len(data) for name in bits}
    if return_per_image:
        return metrics, bits
    return metrics
