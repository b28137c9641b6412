"""Workarounds for bugs below torch, each limited to the torch releases known to carry the bug.

**oneDNN's strided 1×1 weight gradient** (``docs/known-issues.md``). On x86 CPUs, the weight
gradient of a 1×1 convolution with stride > 1, a channels-last input and fewer than 16 input
channels per group writes past its scratch buffer (oneDNN's ``jit_1x1`` ``backward_weights``,
reduce-to-unit-stride path; AVX-512 and AVX2 alike). What follows depends on what lies there:
SIGSEGV, ``double free or corruption``, a hang, or silently wrong weight gradients. ResNet shortcuts
of narrow models (``width`` < 16) are such convolutions, so tiny-model training crashed with two
threads. :class:`SubsampledPointwiseConv2d` computes the same convolution as "take every stride-th
pixel, then a stride-1 1×1 conv" — which is what oneDNN's own path does internally — so oneDNN never
takes the broken path. Same parameters, same state dict, same outputs and gradients.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ONEDNN_1X1_AFFECTED_SINCE",
    "ONEDNN_1X1_FIXED_IN",
    "SubsampledPointwiseConv2d",
    "avoid_onednn_1x1_bug",
    "onednn_1x1_bug_affects",
    "torch_release",
]

# The first torch release the project supports (2.4, oneDNN 3.4) already has the faulty indexing, and
# it is unchanged up to torch 2.14 (oneDNN 3.12.0, measured here with benchmarks/repro_onednn_1x1.py).
ONEDNN_1X1_AFFECTED_SINCE = (2, 4)
# The first torch release whose oneDNN has the fix (uxlfoundation/oneDNN#6035). None: no release has it
# yet, so every release from ONEDNN_1X1_AFFECTED_SINCE on is treated as affected. Once a release runs
# benchmarks/repro_onednn_1x1.py --raw cleanly, put its (major, minor) here and the workaround switches off.
ONEDNN_1X1_FIXED_IN: tuple[int, int] | None = None
# oneDNN's widest fp32 channel block (AVX-512: 16; AVX2: 8): fewer input channels per group are affected.
_CHANNEL_BLOCK = 16


def torch_release(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of a torch version string (``2.14.1+cu130``, ``2.15.0.dev20260101`` …)."""
    major, minor = (version or torch.__version__).split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def onednn_1x1_bug_affects(version: str | None = None) -> bool:
    """Whether torch ``version`` (default: the one imported) runs the faulty oneDNN kernel on this machine."""
    release = torch_release(version)
    fixed = ONEDNN_1X1_FIXED_IN is not None and release >= ONEDNN_1X1_FIXED_IN
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return release >= ONEDNN_1X1_AFFECTED_SINCE and not fixed and x86 and torch.backends.mkldnn.is_available()


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1×1 ``Conv2d`` with stride > 1 that, on the CPU, takes every stride-th pixel and convolves with
    stride 1: the same function, computed without oneDNN's faulty strided 1×1 weight gradient.

    Only :func:`avoid_onednn_1x1_bug` makes these (by re-classing plain ``nn.Conv2d`` modules in place,
    so hooks, parameter identity and state-dict keys stay). Off the CPU it is a plain strided conv.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.device.type != "cpu":
            return super()._conv_forward(input, weight, bias)
        sh, sw = self.stride
        return F.conv2d(input[:, :, ::sh, ::sw], weight, bias, 1, 0, self.dilation, self.groups)


def _is_affected_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.padding == (0, 0)
        and module.stride != (1, 1)
        and module.in_channels // module.groups < _CHANNEL_BLOCK
    )


def avoid_onednn_1x1_bug(model: nn.Module, force: bool = False) -> int:
    """Re-class ``model``'s affected convolutions (1×1, stride > 1, no padding, < 16 input channels per
    group) as :class:`SubsampledPointwiseConv2d`, where this torch carries the bug (or with ``force``).
    Returns how many were changed; 0 on unaffected torch releases and machines."""
    if not (force or onednn_1x1_bug_affects()):
        return 0
    changed = 0
    for module in model.modules():
        if _is_affected_conv(module):
            module.__class__ = SubsampledPointwiseConv2d
            changed += 1
    return changed
