"""oneDNN's strided 1×1 weight-gradient bug, in plain torch, and the project's workaround (docs/known-issues.md).

    python benchmarks/repro_onednn_1x1.py --raw   # plain nn.Conv2d: dies (SIGSEGV / abort) on affected torch
    python benchmarks/repro_onednn_1x1.py         # with transfer.workarounds: exits 0, gradients checked
    python benchmarks/repro_onednn_1x1.py --cost --width 8   # what the workaround costs an AT step

A ResNet shortcut of a narrow model — a 1×1 convolution with stride 2, channels-last, 8 input channels —
and its weight gradient. Two shapes: 16×16 images with an odd batch (crashes with 2 or more threads; the
crash behind issue 10) and 64×64 images (crashes with any thread count). Each weight gradient is checked
against a float64 reference, since an overrun can also leave a wrong gradient without a crash.
Exit code: 0 when every gradient is right, 1 when one is wrong, or the signal's (e.g. -11) when it dies.

``--cost`` times a PGD-10 adversarial-training step of the engine's ResNet-18 with Sparta (``--width``,
1×16×16 inputs or ``--input-size``, ``--batch`` images, one thread, where the plain kernel survives) with the workaround
against the same model with plain convolutions, interleaved round by round; it prints the medians and
their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time

import torch
from torch import nn

SHAPES = ((61, 16), (64, 64))  # (batch, image side)
IN_CHANNELS, OUT_CHANNELS = 8, 16


def weight_gradient(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    conv.weight.grad = None
    conv(x).backward(grad_out)
    return conv.weight.grad


def at_step_cost(width: int, side: int, batch: int, steps: int, rounds: int) -> int:
    """Median PGD AT step with and without the workaround, one thread, interleaved."""
    from transfer.engine.config import TrainConfig
    from transfer.engine.recipes import create_recipe
    from transfer.engine.training import build_model, resolve_config
    from transfer.workarounds import SubsampledPointwiseConv2d, avoid_onednn_1x1_bug

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = resolve_config(TrainConfig(arch="resnet18", dataset="digits", activation="sparta", width=width,
                                        input_size=side))
    patched, _ = build_model(config, num_classes=10)
    avoid_onednn_1x1_bug(patched, force=True)
    plain = copy.deepcopy(patched)
    for module in plain.modules():
        if type(module) is SubsampledPointwiseConv2d:
            module.__class__ = nn.Conv2d
    models = {"workaround": patched, "plain": plain}
    recipe = create_recipe("pgd", eps=8 / 255, alpha=2 / 255, steps=steps, trades_beta=6.0, fgsm_step=1.25,
                           autocast=contextlib.nullcontext, loss_scale=1.0)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.rand(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step(name: str) -> float:
        model = models[name].to(memory_format=torch.channels_last).train()
        started = time.perf_counter()
        loss, _ = recipe(model, x, y)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - started

    changed = sum(type(m) is SubsampledPointwiseConv2d for m in patched.modules())
    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:
        step(name)  # warm-up
    for r in range(rounds):
        for name in models if r % 2 == 0 else reversed(list(models)):
            times[name].append(step(name))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"ResNet-18 width {width} ({changed} convolution(s) changed), 1x{side}x{side}, batch {batch}, PGD-{steps} "
          f"AT step, 1 thread, median of {rounds}: workaround {median['workaround'] * 1e3:.1f} ms, plain "
          f"{median['plain'] * 1e3:.1f} ms, ratio {median['workaround'] / median['plain']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", action="store_true", help="plain nn.Conv2d, without the project's workaround")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--cost", action="store_true", help="time an AT step with and without the workaround")
    parser.add_argument("--width", type=int, default=8, help="--cost: ResNet-18 base width (default 8)")
    parser.add_argument("--input-size", type=int, default=16, help="--cost: image side (default 16)")
    parser.add_argument("--batch", type=int, default=128, help="--cost: images per step (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="--cost: PGD steps (default 10)")
    parser.add_argument("--rounds", type=int, default=15, help="--cost: timed steps of each (default 15)")
    args = parser.parse_args(argv)
    if args.cost:
        return at_step_cost(args.width, args.input_size, args.batch, args.steps, args.rounds)
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
