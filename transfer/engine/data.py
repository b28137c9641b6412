"""Datasets as whole tensors: one registry of sources and one factory, ``create_dataset``.

Every dataset comes back as a :class:`TensorData` — all images ``float32 [N, C, H, W]`` in [0, 1] and
labels ``int64 [N]`` — because the datasets here fit in memory and adversarial training spends its time
in the attack, not in a ``DataLoader``. Normalisation lives in the model (see ``backbones``).

The registered sources (``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist``, ``digits``,
``shapes``) are in ``dataset_sources.py``; a researcher's own files are named ``folder:PATH`` and
``npz:PATH`` (``dataset_files.py``, registered here as name *schemes*); installed plugins add theirs
through the ``sparta.datasets`` entry points, loaded on the first lookup (``transfer.plugins``).
``transfer.engine`` imports both modules with the package, so every engine module sees every name.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..environment import env_setting
from ..plugins import DATASETS_GROUP, failure_note, load_entry_points
from ..registry import NameRegistry
from ..threat_model import ThreatModel

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "TensorData",
    "create_dataset",
    "dataset_info",
    "list_datasets",
    "register_dataset",
    "register_dataset_scheme",
    "split_size",
    "default_data_dir",
    "stratified_indices",
    "holdout_split",
    "resize_images",
    "convert_channels",
]

_LUMINANCE = (0.299, 0.587, 0.114)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says how to fetch them."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, known without loading it. ``in_chans``/``image_size`` follow any conversion;
    ``threat_model`` is the dataset's conventional L∞ threat model (``docs/threat-models.md``), ``None``
    for one that declares none (a run then needs ``eps``). ``fingerprint`` identifies the data's
    current state where it can change under its name (``folder:``/``npz:``: a sha256, see
    ``dataset_files.py``); ``""`` for a registered dataset, which its name fixes. ``splits`` are the
    splits ``create_dataset`` takes (``val`` only where the dataset brings its own)."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    classes: tuple[str, ...]
    offline: bool = False
    source: str = ""
    threat_model: ThreatModel | None = None
    fingerprint: str = ""
    splits: tuple[str, ...] = ("train", "test")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "offline": self.offline,
            "source": self.source,
            "threat_model": self.threat_model.to_dict() if self.threat_model is not None else None,
            "fingerprint": self.fingerprint,
            "splits": list(self.splits),
        }


@dataclass
class TensorData:
    """A whole dataset split held as tensors."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.float32:
            raise ValueError(f"images must be float32 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64 or len(self.labels) != len(self.images):
            raise ValueError(
                f"labels must be int64 [N] with N = {len(self.images)}, got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.images.to(device), self.labels.to(device), self.info)

    def subset(self, n: int, seed: int = 0) -> TensorData:
        """A stratified, seeded subset of ``n`` samples (class proportions kept, original order kept)."""
        idx = stratified_indices(self.labels, n, seed).to(self.labels.device)
        return TensorData(self.images[idx], self.labels[idx], self.info)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches; the last one may be smaller. ``generator`` seeds the shuffle."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(self)
        if not shuffle:
            for i in range(0, n, batch_size):
                yield self.images[i : i + batch_size], self.labels[i : i + batch_size]
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.images[idx], self.labels[idx]


def stratified_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` samples drawn per class in proportion to the class sizes (largest
    remainder rounding, ties to the lower class), at random within each class from ``seed``."""
    total = len(labels)
    if not isinstance(n, int) or n < 1 or n > total:
        raise ValueError(f"subset size must be an int in [1, {total}], got {n!r}")
    labels = labels.cpu()
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(total, generator=g)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    short = n - int(quota.sum())
    if short:
        order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
        quota[order[:short]] += 1
    # Walk the shuffled samples grouped by class (stable sort keeps the shuffle inside a class) and keep
    # the first quota[c] of each class.
    cls_pos = torch.searchsorted(classes, labels[perm])
    by_class = torch.sort(cls_pos, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(total) - starts[by_class.values]
    keep = rank < quota[by_class.values]
    return torch.sort(perm[by_class.indices[keep]]).values


def holdout_split(labels: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, held_out)``: sorted indices of a stratified sample of ``n`` (:func:`stratified_indices`)
    and of every other sample — e.g. a validation set held out of a train split."""
    held_out = stratified_indices(labels, n, seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of ``[N, C, H, W]`` to ``size``², kept in [0, 1]."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"input_size must be a positive int, got {size!r}")
    if images.shape[-2:] == (size, size):
        return images
    out = [
        F.interpolate(chunk_, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for chunk_ in images.split(chunk)
    ]
    return torch.cat(out).clamp_(0.0, 1.0)


def convert_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """1 → 3 channels by repetition, 3 → 1 by ITU-R 601 luminance; other conversions are refused."""
    c = images.shape[1]
    if in_chans == c:
        return images
    if c == 1 and in_chans == 3:
        return images.repeat(1, 3, 1, 1)
    if c == 3 and in_chans == 1:
        w = torch.tensor(_LUMINANCE, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise ValueError(f"in_chans={in_chans!r}: can only convert between 1 and 3 channels (data has {c})")


def default_data_dir() -> Path:
    """``$SPARTA_DATA_DIR`` if set, else ``<user cache dir>/sparta-transfer/datasets``; set but empty is an
    error naming it (``transfer.environment``)."""
    env = env_setting("SPARTA_DATA_DIR")
    if env is not None:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparta-transfer")) / "datasets"


class DatasetSource(ABC):
    """A registered dataset: its fixed facts and a ``load`` returning native images and labels.

    ``load`` returns ``(images float32 [N, C, H, W] in [0, 1], labels int64 [N])``; ``size_hint`` is
    the requested ``input_size``, which a generated dataset may draw at directly. ``option_keys``
    lists the extra keyword options ``create_dataset`` passes through.

    A source declares its threat model by setting ``threat_model = ThreatModel(eps, alpha, steps,
    source)`` (``transfer.threat_model``); one that leaves it ``None`` makes every run on it name its
    ``eps`` (``TrainConfig.with_threat_model``) instead of silently taking another dataset's.
    """

    registry_name: str = ""
    num_classes: int = 10
    in_chans: int = 3
    image_size: int = 32
    classes: tuple[str, ...] = ()
    offline: bool = False
    option_keys: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "test")
    threat_model: ThreatModel | None = None  # the dataset's conventional L∞ threat model, if it has one

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            self.registry_name,
            self.num_classes,
            self.in_chans,
            self.image_size,
            self.classes,
            offline=self.offline,
            threat_model=self.threat_model,
            splits=self.splits,
        )

    def split_size(self, split: str) -> int | None:
        """Images in ``split`` where the source knows without loading them (a cost estimate reads it); None."""
        return None

    @abstractmethod
    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Return images, labels and a one-line description of where they came from."""


_REGISTRY: NameRegistry[DatasetSource] = NameRegistry(
    "dataset",
    {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"},
)


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    """Class decorator adding a :class:`DatasetSource` subclass to the registry under ``name``."""

    def wrap(cls: type[DatasetSource]) -> type[DatasetSource]:
        cls.registry_name = name
        _REGISTRY.add(name, cls())
        return cls

    return wrap


# scheme → factory of the source a name ``scheme:ARGUMENT`` stands for (``folder:PATH``, ``npz:PATH``)
_SCHEMES: dict[str, Callable[[str], DatasetSource]] = {}
_OWN_DATA_HINT = (
    "; or your own data: folder:PATH (an ImageFolder tree), npz:PATH, or a plugin's (load its module "
    "first: --plugin MODULE); docs/own-data.md"
)


def register_dataset_scheme(scheme: str) -> Callable[[Callable[[str], DatasetSource]], Callable[[str], DatasetSource]]:
    """Decorator registering ``factory(argument) -> DatasetSource`` for dataset names ``scheme:argument``."""

    def wrap(factory: Callable[[str], DatasetSource]) -> Callable[[str], DatasetSource]:
        if scheme in _SCHEMES:
            raise ValueError(f"dataset scheme {scheme!r} is already registered")
        _SCHEMES[scheme] = factory
        return factory

    return wrap


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names (plugins' included) matching a shell-style ``pattern``, sorted."""
    load_entry_points(DATASETS_GROUP)
    return _REGISTRY.names(pattern)


def _get(name: str) -> DatasetSource:
    if not isinstance(name, str):
        raise ValueError(f"a dataset name is a string, got {type(name).__name__} {name!r}")
    scheme, colon, argument = name.partition(":")
    if colon and scheme.lower() in _SCHEMES:
        return _SCHEMES[scheme.lower()](argument)
    load_entry_points(DATASETS_GROUP)
    try:
        return _REGISTRY.get(name)
    except ValueError as exc:
        raise ValueError(f"{exc}{_OWN_DATA_HINT}{failure_note(DATASETS_GROUP)}") from None


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (native size and channels) without loading its images."""
    return _get(name).info()


def split_size(name: str, split: str) -> int | None:
    """Images in ``split`` of dataset ``name`` where its source knows without loading them (the registered
    datasets, ``synthetic:``); None where it does not (``folder:``, ``npz:``, most plugins)."""
    return _get(name).split_size(split)


def create_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    input_size: int | None = None,
    in_chans: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    **options: Any,
) -> TensorData:
    """Load ``split`` of dataset ``name`` as tensors in [0, 1].

    ``input_size`` resizes (bilinear, antialiased), ``in_chans`` converts 1 ↔ 3 channels, ``subset``
    keeps a stratified sample of that many images drawn with ``seed``. ``options`` are the source's
    own (``shapes``: ``n_train``, ``n_test``, ``generation_seed``, ``noise``).
    """
    source = _get(name)
    info = source.info()
    if split not in info.splits:
        raise ValueError(f"unknown split {split!r} for dataset {info.name!r}; it has: {', '.join(info.splits)}")
    unknown = set(options) - set(source.option_keys)
    if unknown:
        allowed = ", ".join(source.option_keys) or "none"
        raise ValueError(
            f"dataset {source.registry_name!r} got unknown option(s) {sorted(unknown)}; it takes: {allowed}"
        )
    if in_chans is not None and in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    images, labels, origin = source.load(split, data_dir=root, download=download, size_hint=input_size, **options)
    if subset is not None:
        idx = stratified_indices(labels, subset, seed)
        images, labels = images[idx], labels[idx]
    if input_size is not None:
        images = resize_images(images, input_size)
    if in_chans is not None:
        images = convert_channels(images, in_chans)
    info = replace(info, in_chans=images.shape[1], image_size=images.shape[-1], source=origin)
    return TensorData(images.contiguous(), labels, info)
