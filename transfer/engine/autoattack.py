"""The official AutoAttack (Croce & Hein, ICML 2020; the ``pyautoattack`` package) in the attack registry.

Nothing here re-implements an attack: each spec configures ``pyautoattack.AutoAttack`` and calls its
``run_standard_evaluation``, so a number reported under these specs is the official code's.

- ``aa``: AutoAttack, standard version — APGD-CE (100 iterations), APGD-T (100 iterations, 9 target
  classes), FAB-T (9 target classes) and Square (5,000 queries), each stage attacking only the points
  the previous ones left unbroken. This is the version RobustBench reports.
- ``aa-rand``: the version for randomised defences — APGD-CE and APGD-DLR with 20 EOT iterations.
- ``apgd-ce``, ``apgd-t``, ``square``: one stage of the standard version alone, with its standard
  settings — cheaper looks, and upper bounds on ``aa``; not AutoAttack. ``apgd-tK`` (e.g. ``apgd-t3``)
  is APGD-T with K target classes instead of 9: K/9 of the cost, the K most likely wrong classes.
- ``apgd-ce+t``, ``apgd-ce+tK``: the standard version's first two stages as it runs them — APGD-CE on
  every image, APGD-T (9 or K target classes) on the images APGD-CE left robust; robust only if neither
  broke it. The same attacks and worst case as ``apgd-ce`` and ``apgd-tK`` run separately, without
  APGD-T's cost on the images APGD-CE already broke.

Two departures from calling the package bare, neither of which changes a result: the targeted stages
use ``min(9, classes − 1)`` target classes (the standard's 9 needs at least 10 classes; with fewer the
official code indexes past the logits), and the global RNG and ``sys.settrace`` hook are restored
afterwards (the package reseeds the first and clears the second). ``verbose=True`` shows the package's
stage-by-stage log on stderr; otherwise only its warnings (e.g. "Square lowered the robust accuracy")
get through. Record :func:`autoattack_version` next to every number these specs produce
(:func:`attack_provenance`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn

from ..attack_names import STANDARD_TARGETS, parse_apgd_t
from .attacks import DEFAULT_EPS, Attack, register_attack, spec_attacks

__all__ = [
    "OFFICIAL_METRICS",
    "is_official_metric",
    "AutoAttack",
    "AutoAttackRand",
    "APGDCE",
    "APGDT",
    "APGDCascade",
    "Square",
    "autoattack_version",
    "attack_provenance",
    "plumbing_budget",
]

PACKAGE = "pyautoattack"
_NORMS = {"linf": "Linf", "l2": "L2"}
_LOGGER = "auto-attack"  # the logger pyautoattack writes to
# (n_iter, n_queries, n_target_classes) every official spec built without its own takes: set by plumbing_budget
_PLUMBING: ContextVar[tuple[int, int, int] | None] = ContextVar("autoattack_plumbing_budget", default=None)


@contextmanager
def plumbing_budget(n_iter: int, n_queries: int, n_target_classes: int) -> Iterator[None]:
    """Within it, every official spec built without ``n_iter``/``n_queries``/``n_target_classes`` of its own
    runs that many iterations, Square queries and target classes: a rehearsal's quick plumbing check
    (``sparta study run --rehearse``) of every stage of ``aa`` at a tiny cost. Its numbers are not the spec's."""
    budget = (n_iter, n_queries, n_target_classes)
    for name, value in zip(("n_iter", "n_queries", "n_target_classes"), budget, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    token = _PLUMBING.set(budget)
    try:
        yield
    finally:
        _PLUMBING.reset(token)


def autoattack_version() -> str:
    """The installed ``pyautoattack`` version, e.g. ``"0.2.0"``."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise RuntimeError(
            f"the official AutoAttack ({PACKAGE}) is not installed; `pip install {PACKAGE}` "
            "(it is a dependency of sparta-transfer, so the environment is incomplete)"
        ) from None


def is_official_metric(metric: str) -> bool:
    """Whether ``metric``'s number comes from the official AutoAttack code (a stage, ``apgd-tK``, ``aa``,
    or a worst case of official stages such as ``apgd-ce+t``)."""
    return metric in OFFICIAL_METRICS or parse_apgd_t(metric) is not None


def attack_provenance(metrics: Iterable[str]) -> dict[str, str]:
    """``{"autoattack_version": "0.2.0"}`` when any of ``metrics`` comes from the official AutoAttack,
    else ``{}``: the field that travels next to those numbers (``metrics.json``, ``sparta eval``)."""
    if any(is_official_metric(m) for m in metrics):
        return {"autoattack_version": autoattack_version()}
    return {}


@contextmanager
def _contained(verbose: bool, device: torch.device) -> Iterator[None]:
    """The package's log at the chosen verbosity; the global RNG and the trace hook as they were."""
    logger = logging.getLogger(_LOGGER)
    level, handler = logger.level, None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("autoattack: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.WARNING)
    trace = sys.gettrace()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        sys.settrace(trace)
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)


