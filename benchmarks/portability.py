"""Portability survey: can Sparta be injected into every family of timm, CNN and transformer alike?

For each timm model module (family) this takes one small representative, builds it with
``create_backbone`` (10 classes; families built for one input size are built for the survey's size,
with smaller patches: ``transfer/backbones.py``), finds its sites, injects fresh Sparta (``dw``)
everywhere, and runs a forward and backward pass at batch 2. A model that cannot run at the survey's
size is tried again at the size ``InputSizeError`` names (``transfer/sites.py``) or, failing that, timm's
``pretrained_cfg['input_size']``. A family whose activations see tokens (N, L, C) counts as a
transformer, every other one as a CNN (channels-last ConvNeXt-style blocks included). The report is
rewritten after every family, so an interrupted or time-limited run leaves what it measured, and the
families it did not reach are listed as such. Writes ``docs/portability.md``.

    python benchmarks/portability.py [--input-size 64] [--out docs/portability.md] [--families resnet,vit]
                                     [--budget-s 1500] [--family-timeout-s 180]
"""

from __future__ import annotations

import argparse
import collections
import platform
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from tqdm import tqdm

from transfer import Sparta, create_backbone, find_sites, inject
from transfer.atomic import write_text
from transfer.sites import InputSizeError


@dataclass
class Outcome:
    family: str
    model: str
    status: str  # pass | fail | skipped (not reached within the time budget)
    group: str = "CNN"  # "transformer" where some activation sees (N, L, C) tokens
    sites: int = 0
    size: int = 0  # the input side it ran at
    layouts: dict[str, int] = field(default_factory=dict)  # sites per layout (NCHW, NHWC, NLC)
    reason: str = ""


# Families whose smallest-named model is not their canonical small one.
_REPRESENTATIVES = {
    "resnet": "resnet18",
    "regnet": "regnetx_002",
    "levit": "levit_128s",
    "senet": "legacy_seresnet18",
    "tresnet": "tresnet_m",
    "mlp_mixer": "mixer_s16_224",
}
# Families whose only models are too large to build and run within a family's time on a CPU: built with
# fewer blocks (the blocks themselves, and so the sites' layouts, are those of the full model).
_SMALLER = {"deepseek_vit": {"depth": 2}}
# Name parts of small variants, smallest first.
_SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "b0", "_s", "mini", "light")
# Families of token models whose trace fails before any site is seen are counted as transformers.
_TOKEN_FAMILY_HINTS = ("vit", "former", "swin", "mixer", "deit", "beit", "cait", "eva", "xcit", "tnt", "volo")


def representative(family: str) -> str | None:
    """The family's canonical small model, else the one with the smallest-variant name (cheap to build)."""
    names = timm.list_models(module=family, exclude_filters=["*_in22k", "*_384", "*_448", "*_512"])
    if not names:
        return None
    if _REPRESENTATIVES.get(family) in names:
        return _REPRESENTATIVES[family]
    rank = {n: next((i for i, part in enumerate(_SMALL) if part in n), len(_SMALL)) for n in names}
    return min(names, key=lambda n: (rank[n], len(n), n))


