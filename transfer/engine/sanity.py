"""Gradient-masking sanity checks for one trained model (``sparta eval RUN_DIR --sanity``).

A robust accuracy is only as good as the attack that measured it: an activation that saturates
(Sparta's sigmoid gates can) may block gradients, so gradient attacks fail while the model is no more
robust (Athalye et al. 2018, "Obfuscated gradients give a false sense of security", §3.1; Carlini et al.
2019, "On evaluating adversarial robustness", §5). This module measures the standard signs of that,
each an inequality between accuracies (percent, an image counts only if classified correctly clean
*and* attacked) that a sound evaluation satisfies within ``tolerance`` percentage points:

(a) ``eps_sweep`` — PGD-20 accuracy falls as ε grows (ε, 2ε, 4ε, … up to 0.5) and reaches ~0 %
    (≤ ``tolerance``) at the largest ε: an attack that cannot break a model even at ε = 0.5 is not
    getting useful gradients;
(b) ``more_iterations`` — PGD with more steps and random restarts (PGD-100, 5 restarts; an image
    counts as robust only if it survives every restart) is never above PGD-20;
(c) ``black_box`` — the black-box Square attack (official AutoAttack code, 5,000 queries) is never
    below the strongest white-box attack: APGD-CE and APGD-T (official code; APGD-T with 4 classes or
    more) and the PGD of (b). A gradient-free attack that beats every gradient attack means the
    gradients mislead;
(d) ``single_step`` — FGSM (one step) is never below PGD-20 (iterative);
(e) ``random_noise`` — the worst of 10 uniform random points of the ε-ball is never below PGD-20:
    random search that finds more adversarial examples than gradient ascent means the gradients
    are useless.

A failed sign is a reason to distrust the gradient attacks' numbers for this model, not proof of
masking (a tiny or untrained model can fail (a) by being constant). The numbers are reproducible: the
checks run under a fixed seed with the caller's RNG state restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..model_info import eval_mode, model_device
from .attacks import create_attack
from .data import TensorData

__all__ = ["SIGNS", "SanityReport", "Sign", "eps_sweep", "sanity_check", "sanity_check_run"]

SIGNS = ("eps_sweep", "more_iterations", "black_box", "single_step", "random_noise")
MAX_EPS = 0.5  # the largest radius of the ε sweep (L∞, [0, 1] pixels): half the pixel range
APGD_T_MIN_CLASSES = 4  # APGD-T's DLR loss reads the three largest other logits

Perturb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sign:
    """One sign: whether the inequality ``expected`` held (within the report's tolerance) and the
    accuracies (percent) it compared."""

    name: str
    passed: bool
    expected: str
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SanityReport:
    """The five signs of one model, at radius ``eps`` on ``n`` test images."""

    eps: float
    n: int
    tolerance: float
    signs: list[Sign]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.signs)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.signs if not s.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "n": self.n,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "failed": self.failed,
            "signs": [s.to_dict() for s in self.signs],
            "settings": self.settings,
        }

    def lines(self) -> list[str]:
        """One line per sign: ``PASS``/``FAIL``, its name, what should hold, and the numbers."""
        out = []
        for s in self.signs:
            numbers = ", ".join(f"{k} {v:.1f}%" for k, v in s.values.items())
            out.append(f"{'PASS' if s.passed else 'FAIL'}  {s.name:<16} {s.expected}: {numbers}")
        return out


def eps_sweep(eps: float, max_eps: float = MAX_EPS) -> list[float]:
    """ε, 2ε, 4ε, … while below ``max_eps``, then ``max_eps`` itself: the radii of sign (a)."""
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps!r}")
    radii, r = [], float(eps)
    while r < max_eps:
        radii.append(r)
        r *= 2
    return [*radii, max(float(max_eps), float(eps))]


def _correct(model: nn.Module, data: TensorData, perturbs: list[Perturb], batch_size: int) -> np.ndarray:
    """Per image: classified correctly clean and under every one of ``perturbs`` (none: clean only)."""
    device = model_device(model)
    out = []
    for x, y in data.batches(batch_size):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        for perturb in perturbs:
            x_adv = perturb(x, y)
            with torch.no_grad():
                ok &= model(x_adv).argmax(1) == y
        out.append(ok.cpu())
    return torch.cat(out).numpy()


def _uniform_noise(eps: float) -> Perturb:
    return lambda x, y: (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0.0, 1.0)


def _attack(model: nn.Module, name: str, **config: Any) -> Perturb:
    attack = create_attack(name, **config)
    return lambda x, y: attack(model, x, y)


def sanity_check(
    model: nn.Module,
    data: TensorData,
    *,
    eps: float,
    tolerance: float = 1.0,
    max_eps: float = MAX_EPS,
    steps: int = 100,
    restarts: int = 5,
    square_queries: int = 5000,
    apgd_iter: int | None = None,
    noise_samples: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> SanityReport:
    """The five gradient-masking signs (module docstring) of ``model`` on ``data`` at L∞ radius ``eps``.

    ``steps``/``restarts`` set the strong PGD of (b), ``square_queries`` Square's budget in (c) (5,000
    is AutoAttack's; fewer is a quicker, weaker look that (c) is easier to pass with), ``apgd_iter``
    APGD-CE's iterations (None: the standard 100), ``noise_samples`` the random points of (e).
    """
    for name, value in (
        ("steps", steps),
        ("restarts", restarts),
        ("square_queries", square_queries),
        ("noise_samples", noise_samples),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0 (percentage points), got {tolerance!r}")
    if len(data) == 0:
        raise ValueError("sanity_check got an empty dataset")
    radii = eps_sweep(eps, max_eps)
    classes = data.num_classes
    stages: list[tuple[str, list[Perturb]]] = [
        ("clean", []),
        *[(f"pgd20@{r:g}", [_attack(model, "pgd", eps=r, steps=20, keep_best=True)]) for r in radii],
        (f"pgd{steps}x{restarts}", [_attack(model, "pgd", eps=eps, steps=steps, keep_best=True)] * restarts),
        ("apgd-ce", [_attack(model, "apgd-ce", eps=eps, n_classes=classes, n_iter=apgd_iter, seed=seed)]),
        *(
            [("apgd-t", [_attack(model, "apgd-t", eps=eps, n_classes=classes, n_iter=apgd_iter, seed=seed)])]
            if classes >= APGD_T_MIN_CLASSES
            else []
        ),
        ("square", [_attack(model, "square", eps=eps, n_classes=classes, n_queries=square_queries, seed=seed)]),
        ("fgsm", [_attack(model, "fgsm", eps=eps)]),
        ("noise", [_uniform_noise(eps)] * noise_samples),
    ]
    device = model_device(model)
    acc: dict[str, float] = {}
    cuda = [] if device.type != "cuda" else [torch.cuda.current_device() if device.index is None else device.index]
    with eval_mode(model), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for stage, perturbs in tqdm(stages, desc="sanity", disable=not progress, leave=False):
            acc[stage] = 100.0 * float(_correct(model, data, perturbs, batch_size).mean())
    return SanityReport(
        eps=float(eps),
        n=len(data),
        tolerance=float(tolerance),
        signs=_signs(acc, radii, steps, restarts, tolerance),
        settings={
            "max_eps": float(max_eps),
            "steps": steps,
            "restarts": restarts,
            "square_queries": square_queries,
            "apgd_iter": apgd_iter if apgd_iter is not None else 100,
            "noise_samples": noise_samples,
            "seed": seed,
        },
    )


def _signs(acc: dict[str, float], radii: list[float], steps: int, restarts: int, tol: float) -> list[Sign]:
    sweep = [acc[f"pgd20@{r:g}"] for r in radii]
    pgd20, strong = sweep[0], acc[f"pgd{steps}x{restarts}"]
    white_box = {k: acc[k] for k in ("apgd-ce", "apgd-t") if k in acc} | {f"pgd{steps}x{restarts}": strong}
    return [
        Sign(
            "eps_sweep",
            sweep[-1] <= tol and all(b <= a + tol for a, b in zip(sweep, sweep[1:], strict=False)),
            f"PGD-20 accuracy falls with ε and reaches ~0% at ε = {radii[-1]:g}",
            {f"pgd20 eps={r:g}": a for r, a in zip(radii, sweep, strict=True)},
        ),
        Sign(
            "more_iterations",
            strong <= pgd20 + tol,
            f"PGD-{steps} with {restarts} restarts <= PGD-20",
            {f"pgd{steps}x{restarts}": strong, "pgd20": pgd20},
        ),
        Sign(
            "black_box",
            acc["square"] >= min(white_box.values()) - tol,
            "black-box Square >= the strongest white-box attack",
            {"square": acc["square"], **white_box},
        ),
        Sign("single_step", acc["fgsm"] >= pgd20 - tol, "FGSM >= PGD-20", {"fgsm": acc["fgsm"], "pgd20": pgd20}),
        Sign(
            "random_noise",
            acc["noise"] >= pgd20 - tol,
            "worst of random points in the ε-ball >= PGD-20",
            {"noise": acc["noise"], "pgd20": pgd20, "clean": acc["clean"]},
        ),
    ]


def sanity_check_run(
    run_dir: str | Path,
    *,
    which: str = "last",
    n: int | None = None,
    eps: float | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    **options: Any,
) -> SanityReport:
    """:func:`sanity_check` of a run directory's model on its test images (``n``: a stratified subset,
    the same one ``sparta eval --n`` uses) at its evaluation radius (or ``eps``)."""
    from dataclasses import replace

    from .training import load_run, load_test_data, resolve_device

    run = Path(run_dir)
    model_file = run / ("checkpoint.pt" if which == "last" else "best.pt")
    if not (run / "config.json").is_file() or not model_file.is_file():
        raise FileNotFoundError(
            f"{run} holds no trained model ({model_file.name} missing): a sanity check needs a run directory "
            "written by `sparta train` (or a study job directory) that finished at least one epoch"
        )
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    model, config = load_run(run, device=resolve_device(device), which=which)
    if data_dir:
        config = replace(config, data_dir=data_dir)
    config = config.with_threat_model()
    data = load_test_data(config, device=model_device(model))
    if n is not None and n < len(data):
        data = data.subset(n, seed=0)
    return sanity_check(model, data, eps=eps if eps is not None else config.eval_radius(), **options)
