"""What adversarial training costs in arithmetic: the FLOPs of a model's passes over one image, counted by
torch's ``FlopCounterMode`` (convolutions and matmuls; a grouped convolution's weight gradient corrected),
and the data-sheet bf16 peaks of GPUs, which bound any rate from above. Read by ``sparta study plan
--estimate`` (``studies/estimate.py``) and ``benchmarks/bench_training.py``.

An *image-step* is one forward-backward pass of one image. PGD-AT with K steps costs K attack passes
(forward and input gradient, weights frozen: :attr:`PassFlops.attack`) and one training pass (forward and
full backward: :attr:`PassFlops.training`) per image and epoch: K + 1 image-steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model_info import modes_restored
from .attacks import attack_mode

__all__ = ["BF16_PEAK_TFLOPS", "DEFAULT_PEAK_TFLOPS", "PassFlops", "bf16_peak_tflops", "pass_flops"]

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment, most specific first
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.6, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
}  # fmt: skip
DEFAULT_PEAK_TFLOPS = BF16_PEAK_TFLOPS["H100"]  # an H100/H200 SXM: the GPU a paper-scale study is rented on
_BATCH = 2  # images per counted pass (BatchNorm in train mode needs more than one value per channel)


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one image through a model: ``forward`` only, an ``attack`` pass (forward and input gradient,
    weights frozen) and a ``training`` pass (forward and backward to every trainable weight)."""

    forward: float
    attack: float
    training: float

    def at_image(self, steps: int) -> float:
        """One adversarial-training image with a ``steps``-step attack: ``steps`` attack passes and one
        training pass."""
        return steps * self.attack + self.training


def pass_flops(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> PassFlops:
    """Count :class:`PassFlops` of ``model`` (on the CPU) at ``input_shape`` (C, H, W), one pass of a batch
    of two at a time. The model's modes and ``requires_grad`` flags are as they were afterwards and its
    gradients cleared, but its BatchNorm statistics have moved: count on a model built for counting. The
    passes are counted with ``backward()``: FlopCounterMode cannot follow ``autograd.grad`` with respect to
    a leaf, which the attacks take."""
    from torch.utils.flop_counter import FlopCounterMode

    def counter() -> FlopCounterMode:
        return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward})

    x = torch.rand(_BATCH, *input_shape)
    y = torch.arange(_BATCH) % num_classes
    with modes_restored(model):
        model.eval()
        with counter() as forward, torch.no_grad():
            model(x)
        with counter() as attack, attack_mode(model, "eval"):
            F.cross_entropy(model(x.clone().requires_grad_(True)), y, reduction="sum").backward()
        model.train()
        with counter() as training:
            F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    counts = (forward, attack, training)
    return PassFlops(*(mode.get_total_flops() / _BATCH for mode in counts))


def _conv_backward(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """torch's count of a convolution's backward, with the weight gradient of a grouped convolution divided by
    its groups: torch counts it as if every input channel met every output channel, which makes a depthwise
    conv's weight gradient (Sparta's gate) C times its cost and a Sparta training pass look a third dearer."""
    from torch.utils.flop_counter import conv_backward_flop

    head, groups, mask, tail = args[:9], args[9], args[10], args[11:]
    grad_input = conv_backward_flop(*head, groups, [mask[0], False, False], *tail, out_val=out_val, **kwargs)
    grad_weight = conv_backward_flop(*head, groups, [False, mask[1], False], *tail, out_val=out_val, **kwargs)
    return grad_input + grad_weight // groups


_conv_backward._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes the arguments as they are


def bf16_peak_tflops(device: str, given: float | None) -> float | None:
    """``given`` (``--peak-tflops``), else the data-sheet peak of a known CUDA ``device``; None when neither."""
    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS.items() if fragment in name), None)
