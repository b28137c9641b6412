"""A researcher's own images as datasets, named where a dataset name goes: ``folder:PATH`` and ``npz:PATH``.

- ``folder:PATH`` is torchvision's ``ImageFolder`` layout: ``PATH/train/<class>/…`` and
  ``PATH/test/<class>/…``, optionally ``PATH/val/<class>/…`` (the validation split then comes from
  there instead of being held out of train). Class names are the folder names under ``train`` (sorted;
  labels are their indices); ``test``/``val`` may lack classes but not add any. Images are found
  recursively by extension (:data:`IMAGE_EXTENSIONS`); channels (greyscale ``1``/``L`` → 1, ``RGB``/``P``
  → 3) and size are read from the images, and every image must have the same square size and channels.
- ``npz:PATH`` is one ``.npz`` file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``
  (optionally ``x_val``/``y_val`` and ``classes``, an array of names). Images are uint8 ``[N, H, W]`` or
  ``[N, H, W, C]`` (C 1 or 3), or floats in [0, 1]; labels integers in [0, number of classes). It is read
  with ``allow_pickle=False``: nothing in it is ever unpickled.

Neither declares a threat model: a run on one names its ``eps`` (``TrainConfig.with_threat_model``).

**Fingerprints** (``DatasetInfo.fingerprint``, recorded in a run's config): for a folder, a sha256 over
every image's path relative to ``PATH``, size in bytes and modification time (a ``stat`` per file, no
reads: an edited, added, removed or renamed image changes it; a copy that keeps mtimes, ``cp -p`` or
``rsync -a``, keeps it); for an npz file, the sha256 of its bytes (its contents, wherever it lies).
What a fingerprint describes is scanned once per process and kept (``dataset_info`` is asked often).
"""

from __future__ import annotations

import hashlib
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DatasetInfo, DatasetNotFoundError, DatasetSource, register_dataset_scheme

__all__ = ["IMAGE_EXTENSIONS", "FolderSource", "NpzSource"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3}  # PIL image mode → channels ("P": palette, read as RGB)
_SPLITS = ("train", "val", "test")
_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class _Facts:
    """What a scan of the files found: the parts of a ``DatasetInfo`` that depend on them."""

    classes: tuple[str, ...]
    in_chans: int
    image_size: int
    splits: tuple[str, ...]
    fingerprint: str


class _FileSource(DatasetSource):
    """A dataset that is a path: ``scheme:PATH``. Facts are scanned once per fingerprint."""

    scheme = ""
    offline = True
    _facts_cache: dict[tuple[str, str, str], Any] = {}  # (scheme, resolved path, fingerprint) → scan()

    def __init__(self, argument: str) -> None:
        if not argument.strip():
            raise ValueError(f"dataset '{self.scheme}:' needs a path after the colon, e.g. {self.scheme}:data/mine")
        self.registry_name = f"{self.scheme}:{argument}"
        self.path = Path(argument).expanduser()

    @abstractmethod
    def fingerprint(self) -> str:
        """The sha256 that identifies the files' current state (module docstring)."""

    @abstractmethod
    def scan(self, fingerprint: str) -> tuple[_Facts, Any]:
        """Read and check the files: their facts, and whatever ``load`` needs from the scan."""

    def _scanned(self) -> tuple[_Facts, Any]:
        fingerprint = self.fingerprint()
        key = (self.scheme, str(self.path.resolve()), fingerprint)
        if key not in self._facts_cache:
            self._facts_cache[key] = self.scan(fingerprint)
        return self._facts_cache[key]

    def info(self) -> DatasetInfo:
        facts, _ = self._scanned()
        return DatasetInfo(
            self.registry_name,
            len(facts.classes),
            facts.in_chans,
            facts.image_size,
            facts.classes,
            offline=True,
            fingerprint=facts.fingerprint,
            splits=facts.splits,
        )

    def _error(self, what: str) -> ValueError:
        return ValueError(f"dataset {self.registry_name}: {what}")


