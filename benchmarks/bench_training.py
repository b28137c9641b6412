"""Adversarial-training throughput: our PGD-AT step against the loop public AT repos use, our PGD against
the official AutoAttack's APGD-CE at the same iteration count, Sparta (dw) against ReLU, frozen against
trainable Sparta, and (``--compile``) eager against ``torch.compile``-d AT steps.

    python benchmarks/bench_training.py                  # ResNet-18, width 16, 3×32×32, batch 64, PGD-10
    python benchmarks/bench_training.py --only activations --rounds 15     # ReLU vs Sparta AT steps only
    python benchmarks/bench_training.py --device cuda --width 64 --batch 512 --compile --only activations
    python benchmarks/bench_training.py --only activations --amp off     # CPU: fp32 only, no bf16 comparison

All ratios come from one run, with the variants interleaved round by round (so a machine shared with other
work slows them alike) and the median time per step taken over rounds. Images/s counts training images
(each costing ``steps`` attack forward/backward passes plus one training step). The engine's AT steps run
channels-last, in the precision the engine would train in (``--amp``, ``epochs.training_precision``): bf16
autocast on CUDA, with the data resident on the GPU; on the CPU bf16 autocast where it computes bf16
natively, fp32 elsewhere. On the CPU with ``--amp bf16`` the other precision is timed beside them: fp32
where bf16 is native (the bf16 speed-up), emulated bf16 where it is not (what it would cost, the reason the
engine trains in fp32 there). The setup line names the CPU's native bf16 (``cpu_bf16``) and also gives the
FLOPs of one AT image (convolutions and matmuls, counted on the CPU) and, where the
accelerator's peak is known (``--peak-tflops``), the images/s that peak would allow.
"""

from __future__ import annotations

import argparse
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
from transfer.engine.cost import bf16_peak_tflops, pass_flops  # noqa: E402
from transfer.engine.cpu_bf16 import cpu_bf16  # noqa: E402
from transfer.engine.epochs import autocast_factory, training_precision  # noqa: E402
from transfer.engine.glibc_malloc import retain_freed_memory  # noqa: E402
from transfer.engine.recipes import create_recipe  # noqa: E402
from transfer.workarounds import avoid_onednn_1x1_bug  # noqa: E402

EPS, ALPHA = 8 / 255, 2 / 255


def build(activation: str, args: argparse.Namespace, channels_last: bool, freeze: bool = False, **config):
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=args.input_size, width=args.width)
    inject(model, activation, freeze=freeze, **config)
    avoid_onednn_1x1_bug(model)  # as the engine builds its models (no-op where torch is unaffected)
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


def flops_per_at_image(activation: str, args: argparse.Namespace, **config) -> float:
    """FLOPs of one PGD-AT training image: ``steps`` attack passes and one training pass
    (``transfer.engine.cost.pass_flops``, counted on the CPU)."""
    cpu = argparse.Namespace(**{**vars(args), "device": "cpu"})
    model = build(activation, cpu, channels_last=False, **config)
    return pass_flops(model, (3, args.input_size, args.input_size), num_classes=10).at_image(args.steps)


def attack_variants(
    models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, x_cl: torch.Tensor, args: argparse.Namespace
) -> dict[str, Callable[[], None]]:
    """Attacks alone on the ReLU models: the official APGD-CE, our evaluation PGD and the training attack."""
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
                projected_gradient_ascent(
                    model,
                    xb,
                    lambda z: F.cross_entropy(z, y, reduction="sum"),
                    random_start(xb, EPS),
                    eps=EPS,
                    alpha=ALPHA,
                    steps=args.steps,
                )

        return run

    return {
        "official APGD-CE (pyautoattack), same iterations, NCHW": official_apgd,
        "transfer.engine.attacks PGD, NCHW": lambda: ours_eval(relu, x, y),
        "training attack (shared PGD loop), NCHW": training_attack(relu, x),
        "training attack (shared PGD loop), channels-last": training_attack(relu_cl, x_cl),
    }


