"""Datasets as whole tensors: one registry of sources and one factory, ``create_dataset``.

Every dataset comes back as a :class:`TensorData` — all images ``float32 [N, C, H, W]`` in [0, 1] and
labels ``int64 [N]`` — because the datasets here fit in memory and adversarial training spends its time
in the attack, not in a ``DataLoader``. Normalisation lives in the model (see ``backbones``).

Sources: ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist`` through torchvision with the
usual ``data_dir`` / ``download``; ``digits`` (scikit-learn's bundled 8×8 digits, the offline default)
and ``shapes`` (procedurally generated colour images, see ``shapes.py``) need no files at all.
Fashion-MNIST is also found offline in Debian's ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import atomic_write
from ..registry import NameRegistry
from ..threat_model import ThreatModel
from .shapes import SHAPE_CLASSES, generate_shapes

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "TensorData",
    "create_dataset",
    "dataset_info",
    "list_datasets",
    "register_dataset",
    "default_data_dir",
    "stratified_indices",
    "holdout_split",
    "resize_images",
    "convert_channels",
    "DEBIAN_FASHION_MNIST",
]

SPLITS = ("train", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_LUMINANCE = (0.299, 0.587, 0.114)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says how to fetch them."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, known without loading it. ``in_chans``/``image_size`` follow any conversion;
    ``threat_model`` is the dataset's conventional L∞ threat model (``docs/threat-models.md``)."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    classes: tuple[str, ...]
    offline: bool = False
    source: str = ""
    threat_model: ThreatModel = field(default_factory=lambda: CIFAR_THREAT)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "offline": self.offline,
            "source": self.source,
            "threat_model": self.threat_model.to_dict(),
        }


@dataclass
class TensorData:
    """A whole dataset split held as tensors."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"images must be float32 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
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
    """``$SPARTA_DATA_DIR`` if set, else ``<user cache dir>/sparta-transfer/datasets``."""
    env = os.environ.get("SPARTA_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparta-transfer")) / "datasets"


class DatasetSource(ABC):
    """A registered dataset: its fixed facts and a ``load`` returning native images and labels.

    ``load`` returns ``(images float32 [N, C, H, W] in [0, 1], labels int64 [N])``; ``size_hint`` is
    the requested ``input_size``, which a generated dataset may draw at directly. ``option_keys``
    lists the extra keyword options ``create_dataset`` passes through.
    """

    registry_name: str = ""
    num_classes: int = 10
    in_chans: int = 3
    image_size: int = 32
    classes: tuple[str, ...] = ()
    offline: bool = False
    option_keys: tuple[str, ...] = ()
    # the dataset's conventional L∞ threat model; a source that declares none gets CIFAR's 8/255
    threat_model: ThreatModel

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            self.registry_name, self.num_classes, self.in_chans, self.image_size, self.classes, offline=self.offline,
            threat_model=getattr(self, "threat_model", CIFAR_THREAT),
        )

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


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style ``pattern``, sorted."""
    return _REGISTRY.names(pattern)


def _get(name: str) -> DatasetSource:
    return _REGISTRY.get(name)


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (native size and channels) without loading it."""
    return _get(name).info()


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
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = set(options) - set(source.option_keys)
    if unknown:
        allowed = ", ".join(source.option_keys) or "none"
        raise ValueError(
            f"dataset {source.registry_name!r} got unknown option(s) {sorted(unknown)}; it takes: {allowed}"
        )
    if in_chans is not None and in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    images, labels, origin = source.load(
        split, data_dir=root, download=download, size_hint=input_size, **options
    )
    if subset is not None:
        idx = stratified_indices(labels, subset, seed)
        images, labels = images[idx], labels[idx]
    if input_size is not None:
        images = resize_images(images, input_size)
    if in_chans is not None:
        images = convert_channels(images, in_chans)
    info = replace(source.info(), in_chans=images.shape[1], image_size=images.shape[-1], source=origin)
    return TensorData(images.contiguous(), labels, info)


