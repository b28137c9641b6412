"""How many paired seeds a study needs: the power analysis behind ``sparta study power``.

From a finished study (or a pilot of one), each cell's difference to the reference row is split into its
variance components over seeds and test images (``studies.stats.variance_components``), and
``studies.stats.seeds_for_power`` says how many paired seeds detect a true difference of ``effect``
points with the wanted power, evaluating ``images`` test images per seed. Plan the seeds before running
(Card et al. 2020): a study too small to detect the effect it asks about can only end "inconclusive".
"""

from __future__ import annotations

import math

import pandas as pd

from .matrix import reference_row
from .paired import PerImageStore, paired_outcomes
from .stats import VarianceComponents, seeds_for_power, variance_components

__all__ = ["POWER_COLUMNS", "power_table"]

POWER_COLUMNS = (
    "row",
    "column",
    "pilot_seeds",
    "pilot_images",
    "unit",
    "seed_sd",
    "image_sd",
    "residual_sd",
    "images",
    "seeds_needed",
)


def power_table(
    results: pd.DataFrame,
    metric: str,
    *,
    effect: float,
    reference: str | None = None,
    store: PerImageStore | None = None,
    images: int | None = None,
    power: float = 0.8,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One line per (row, column) with at least two seeds paired with the reference: the pilot's variance
    components (standard deviations, points) and the paired seeds needed (NaN: more than 1,000).
    ``images`` defaults to each cell's own count of test images."""
    sel = results.loc[results["metric"].astype(str) == metric].copy()
    if sel.empty:
        raise ValueError(f"no results for metric {metric!r}")
    sel["value"] = pd.to_numeric(sel["value"], errors="coerce")
    ref = reference_row(sel, reference)
    if ref is None:
        raise ValueError("the study has no ReLU row to take differences to; pass --reference ROW")
    records = []
    for row, column in dict.fromkeys(zip(sel["row"].astype(str), sel["column"].astype(str), strict=True)):
        if row == ref:
            continue
        outcomes = paired_outcomes(sel, metric, row, column, ref, store)
        if outcomes is None or len(outcomes.seeds) < 2 or (outcomes.unit == "images" and outcomes.row.shape[1] < 2):
            continue
        if outcomes.unit == "accuracies":  # no per-image files: the seeds' accuracy differences alone
            d = 100.0 * (outcomes.row - outcomes.ref)[:, 0]
            vc = VarianceComponents(seed=float(d.var(ddof=1)), image=0.0, residual=0.0, n_seeds=len(d), n_images=1)
        else:
            vc = variance_components(outcomes.row, outcomes.ref)
        n_images = images or vc.n_images
        needed = seeds_for_power(vc, effect, images=n_images, power=power, alpha=alpha)
        records.append(
            {
                "row": row,
                "column": column,
                "pilot_seeds": len(outcomes.seeds),
                "pilot_images": outcomes.row.shape[1],
                "unit": outcomes.unit,
                "seed_sd": math.sqrt(vc.seed),
                "image_sd": math.sqrt(vc.image),
                "residual_sd": math.sqrt(vc.residual),
                "images": n_images,
                "seeds_needed": float("nan") if needed is None else float(needed),
            }
        )
    if not records:
        raise ValueError(
            f"no cell has two or more seeds paired with {ref!r} for {metric!r}: a power analysis needs a pilot "
            "with at least 2 seeds (run the study with seeds = [0, 1] first)"
        )
    return pd.DataFrame.from_records(records, columns=list(POWER_COLUMNS))