ENGINE_RELU, ENGINE_SPARTA = "our AT step, ReLU (engine: channels-last)", "our AT step, Sparta dw (engine)"
REFERENCE = "reference AT step, ReLU, NCHW (public repos)"
# On the CPU with --amp bf16, the engine's steps in the precision the engine does not train in (channels-last)
FP32_RELU, FP32_SPARTA = "our AT step, ReLU, fp32", "our AT step, Sparta dw, fp32"
EMULATED_RELU = "our AT step, ReLU, bf16 EMULATED (this CPU has no native bf16)"
EMULATED_SPARTA = "our AT step, Sparta dw, bf16 EMULATED (this CPU has no native bf16)"
# name: (variant, baseline). A speed-up is the baseline's time over the variant's, a time ratio the inverse.
SPEED_UPS = {
    "our AT step (engine) vs reference loop, speed-up [target >= 1.3]": (ENGINE_RELU, REFERENCE),
    "our AT step vs reference loop, both NCHW, speed-up": ("our AT step, ReLU, NCHW", REFERENCE),
    "our AT step vs reference loop, both channels-last, speed-up": (
        ENGINE_RELU,
        "reference AT step, ReLU, channels-last",
    ),
    "compiled vs eager AT step, ReLU, speed-up": ("our AT step, ReLU, compiled", ENGINE_RELU),
    "compiled vs eager AT step, Sparta dw, speed-up": ("our AT step, Sparta dw, compiled", ENGINE_SPARTA),
    "bf16 vs fp32 AT step, ReLU, native bf16 CPU, speed-up": (ENGINE_RELU, FP32_RELU),
    "bf16 vs fp32 AT step, Sparta dw, native bf16 CPU, speed-up": (ENGINE_SPARTA, FP32_SPARTA),
}
TIME_RATIOS = {
    "Sparta dw vs ReLU AT step, time ratio [target <= 1.15 at width 16, <= 1.10 at width 32]": (
        ENGINE_SPARTA,
        ENGINE_RELU,
    ),
    "Sparta dw vs ReLU AT step, both compiled, time ratio": (
        "our AT step, Sparta dw, compiled",
        "our AT step, ReLU, compiled",
    ),
    "frozen vs trainable Sparta dw AT step, time ratio": ("our AT step, Sparta dw frozen (engine)", ENGINE_SPARTA),
    "official APGD-CE vs transfer.engine.attacks PGD (NCHW, same iterations), time ratio": (
        "official APGD-CE (pyautoattack), same iterations, NCHW",
        "transfer.engine.attacks PGD, NCHW",
    ),
    "EMULATED bf16 vs fp32 AT step, ReLU, time ratio (no native bf16: why the engine trains in fp32)": (
        EMULATED_RELU,
        ENGINE_RELU,
    ),
    "EMULATED bf16 vs fp32 AT step, Sparta dw, time ratio (no native bf16: why the engine trains in fp32)": (
        EMULATED_SPARTA,
        ENGINE_SPARTA,
    ),
}


def ratios_of(seconds: dict[str, float], cpu_seconds: dict[str, float] | None = None) -> dict[str, float]:
    """The speed-ups and time ratios between variants that both ran; with ``cpu_seconds``, each time ratio
    also in CPU time (what a step costs the processor, whatever else the machine runs)."""
    ratios = {k: seconds[b] / seconds[v] for k, (v, b) in SPEED_UPS.items() if v in seconds and b in seconds}
    ratios |= {k: seconds[v] / seconds[b] for k, (v, b) in TIME_RATIOS.items() if v in seconds and b in seconds}
    if cpu_seconds:
        ratios |= {
            f"{k} (CPU time)": cpu_seconds[v] / cpu_seconds[b]
            for k, (v, b) in TIME_RATIOS.items()
            if v in cpu_seconds and b in cpu_seconds
        }
    return ratios


