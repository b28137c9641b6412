"""Portability survey: can Sparta be injected into every CNN family of timm?

For each timm model module (family) this takes one small representative, builds it with
``create_backbone``, finds its sites, injects fresh Sparta (``dw``) everywhere, and runs a forward and
backward pass. Families whose activations see token tensors (N, L, C) are transformers, not CNNs: they
are listed apart and left out of the pass rate. Writes ``docs/portability.md``.

    python benchmarks/portability.py [--input-size 64] [--out docs/portability.md] [--families resnet,dla]
"""

from __future__ import annotations

import argparse
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from tqdm import tqdm

from transfer import Sparta, create_backbone, find_sites, inject
from transfer.atomic import write_text


@dataclass
class Outcome:
    family: str
    model: str
    status: str  # pass | fail | not-cnn
    sites: int = 0
    reason: str = ""


def representative(family: str) -> str | None:
    """The family's model with the fewest parameters among its first few names (cheap to build)."""
    names = timm.list_models(module=family, exclude_filters=["*_in22k", "*_384", "*_448", "*_512"])
    if not names:
        return None
    return min(names, key=lambda n: (("tiny" not in n and "small" not in n and "_0" not in n), len(n), n))


def _fixed(name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(name)
    return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False


def _input_size(name: str, default: int) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if _fixed(name) and cfg is not None else default


def survey_one(family: str, name: str, input_size: int) -> Outcome:
    """Try at ``input_size``; a model that fails there gets a second try at its own default size."""
    outcome = _try(family, name, _input_size(name, input_size))
    default = _default_size(name)
    if outcome.status == "fail" and "channels-last" not in outcome.reason and default != input_size:
        retry = _try(family, name, default)
        if retry.status != "fail":
            retry.reason = f"needs input {default}: {outcome.reason}"
        return retry
    return outcome


def _default_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _try(family: str, name: str, size: int) -> Outcome:
    try:
        model = create_backbone(name, 10, input_size=size)
        sites = find_sites(model, (3, size, size))
        if not sites:
            return Outcome(family, name, "fail", 0, "no activation sites found")
        if any(len(s.spatial) != 2 for s in sites):
            return Outcome(family, name, "not-cnn", len(sites), "activations see token tensors (N, L, C)")
        nhwc = [s.name for s in sites if s.layout != "NCHW"]
        if nhwc:
            return Outcome(family, name, "fail", len(sites), f"channels-last (NHWC) activations at {nhwc[:3]}")
        inject(model, "sparta", variant="dw", input_shape=(3, size, size))
        model.train()
        y = model(torch.rand(2, 3, size, size))
        y.float().square().mean().backward()
        placed = sum(isinstance(m, Sparta) for m in model.modules())
        if placed != len(sites):
            return Outcome(family, name, "fail", len(sites), f"{placed} Sparta placed for {len(sites)} sites")
        return Outcome(family, name, "pass", len(sites))
    except Exception as exc:  # noqa: BLE001 - the survey records every failure with its reason
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return Outcome(family, name, "fail", 0, f"{type(exc).__name__}: {str(exc)[:160]} ({where})")


def write_report(outcomes: list[Outcome], path: Path, input_size: int, seconds: float) -> None:
    cnn = [o for o in outcomes if o.status != "not-cnn"]
    passed = [o for o in cnn if o.status == "pass"]
    lines = [
        "# Portability survey: Sparta in every CNN family of timm",
        "",
        f"Measured with `python benchmarks/portability.py --input-size {input_size}` "
        f"(timm {timm.__version__}, torch {torch.__version__}, {platform.machine()}, {seconds:.0f} s).",
        "One representative per timm model module; fresh Sparta (`dw`) injected at every site, then a "
        "forward and backward pass at batch 2.",
        "",
        f"**Pass rate: {len(passed)} / {len(cnn)} CNN families ({100 * len(passed) / max(1, len(cnn)):.1f} %).** "
        f"{len(outcomes) - len(cnn)} families are transformers or token mixers (activations on (N, L, C) "
        "tokens) and are not counted.",
        "",
        "## Failures",
        "",
        "| family | model | reason |",
        "|---|---|---|",
        *[f"| {o.family} | `{o.model}` | {o.reason.replace('|', '/')} |" for o in cnn if o.status == "fail"],
        "",
        "## Passing CNN families",
        "",
        "| family | model | sites | note |",
        "|---|---|---|---|",
        *[f"| {o.family} | `{o.model}` | {o.sites} | {o.reason or '—'} |" for o in passed],
        "",
        "## Not CNNs (left out of the rate)",
        "",
        ", ".join(f"{o.family} (`{o.model}`)" for o in outcomes if o.status == "not-cnn") or "none",
        "",
    ]
    write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/portability.md"))
    parser.add_argument("--families", default="", help="comma-separated timm modules (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    families = [f for f in args.families.split(",") if f] or sorted(timm.list_modules())
    start = time.time()
    outcomes = []
    for family in tqdm(families, desc="families"):
        name = representative(family)
        if name is not None:
            outcomes.append(survey_one(family, name, args.input_size))
    write_report(outcomes, args.out, args.input_size, time.time() - start)
    cnn = [o for o in outcomes if o.status != "not-cnn"]
    print(f"{sum(o.status == 'pass' for o in cnn)}/{len(cnn)} CNN families pass; report in {args.out}")


if __name__ == "__main__":
    main()
