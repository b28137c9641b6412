"""The registered datasets: ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist`` through
torchvision with the usual ``data_dir`` / ``download``; ``digits`` (scikit-learn's bundled 8×8 digits,
the offline default) and ``shapes`` (procedurally generated colour images, see ``shapes.py``) need no
files at all. Fashion-MNIST is also found offline in Debian's ``/usr/share/datasets/fashion-mnist``.

Each declares its threat model (``docs/threat-models.md``). ``transfer.engine`` imports this module with
the package, so ``create_dataset("digits")`` works whichever engine module was imported.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..threat_model import ThreatModel
from .data import (
    DatasetNotFoundError,
    DatasetSource,
    default_data_dir,
    register_dataset,
    resize_images,
)
from .shapes import SHAPE_CLASSES, generate_shapes

__all__ = [
    "CIFAR_THREAT", "DEBIAN_FASHION_MNIST", "CIFAR10", "CIFAR100", "SVHN", "MNIST", "FashionMNIST", "Digits", "Shapes",
]  # fmt: skip

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
    sizes: tuple[int, int] = (0, 0)  # images in the train and test splits (torchvision's files)

    def split_size(self, split: str) -> int | None:
        return dict(zip(("train", "test"), self.sizes, strict=True)).get(split) or None

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
    tv_class, layout, threat_model, sizes = "CIFAR10", "cifar-10-batches-py", CIFAR_THREAT, (50_000, 10_000)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@register_dataset("cifar100")
class CIFAR100(_TorchvisionSource):
    tv_class, layout, num_classes, threat_model = "CIFAR100", "cifar-100-python", 100, CIFAR_THREAT
    sizes = (50_000, 10_000)
    classes = (
        "apple",
        "aquarium_fish",
        "baby",
        "bear",
        "beaver",
        "bed",
        "bee",
        "beetle",
        "bicycle",
        "bottle",
        "bowl",
        "boy",
        "bridge",
        "bus",
        "butterfly",
        "camel",
        "can",
        "castle",
        "caterpillar",
        "cattle",
        "chair",
        "chimpanzee",
        "clock",
        "cloud",
        "cockroach",
        "couch",
        "crab",
        "crocodile",
        "cup",
        "dinosaur",
        "dolphin",
        "elephant",
        "flatfish",
        "forest",
        "fox",
        "girl",
        "hamster",
        "house",
        "kangaroo",
        "keyboard",
        "lamp",
        "lawn_mower",
        "leopard",
        "lion",
        "lizard",
        "lobster",
        "man",
        "maple_tree",
        "motorcycle",
        "mountain",
        "mouse",
        "mushroom",
        "oak_tree",
        "orange",
        "orchid",
        "otter",
        "palm_tree",
        "pear",
        "pickup_truck",
        "pine_tree",
        "plain",
        "plate",
        "poppy",
        "porcupine",
        "possum",
        "rabbit",
        "raccoon",
        "ray",
        "road",
        "rocket",
        "rose",
        "sea",
        "seal",
        "shark",
        "shrew",
        "skunk",
        "skyscraper",
        "snail",
        "snake",
        "spider",
        "squirrel",
        "streetcar",
        "sunflower",
        "sweet_pepper",
        "table",
        "tank",
        "telephone",
        "television",
        "tiger",
        "tractor",
        "train",
        "trout",
        "tulip",
        "turtle",
        "wardrobe",
        "whale",
        "willow_tree",
        "wolf",
        "woman",
        "worm",
    )


@register_dataset("svhn")
class SVHN(_TorchvisionSource):
    tv_class, layout, channels_last, classes = "SVHN", "train_32x32.mat", False, _DIGITS
    threat_model, sizes = SVHN_THREAT, (73_257, 26_032)

    def split_kwargs(self, split: str) -> dict[str, Any]:
        return {"split": split}

    def arrays(self, ds: Any) -> tuple[Any, Any]:
        return ds.data, ds.labels


@register_dataset("mnist")
class MNIST(_TorchvisionSource):
    tv_class, layout, in_chans, image_size, classes = "MNIST", "MNIST/raw", 1, 28, _DIGITS
    threat_model, sizes = MNIST_THREAT, (60_000, 10_000)


@register_dataset("fashion-mnist")
class FashionMNIST(_TorchvisionSource):
    """Fashion-MNIST through torchvision; offline, Debian's IDX files are unpacked into the root first."""

    tv_class, layout, in_chans, image_size = "FashionMNIST", "FashionMNIST/raw", 1, 28
    threat_model, sizes = FASHION_MNIST_THREAT, (60_000, 10_000)
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

    def split_size(self, split: str) -> int | None:
        return {"train": 1347, "test": 450}.get(split)  # 1,797 images split 75/25

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

    def split_size(self, split: str) -> int | None:
        return {"train": 2000, "test": 500}.get(split)  # load's defaults of n_train, n_test

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
