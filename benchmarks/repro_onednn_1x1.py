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
1×16×16 inputs or ``--input-size``, ``--batch`` images, one thread) with the workaround against the same
model with plain convolutions, interleaved round by round; it prints the medians and their ratio. The
plain kernel is not safe at every shape even on one thread (at width 4 its 4-channel shortcut has
crashed with SIGSEGV), so the timing runs in a child process: when the plain model kills it, the
workaround is timed alone and the line reports the crash (``plain crashed (SIGSEGV), ratio n/a``), exit 0
— a crash is this benchmark's result, not its failure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

SHAPES = ((61, 16), (64, 64))  # (batch, image side)
IN_CHANNELS, OUT_CHANNELS = 8, 16


def weight_gradient(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    conv.weight.grad = None
    conv(x).backward(grad_out)
    return conv.weight.grad


def run_in_child(measure: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(measure(), None)`` with ``measure`` run in a forked child (its result JSON-encoded back), or
    ``(None, "SIGSEGV")`` when a signal killed the child. A child that raises is a RuntimeError."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            payload = json.dumps(measure()).encode()
        except BaseException:  # the child must never return into the parent's code
            import traceback

            traceback.print_exc()
            payload, code = b"", 1
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, signal.Signals(os.WTERMSIG(status)).name
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the timing child failed (exit {os.waitstatus_to_exitcode(status)}); see above")
    return json.loads(payload), None


def at_step_cost(width: int, side: int, batch: int, steps: int, rounds: int) -> int:
    """Median PGD AT step with and without the workaround, one thread, interleaved (in a child process;
    the workaround alone when the plain kernel crashes it)."""
    medians, crash = run_in_child(lambda: _time_steps(width, side, batch, steps, rounds, ("workaround", "plain")))
    if crash is not None:
        medians = _time_steps(width, side, batch, steps, rounds, ("workaround",))
        plain = f"plain crashed ({crash}), ratio n/a"
    else:
        plain = f"plain {medians['plain'] * 1e3:.1f} ms, ratio {medians['workaround'] / medians['plain']:.3f}"
    print(
        f"ResNet-18 width {width} ({medians['changed']} convolution(s) changed), 1x{side}x{side}, batch {batch}, "
        f"PGD-{steps} AT step, 1 thread, median of {rounds}: workaround {medians['workaround'] * 1e3:.1f} ms, "
        f"{plain}"
    )
    return 0


def _time_steps(width: int, side: int, batch: int, steps: int, rounds: int, variants: tuple[str, ...]) -> dict:
    """Median seconds of an AT step of each of ``variants`` ("workaround", "plain"), interleaved round by
    round, and the number of convolutions the workaround changed (``"changed"``)."""
    from transfer.engine.config import TrainConfig
    from transfer.engine.recipes import create_recipe
    from transfer.engine.training import build_model, resolve_config
    from transfer.workarounds import SubsampledPointwiseConv2d, avoid_onednn_1x1_bug

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = resolve_config(
        TrainConfig(arch="resnet18", dataset="digits", activation="sparta", width=width, input_size=side)
    )
    patched, _ = build_model(config, num_classes=10)
    avoid_onednn_1x1_bug(patched, force=True)
    plain = copy.deepcopy(patched)
    for module in plain.modules():
        if type(module) is SubsampledPointwiseConv2d:
            module.__class__ = nn.Conv2d
    models = {name: model for name, model in (("workaround", patched), ("plain", plain)) if name in variants}
    recipe = create_recipe(
        "pgd",
        eps=8 / 255,
        alpha=2 / 255,
        steps=steps,
        trades_beta=6.0,
        fgsm_step=1.25,
        autocast=contextlib.nullcontext,
        loss_scale=1.0,
    )
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

    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:
        step(name)  # warm-up
    for r in range(rounds):
        for name in models if r % 2 == 0 else reversed(list(models)):
            times[name].append(step(name))
    changed = sum(type(m) is SubsampledPointwiseConv2d for m in patched.modules())
    return {"changed": changed, **{name: statistics.median(t) for name, t in times.items()}}


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
