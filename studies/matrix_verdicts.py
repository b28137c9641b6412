"""The verdicts of a transfer matrix: every cell against the reference row of its column
(``studies.stats.paired_difference``, over seeds and the jobs' per-image bits where stored), then Holm over
the matrix's distinct tests. A comparison counts once however many rows show it: a source job is also the
"Sparta (in place)" row of its own column (one training, one job), and those two cells compare the same
jobs with the same reference — counted twice, they would make every other verdict of the matrix more
conservative for nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .paired import PerImageStore, paired_outcomes
from .stats import PairedDifference, adjusted_verdict, holm_distinct, paired_difference

__all__ = ["compare_cells"]


def compare_cells(
    sel: pd.DataFrame,
    metric: str,
    reference: str,
    store: PerImageStore | None,
    frames: dict[str, pd.DataFrame],
    verdict: pd.DataFrame,
    margin: float,
    alpha: float,
) -> int:
    """Every cell against the reference of its column (``studies.stats``), then Holm over the matrix;
    returns the number of distinct tests Holm adjusted over."""
    values = sel.groupby(["row", "column", "seed"], sort=False)["value"].mean()
    compared: list[tuple[str, str, PairedDifference]] = []
    for row in frames["mean"].index:
        for column in frames["mean"].columns:
            if row == reference:
                continue
            outcomes = paired_outcomes(sel, metric, row, column, reference, store)
            if outcomes is None:
                continue
            result = paired_difference(outcomes.row, outcomes.ref, margin=margin, alpha=alpha)
            per_seed = np.array([values[row, column, s] - values[reference, column, s] for s in outcomes.seeds])
            frames["diff_mean"].loc[row, column] = float(per_seed.mean())  # = result.diff, from the table's values
            frames["diff_std"].loc[row, column] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan
            frames["n_paired"].loc[row, column] = float(result.n_seeds)
            for name in ("ci_low", "ci_high", "p_value", "p_equivalence", "n_images"):
                frames[name].loc[row, column] = float(getattr(result, name))
            compared.append((row, column, result))
    # One comparison, one test: a row shown twice (a source is also "Sparta (in place)" on its own column)
    # compares the same jobs with the same reference, so Holm counts it once, not once per row it is in.
    jobs = sel.groupby(["row", "column"], sort=False)["job_id"].agg(frozenset) if "job_id" in sel else None
    keys = [(column, jobs[row, column]) if jobs is not None else (row, column) for row, column, _ in compared]
    p_adjusted, n_tests = holm_distinct(keys, [r.p_value for *_, r in compared])
    p_equivalence, _ = holm_distinct(keys, [r.p_equivalence for *_, r in compared])
    for (row, column, result), p_adj, p_eq in zip(compared, p_adjusted, p_equivalence, strict=True):
        frames["p_adjusted"].loc[row, column] = float(p_adj)
        verdict.loc[row, column] = adjusted_verdict(result.diff, float(p_adj), float(p_eq), alpha)
    present = frames["mean"].loc[reference].notna()  # the reference against itself: 0, untested
    frames["diff_mean"].loc[reference, present] = 0.0
    return n_tests