@register_dataset_scheme("folder")
class FolderSource(_FileSource):
    """``folder:PATH``: an ``ImageFolder`` tree (module docstring)."""

    scheme = "folder"

    def _image_files(self) -> dict[str, list[tuple[str, Path]]]:
        """split → sorted (class folder, image file) pairs of every split present; train and test required."""
        layout = "PATH/train/<class>/<image> and PATH/test/<class>/<image> (optional PATH/val/)"
        if not self.path.is_dir():
            raise DatasetNotFoundError(
                f"dataset {self.registry_name}: no such directory {self.path}; a folder dataset is laid out as {layout}"
            )
        found: dict[str, list[tuple[str, Path]]] = {}
        for split in _SPLITS:
            split_dir = self.path / split
            if not split_dir.is_dir():
                if split != "val":
                    raise DatasetNotFoundError(
                        f"dataset {self.registry_name}: {split_dir} is missing; a folder "
                        f"dataset is laid out as {layout}"
                    )
                continue
            found[split] = [(cls, f) for cls in _visible_dirs(split_dir) for f in _images_under(split_dir / cls)]
        return found

    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"sparta folder dataset/1\n")
        for split, files in self._image_files().items():
            for _, f in files:
                st = f.stat()
                digest.update(f"{f.relative_to(self.path).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            digest.update(f"end of {split}\n".encode())
        return digest.hexdigest()

    def scan(self, fingerprint: str) -> tuple[_Facts, dict[str, list[tuple[Path, int]]]]:
        from PIL import Image

        files = self._image_files()
        classes = tuple(_visible_dirs(self.path / "train"))
        if not classes:
            raise self._error(f"{self.path / 'train'} holds no class folders (train/<class>/<images>)")
        with_images = {cls for cls, _ in files["train"]}
        empty = [c for c in classes if c not in with_images]
        if empty:
            raise self._error(
                f"class folder(s) {empty} under {self.path / 'train'} hold no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        for split in ("val", "test"):
            extra = sorted({cls for cls, _ in files.get(split, [])} - set(classes))
            if extra:
                raise self._error(
                    f"{split}/ has class folder(s) {extra} that train/ lacks: its labels would mean "
                    "nothing to the model; add them to train/ or remove them"
                )
        if not files["test"]:
            raise self._error(f"{self.path / 'test'} holds no images")
        label = {c: i for i, c in enumerate(classes)}
        first: tuple[Path, int, tuple[int, int]] | None = None
        for _, f in (pair for split_files in files.values() for pair in split_files):
            try:
                with Image.open(f) as im:
                    mode, size = im.mode, im.size
            except (OSError, ValueError) as exc:
                raise self._error(f"{f} is not a readable image ({exc})") from None
            if mode not in _MODE_CHANNELS:
                raise self._error(f"{f} has image mode {mode!r}; use greyscale (L) or RGB images")
            if first is None:
                first = (f, _MODE_CHANNELS[mode], size)
            elif (_MODE_CHANNELS[mode], size) != first[1:]:
                raise self._error(
                    f"images differ: {first[0]} is {_shape(first[2], first[1])}, {f} is "
                    f"{_shape(size, _MODE_CHANNELS[mode])}; every image of a dataset must have the "
                    "same size and channels: convert them first"
                )
        assert first is not None
        (width, height), chans = first[2], first[1]
        if width != height:
            raise self._error(
                f"images are {_shape(first[2], chans)}; the models here take square images: crop or "
                "pad them to a square first"
            )
        labelled = {split: [(f, label[cls]) for cls, f in pairs] for split, pairs in files.items()}
        splits = tuple(s for s in _SPLITS if s in files)
        return _Facts(classes, chans, width, splits, fingerprint), labelled

    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        from PIL import Image

        facts, labelled = self._scanned()
        mode = "L" if facts.in_chans == 1 else "RGB"
        pairs = labelled[split]
        if not pairs:
            raise self._error(f"{self.path / split} holds no images")
        arrays = []
        for f, _ in pairs:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
        images = _to_tensor(np.stack(arrays))
        labels = torch.tensor([y for _, y in pairs], dtype=torch.int64)
        return images, labels, f"ImageFolder {self.path / split}"


def _visible_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _images_under(directory: Path) -> list[Path]:
    """Image files below ``directory`` (recursively, symlinked folders followed, hidden names skipped), sorted."""
    found = []
    for root, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _shape(size: tuple[int, int], chans: int) -> str:
    return f"{size[0]}×{size[1]} with {chans} channel{'s' if chans > 1 else ''}"


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 or float [0, 1] images [N, H, W] or [N, H, W, C] → float32 [N, C, H, W] in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    t = t.permute(0, 3, 1, 2)
    return (t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()).contiguous()


@register_dataset_scheme("npz")
class NpzSource(_FileSource):
    """``npz:PATH``: arrays in one ``.npz`` file (module docstring)."""

    scheme = "npz"
    _digests: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) → sha256 of the bytes

    def fingerprint(self) -> str:
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"dataset {self.registry_name}: no such file {self.path}; an npz dataset is "
                f"one .npz file with arrays {', '.join(_NPZ_REQUIRED)}"
            )
        st = self.path.stat()
        key = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._digests[key] = digest.hexdigest()
        return self._digests[key]

    def _arrays(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise self._error(
                    "an array holds Python objects, which are never unpickled; store numeric "
                    "arrays (and classes as strings)"
                ) from None
            raise self._error(f"not a readable .npz file ({exc})") from None
        except (OSError, EOFError) as exc:
            raise self._error(f"not a readable .npz file ({exc})") from None

    def scan(self, fingerprint: str) -> tuple[_Facts, None]:
        arrays = self._arrays()
        missing = [k for k in _NPZ_REQUIRED if k not in arrays]
        if ("x_val" in arrays) != ("y_val" in arrays):
            missing.append("y_val" if "x_val" in arrays else "x_val")
        if missing:
            raise self._error(
                f"arrays {missing} missing; it needs {', '.join(_NPZ_REQUIRED)} "
                "(optionally x_val and y_val, and classes)"
            )
        splits = tuple(s for s in _SPLITS if f"x_{s}" in arrays)
        shapes = {s: self._image_shape(s, arrays[f"x_{s}"]) for s in splits}
        if len(set(shapes.values())) > 1:
            raise self._error(f"the splits' images differ in shape {shapes} (H, W, C); they must agree")
        labels = {s: self._labels(s, arrays[f"y_{s}"], len(arrays[f"x_{s}"])) for s in splits}
        top = max(int(y.max()) for y in labels.values() if y.size)
        if "classes" in arrays:
            names = arrays["classes"]
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise self._error(f"classes must be a 1-D array of names (strings), got {names.dtype} {names.shape}")
            classes = tuple(str(n) for n in names)
            if top >= len(classes):
                raise self._error(
                    f"a label is {top}, but classes names {len(classes)} classes (labels 0 to {len(classes) - 1})"
                )
        else:
            classes = tuple(str(i) for i in range(top + 1))
        height, width, chans = shapes["train"]
        if height != width:
            raise self._error(f"images are {height}×{width} (H×W); the models here take square images")
        return _Facts(classes, chans, height, splits, fingerprint), None

    def _image_shape(self, split: str, x: np.ndarray) -> tuple[int, int, int]:
        key = f"x_{split}"
        if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
            raise self._error(
                f"{key} has shape {x.shape}, channels first; store images channels last, "
                "[N, H, W, C]: x.transpose(0, 2, 3, 1)"
            )
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)) or len(x) == 0:
            raise self._error(f"{key} has shape {x.shape}; images are [N, H, W] or [N, H, W, C] with C 1 or 3, N > 0")
        if x.dtype == np.uint8:
            pass
        elif x.dtype.kind == "f":
            if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise self._error(
                    f"{key} is {x.dtype} with values outside [0, 1] (min {np.nanmin(x):g}, max "
                    f"{np.nanmax(x):g}); floats must be pixels in [0, 1], or store uint8 0-255"
                )
        else:
            raise self._error(f"{key} is {x.dtype}; images are uint8 (0-255) or floats in [0, 1]")
        return int(x.shape[1]), int(x.shape[2]), int(x.shape[3]) if x.ndim == 4 else 1

    def _labels(self, split: str, y: np.ndarray, n: int) -> np.ndarray:
        key = f"y_{split}"
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != n:
            raise self._error(f"{key} must be integer class indices of shape ({n},), got {y.dtype} {y.shape}")
        if y.size and int(y.min()) < 0:
            raise self._error(f"{key} holds a negative label ({int(y.min())}); labels are 0 to classes - 1")
        return y

    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        self._scanned()  # validated, so the arrays below are what the checks saw
        arrays = self._arrays()
        images = _to_tensor(arrays[f"x_{split}"])
        labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
        return images, labels, f"{self.path} (x_{split}, y_{split})"