def _from_uint8(data: Any, channels_last: bool) -> torch.Tensor:
    """numpy/torch uint8 images ([N, H, W], [N, H, W, C] or [N, C, H, W]) → float32 [N, C, H, W]."""
    t = torch.as_tensor(data)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous()


def _missing(
    name: str, split: str, root: Path, layout: str, cause: BaseException | None = None
) -> DatasetNotFoundError:
    if cause is not None:
        what = f"could not download {name} into {root} ({cause})"
    else:
        what = f"{name} ({split}) not found in {root}"
    return DatasetNotFoundError(
        f"{what}. Fetch it with:\n    sparta train --dataset {name} --data-dir {root} --download\n"
        f"or point --data-dir at a directory that already holds it (torchvision layout: {root / layout})."
    )


class _TorchvisionSource(DatasetSource):
    """A torchvision dataset read whole: ``tv_class`` under ``root``; ``layout`` names its files."""

    tv_class: str = ""
    layout: str = ""
    channels_last: bool = True

    def split_kwargs(self, split: str) -> dict[str, Any]:
        return {"train": split == "train"}

    def arrays(self, ds: Any) -> tuple[Any, Any]:
        return ds.data, ds.targets

    def root(self, data_dir: Path | None, download: bool) -> Path:
        return data_dir if data_dir is not None else default_data_dir()

    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        import torchvision.datasets

        root = self.root(data_dir, download)
        cls = getattr(torchvision.datasets, self.tv_class)
        try:
            ds = cls(root=str(root), download=download, **self.split_kwargs(split))
        except RuntimeError as exc:
            if download:
                raise _missing(self.registry_name, split, root, self.layout, exc) from exc
            raise _missing(self.registry_name, split, root, self.layout) from exc
        except OSError as exc:  # network errors while downloading (URLError is an OSError)
            raise _missing(self.registry_name, split, root, self.layout, exc) from exc
        data, targets = self.arrays(ds)
        images = _from_uint8(data, self.channels_last)
        labels = torch.as_tensor(targets, dtype=torch.int64)
        return images, labels, f"torchvision.datasets.{self.tv_class}(root={str(root)!r})"


_DIGITS = tuple(str(i) for i in range(10))

# Threat models, sources and measurements: docs/threat-models.md. Steps follow Madry et al.'s rule of
# thumb α ≈ 2.5·ε/steps, so the attack can cross the ball from a random start.
CIFAR_THREAT = ThreatModel(8 / 255, 2 / 255, 10, "Madry et al. 2018; Rice et al. 2020")
SVHN_THREAT = ThreatModel(8 / 255, 1 / 255, 10, "Rice et al. 2020 (SVHN: step 1/255)")
MNIST_THREAT = ThreatModel(0.3, 0.01, 40, "Madry et al. 2018 (MNIST: ε 0.3, step 0.01, 40 steps)")
FASHION_MNIST_THREAT = ThreatModel(0.1, 0.025, 10, "ε 0.1, the common Fashion-MNIST choice")
DIGITS_THREAT = ThreatModel(0.1, 0.025, 10, "MNIST-like grey digits at Fashion-MNIST's ε; measured unsaturated")
SHAPES_THREAT = ThreatModel(8 / 255, 2 / 255, 10, "colour 32×32 like CIFAR-10; measured unsaturated")


@register_dataset("cifar10")
class CIFAR10(_TorchvisionSource):
    tv_class, layout, threat_model = "CIFAR10", "cifar-10-batches-py", CIFAR_THREAT
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@register_dataset("cifar100")
class CIFAR100(_TorchvisionSource):
    tv_class, layout, num_classes, threat_model = "CIFAR100", "cifar-100-python", 100, CIFAR_THREAT
    classes = (
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
        "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
        "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
        "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
        "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
        "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
        "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew",
        "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
        "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
        "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
    )


