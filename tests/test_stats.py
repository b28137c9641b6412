"""studies.stats: intervals over seeds and images together, verdicts, Holm, power."""

import numpy as np
import pytest

from studies.paired import mcnemar_exact
from studies.stats import (
    VarianceComponents,
    difference_in_differences,
    holm,
    holm_distinct,
    paired_difference,
    seeds_for_power,
    variance_components,
    verdict_of,
)


def _flip(bits: np.ndarray, worse: int, better: int, start: int) -> np.ndarray:
    """``bits`` with ``worse`` right images made wrong and ``better`` wrong images made right (from ``start``)."""
    out = bits.copy()
    right, wrong = np.flatnonzero(out == 1), np.flatnonzero(out == 0)
    out[right[start : start + worse]] = 0
    out[wrong[start : start + better]] = 1
    return out


def _base(seeds: int, images: int, rng: np.random.Generator, accuracy: float = 0.6) -> np.ndarray:
    hard = rng.random(images)  # an image hard for one model is hard for every model
    return np.stack([(hard + rng.normal(0, 0.1, images) < accuracy).astype(float) for _ in range(seeds)])


def test_seeds_that_disagree_are_inconclusive_where_pooled_mcnemar_is_significant():
    rng = np.random.default_rng(0)
    ref = _base(3, 500, rng)
    # per seed: -8, +4 and -2 points (40 images worse; 20 better; 10 worse)
    row = np.stack([_flip(ref[0], 40, 0, 0), _flip(ref[1], 0, 20, 0), _flip(ref[2], 10, 0, 0)])
    better, worse = int(((row == 1) & (ref == 0)).sum()), int(((row == 0) & (ref == 1)).sum())
    assert mcnemar_exact(better, worse) < 0.001  # pooling over seeds calls this a clear loss
    result = paired_difference(row, ref)
    assert result.diff == pytest.approx(100 * (row.mean() - ref.mean())) == pytest.approx(-2.0)
    assert result.verdict == "inconclusive"
    assert result.ci_low < -8 and result.ci_high > 4  # the seeds' spread is in the interval
    assert result.p_value > 0.2 and result.scope == "activations"


def test_a_consistent_effect_over_many_seeds_is_better_or_worse():
    rng = np.random.default_rng(1)
    ref = _base(10, 500, rng)
    row = np.stack([_flip(r, 20 + int(rng.integers(-3, 4)), 0, 5 * i) for i, r in enumerate(ref)])
    result = paired_difference(row, ref)
    assert result.verdict == "worse" and result.ci_high < 0 and result.p_value < 0.001
    flipped = paired_difference(ref, row)
    assert flipped.verdict == "better" and flipped.diff == pytest.approx(-result.diff)
    assert (flipped.ci_low, flipped.ci_high) == pytest.approx((-result.ci_high, -result.ci_low), abs=0.5)


def test_equivalence_needs_a_narrow_interval_inside_the_margin():
    rng = np.random.default_rng(2)
    ref = _base(10, 2000, rng)
    row = np.stack([_flip(r, 3, 3, 7 * i) for i, r in enumerate(ref)])  # 3 images lost, 3 won per seed
    result = paired_difference(row, ref, margin=1.0)
    assert result.diff == pytest.approx(0.0) and result.verdict == "equivalent"
    assert -1.0 < result.ci_low <= 0 <= result.ci_high < 1.0
    assert paired_difference(row, ref, margin=0.05).verdict == "inconclusive"
    # not significant with few seeds and images is not "equivalent"
    assert paired_difference(row[:2, :100], ref[:2, :100], margin=1.0).verdict == "inconclusive"


def test_under_the_null_the_interval_holds_where_pooled_mcnemar_does_not():
    """Rows that differ only by seed-to-seed training noise: our test rejects about alpha of the time,
    pooling images over seeds far more often."""
    rng = np.random.default_rng(3)
    ours = pooled = 0
    trials = 60
    for trial in range(trials):
        ref = _base(3, 300, rng)
        shifts = rng.normal(0, 6, 3).round().astype(int)  # a seed moves a model by ~6 points either way
        row = np.stack([_flip(r, max(-s, 0) * 3, max(s, 0) * 3, 0) for r, s in zip(ref, shifts, strict=True)])
        ours += paired_difference(row, ref, seed=trial, samples=500).p_value < 0.05
        b, c = int(((row == 1) & (ref == 0)).sum()), int(((row == 0) & (ref == 1)).sum())
        pooled += mcnemar_exact(b, c) < 0.05
    assert ours <= 0.1 * trials < 0.4 * trials <= pooled


def test_deterministic_for_a_seed_and_one_seed_compares_models():
    rng = np.random.default_rng(4)
    ref = _base(1, 400, rng)
    row = _flip(ref[0], 30, 0, 0)
    a, b = paired_difference(row, ref, seed=7), paired_difference(row, ref, seed=7)
    assert a == b and a.n_seeds == 1 and a.scope == "models" and a.verdict == "worse"
    accuracies = paired_difference(np.array([[0.5], [0.6], [0.55]]), np.array([[0.5], [0.5], [0.5]]))
    assert accuracies.n_images == 1 and accuracies.diff == pytest.approx(5.0) and accuracies.df == pytest.approx(2)


