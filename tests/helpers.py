"""Builders shared by several test modules (importable because pytest puts tests/ on sys.path)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transfer import Sparta, create_backbone, inject
from transfer.engine.config import TrainConfig


def sparta_model(arch="resnet18", variant="dw", seed=0, width=8, input_size=16):
    """A tiny timm model with Sparta at every site, its parameters moved off the Swish initialisation
    (so that "trained" tensors are distinguishable from fresh ones without training)."""
    torch.manual_seed(seed)
    model = create_backbone(arch, 10, input_size=input_size, width=width)
    inject(model, "sparta", variant=variant)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Sparta):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model


def micro_study_toml(
    name="micro",
    baselines=("relu", "sparta-in-place"),
    recipe="fgsm-rs",
    attacks=("clean", "fgsm"),
    *,
    input_size=8,
    width=4,
    source="resnet18",
    target="resnet18",
    target_dataset="shapes",
    policies=None,
    source_options="",
) -> str:
    """A study TOML small enough for a test: one source on digits (grey, 1 channel), one target (by
    default a ResNet-18 on shapes, colour, 3 channels: its in_chans follows its dataset), 1 epoch at
    width 4 (``width=None``: the model's own) on 8 px images, 20 test images. ``source_options`` are
    extra TOML lines of the source table (e.g. ``variant = "portable"``)."""
    quoted = lambda items: ", ".join(f'"{i}"' for i in items)  # noqa: E731
    policies_line = f"policies = [{quoted(policies)}]\n" if policies else ""
    width_line = f"width = {width}\n" if width is not None else ""
    return f"""
name = "{name}"
seeds = [0]
{policies_line}baselines = [{quoted(baselines)}]

[train]
recipe = "{recipe}"
epochs = 1
batch_size = 16
{width_line}input_size = {input_size}
train_subset = 32
val_subset = 0
device = "cpu"

[eval]
attacks = [{quoted(attacks)}]
n = 20

[[sources]]
arch = "{source}"
dataset = "digits"
{source_options}
[[targets]]
arch = "{target}"
dataset = "{target_dataset}"
"""


# The tiny `sparta train` run every CLI test starts from: ResNet-18 of width 4 on 8 px digits, one epoch.
# Flags are overridden by keyword (``attacks="fgsm"``, ``val_subset=20``); ``None`` drops a flag.
TINY_FLAGS: dict[str, str | None] = {
    "arch": "resnet18", "dataset": "digits", "width": "4", "input_size": "8", "epochs": "1", "batch_size": "32",
    "recipe": None, "eps": None, "alpha": None, "steps": None, "train_subset": "64", "test_subset": "20",
    "val_subset": "0", "attacks": "clean", "device": "cpu",
}  # fmt: skip


def tiny_argv(**flags: object) -> list[str]:
    """``sparta train`` flags of a tiny run (without the ``train`` word), ending in ``--no-progress``."""
    unknown = set(flags) - set(TINY_FLAGS)
    if unknown:
        raise TypeError(f"tiny_argv: unknown flag(s) {sorted(unknown)}")
    argv: list[str] = []
    for name, value in {**TINY_FLAGS, **flags}.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, "--no-progress"]


# The same tiny run as a TrainConfig, for the engine tests that call `train` directly.
TINY_CONFIG: dict[str, object] = dict(
    arch="resnet18", dataset="digits", width=4, input_size=8, epochs=1, batch_size=32,
    train_subset=64, test_subset=20, val_subset=0, eval_attacks=("clean",), device="cpu",
)  # fmt: skip


def tiny_config(**overrides: object) -> TrainConfig:
    """The ``TrainConfig`` of a tiny run: ResNet-18 at width 4 on 8×8 digits, on the CPU, one epoch of 64
    images in batches of 32, no validation, 20 test images evaluated clean (the run of ``tiny_argv``, the
    recipe, threat model and the rest at ``TrainConfig``'s defaults). Fields are overridden by keyword."""
    return TrainConfig(**{**TINY_CONFIG, **overrides})


def sparta_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``sparta ARGV`` in-process: its exit code, stdout and stderr."""
    from transfer.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


STUDY_PLUGIN = '''
import torch
from torch import nn

from transfer import register_backbone
from transfer.engine.data import DatasetSource, register_dataset


@register_backbone("{name}-net")
def net(num_classes, in_chans, input_size, width=4):
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


@register_dataset("{name}-data")
class Bright(DatasetSource):
    """Two classes of 8x8 grey images, dark and bright; no threat model of its own."""

    num_classes, in_chans, image_size, classes, offline = 2, 1, 8, ("dark", "bright"), True

    def load(self, split, *, data_dir, download, size_hint, **options):
        g = torch.Generator().manual_seed(int(split == "test"))
        y = torch.arange(40) % 2
        return (0.4 * torch.rand(40, 1, 8, 8, generator=g) + 0.5 * y.view(-1, 1, 1, 1)), y, "plugin"
'''


def write_plugin(folder: Path, module: str) -> Path:
    """A plugin module ``module`` registering the model ``<module>-net`` and the dataset ``<module>-data``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(STUDY_PLUGIN.format(name=module.replace("_", "-")))
    return path


def write_image_folder(root: Path, n: int = 3) -> Path:
    """An ImageFolder tree of ``n`` random 8×8 grey PNGs per class (two classes) in train/ and test/."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return root
