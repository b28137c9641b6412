"""What the divergence check costs: the NaN/inf check of the trainable parameters that ``train`` runs after
every optimizer step, against the adversarial-training step itself, measured in the same run.

    python benchmarks/bench_finite_check.py --widths 16 64 --threads 1

CPU time (``time.process_time``), so other work on a shared machine does not inflate it. The check is
one ``isfinite().all()`` per parameter tensor and one synchronisation, so its share falls as the batch,
the input or the attack grows. Result: docs/architecture.md (Divergence).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer import create_backbone, inject  # noqa: E402
from transfer.engine.epochs import first_non_finite  # noqa: E402
from transfer.engine.recipes import create_recipe  # noqa: E402
from transfer.workarounds import avoid_onednn_1x1_bug  # noqa: E402


def measure(width: int, batch: int, size: int, steps: int, repeats: int) -> tuple[float, float]:
    """CPU seconds of one PGD-``steps`` training step and of one finite check, ResNet-18 with Sparta dw."""
    torch.manual_seed(0)
    model = create_backbone("resnet18", 10, in_chans=3, input_size=size, width=width)
    inject(model, "sparta", variant="dw")
    avoid_onednn_1x1_bug(model)  # as the engine's build_model: plain narrow shortcuts corrupt the heap (known-issues)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    recipe = create_recipe("pgd", eps=8 / 255, alpha=2 / 255, steps=steps)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def step() -> None:
        loss, _ = recipe(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    started = time.process_time()
    for _ in range(repeats):
        step()
    per_step = (time.process_time() - started) / repeats
    started = time.process_time()
    for _ in range(100 * repeats):
        first_non_finite(params)
    per_check = (time.process_time() - started) / (100 * repeats)
    return per_step, per_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for width in args.widths:
        per_step, per_check = measure(width, args.batch, args.input_size, args.steps, args.repeats)
        print(
            f"resnet18 width {width}, batch {args.batch}, {args.input_size} px, PGD-{args.steps}: "
            f"step {per_step * 1e3:.0f} ms CPU, finite check {per_check * 1e3:.2f} ms "
            f"({100 * per_check / per_step:.2f} % of the step)"
        )


if __name__ == "__main__":
    main()
