"""Adversarial-training throughput: our PGD-AT step against the loop public AT repos use, our PGD against
the official AutoAttack's APGD-CE at the same iteration count, Sparta (dw) against ReLU, frozen against
trainable Sparta, and (``--compile``) eager against ``torch.compile``-d AT steps.

    python benchmarks/bench_training.py                  # ResNet-18, width 16, 3×32×32, batch 64, PGD-10
    python benchmarks/bench_training.py --only activations --rounds 15     # ReLU vs Sparta AT steps only
    python benchmarks/bench_training.py --device cuda --width 64 --batch 512 --compile --only activations

All ratios come from one run, with the variants interleaved round by round (so a machine shared with other
work slows them alike) and the median time per step taken over rounds. Images/s counts training images
(each costing ``steps`` attack forward/backward passes plus one training step). On CUDA the engine's AT
steps run under bf16 autocast (``--amp``), channels-last, with the data resident on the GPU. The setup line
also gives the FLOPs of one AT image (convolutions and matmuls, counted on the CPU) and, where the
accelerator's peak is known (``--peak-tflops``), the images/s that peak would allow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer import create_backbone, inject, param_groups  # noqa: E402
from transfer.engine.attacks import attack_mode, create_attack, projected_gradient_ascent, random_start  # noqa: E402
from transfer.engine.allocator import retain_freed_memory  # noqa: E402
from transfer.engine.recipes import create_recipe  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment, most specific first
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.6, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}

EPS, ALPHA = 8 / 255, 2 / 255


def build(activation: str, args: argparse.Namespace, channels_last: bool, freeze: bool = False, **config):
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=args.input_size, width=args.width)
    inject(model, activation, freeze=freeze, **config)
    model = model.to(args.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)


def reference_at_step(model, opt, x, y, steps: int) -> None:
    """PGD-AT as public repos write it (e.g. Rice et al.'s ``attack_pgd``): model in train mode for the
    attack, ``loss.backward()`` through the whole model at every step (parameter grads accumulate and are
    zeroed before the update), a ``delta`` leaf with ``.grad``."""
    model.train()
    delta = torch.zeros_like(x).uniform_(-EPS, EPS)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        d = (delta + ALPHA * grad.sign()).clamp(-EPS, EPS)
        delta.data = (x + d).clamp(0, 1) - x
        delta.grad.zero_()
    opt.zero_grad()
    loss = F.cross_entropy(model(x + delta.detach()), y)
    loss.backward()
    opt.step()


def our_at_step(recipe) -> Callable:
    def step(model, opt, x, y, steps: int) -> None:
        model.train()
        loss, _ = recipe(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def autocast_for(device: str, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    """What the engine wraps forward passes in: bf16 autocast on CUDA when asked, nothing otherwise."""
    if amp == "bf16" and device.startswith("cuda"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def flops_per_at_image(activation: str, args: argparse.Namespace, **config) -> float:
    """FLOPs (convolutions and matmuls) of one PGD-AT training image: ``steps`` forward + input-gradient
    passes and one forward + full backward, counted by torch's FlopCounterMode on the CPU at batch 2."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu = argparse.Namespace(**{**vars(args), "device": "cpu"})
    model = build(activation, cpu, channels_last=False, **config)
    x, y = torch.rand(2, 3, args.input_size, args.input_size), torch.tensor([0, 1])
    recipe = create_recipe("pgd", eps=EPS, alpha=ALPHA, steps=args.steps)
    with FlopCounterMode(display=False) as counter:
        our_at_step(recipe)(model, optimizer_for(model), x, y, args.steps)
    return counter.get_total_flops() / 2


def bf16_peak_tflops(device: str, given: float | None) -> float | None:
    """``--peak-tflops``, else the data-sheet peak of a known CUDA device; None when neither."""
    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS.items() if fragment in name), None)


