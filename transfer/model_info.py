"""What Sparta records on a model: one dataclass, attached as ``model.sparta_info`` the way timm attaches
``model.pretrained_cfg``, instead of loose attributes on the timm module.

``create_backbone`` attaches it with the input shape and stem it built the model for; ``inject`` adds
the sites it found and its report. A model built elsewhere (any ``nn.Module``) has none until ``inject``
gives it one.

Names: ``input_shape`` is the (C, H, W) a model takes, without the batch; ``input_size`` (in
``create_backbone``, ``TrainConfig``, the CLIs and study configs) is the side of the square image in
pixels, so ``input_shape == (in_chans, input_size, input_size)``.

``model_device``/``model_dtype`` are the one place that reads where a model lives, and
:func:`modes_restored`/:func:`eval_mode` the one way the project changes a model's train/eval mode for a
while: they give every submodule its own flag back afterwards. ``model.train(was_training)`` would not:
it sets every submodule to the root's flag, so a deliberately frozen BatchNorm or backbone (kept in eval
mode inside a training model) would come back training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .inject import InjectionReport
    from .sites import Site

__all__ = ["SpartaInfo", "sparta_info", "model_device", "model_dtype", "modes_restored", "eval_mode"]


@dataclass(frozen=True)
class SpartaInfo:
    """Sparta's record of one model. Frozen: writers attach an updated copy (``dataclasses.replace``)."""

    input_shape: tuple[int, int, int] | None = None  # (C, H, W) without the batch; None: not known
    stem: str = ""  # "cifar": small-input stem put in by create_backbone; "timm": timm's own; "": not built there
    sites: list[Site] | None = None  # the activation sites the last inject found, in forward order
    injection: InjectionReport | None = None  # what the last inject did
    resets_call_counters: bool = False  # a forward pre-hook resets every PerCallActivation's call counter


def sparta_info(model: nn.Module) -> SpartaInfo:
    """``model.sparta_info``, or an empty record for a model that has none (nothing is attached)."""
    info = getattr(model, "sparta_info", None)
    return info if isinstance(info, SpartaInfo) else SpartaInfo()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first parameter if it is floating, else float32."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model's modes may change at will; afterwards every submodule has its own
    ``training`` flag back (not the root's: see the module docstring)."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in saved:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block, each submodule's own mode restored afterwards."""
    with modes_restored(model):
        model.eval()
        yield model