class _Official(Attack):
    """Base of the official-AutoAttack specs: builds a configured ``pyautoattack.AutoAttack`` for the
    model and runs it on the batch it is given (one ``run_standard_evaluation`` call per batch). On a
    single batch the result is the package's, bit for bit. ``evaluate`` calls it batch by batch, so with
    more images than one batch the later stages see the survivors grouped per evaluation batch rather
    than across the whole set: the same attacks and settings, other random starts.

    ``n_iter``/``n_queries`` (``None``: the standard 100 / 5,000) exist for quick plumbing checks; a
    number measured with them changed is not the spec's. ``n_target_classes`` (``None``: the standard
    9) is what the ``apgd-tK`` specs set. Inside a :func:`plumbing_budget`, ``None`` takes the budget's.
    Eval mode only (``bn_mode="eval"``)."""

    config_keys = ("eps", "norm", "n_classes", "n_iter", "n_queries", "n_target_classes", "seed", "verbose", "bn_mode")
    stages: tuple[str, ...] = ()
    version = "custom"
    min_classes = 2

    def __init__(
        self,
        eps: float = DEFAULT_EPS,
        norm: str = "linf",
        n_classes: int | None = None,
        n_iter: int | None = None,
        n_queries: int | None = None,
        n_target_classes: int | None = None,
        seed: int = 0,
        verbose: bool = False,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(eps, bn_mode)
        if bn_mode != "eval":
            raise ValueError(f"{self.registry_name} runs with the model in eval mode only (got bn_mode={bn_mode!r})")
        if norm.lower() not in _NORMS:
            raise ValueError(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if n_classes is not None and (not isinstance(n_classes, int) or n_classes < 2):
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        for name, value in (("n_iter", n_iter), ("n_queries", n_queries), ("n_target_classes", n_target_classes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None (the standard setting), got {value!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        budget = _PLUMBING.get()
        if budget is not None:
            n_iter, n_queries, n_target_classes = (
                given if given is not None else default
                for given, default in zip((n_iter, n_queries, n_target_classes), budget, strict=True)
            )
        self.norm = norm.lower()
        self.n_classes = n_classes
        self.n_iter = n_iter
        self.n_queries = n_queries
        self.n_target_classes = n_target_classes
        self.seed = seed
        self.verbose = bool(verbose)

    def build(self, model: nn.Module, n_classes: int, device: torch.device | str) -> Any:
        """The configured ``pyautoattack.AutoAttack`` for ``model`` (on ``device``)."""
        from pyautoattack import AutoAttack as Official

        if n_classes < self.min_classes:
            raise ValueError(
                f"{self.registry_name} needs a model of at least {self.min_classes} classes (its DLR loss reads "
                f"the {self.min_classes - 1} largest other logits), got {n_classes}; use apgd-ce or pgd20"
            )
        common = {"eps": self.eps, "norm": _NORMS[self.norm], "seed": self.seed, "device": device}
        if self.version == "custom":
            adversary = Official(model, attacks=list(self.stages), version="custom", **common)
            adversary.apgd.n_restarts = 1  # the standard version's APGD-CE: one run (custom defaults to 5)
        else:
            adversary = Official(model, version=self.version, **common)
        targets = min(self.n_target_classes or STANDARD_TARGETS, n_classes - 1)
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_target_classes = targets
        if self.n_iter is not None:
            adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = self.n_iter
        if self.n_queries is not None:
            adversary.square.n_queries = self.n_queries
        adversary.verbose = self.verbose
        return adversary

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return x.clone()
        n_classes = self.n_classes
        if n_classes is None:
            with torch.no_grad():
                n_classes = int(model(x[:1]).shape[1])
        adversary = self.build(model, n_classes, x.device)
        # the package flattens APGD's DLR gradients with .view, which a channels-last batch (the engine's
        # layout) of more than one channel refuses: it gets the images in NCHW, the model takes both
        x = x.contiguous()
        with _contained(self.verbose, x.device):
            result = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        return result[0] if isinstance(result, tuple) else result  # 0.2.0 returns (x_adv, y_adv)


@register_attack("autoattack", spec="aa")
class AutoAttack(_Official):
    """AutoAttack through the official code: ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square —
    the spec ``aa``), ``"rand"`` (APGD-CE and APGD-DLR with EOT — ``aa-rand``) or ``"plus"``."""

    config_keys = (
        "eps",
        "version",
        "norm",
        "n_classes",
        "n_iter",
        "n_queries",
        "n_target_classes",
        "seed",
        "verbose",
        "bn_mode",
    )
    _VERSIONS = {"standard": 4, "plus": 4, "rand": 3}  # version → fewest classes its DLR losses need
    default_version = "standard"

    def __init__(self, eps: float = DEFAULT_EPS, version: str | None = None, **options: Any) -> None:
        version = self.default_version if version is None else version
        if version not in self._VERSIONS:
            raise ValueError(f"AutoAttack version must be one of {', '.join(self._VERSIONS)}, got {version!r}")
        self.version = version
        self.min_classes = self._VERSIONS[version]
        super().__init__(eps, **options)


@register_attack("autoattack-rand", spec="aa-rand")
class AutoAttackRand(AutoAttack):
    """AutoAttack's version for randomised defences (the spec ``aa-rand``): APGD-CE and APGD-DLR, each
    averaging the gradient over 20 forward passes (EOT)."""

    default_version = "rand"


@register_attack("apgd-ce", spec="apgd-ce")
class APGDCE(_Official):
    """APGD on the cross-entropy, alone: the standard AutoAttack's first stage (100 iterations, 1 run)."""

    stages = ("apgd-ce",)


@register_attack("apgd-t", spec="apgd-t")
class APGDT(_Official):
    """Targeted APGD on the DLR loss, alone: the standard AutoAttack's second stage (9 target classes)."""

    stages = ("apgd-t",)
    min_classes = 4


@register_attack("apgd-ce+t", spec="apgd-ce+t")
class APGDCascade(_Official):
    """APGD-CE on every image, then APGD-T only on the images it left robust (correct clean and attacked):
    the specs ``apgd-ce+t`` / ``apgd-ce+tK``, AutoAttack's rule for running its first two stages. Each stage
    is the registered official one (:class:`APGDCE`, :class:`APGDT`) built with this attack's options, so
    the worst case is that of the two stages run separately on every image (up to APGD-T's random starts,
    which depend on the batch it is given), at the cost of APGD-T on the survivors only. ``evaluate``
    runs the stages itself (:meth:`attack_survivors`) to report APGD-CE's number too and to share one
    APGD-CE with an ``apgd-ce`` asked for beside it."""

    min_classes = APGDT.min_classes

    def __init__(self, eps: float = DEFAULT_EPS, **options: Any) -> None:
        super().__init__(eps, **options)
        self.untargeted = APGDCE(eps, **{k: v for k, v in options.items() if k != "n_target_classes"})
        self.targeted = APGDT(eps, **options)

    def attack_survivors(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, robust: torch.Tensor
    ) -> torch.Tensor:
        """``x_adv`` (APGD-CE's images) with APGD-T's in place of the ``robust`` ones (a boolean mask):
        APGD-T sees only those images."""
        x_adv = x_adv.clone()
        if bool(robust.any()):
            x_adv[robust] = self.targeted(model, x[robust], y[robust])
        return x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.untargeted(model, x, y)
        with torch.no_grad():
            robust = (model(x).argmax(dim=1) == y) & (model(x_adv).argmax(dim=1) == y)
        return self.attack_survivors(model, x, y, x_adv, robust)


@register_attack("square", spec="square")
class Square(_Official):
    """Square Attack (black-box, 5,000 queries), alone: the standard AutoAttack's last stage."""

    stages = ("square",)


# The specs (= metric names) whose numbers come from this module: the named specs registered above.
OFFICIAL_METRICS = frozenset(spec for spec, cls in spec_attacks().items() if issubclass(cls, _Official))
