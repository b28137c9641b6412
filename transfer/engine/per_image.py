"""Per-image correctness of an evaluation: which test images a model got right under each metric.

Two models evaluated on the same images can be compared image by image (McNemar's test,
``studies.paired``), which needs far fewer seeds than comparing their accuracies across seeds. A run
stores one bit per test image and metric, packed eight to a byte (``numpy.packbits``), in
``per_image.safetensors`` beside its ``metrics.json``: tensor ``<metric>`` is the packed bits, and the
metadata holds the number of images and a fingerprint of the images and labels they were measured on,
so a comparison can check that both vectors describe the same images in the same order.

Per-image bits also give **ensembles** for free (:func:`ensembles_of`): an image is robust to an
ensemble only if every member attack left it correct, AutoAttack's worst case over its stages.
``apgd-ce+t`` is the worst case of APGD-CE and APGD-T, the first two stages of the standard AutoAttack
(``apgd-ce+t3`` the same with APGD-T on 3 target classes): a lower (never a higher) number than either
alone, with no attack run again. The spec ``apgd-ce+t3`` measures the same worst case directly, running
APGD-T only on the images APGD-CE left robust; an evaluation that ran it keeps its bits (an ensemble
is only added where its name is missing).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..attack_names import parse_apgd_t
from .data import TensorData

__all__ = [
    "MAX_IMAGES",
    "PER_IMAGE_FILE",
    "PerImage",
    "data_fingerprint",
    "ensemble_metrics",
    "ensembles_of",
    "load_per_image",
    "save_per_image",
    "with_ensembles",
]

PER_IMAGE_FILE = "per_image.safetensors"
MAX_IMAGES = 10**9  # the most images a per-image file may describe (test splits have thousands)
_FORMAT = "sparta-per-image-v1"
_HEX = re.compile(r"[0-9a-f]{0,64}")


def data_fingerprint(data: TensorData) -> str:
    """SHA-256 (first 16 hex digits) of the images and labels in order: equal exactly when two
    evaluations saw the same images in the same order."""
    digest = hashlib.sha256()
    digest.update(data.images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(data.labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class PerImage(dict):
    """Metric name → boolean vector (one entry per test image, True = correct), with the ``fingerprint``
    of the images they were measured on."""

    def __init__(self, correct: Mapping[str, np.ndarray], fingerprint: str) -> None:
        super().__init__({m: np.asarray(v, dtype=bool) for m, v in correct.items()})
        lengths = {len(v) for v in self.values()}
        if len(lengths) > 1:
            raise ValueError(f"per-image vectors differ in length ({sorted(lengths)}); one evaluation has one length")
        self.fingerprint = str(fingerprint)

    @property
    def n(self) -> int:
        return len(next(iter(self.values()))) if self else 0


def save_per_image(path: str | os.PathLike[str], correct: PerImage) -> Path:
    """Write ``correct`` packed (one bit per image) to a safetensors file, atomically."""
    from safetensors.numpy import save_file

    tensors = {metric: np.packbits(bits) for metric, bits in correct.items()}
    metadata = {"format": _FORMAT, "n": str(correct.n), "fingerprint": correct.fingerprint}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_per_image(path: str | os.PathLike[str]) -> PerImage:
    """Read what :func:`save_per_image` wrote; a missing, foreign or damaged file is a clear error.

    Everything is checked before the bits are unpacked: the format tag, ``n`` (a whole number of at most
    :data:`MAX_IMAGES`), every tensor uint8, 1-D and exactly ``ceil(n / 8)`` bytes long (read from the
    header, so a file claiming 10**11 images allocates nothing), and the fingerprint a hex string."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no per-image correctness at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            layout = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for truncated or foreign files
        raise ValueError(f"{path}: unreadable per-image file ({exc})") from exc
    n, fingerprint = _checked_header(path, metadata, layout)
    try:
        with safe_open(str(path), framework="numpy") as f:
            packed = {k: f.get_tensor(k) for k in layout}
    except Exception as exc:
        raise ValueError(f"{path}: unreadable per-image file ({exc})") from exc
    return PerImage({m: np.unpackbits(v, count=n).astype(bool) for m, v in packed.items()}, fingerprint)


def _checked_header(path: Path, metadata: dict[str, str], layout: dict[str, tuple[str, list[int]]]) -> tuple[int, str]:
    """``(n, fingerprint)`` of a per-image file whose header is what :func:`save_per_image` writes; a
    ``ValueError`` naming the file and the first thing that is not."""
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a per-image correctness file (expected format {_FORMAT!r})")
    text = metadata.get("n", "")
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_IMAGES))) or int(text) > MAX_IMAGES:
        raise ValueError(
            f"{path}: damaged per-image file: its image count n={text[:20]!r} is not a whole number "
            f"of at most {MAX_IMAGES:,}"
        )
    n = int(text)
    for metric, (dtype, shape) in layout.items():
        if dtype != "U8" or shape != [math.ceil(n / 8)]:
            raise ValueError(
                f"{path}: damaged per-image file: tensor {metric!r} is {dtype} {shape}, not the "
                f"uint8 [{math.ceil(n / 8)}] that packs the bits of n={n} images"
            )
    fingerprint = metadata.get("fingerprint", "")
    if not _HEX.fullmatch(fingerprint):
        raise ValueError(f"{path}: damaged per-image file: its fingerprint {fingerprint[:40]!r} is not a hex string")
    return n, fingerprint


def ensembles_of(metrics: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The ensembles ``metrics`` can form, name → members: APGD-CE with each APGD-T evaluated
    (``apgd-ce`` and ``apgd-t`` → ``apgd-ce+t``; ``apgd-ce`` and ``apgd-t3`` → ``apgd-ce+t3``)."""
    present = list(metrics)
    if "apgd-ce" not in present:
        return {}
    stages = [name for name in present if (apgd := parse_apgd_t(name)) and not apgd[0]]
    return {"apgd-ce+" + name.removeprefix("apgd-"): ("apgd-ce", name) for name in stages}


def with_ensembles(correct: PerImage) -> PerImage:
    """``correct`` with every ensemble of :func:`ensembles_of` added (an image counts only if correct
    under every member); metrics it already has are kept as they are."""
    added = {
        name: np.logical_and.reduce([correct[m] for m in members])
        for name, members in ensembles_of(correct).items()
        if name not in correct
    }
    return correct if not added else PerImage({**correct, **added}, correct.fingerprint)


def ensemble_metrics(correct: PerImage) -> dict[str, float]:
    """Accuracy (percent) of each ensemble :func:`with_ensembles` can form from ``correct``."""
    names = ensembles_of(correct)
    full = with_ensembles(correct)
    return {name: 100.0 * int(full[name].sum()) / full.n for name in names if full.n}