def timed(fns: dict[str, Callable[[], None]], rounds: int, device: str) -> dict[str, float]:
    """Median seconds per call of each function, interleaved round by round after one warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
    recipe = create_recipe("pgd", eps=EPS, alpha=ALPHA, steps=args.steps)

    # (activation, channels_last, frozen): the engine trains channels-last; public repos use NCHW
    specs = {
        "relu-nchw": ("relu", False, False), "relu-cl": ("relu", True, False),
        "sparta-cl": ("sparta", True, False), "sparta-frozen-cl": ("sparta", True, True),
    }
    models = {k: build(act, args, cl, freeze, **({"variant": "dw"} if act == "sparta" else {}))
              for k, (act, cl, freeze) in specs.items()}
    opts = {k: optimizer_for(m) for k, m in models.items()}

    def at(kind: str, key: str) -> Callable[[], None]:
        fn = reference_at_step if kind == "reference" else our_at_step(recipe)
        return lambda: fn(models[key], opts[key], inputs[specs[key][1]], y, args.steps)

    at_fns = {
        "reference AT step, ReLU, NCHW (public repos)": at("reference", "relu-nchw"),
        "reference AT step, ReLU, channels-last": at("reference", "relu-cl"),
        "our AT step, ReLU, NCHW": at("ours", "relu-nchw"),
        "our AT step, ReLU (engine: channels-last)": at("ours", "relu-cl"),
        "our AT step, Sparta dw (engine)": at("ours", "sparta-cl"),
        "our AT step, Sparta dw frozen (engine)": at("ours", "sparta-frozen-cl"),
    }

    from pyautoattack import AutoAttack as OfficialAutoAttack

    relu, relu_cl = models["relu-nchw"], models["relu-cl"]
    official = OfficialAutoAttack(relu, eps=EPS, version="custom", attacks=["apgd-ce"], seed=0, device=args.device)
    official.apgd.n_restarts, official.apgd.n_iter = 1, args.steps
    ours_eval = create_attack("pgd", eps=EPS, alpha=ALPHA, steps=args.steps)

    def official_apgd() -> None:
        """APGD-CE attacks only the points the model gets right, so it is given the model's own
        predictions as labels: every image is attacked, as in our PGD."""
        with attack_mode(relu, "eval"):
            with torch.no_grad():
                predicted = relu(x).argmax(1)
            official.apgd.perturb(x, predicted)

    def training_attack(model: torch.nn.Module, xb: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with attack_mode(model, "eval"):
                projected_gradient_ascent(model, xb, lambda z: F.cross_entropy(z, y, reduction="sum"),
                                          random_start(xb, EPS), eps=EPS, alpha=ALPHA, steps=args.steps)

        return run

    attack_fns = {
        "official APGD-CE (pyautoattack), same iterations, NCHW": official_apgd,
        "transfer.engine.attacks PGD, NCHW": lambda: ours_eval(relu, x, y),
        "training attack (shared PGD loop), NCHW": training_attack(relu, x),
        "training attack (shared PGD loop), channels-last": training_attack(relu_cl, inputs[True]),
    }
    seconds = timed({**at_fns, **attack_fns}, args.rounds, args.device)
    ips = {k: args.batch / v for k, v in seconds.items()}
    ref = "reference AT step, ReLU, NCHW (public repos)"
    ratios = {
        "our AT step (engine) vs reference loop, speed-up [target >= 1.3]":
            ips["our AT step, ReLU (engine: channels-last)"] / ips[ref],
        "our AT step vs reference loop, both NCHW, speed-up": ips["our AT step, ReLU, NCHW"] / ips[ref],
        "our AT step vs reference loop, both channels-last, speed-up":
            ips["our AT step, ReLU (engine: channels-last)"] / ips["reference AT step, ReLU, channels-last"],
        "Sparta dw vs ReLU AT step, time ratio [target <= 1.35]":
            seconds["our AT step, Sparta dw (engine)"] / seconds["our AT step, ReLU (engine: channels-last)"],
        "frozen vs trainable Sparta dw AT step, time ratio":
            seconds["our AT step, Sparta dw frozen (engine)"] / seconds["our AT step, Sparta dw (engine)"],
        "official APGD-CE vs transfer.engine.attacks PGD (NCHW, same iterations), time ratio":
            seconds["official APGD-CE (pyautoattack), same iterations, NCHW"]
            / seconds["transfer.engine.attacks PGD, NCHW"],
    }
    setup = {
        "model": f"resnet18 width {args.width} (channels {args.width}-{8 * args.width}), CIFAR stem",
        "input": f"{args.batch}x3x{args.input_size}x{args.input_size}", "attack": f"PGD-{args.steps} Linf 8/255",
        "device": args.device, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(setup))
    width = max(map(len, ips))
    for k in ips:
        print(f"{k:<{width}}  {ips[k]:8.1f} images/s  ({1000 * seconds[k]:.0f} ms per batch)")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    result = {"setup": setup, "images_per_s": ips, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
