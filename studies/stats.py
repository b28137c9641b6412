"""The statistics every matrix, figure and verdict of a study uses: a difference between two rows over
seeds and test images together, its interval, its verdict, corrections for many comparisons, and power.

**The design.** A row and its reference are trained with the same seeds and evaluated on the same test
images, so their per-image correctness forms two (seeds × images) arrays paired cell by cell. Two sources
of noise are crossed in them: the training seed (another seed trains another model) and the test images
(another draw of images scores it differently). An image's outcome is correlated across seeds — the same
image is hard for every model — so a test that pools discordant images over seeds (McNemar's, summed)
treats seed-to-seed swings as if they were image noise and reports certainty the design does not have.

**The interval** (:func:`paired_difference`) is the wider of two 95 % intervals, each resampling or
modelling seeds and images together:

- the two-way ("pigeonhole") cluster bootstrap of Owen (2007): seeds and images are resampled with
  replacement, independently, and the mean difference recomputed on the crossed resample;
- a two-way random-effects interval: the variance of the mean difference estimated from the mean squares
  of seeds and images of the difference array, ``(MS_seed + MS_image) / (S·N)`` (which over-counts the
  residual term, so it errs wide), with a t quantile on the seeds' S − 1 degrees of freedom (fewer than
  Satterthwaite's, so again wide; with one seed, the images' N − 1). With few seeds the bootstrap alone
  is too narrow — three seeds resampled give two thirds of the seed variance and a normal-like spread
  where a t with two degrees of freedom is due — and this interval is the one that holds there; with many
  seeds the two come close.

``p_value`` is the larger of the two tests' p-values, so ``p_value < alpha`` exactly when the interval
excludes 0. **The verdict**: ``better``/``worse`` when the interval excludes 0; ``equivalent`` when the
two one-sided tests (TOST, Schuirmann 1987) put the difference inside ±``margin`` points at ``alpha``
(the 1 − 2α interval lies inside the margin); ``inconclusive`` otherwise. "Not significant" is not
"equivalent": a wide interval around 0 is inconclusive.

**One seed.** With one seed there is no seed variance to estimate; the interval then covers the test
images only, and a verdict compares two trained models, not two activations. :attr:`PairedDifference.scope`
says which (``"models"`` with one seed, ``"activations"`` with two or more); figures mark cells only in
the second case.

**A change of gap.** :func:`difference_in_differences` tests how a gap ``row − ref`` changed between two
designs sharing seeds and test images (48 against 24 epochs): one difference of differences per
(seed, image), with the same interval and verdict.

**Many comparisons.** :func:`holm` adjusts a family of p-values (Holm 1979); a transfer matrix adjusts over
the cells of one metric and reference, and :func:`adjusted_verdict` gives the verdict a family allows.

**Power.** :func:`variance_components` reads the seed, image and residual variances off a pilot's
difference array; :func:`seeds_for_power` says how many paired seeds detect a given effect.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "VERDICTS",
    "PairedDifference",
    "VarianceComponents",
    "adjusted_verdict",
    "difference_in_differences",
    "format_points",
    "holm",
    "holm_distinct",
    "paired_difference",
    "seeds_for_power",
    "variance_components",
    "verdict_of",
]

VERDICTS = ("better", "worse", "equivalent", "inconclusive")
BOOTSTRAP_SAMPLES = 2000  # bootstrap resamples (the interval is the wider of this and the random-effects one)
MAX_CELLS = 50_000_000  # seeds × images a comparison may hold (a guard against a corrupt per-image file)


@dataclass(frozen=True)
class PairedDifference:
    """A row minus its reference, in percentage points, over ``n_seeds`` × ``n_images`` paired outcomes."""

    diff: float  # 100 · (mean(row) − mean(ref))
    ci_low: float  # the 1 − alpha interval of diff (the wider of bootstrap and random-effects)
    ci_high: float
    p_value: float  # two-sided, H0: diff = 0 (the larger of the two tests' p-values)
    p_equivalence: float  # TOST, H0: |diff| >= margin
    verdict: str  # better | worse | equivalent | inconclusive
    n_seeds: int
    n_images: int
    margin: float  # equivalence margin, points
    alpha: float
    se: float  # standard error of diff (random-effects), points
    df: float  # its degrees of freedom (the seeds' S − 1; the images' N − 1 with one seed)

    @property
    def scope(self) -> str:
        """``"activations"`` when the seeds make the difference a property of the two activations,
        ``"models"`` when one seed makes it a difference between two trained models."""
        return "activations" if self.n_seeds >= 2 else "models"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scope": self.scope}


def _as_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:  # one seed
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name} must be a (seeds, images) array of per-image outcomes, got shape {array.shape}")
    if array.size > MAX_CELLS:
        raise ValueError(f"{name} holds {array.size} outcomes, more than the {MAX_CELLS} a comparison may hold")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{name} must hold outcomes in [0, 1] (per-image correctness bits), without NaN")
    return array


def _random_effects(d: np.ndarray) -> tuple[float, float]:
    """Standard error of the mean of the (S, N) difference array ``d`` and its degrees of freedom, from
    the two-way mean squares: ``(MS_seed + MS_image) / (S·N)`` on the seeds' S − 1 degrees of freedom
    (the images' N − 1 with one seed). Both choices err wide (see the module docstring)."""
    s, n = d.shape
    grand = d.mean()
    variance = 0.0
    if s > 1:
        variance += n * float(((d.mean(axis=1) - grand) ** 2).sum()) / (s - 1) / (s * n)
    if n > 1:
        variance += s * float(((d.mean(axis=0) - grand) ** 2).sum()) / (n - 1) / (s * n)
    if variance <= 0:
        return 0.0, math.inf
    return math.sqrt(variance), float(s - 1 if s > 1 else n - 1)


def _bootstrap(d: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``samples`` two-way resamples of ``d``: seeds and images drawn with replacement,
    independently (Owen's pigeonhole bootstrap), as resample counts so no array is copied."""
    s, n = d.shape
    seed_counts, image_counts = _resample_counts(rng, samples, s), _resample_counts(rng, samples, n)
    return np.einsum("bs,bs->b", seed_counts, image_counts @ d.T.astype(np.float32)).astype(float) / (s * n)


def _resample_counts(rng: np.random.Generator, samples: int, n: int) -> np.ndarray:
    """(samples, n): how often each of ``n`` units is drawn in each resample of ``n`` draws with replacement."""
    index = np.int32 if samples * n < 2**31 else np.int64
    draws = rng.integers(0, n, size=(samples, n), dtype=index) + n * np.arange(samples, dtype=index)[:, None]
    return np.bincount(draws.ravel(), minlength=samples * n).reshape(samples, n).astype(np.float32)


def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import norm, t

    return float(t.ppf(q, df)) if math.isfinite(df) else float(norm.ppf(q))


def _t_sf(x: float, df: float) -> float:
    from scipy.stats import norm, t

    return float(t.sf(x, df)) if math.isfinite(df) else float(norm.sf(x))


def verdict_of(diff: float, p_value: float, p_equivalence: float, alpha: float) -> str:
    """better/worse when the difference test rejects 0 at ``alpha``, equivalent when TOST rejects
    |diff| >= margin at ``alpha``, inconclusive otherwise."""
    if p_value < alpha:
        return "better" if diff > 0 else "worse"
    if p_equivalence < alpha:
        return "equivalent"
    return "inconclusive"


def paired_difference(
    row: Any,
    ref: Any,
    *,
    margin: float = 1.0,
    alpha: float = 0.05,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> PairedDifference:
    """``row`` minus ``ref``: arrays of shape (seeds, images) of per-image correctness (0/1), paired by
    seed and by image (a 1-D array is one seed). See the module docstring for the interval and verdict.

    Per-seed accuracies alone (no per-image bits) also work, as (seeds, 1) arrays of fractions: the
    interval is then the paired t-interval over seeds. Deterministic for a given ``seed``.
    """
    a, b = _paired_arrays(row=row, ref=ref)
    return _difference(100.0 * (a - b), margin=margin, alpha=alpha, seed=seed, samples=samples)


def difference_in_differences(
    row_a: Any,
    ref_a: Any,
    row_b: Any,
    ref_b: Any,
    *,
    margin: float = 1.0,
    alpha: float = 0.05,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> PairedDifference:
    """How much the gap ``row − ref`` changed between two designs A and B that share seeds and test images
    (48 against 24 epochs, say): ``(row_a − ref_a) − (row_b − ref_b)``, every array (seeds, images) of
    per-image correctness, paired by seed and image across all four. Each (seed, image) cell gives one
    difference of differences, and the interval and verdict are :func:`paired_difference`'s over those cells
    (seeds and images resampled together): ``better`` means the gap is larger in A than in B. Two designs
    compared by their separate intervals ("significant in one, not in the other") is not this test."""
    a, ra, b, rb = _paired_arrays(row_a=row_a, ref_a=ref_a, row_b=row_b, ref_b=ref_b)
    return _difference(100.0 * ((a - ra) - (b - rb)), margin=margin, alpha=alpha, seed=seed, samples=samples)


def _paired_arrays(**named: Any) -> list[np.ndarray]:
    """The named arrays as (seeds, images) arrays, which must all have one shape (paired by seed and image)."""
    arrays = [_as_array(x, name) for name, x in named.items()]
    if len({x.shape for x in arrays}) != 1:
        *first, last = named
        listed = f"{', '.join(first)} and {last}"
        shapes = " vs ".join(str(x.shape) for x in arrays)
        raise ValueError(f"{listed} must be paired by seed and image; shapes differ: {shapes}")
    return arrays


def _difference(d: np.ndarray, *, margin: float, alpha: float, seed: int, samples: int) -> PairedDifference:
    """Interval, p-values and verdict of the mean of ``d``, an (S, N) array of paired differences in points."""
    if not (isinstance(margin, int | float) and margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive number of percentage points, got {margin!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    diff = float(d.mean())
    se, df = _random_effects(d)
    boot = _bootstrap(d, samples, np.random.default_rng(seed)) if d.size > 1 else np.array([diff])

    t_half = _t_quantile(1 - alpha / 2, df) * se
    boot_low, boot_high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    ci_low, ci_high = min(diff - t_half, float(boot_low)), max(diff + t_half, float(boot_high))

    p_t = 2 * _t_sf(abs(diff) / se, df) if se > 0 else float(diff == 0)
    p_boot = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    p_value = min(1.0, max(p_t, p_boot if se > 0 else p_t))

    # TOST: both one-sided tests at alpha, i.e. the 1 − 2·alpha interval (of either method) inside ±margin
    if se > 0:
        p_tost_t = max(_t_sf((diff + margin) / se, df), _t_sf((margin - diff) / se, df))
        p_tost_boot = max(float((boot <= -margin).mean()), float((boot >= margin).mean()))
        p_equivalence = min(1.0, max(p_tost_t, p_tost_boot))
    else:
        p_equivalence = 0.0 if abs(diff) < margin else 1.0
    return PairedDifference(
        diff=diff,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=float(p_value),
        p_equivalence=float(p_equivalence),
        verdict=verdict_of(diff, p_value, p_equivalence, alpha),
        n_seeds=int(d.shape[0]),
        n_images=int(d.shape[1]),
        margin=float(margin),
        alpha=float(alpha),
        se=float(se),
        df=float(df),
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order: step-down ``(m − k)·p₍ₖ₎`` made monotone and
    capped at 1. NaN entries are left NaN and do not count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    if (p[valid] < 0).any() or (p[valid] > 1).any():
        raise ValueError("p-values must lie in [0, 1]")
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def holm_distinct(keys: Sequence[Hashable], p_values: Sequence[float]) -> tuple[np.ndarray, int]:
    """:func:`holm` over the distinct tests of a list in which one test may appear several times (``keys``
    equal where the comparisons are the same: the same jobs against the same reference jobs). Each test
    counts once in the family; every entry gets its test's adjusted p-value. Returns those and the number
    of distinct tests."""
    if len(keys) != len(p_values):
        raise ValueError(f"{len(keys)} keys for {len(p_values)} p-values")
    first: dict[Hashable, float] = {}
    for key, p in zip(keys, p_values, strict=True):
        first.setdefault(key, float(p))
    adjusted = dict(zip(first, holm(list(first.values())), strict=True))
    return np.array([adjusted[k] for k in keys], dtype=float), len(first)


def adjusted_verdict(diff: float, p_adjusted: float, p_equivalence_adjusted: float, alpha: float = 0.05) -> str:
    """The verdict a family of comparisons allows: :func:`verdict_of` on Holm-adjusted p-values."""
    if math.isnan(p_adjusted):
        return "inconclusive"
    return verdict_of(diff, p_adjusted, p_equivalence_adjusted, alpha)


@dataclass(frozen=True)
class VarianceComponents:
    """Variances of the per-outcome difference (points²) from a (seeds × images) pilot: between seeds,
    between images, and what is left; ``n_seeds``/``n_images`` are the pilot's."""

    seed: float
    image: float
    residual: float
    n_seeds: int
    n_images: int

    def standard_error(self, seeds: int, images: int) -> float:
        """Standard error (points) of a mean difference over ``seeds`` × ``images`` paired outcomes."""
        return math.sqrt(self.seed / seeds + self.image / images + self.residual / (seeds * images))


def variance_components(row: Any, ref: Any) -> VarianceComponents:
    """Method-of-moments variance components of ``row − ref`` (points), from the two-way mean squares of a
    pilot with at least two seeds and two images (negative estimates are set to 0)."""
    d = 100.0 * (_as_array(row, "row") - _as_array(ref, "ref"))
    s, n = d.shape
    if s < 2 or n < 2:
        raise ValueError(
            f"variance components need at least 2 seeds and 2 images of a pilot, got {s} seed(s) × {n} image(s)"
        )
    grand, seed_means, image_means = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * float(((seed_means - grand) ** 2).sum()) / (s - 1)
    ms_image = s * float(((image_means - grand) ** 2).sum()) / (n - 1)
    residual = d - seed_means[:, None] - image_means[None, :] + grand
    ms_residual = float((residual**2).sum()) / ((s - 1) * (n - 1))
    return VarianceComponents(
        seed=max(0.0, (ms_seed - ms_residual) / n),
        image=max(0.0, (ms_image - ms_residual) / s),
        residual=ms_residual,
        n_seeds=s,
        n_images=n,
    )


def _power(effect: float, se: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test at ``alpha`` against a true difference ``effect`` (points)."""
    from scipy.stats import nct

    if se <= 0:
        return 1.0
    crit = _t_quantile(1 - alpha / 2, df)
    ncp = abs(effect) / se
    power = float(nct.sf(crit, df, ncp) + nct.cdf(-crit, df, ncp))
    if not math.isfinite(power):  # scipy's noncentral t fails far out in the tail: the normal approximation
        from scipy.stats import norm

        power = float(norm.sf(crit - ncp))
    return power


def seeds_for_power(
    components: VarianceComponents,
    effect: float,
    *,
    images: int | None = None,
    power: float = 0.8,
    alpha: float = 0.05,
    max_seeds: int = 1000,
) -> int | None:
    """The fewest paired seeds (≥ 2) whose two-sided test at ``alpha`` detects a true difference of
    ``effect`` points with probability ``power``, evaluating ``images`` test images (default: the pilot's).
    The test's degrees of freedom are the seeds' (S − 1), as the seed term dominates with few seeds.
    ``None`` if more than ``max_seeds`` would be needed (e.g. an image term alone already too large)."""
    if not effect or not math.isfinite(effect):
        raise ValueError(f"effect must be a non-zero number of percentage points, got {effect!r}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    n = images or components.n_images
    for seeds in range(2, max_seeds + 1):
        if _power(effect, components.standard_error(seeds, n), seeds - 1, alpha) >= power:
            return seeds
    return None


def format_points(value: float, digits: int = 1) -> str:
    """A signed difference in points as every table and figure prints it (``+0.6``, ``-2.1``). Rounded to
    9 decimals first, so one difference reached by two float paths (a matrix's mean of per-seed
    differences, a comparison's per-image bits: 0.5499999… and 0.5500000…) prints the same digits."""
    return f"{round(float(value), 9):+.{digits}f}"