@pytest.mark.parametrize(
    "row, ref, message",
    [
        (np.ones((2, 3)), np.ones((3, 2)), "shapes differ"),
        (np.full((2, 3), np.nan), np.ones((2, 3)), "without NaN"),
        (np.full((2, 3), 2.0), np.ones((2, 3)), r"in \[0, 1\]"),
        (np.ones((2, 2, 2)), np.ones((2, 2, 2)), r"\(seeds, images\)"),
    ],
)
def test_bad_inputs_are_refused(row, ref, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(row, ref)


def test_holm_adjusts_step_down_monotone_and_capped():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    adjusted = holm(p)
    assert np.allclose(adjusted[[0, 1, 2, 4]], [0.04, 0.09, 0.09, 0.5]) and np.isnan(adjusted[3])
    assert (holm([0.9, 0.8]) == [1.0, 1.0]).all()
    assert holm([0.001])[0] == 0.001
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_holm_distinct_counts_a_repeated_test_once():
    keys = ["a", "b", "a", "c"]
    adjusted, n = holm_distinct(keys, [0.01, 0.04, 0.01, 0.5])
    assert n == 3 and np.allclose(adjusted, [*holm([0.01, 0.04, 0.5])[[0, 1]], holm([0.01, 0.04, 0.5])[0], 0.5])
    assert adjusted[1] == pytest.approx(0.08)  # 2 × 0.04 over three distinct tests, not 3 × 0.04 over four
    with pytest.raises(ValueError, match="2 keys for 1"):
        holm_distinct(["a", "b"], [0.1])


def test_verdict_rules():
    assert verdict_of(-3, 0.01, 0.9, 0.05) == "worse"
    assert verdict_of(2, 0.01, 0.9, 0.05) == "better"
    assert verdict_of(0.1, 0.6, 0.01, 0.05) == "equivalent"
    assert verdict_of(0.1, 0.6, 0.2, 0.05) == "inconclusive"


def test_power_needs_more_seeds_for_smaller_effects_and_more_seed_noise():
    rng = np.random.default_rng(5)
    ref = _base(6, 500, rng)
    row = np.stack([_flip(r, int(s), 0, 0) for r, s in zip(ref, [0, 15, 5, 25, 10, 20], strict=True)])
    vc = variance_components(row, ref)
    assert vc.seed > 0 and vc.residual > 0 and (vc.n_seeds, vc.n_images) == (6, 500)
    big, small = seeds_for_power(vc, 6.0), seeds_for_power(vc, 2.0)
    assert big is not None and small is not None and 2 <= big < small
    quiet = VarianceComponents(seed=0.0, image=0.0, residual=1.0, n_seeds=3, n_images=500)
    assert seeds_for_power(quiet, 5.0) == 2
    hopeless = VarianceComponents(seed=1e6, image=0.0, residual=0.0, n_seeds=3, n_images=500)
    assert seeds_for_power(hopeless, 0.1, max_seeds=50) is None
    with pytest.raises(ValueError, match="at least 2 seeds"):
        variance_components(row[:1], ref[:1])


def test_a_change_of_gap_between_two_designs_is_tested_cell_by_cell():
    rng = np.random.default_rng(3)
    ref_b = _base(8, 500, rng)  # design B (say 24 epochs): the row 4 points below its reference on every seed
    row_b = np.stack([_flip(seed, 20, 0, 0) for seed in ref_b])
    ref_a = _base(8, 500, rng)  # design A (48 epochs): the row 2 points above on every seed
    row_a = np.stack([_flip(seed, 0, 10, 0) for seed in ref_a])
    did = difference_in_differences(row_a, ref_a, row_b, ref_b)
    gap_a, gap_b = paired_difference(row_a, ref_a), paired_difference(row_b, ref_b)
    assert did.diff == pytest.approx(gap_a.diff - gap_b.diff) == pytest.approx(6.0)
    assert did.verdict == "better" and did.ci_low > 0  # the gap grew by 6 points, consistently
    # with no gap in B, it is the plain paired difference of A
    same = difference_in_differences(row_a, ref_a, ref_b, ref_b)
    assert (same.diff, same.ci_low, same.ci_high) == pytest.approx((gap_a.diff, gap_a.ci_low, gap_a.ci_high))
    # seeds that disagree about the change: no verdict
    swings = [-8, 6, -4, 8, -6, 4, -2, 2]
    row_s = np.stack([_flip(r, max(0, -w) * 5, max(0, w) * 5, 0) for r, w in zip(ref_a, swings, strict=True)])
    assert difference_in_differences(row_s, ref_a, ref_b, ref_b).verdict == "inconclusive"
    with pytest.raises(ValueError, match="paired by seed and image"):
        difference_in_differences(row_a, ref_a, row_b[:3], ref_b[:3])


def test_one_difference_prints_the_same_digits_whatever_float_path_reached_it():
    from studies.stats import format_points

    # fashion48's Sparta in place − ReLU on the ResNet-18: 59.85 − 59.3 points, computed as the mean of
    # per-seed differences (the matrix) and as a difference of means (a comparison's per-image bits)
    row = np.array([60.8, 60.8, 60.6, 59.8, 59.2, 56.8, 60.6, 60.2])
    ref = np.array([59.2, 60.4, 58.2, 59.4, 59.6, 58.2, 60.4, 59.0])
    by_seed, by_mean = float(np.mean(row - ref)), float(row.mean() - ref.mean())
    assert f"{by_seed:+.1f}" != f"{by_mean:+.1f}"  # the two paths straddle the rounding boundary
    assert format_points(by_seed) == format_points(by_mean) == "+0.6"
    assert format_points(-2.04) == "-2.0" and format_points(3.0, 2) == "+3.00"
