"""Workarounds for bugs below torch, each limited to the torch releases known to carry the bug.

**oneDNN's strided 1×1 weight gradient** (``docs/known-issues.md``). On x86 CPUs, the weight
gradient of a 1×1 convolution with stride > 1, a channels-last input and fewer than 16 input
channels per group writes past its scratch buffer (oneDNN's ``jit_1x1`` ``backward_weights``,
reduce-to-unit-stride path; AVX-512 and AVX2 alike). What follows depends on what lies there:
SIGSEGV, ``double free or corruption``, a hang, or silently wrong weight gradients. ResNet shortcuts
of narrow models (``width`` < 16) are such convolutions: at 16×16 inputs, training crashed with two
threads and an odd last batch; from 64×64 on, with any thread count. :class:`SubsampledPointwiseConv2d`
takes that weight gradient as "every stride-th pixel, then a stride-1 1×1 conv" — the subsampling that
oneDNN's broken path does internally — and leaves the forward pass and the input gradient to oneDNN.
Same parameters, same state dict, same outputs and gradients, same speed.

:func:`make_safe` applies every workaround here to a model. ``create_backbone`` and ``inject`` call it on
the models they build or change, so a user's own training loop over such a model needs nothing; a model
built elsewhere (plain timm, the user's own code) gets it with ``transfer.make_safe(model)``.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ONEDNN_1X1_AFFECTED_SINCE",
    "ONEDNN_1X1_FIXED_IN",
    "SubsampledPointwiseConv2d",
    "avoid_onednn_1x1_bug",
    "make_safe",
    "onednn_1x1_bug_affects",
    "torch_release",
]

# From the project's oldest torch (2.4, oneDNN 3.4) on: upstream finds the faulty statements unchanged across
# oneDNN 3.x; measured here on torch 2.14.1 (oneDNN 3.12.0) with benchmarks/repro_onednn_1x1.py --raw.
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


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _SubsampledWeightGradient(torch.autograd.Function):
    """A strided 1×1 convolution whose weight gradient is taken on the subsampled input at stride 1.

    The forward pass and the input gradient are oneDNN's own strided kernels (unaffected, so they cost the
    same as before); only the weight gradient avoids the reduce-to-unit-stride path, by doing its
    subsampling itself (a copy of 1/stride² of the input, the one that path makes internally).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], groups: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.groups, ctx.has_bias = stride, groups, bias is not None
        ctx.dtypes = x.dtype, weight.dtype, bias.dtype if bias is not None else None
        return F.conv2d(x, weight, bias, stride, 0, 1, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Under autocast the forward convolved in grad_out's dtype (bf16) while x or the fp32 master weight
        # were saved in theirs: convolution_backward takes one dtype, and each gradient goes back in its own.
        x, weight = (t.to(grad_out.dtype) for t in ctx.saved_tensors)
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        conv_backward = torch.ops.aten.convolution_backward
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = conv_backward(
                grad_out,
                x,
                weight,
                None,
                list(ctx.stride),
                [0, 0],
                [1, 1],
                False,
                [0, 0],
                ctx.groups,
                [True, False, False],
            )[0].to(x_dtype)
        if need_w or need_b:
            sh, sw = ctx.stride
            sub = x[:, :, ::sh, ::sw].contiguous(memory_format=_layout(x))
            _, grad_w, grad_b = conv_backward(
                grad_out.contiguous(memory_format=_layout(sub)),
                sub,
                weight,
                bias_sizes,
                [1, 1],
                [0, 0],
                [1, 1],
                False,
                [0, 0],
                ctx.groups,
                [False, need_w, need_b and ctx.has_bias],
            )
            grad_w = grad_w.to(weight_dtype) if grad_w is not None else None
            grad_b = grad_b.to(bias_dtype) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1×1 ``Conv2d`` with stride > 1 whose weight gradient, on the CPU, is computed from the subsampled
    input at stride 1, away from oneDNN's faulty strided 1×1 weight-gradient kernel. Same function, same
    gradients; the forward pass and input gradient are the plain ones (so the attack costs the same).

    Only :func:`avoid_onednn_1x1_bug` makes these (by re-classing plain ``nn.Conv2d`` modules in place,
    so hooks, parameter identity and state-dict keys stay). Off the CPU, or when no parameter of the
    layer needs a gradient, it is a plain strided conv.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        trains = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
        if input.device.type != "cpu" or not trains:
            return super()._conv_forward(input, weight, bias)
        return _SubsampledWeightGradient.apply(input, weight, bias, self.stride, self.groups)


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


def make_safe(model: nn.Module) -> int:
    """Apply every workaround of this module that this torch and machine need to ``model``, in place
    (today :func:`avoid_onednn_1x1_bug`). Parameters, state-dict keys and outputs stay; calling it again
    changes nothing. Returns how many layers it changed (0 where nothing is affected)."""
    return avoid_onednn_1x1_bug(model)
