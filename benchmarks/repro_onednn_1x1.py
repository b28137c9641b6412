"""oneDNN's strided 1×1 weight-gradient bug, in plain torch, and the project's workaround (docs/known-issues.md).

    python benchmarks/repro_onednn_1x1.py --raw   # plain nn.Conv2d: dies (SIGSEGV / abort) on affected torch
    python benchmarks/repro_onednn_1x1.py         # with transfer.workarounds: exits 0, gradients checked

A ResNet shortcut of a narrow model — a 1×1 convolution with stride 2, channels-last, 8 input channels —
and its weight gradient. Two shapes: 16×16 images with an odd batch (crashes with 2 or more threads; the
crash behind issue 10) and 64×64 images (crashes with any thread count). Each weight gradient is checked
against a float64 reference, since an overrun can also leave a wrong gradient without a crash.
Exit code: 0 when every gradient is right, 1 when one is wrong, or the signal's (e.g. -11) when it dies.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

SHAPES = ((61, 16), (64, 64))  # (batch, image side)
IN_CHANNELS, OUT_CHANNELS = 8, 16


def weight_gradient(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    conv.weight.grad = None
    conv(x).backward(grad_out)
    return conv.weight.grad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", action="store_true", help="plain nn.Conv2d, without the project's workaround")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = nn.Conv2d(IN_CHANNELS, OUT_CHANNELS, kernel_size=1, stride=2, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    if not args.raw:
        from transfer.workarounds import avoid_onednn_1x1_bug

        avoid_onednn_1x1_bug(conv, force=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {type(conv).__name__}", flush=True)
    for batch, side in SHAPES:
        x = torch.randn(batch, IN_CHANNELS, side, side).contiguous(memory_format=torch.channels_last)
        grad_out = torch.randn(batch, OUT_CHANNELS, side // 2, side // 2)
        reference = torch.einsum("nohw,nihw->oi", grad_out.double(), x[:, :, ::2, ::2].double())
        for _ in range(5):
            grad = weight_gradient(conv, x, grad_out.contiguous(memory_format=torch.channels_last))
            error = float((grad.double().flatten(1) - reference).abs().max() / reference.abs().max())
            if error > 1e-4:
                print(f"batch {batch}, {side}x{side}: wrong weight gradient (relative error {error:.2g})")
                return 1
        print(f"batch {batch}, {side}x{side}: weight gradient right", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