def minor_page_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not count them, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fns: dict[str, Callable[[], None]], rounds: int, device: str) -> dict[str, dict[str, float]]:
    """Per function, the medians of wall-clock seconds, CPU seconds (this process, all its threads) and
    minor page faults (memory the kernel had to hand over) per call, interleaved round by round after one
    warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "faults": []} for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t, c, f = time.perf_counter(), time.process_time(), minor_page_faults()
            fn()
            sync()
            samples[name]["wall"].append(time.perf_counter() - t)
            samples[name]["cpu"].append(time.process_time() - c)
            samples[name]["faults"].append(minor_page_faults() - f)
    return {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--amp",
        choices=("bf16", "off"),
        default="bf16",
        help="autocast of the engine's AT steps: TrainConfig.amp on CUDA, TrainConfig.cpu_bf16 on a "
        "CPU with native bf16; on the CPU, bf16 also times the other precision (fp32, or emulated bf16)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the engine's AT steps with the model compiled (TrainConfig.compile)",
    )
    p.add_argument(
        "--only",
        choices=("all", "activations"),
        default="all",
        help="activations: only the engine's ReLU and Sparta AT steps (more rounds in the same time)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the accelerator's dense bf16 peak, for the physical limit (default: known CUDA GPUs)",
    )
    p.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc malloc's thresholds as they are (the engine raises them; glibc_malloc.py)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device on this machine; run it where there is one")
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = False if args.malloc_default else retain_freed_memory()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
    precision = training_precision(args.amp, torch.device(args.device), cpu_bf16_asked=args.amp == "bf16")
    recipes = {
        ran: create_recipe(
            "pgd", eps=EPS, alpha=ALPHA, steps=args.steps, autocast=autocast_factory(precision.device, ran)
        )
        for ran in ("bf16", "fp32")
    }

    # (activation, channels_last, frozen, compiled): the engine trains channels-last; public repos use NCHW
    specs = {"relu-cl": ("relu", True, False, False), "sparta-cl": ("sparta", True, False, False)}
    if args.only == "all":
        specs |= {"relu-nchw": ("relu", False, False, False), "sparta-frozen-cl": ("sparta", True, True, False)}
    if args.compile:
        specs |= {"relu-cl-compiled": ("relu", True, False, True), "sparta-cl-compiled": ("sparta", True, False, True)}
    models = {
        k: build(act, args, cl, freeze, **({"variant": "dw"} if act == "sparta" else {}))
        for k, (act, cl, freeze, _) in specs.items()
    }
    for key, spec in specs.items():
        if spec[3]:
            models[key].compile()  # what TrainConfig.compile does
    opts = {k: optimizer_for(m) for k, m in models.items()}

    def at(kind: str, key: str, ran: str = precision.ran) -> Callable[[], None]:
        fn = reference_at_step if kind == "reference" else our_at_step(recipes[ran])
        return lambda: fn(models[key], opts[key], inputs[specs[key][1]], y, args.steps)

    at_fns = {
        "our AT step, ReLU (engine: channels-last)": at("ours", "relu-cl"),
        "our AT step, Sparta dw (engine)": at("ours", "sparta-cl"),
    }
    if precision.device == "cpu" and args.amp == "bf16":  # what the other precision costs on this CPU
        other = "fp32" if precision.ran == "bf16" else "bf16"
        names = (FP32_RELU, FP32_SPARTA) if other == "fp32" else (EMULATED_RELU, EMULATED_SPARTA)
        at_fns |= {names[0]: at("ours", "relu-cl", other), names[1]: at("ours", "sparta-cl", other)}
    if args.only == "all":
        at_fns |= {
            "reference AT step, ReLU, NCHW (public repos)": at("reference", "relu-nchw"),
            "reference AT step, ReLU, channels-last": at("reference", "relu-cl"),
            "our AT step, ReLU, NCHW": at("ours", "relu-nchw"),
            "our AT step, Sparta dw frozen (engine)": at("ours", "sparta-frozen-cl"),
        }
    if args.compile:
        at_fns |= {
            "our AT step, ReLU, compiled": at("ours", "relu-cl-compiled"),
            "our AT step, Sparta dw, compiled": at("ours", "sparta-cl-compiled"),
        }

    attack_fns = attack_variants(models, x, y, inputs[True], args) if args.only == "all" else {}
    compile_seconds = {}
    for key, fn in at_fns.items():
        if key.endswith("compiled"):
            started = time.perf_counter()
            fn()  # compiles two graphs: the attack's (eval mode, frozen weights) and the training step's
            compile_seconds[key] = round(time.perf_counter() - started, 1)
    medians = timed({**at_fns, **attack_fns}, args.rounds, args.device)
    seconds, cpu_seconds = {k: m["wall"] for k, m in medians.items()}, {k: m["cpu"] for k, m in medians.items()}
    page_faults = {k: int(m["faults"]) for k, m in medians.items()}
    on_cpu = not args.device.startswith("cuda")  # on a GPU the process's CPU time is only the launches
    ips = {k: args.batch / v for k, v in seconds.items()}
    ratios = ratios_of(seconds, cpu_seconds if on_cpu else None)
    flops = {"relu": flops_per_at_image("relu", args), "sparta": flops_per_at_image("sparta", args, variant="dw")}
    setup = {
        "model": f"resnet18 width {args.width} (channels {args.width}-{8 * args.width}), CIFAR stem",
        "input": f"{args.batch}x3x{args.input_size}x{args.input_size}",
        "attack": f"PGD-{args.steps} Linf 8/255",
        "device": args.device,
        "amp": args.amp,
        "precision": precision.ran,
        **({"why_fp32": precision.why_fp32} if precision.why_fp32 else {}),
        "cpu_bf16": cpu_bf16().name,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "malloc": "freed memory retained (glibc_malloc.py)" if retained else "glibc default",
        "gflops_per_at_image": {act: round(f / 1e9, 4) for act, f in flops.items()},
        "compile_seconds": compile_seconds,
    }
    peak = bf16_peak_tflops(args.device, args.peak_tflops)
    if peak:
        limits = {act: peak * 1e12 / f for act, f in flops.items()}
        setup |= {"peak_tflops_bf16": peak, "physical_limit_images_per_s": {a: round(v) for a, v in limits.items()}}
        for act, name in (("relu", "ReLU"), ("sparta", "Sparta dw")):
            fastest = max(v for k, v in ips.items() if k.startswith("our AT step, " + name) and "frozen" not in k)
            ratios[f"fastest {name} AT step, fraction of the physical limit"] = fastest / limits[act]
    print(json.dumps(setup))
    width = max(map(len, ips))
    for k in ips:
        cpu = f", {1000 * cpu_seconds[k]:.0f} ms CPU, {page_faults[k]} page faults" if on_cpu else ""
        print(f"{k:<{width}}  {ips[k]:8.1f} images/s  ({1000 * seconds[k]:.0f} ms per batch{cpu})")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    result = {
        "setup": setup,
        "images_per_s": ips,
        "ratios": ratios,
        "cpu_seconds": cpu_seconds if on_cpu else {},
        "page_faults": page_faults,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
