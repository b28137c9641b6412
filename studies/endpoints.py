"""Declared comparisons: the endpoints a verdict is stated on before the numbers are read.

A transfer matrix adjusts its p-values over every cell it compares; a write-up usually declares a few
endpoints first (transferred − ReLU, transferred − in place, on the cells the question is about) and adjusts
over those alone. :func:`compare` takes such a list of (row, reference, column) and answers each with
``studies.stats.paired_difference`` over seeds and test images, Holm-adjusted over the list's distinct tests
(``sparta study compare DIR --pair ROW REFERENCE COLUMN ...``; the table's ``attrs["n_tests"]``).

With ``against`` (``--against OTHER_DIR``), each comparison is the change of its gap between two studies
that share seeds and test images, e.g. the same cells at 48 and at 24 epochs: (row − reference here) −
(row − reference there), over the seeds both have, paired image by image where both evaluated the same test
images (else seed by seed), with ``studies.stats.difference_in_differences``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .paired import PairedOutcomes, PerImageStore, paired_outcomes
from .stats import adjusted_verdict, difference_in_differences, format_points, holm_distinct, paired_difference

__all__ = ["ENDPOINT_COLUMNS", "compare", "comparison_cells"]

ENDPOINT_COLUMNS = (
    "row",
    "reference",
    "column",
    "metric",
    "seeds",
    "images",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "p_equivalence_adjusted",
    "verdict",
)


def compare(
    results: pd.DataFrame,
    metric: str,
    pairs: Sequence[tuple[str, str, str]],
    *,
    store: PerImageStore | None = None,
    margin: float = 1.0,
    alpha: float = 0.05,
    against: tuple[pd.DataFrame, PerImageStore | None] | None = None,
) -> pd.DataFrame:
    """One line per ``(row, reference, column)``: the paired difference row − reference in that column under
    ``metric``, its interval and verdict, Holm-adjusted over the distinct tests of ``pairs`` (one declared
    twice, or under two labels of the same jobs, counts once; ``table.attrs["n_tests"]``). A pair without a
    shared seed is an error naming it."""
    if not pairs:
        raise ValueError("no comparison given; name at least one (row, reference, column)")
    sel = _metric_rows(results, metric)
    if sel.empty:
        raise ValueError(f"no results for metric {metric!r}")
    other = None if against is None else (_metric_rows(against[0], metric), against[1])
    answered = []
    for row, reference, column in pairs:
        outcomes = paired_outcomes(sel, metric, row, column, reference, store)
        if outcomes is None:
            rows, columns = sorted(set(sel["row"].astype(str))), sorted(set(sel["column"].astype(str)))
            raise ValueError(
                f"no seed has both {row!r} and {reference!r} in column {column!r}; rows: {rows}; columns: {columns}"
            )
        if against is None:
            result = paired_difference(outcomes.row, outcomes.ref, margin=margin, alpha=alpha)
        else:
            outcomes, result = _change_of_gap(outcomes, other, metric, row, reference, column, margin, alpha)
        answered.append((row, reference, column, outcomes, result))
    keys = [_test_key(sel, row, reference, column, outcomes.seeds) for row, reference, column, outcomes, _ in answered]
    p_adjusted, n_tests = holm_distinct(keys, [r.p_value for *_, r in answered])
    p_equivalence, _ = holm_distinct(keys, [r.p_equivalence for *_, r in answered])
    records = [
        {
            "row": row,
            "reference": ref,
            "column": column,
            "metric": metric,
            "seeds": r.n_seeds,
            "images": outcomes.row.shape[1] if outcomes.unit == "images" else 0,
            "diff": r.diff,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "p_value": r.p_value,
            "p_adjusted": float(p_adj),
            "p_equivalence_adjusted": float(p_eq),
            "verdict": adjusted_verdict(r.diff, float(p_adj), float(p_eq), alpha),
        }
        for (row, ref, column, outcomes, r), p_adj, p_eq in zip(answered, p_adjusted, p_equivalence, strict=True)
    ]
    table = pd.DataFrame.from_records(records, columns=list(ENDPOINT_COLUMNS))
    table.attrs["n_tests"] = n_tests
    return table


def _test_key(sel: pd.DataFrame, row: str, reference: str, column: str, seeds: Sequence[int]) -> tuple:
    """What makes two declared comparisons one test: the same jobs against the same reference jobs. A source
    job is also the "Sparta (in place)" row of its own column; declared under both labels, it is one test,
    and Holm counts it once (as the matrix does, ``studies.matrix_verdicts``)."""
    if "job_id" not in sel.columns:
        return (row, reference, column)
    cell = sel.loc[(sel["column"].astype(str) == column) & sel["seed"].isin(seeds)]
    jobs = cell.groupby(cell["row"].astype(str))["job_id"].agg(lambda ids: frozenset(map(str, ids)))
    return (column, jobs.get(row, frozenset({row})), jobs.get(reference, frozenset({reference})))


def _metric_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The results of ``metric``, their values as numbers."""
    sel = results.loc[results["metric"].astype(str) == metric].copy()
    sel["value"] = pd.to_numeric(sel["value"], errors="coerce")
    return sel


def _change_of_gap(
    here: PairedOutcomes,
    against: tuple[pd.DataFrame, PerImageStore | None],
    metric: str,
    row: str,
    reference: str,
    column: str,
    margin: float,
    alpha: float,
):
    """The gap ``row − reference`` here minus the same gap in the other study (``against``: its results of
    ``metric``, from :func:`_metric_rows`, and its per-image store), over the seeds both have."""
    sel, store = against
    there = paired_outcomes(sel, metric, row, column, reference, store)
    seeds = [s for s in here.seeds if there is not None and s in there.seeds]
    if not seeds:
        raise ValueError(f"the two studies share no seed of {row!r} and {reference!r} in column {column!r}")
    here, there = here.select(seeds), there.select(seeds)
    if not (here.unit == there.unit == "images" and here.fingerprint == there.fingerprint):
        here, there = here.accuracies(), there.accuracies()  # different test images: pair by seed only
    result = difference_in_differences(here.row, here.ref, there.row, there.ref, margin=margin, alpha=alpha)
    return here, result


def comparison_cells(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare`'s table as cell texts for ``studies.tables.render``: one line per comparison."""
    pts = format_points
    text = table.apply(lambda r: f"{pts(r['diff'])} [{pts(r['ci_low'])}, {pts(r['ci_high'])}]", axis=1)
    shown = table.assign(difference=text, p_adjusted=table["p_adjusted"].map(lambda p: f"{p:.3g}"))
    shown.index = [
        f"{r} − {ref} | {c}" for r, ref, c in zip(table["row"], table["reference"], table["column"], strict=True)
    ]
    return shown[["seeds", "images", "difference", "p_adjusted", "verdict"]].astype(str)
