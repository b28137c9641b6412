"""How often each test calls a difference where there is none: rows that differ from their reference only
by seed-to-seed training noise (docs/evaluation.md, "Verdicts").

    python benchmarks/stats_calibration.py                  # 3 and 8 seeds, 200 null cases each
    python benchmarks/stats_calibration.py --seeds 3 --cases 60 --images 300

Each case: a reference with per-image correctness that is correlated across seeds (a hard image is hard
for every model), and a row that is the reference shifted, seed by seed, by a normal(0, --shift-sd) number
of points (so the true mean difference is 0). It prints the share of cases in which
``studies.stats.paired_difference`` and McNemar's test pooled over seeds give p < 0.05.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from studies.paired import mcnemar_exact
from studies.stats import paired_difference


def _reference(seeds: int, images: int, rng: np.random.Generator) -> np.ndarray:
    hard = rng.random(images)
    return np.stack([(hard + rng.normal(0, 0.1, images) < 0.6) for _ in range(seeds)])


def _shifted(bits: np.ndarray, shift: int) -> np.ndarray:
    out = bits.copy()
    idx = np.flatnonzero(~out if shift > 0 else out)[: abs(shift)]
    out[idx] = shift > 0
    return out


def rejection_rates(
    seeds: int, cases: int, images: int, shift_sd: float, rng: np.random.Generator
) -> tuple[float, float]:
    ours = pooled = 0
    for case in range(cases):
        ref = _reference(seeds, images, rng)
        shifts = np.round(rng.normal(0, shift_sd, seeds) * images / 100).astype(int)
        row = np.stack([_shifted(r, int(s)) for r, s in zip(ref, shifts, strict=True)])
        ours += paired_difference(row.astype(float), ref.astype(float), seed=case, samples=500).p_value < 0.05
        pooled += mcnemar_exact(int((row & ~ref).sum()), int((~row & ref).sum())) < 0.05
    return ours / cases, pooled / cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--shift-sd", type=float, default=6.0, help="seed-to-seed sd of the shift, points")
    parser.add_argument("--rng", type=int, default=11)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.rng)
    for seeds in args.seeds:
        ours, pooled = rejection_rates(seeds, args.cases, args.images, args.shift_sd, rng)
        print(
            f"{seeds} seeds, {args.images} images, {args.cases} null cases: studies.stats rejects {ours:.1%}, "
            f"pooled McNemar {pooled:.1%} (at p < 0.05; nominal 5%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
