"""``synthetic:NAME``: random images in the shape of dataset ``NAME``, for rehearsals (``sparta study run
--rehearse``, docs/studies.md).

A ``synthetic:cifar10`` has CIFAR-10's classes, channels, image size and threat model (read from the
registered source's facts, so no file of the real dataset is needed or read) and holds
:data:`TRAIN_PER_CLASS` / :data:`TEST_PER_CLASS` images per class of each split. Each class is a fixed random
low-resolution colour pattern, upsampled to the requested size, plus uniform noise: a model can learn
something, so a rehearsal's attacks have correctly classified images to attack, but every number measured
on it is meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import DatasetSource, dataset_info, register_dataset_scheme

__all__ = ["SCHEME", "TEST_PER_CLASS", "TRAIN_PER_CLASS", "SyntheticSource", "synthetic_name"]

SCHEME = "synthetic"
TRAIN_PER_CLASS = 24  # images per class of the train split (a validation split is held out of it)
TEST_PER_CLASS = 8  # images per class of the test split
_PATTERN_SIDE = 4  # side of each class's random pattern before it is upsampled
_NOISE = 0.25  # half-width of the uniform noise added to every image
_SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


def synthetic_name(dataset: str) -> str:
    """The synthetic stand-in of ``dataset`` (``cifar10`` → ``synthetic:cifar10``; a synthetic name as it is)."""
    return dataset if dataset.partition(":")[0].lower() == SCHEME else f"{SCHEME}:{dataset}"


class SyntheticSource(DatasetSource):
    """Random images of another dataset's classes, channels, size and threat model (module docstring)."""

    offline = True

    def __init__(self, argument: str) -> None:
        if not argument.strip():
            raise ValueError(
                f"dataset '{SCHEME}:' needs the dataset it imitates after the colon, e.g. {SCHEME}:cifar10"
            )
        like = dataset_info(argument)
        self.registry_name = f"{SCHEME}:{argument}"
        self.like = like.name
        self.num_classes, self.in_chans, self.image_size = like.num_classes, like.in_chans, like.image_size
        self.classes, self.threat_model, self.splits = like.classes, like.threat_model, like.splits

    def split_size(self, split: str) -> int | None:
        if split not in self.splits:
            return None
        return self.num_classes * (TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS)

    def load(
        self, split: str, *, data_dir: Path | None, download: bool, size_hint: int | None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        size = size_hint or self.image_size
        patterns = torch.rand(
            self.num_classes, self.in_chans, _PATTERN_SIDE, _PATTERN_SIDE, generator=torch.Generator().manual_seed(0)
        )
        templates = F.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)
        generator = torch.Generator().manual_seed(_SPLIT_SEEDS.get(split, 0))
        per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
        labels = torch.arange(self.num_classes).repeat_interleave(per_class)
        noise = (torch.rand(len(labels), self.in_chans, size, size, generator=generator) - 0.5) * (2 * _NOISE)
        images = (templates[labels] + noise).clamp_(0.0, 1.0)
        origin = (
            f"synthetic images in the shape of {self.like} ({self.in_chans}×{size}×{size}, {self.num_classes} "
            "classes): a rehearsal, no file read"
        )
        return images.contiguous(), labels, origin


@register_dataset_scheme(SCHEME)
def _synthetic(argument: str) -> DatasetSource:
    return SyntheticSource(argument)