@register_dataset("svhn")
class SVHN(_TorchvisionSource):
    tv_class, layout, channels_last, classes = "SVHN", "train_32x32.mat", False, _DIGITS
    threat_model = SVHN_THREAT

    def split_kwargs(self, split: str) -> dict[str, Any]:
        return {"split": split}

    def arrays(self, ds: Any) -> tuple[Any, Any]:
        return ds.data, ds.labels


@register_dataset("mnist")
class MNIST(_TorchvisionSource):
    tv_class, layout, in_chans, image_size, classes = "MNIST", "MNIST/raw", 1, 28, _DIGITS
    threat_model = MNIST_THREAT


@register_dataset("fashion-mnist")
class FashionMNIST(_TorchvisionSource):
    """Fashion-MNIST through torchvision; offline, Debian's IDX files are unpacked into the root first."""

    tv_class, layout, in_chans, image_size = "FashionMNIST", "FashionMNIST/raw", 1, 28
    threat_model = FASHION_MNIST_THREAT
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
    classes += ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    files += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def _present(self, root: Path) -> bool:
        return all((root / self.layout / f).is_file() for f in self.files)

    def root(self, data_dir: Path | None, download: bool) -> Path:
        root = super().root(data_dir, download)
        debian = DEBIAN_FASHION_MNIST
        if download or self._present(root) or not all((debian / f"{f}.gz").is_file() for f in self.files):
            return root
        if not _writable(root / self.layout):
            root = default_data_dir()
            if self._present(root):
                return root
        _gunzip_all(debian, root / self.layout, self.files)
        return root


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _gunzip_all(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """Unpack ``src/NAME.gz`` to ``dst/NAME`` for each name, each through a temp file and ``os.replace``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (dst / name).is_file():
            continue
        atomic_write(dst / name, lambda tmp, name=name: _gunzip(src / f"{name}.gz", tmp))


def _gunzip(gz: Path, out_path: str) -> None:
    with gzip.open(gz, "rb") as inp, open(out_path, "wb") as out:
        shutil.copyfileobj(inp, out, length=1 << 20)


@register_dataset("digits")
class Digits(DatasetSource):
    """scikit-learn's bundled 8×8 digits (1,797 images), a fixed stratified 75/25 split (random_state=0).

    Native size is 8; ``image_size`` (16) is the size used when ``input_size`` is not given.
    """

    in_chans, image_size, classes, offline, threat_model = 1, 16, _DIGITS, True, DIGITS_THREAT

    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        index = list(range(len(bunch.target)))
        train_idx, test_idx = train_test_split(index, test_size=0.25, stratify=bunch.target, random_state=0)
        idx = torch.as_tensor(sorted(train_idx if split == "train" else test_idx))
        images = torch.as_tensor(bunch.images, dtype=torch.float32)[idx].div_(16.0).unsqueeze(1)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)[idx]
        images = resize_images(images, size_hint or self.image_size)
        return images, labels, "sklearn.datasets.load_digits (75/25 stratified split, random_state=0)"


@register_dataset("shapes")
class Shapes(DatasetSource):
    """Procedural colour shapes and textures (``shapes.py``), drawn directly at the requested size.

    Train and test are drawn from different seeds (``2·generation_seed`` and ``2·generation_seed + 1``).
    """

    image_size, classes, offline, threat_model = 32, SHAPE_CLASSES, True, SHAPES_THREAT
    option_keys = ("n_train", "n_test", "generation_seed", "noise")

    def load(
        self,
        split: str,
        *,
        data_dir: Path | None,
        download: bool,
        size_hint: int | None,
        n_train: int = 2000,
        n_test: int = 500,
        generation_seed: int = 0,
        noise: float = 0.03,
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        n = n_train if split == "train" else n_test
        seed = 2 * int(generation_seed) + (split != "train")
        size = size_hint or self.image_size
        images, labels = generate_shapes(n, size=size, seed=seed, noise=noise)
        return images, labels, f"transfer.engine.shapes.generate_shapes(n={n}, size={size}, seed={seed})"