class _FamilyTimeout(Exception):
    """A family took longer than --family-timeout-s."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _FamilyTimeout


def survey_one(family: str, name: str, input_size: int, timeout_s: int = 0) -> Outcome:
    """Try at ``input_size``; a model that cannot run there gets a second try at the size the probe found
    (or timm's own input size), noted in the outcome. ``timeout_s`` > 0 bounds the family's time."""
    if timeout_s > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout_s)
    try:
        outcome, needed = _try(family, name, input_size)
        retry_size = needed or (_default_size(name) if outcome.status == "fail" and outcome.sites == 0 else None)
        if outcome.status == "fail" and retry_size and retry_size != input_size:
            retry, _ = _try(family, name, retry_size)
            if retry.status == "pass":
                note = f"runs at {retry_size} px, not {input_size}: {outcome.reason}"
                retry.reason = f"{retry.reason}; {note}" if retry.reason else note
                return retry
        return outcome
    except _FamilyTimeout:
        return Outcome(family, name, "fail", _group(family, None), reason=f"timed out after {timeout_s} s")
    finally:
        if timeout_s > 0:
            signal.alarm(0)


def _default_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _group(family: str, layouts: dict[str, int] | None) -> str:
    """transformer where some site sees tokens; for a model traced nowhere, by its family's name."""
    if layouts is not None:
        return "transformer" if layouts.get("NLC") else "CNN"
    return "transformer" if any(h in family for h in _TOKEN_FAMILY_HINTS) else "CNN"


def _try(family: str, name: str, size: int) -> tuple[Outcome, int | None]:
    """The outcome at ``size`` and, where the model cannot run there, the size the probe found."""
    layouts: dict[str, int] | None = None
    n_sites = 0

    def outcome(status: str, reason: str = "") -> Outcome:
        return Outcome(family, name, status, _group(family, layouts), n_sites, size, layouts or {}, reason)

    try:
        model = create_backbone(name, 10, input_size=size, **_SMALLER.get(family, {}))
        sites = find_sites(model, (3, size, size))
        n_sites = len(sites)
        layouts = dict(collections.Counter(s.layout for s in sites))
        if not sites:
            return outcome("fail", "no activation sites"), None
        inject(model, "sparta", variant="dw", input_shape=(3, size, size))
        model.train()
        y = model(torch.rand(2, 3, size, size))
        y.float().square().mean().backward()
        problem = _check(y, [m for m in model.modules() if isinstance(m, Sparta)], n_sites)
        smaller = ", ".join(f"{k}={v}" for k, v in _SMALLER.get(family, {}).items())
        return outcome("fail" if problem else "pass", problem or (f"built with {smaller}" if smaller else "")), None
    except InputSizeError as exc:
        return outcome("fail", str(exc)), exc.needed
    except _FamilyTimeout:
        raise
    except Exception as exc:  # noqa: BLE001 - the survey records every failure with its reason
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return outcome("fail", f"{type(exc).__name__}: {str(exc)[:240]} ({where})"), None


def _check(y: torch.Tensor, spartas: list[Sparta], n_sites: int) -> str:
    """What is wrong with a forward/backward pass through injected Sparta, or ""."""
    if len(spartas) != n_sites:
        return f"{len(spartas)} Sparta placed for {n_sites} sites"
    if not torch.isfinite(y).all():
        return "non-finite output"
    grads = [p.grad for m in spartas for p in m.parameters()]
    if any(g is None for g in grads):
        return f"{sum(g is None for g in grads)} Sparta parameters got no gradient"
    if not all(torch.isfinite(g).all() for g in grads):
        return "non-finite gradient at Sparta's parameters"
    return ""


def pass_counts(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """(passed, surveyed) per group; families not reached are not counted."""
    done = [o for o in outcomes if o.status != "skipped"]
    return {
        g: (sum(o.status == "pass" for o in done if o.group == g), sum(o.group == g for o in done))
        for g in ("CNN", "transformer")
    }


def summary(outcomes: list[Outcome]) -> str:
    """``CNN: a/b families pass; transformer: c/d families pass``."""
    return "; ".join(f"{g}: {p}/{n} families pass" for g, (p, n) in pass_counts(outcomes).items())


def _layouts(o: Outcome) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(o.layouts.items())) or "—"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def write_report(outcomes: list[Outcome], path: Path, command: str, seconds: float) -> None:
    counts = pass_counts(outcomes)
    rates = [f"**{g} families: {p} / {n} pass ({100 * p / max(1, n):.1f} %).**" for g, (p, n) in counts.items()]
    skipped = [o for o in outcomes if o.status == "skipped"]
    failed = [o for o in outcomes if o.status == "fail"]
    lines = [
        "# Portability survey: Sparta in every family of timm",
        "",
        f"Measured with `{command}` (timm {timm.__version__}, torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} thread(s), {seconds:.0f} s).",
        "One representative per timm model module, 10 classes; fresh Sparta (`dw`) injected at every site, "
        "then a forward and backward pass at batch 2 (a pass needs a Sparta at every site, a finite output and "
        "a finite gradient at every Sparta parameter). Families built for one input size (ViT, Swin, …) are "
        "built for the survey's size with smaller patches (`transfer/backbones.py`); a model that cannot run at "
        "that size is run at the size the probe finds, or timm's own (noted). A family is a transformer where "
        "some activation sees (N, L, C) tokens; Sparta gates their grid tokens spatially and class/register "
        "tokens by its self-gate alone, and refuses token sites whose grid the model does not give "
        "(`transfer/layouts.py`, docs/sparta.md §3). Layouts: sites per layout, NCHW maps, NHWC channels-last "
        "maps, NLC tokens.",
        "",
        " ".join(rates),
        *([f"{len(skipped)} families were not reached within the time budget (listed at the end)."] if skipped else []),
        "",
        "## Failures",
        "",
        "| family | group | model | px | reason |",
        "|---|---|---|---|---|",
        *[f"| {o.family} | {o.group} | `{o.model}` | {o.size} | {_cell(o.reason)} |" for o in failed],
        "",
    ]
    for group in ("CNN", "transformer"):
        passed = [o for o in outcomes if o.status == "pass" and o.group == group]
        lines += [
            f"## Passing {group} families",
            "",
            "| family | model | px | sites | layouts | note |",
            "|---|---|---|---|---|---|",
            *[
                f"| {o.family} | `{o.model}` | {o.size} | {o.sites} | {_layouts(o)} | {_cell(o.reason) or '—'} |"
                for o in passed
            ],
            "",
        ]
    if skipped:
        lines += ["## Not reached", "", ", ".join(f"{o.family} (`{o.model}`)" for o in skipped), ""]
    write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/portability.md"))
    parser.add_argument("--families", default="", help="comma-separated timm modules (default: all)")
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting families after this (0: none)")
    parser.add_argument("--family-timeout-s", type=int, default=0, help="give up on a family after this (0: never)")
    args = parser.parse_args()
    torch.manual_seed(0)
    families = [f for f in args.families.split(",") if f] or sorted(timm.list_modules())
    command = " ".join(
        ["python benchmarks/portability.py", f"--input-size {args.input_size}"]
        + ([f"--families {args.families}"] if args.families else [])
        + ([f"--budget-s {args.budget_s:g}"] if args.budget_s else [])
        + ([f"--family-timeout-s {args.family_timeout_s}"] if args.family_timeout_s else [])
    )
    start = time.time()
    chosen = [(f, n) for f in families if (n := representative(f)) is not None]
    outcomes = [Outcome(f, n, "skipped") for f, n in chosen]
    for i, (family, name) in enumerate(tqdm(chosen, desc="families")):
        if args.budget_s and time.time() - start > args.budget_s:
            break
        outcomes[i] = survey_one(family, name, args.input_size, args.family_timeout_s)
        write_report(outcomes, args.out, command, time.time() - start)
    write_report(outcomes, args.out, command, time.time() - start)
    print(f"{summary(outcomes)}; report in {args.out}")


if __name__ == "__main__":
    main()
