"""Transfer matrices: the long results table pivoted per metric (``docs/sparta.md`` §5.5).

Rows are activation sources (ReLU, Sparta trained in place, every stored Sparta), columns are targets
(``arch / dataset``). A cell holds the mean and standard deviation over seeds, the number of seeds, and
the difference to a reference row of the same column (ReLU by default; SiLU or any baseline with
``reference=``) *paired by seed*: only seeds present in both rows count, so a missing seed never biases
the difference. Each column carries the L∞ ε its target was evaluated at (``TransferMatrix.eps``):
targets on different datasets are attacked in their own dataset's threat model. With three or more
paired seeds a paired t-test (``scipy.stats.ttest_rel``) gives a p-value; below that it is NaN.
Standard deviations are sample standard deviations (``ddof=1``) and NaN for a single seed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer.atomic import write_text

from .results import RESULT_COLUMNS

__all__ = [
    "REFERENCES",
    "REFERENCE_ROW",
    "TransferMatrix",
    "list_metrics",
    "present_references",
    "reference_row",
    "transfer_matrix",
    "write_matrices",
]

REFERENCE_ROW = "ReLU"
# The reference rows a study reports differences to: ReLU, and SiLU — Sparta's initialisation, the
# control that separates spatial attention from smoothness (Xie et al., smooth adversarial training).
REFERENCES = ("relu", "silu")
_REQUIRED = ("row", "column", "seed", "metric", "value")
_KIND_ORDER = {"baseline": 0, "target": 1, "source": 2}
_FIELDS = ("mean", "std", "n", "diff_mean", "diff_std", "p_value")


@dataclass
class TransferMatrix:
    """One metric's matrix. Every frame is indexed by ``rows`` with ``columns`` as its columns."""

    metric: str
    rows: list[str]
    columns: list[str]
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    diff_mean: pd.DataFrame
    diff_std: pd.DataFrame
    p_value: pd.DataFrame
    reference: str | None
    # L∞ evaluation radius per column (a target's dataset threat model; targets may differ), NaN if unknown
    eps: dict[str, float] = field(default_factory=dict)
    norm: str = "Linf"

    def column_eps(self, column: str) -> float | None:
        """The evaluation ε of ``column``, or None when the results did not record it."""
        value = self.eps.get(column)
        return None if value is None or math.isnan(value) else float(value)

    def threat_summary(self) -> str:
        """``L∞ ε = 8/255`` when every column shares one ε, else ``L∞ ε per column: a 0.1, b 8/255``."""
        from transfer.engine.threat import format_eps

        norm = "L∞" if self.norm.lower() == "linf" else self.norm
        values = [self.column_eps(c) for c in self.columns]
        if len({format_eps(v) for v in values}) == 1:
            return f"{norm} ε = {format_eps(values[0])}"
        per_column = zip(self.columns, values, strict=True)
        return f"{norm} ε per column: " + ", ".join(f"{c} {format_eps(v)}" for c, v in per_column)

    def cell(self, row: str, column: str) -> dict[str, float]:
        """All statistics of one cell."""
        return {f: float(getattr(self, f).loc[row, column]) for f in _FIELDS}

    def formatted(self, digits: int = 1, diff: bool = False) -> pd.DataFrame:
        """``mean ± std`` strings (or ``Δ ± std`` to the reference with ``diff``); blank where empty."""
        mean, std = (self.diff_mean, self.diff_std) if diff else (self.mean, self.std)
        sign = "+" if diff else ""

        def fmt(m: float, s: float) -> str:
            if math.isnan(m):
                return ""
            return f"{m:{sign}.{digits}f}" if math.isnan(s) else f"{m:{sign}.{digits}f} ± {s:.{digits}f}"

        out = pd.DataFrame(index=self.rows, columns=self.columns, dtype=object)
        for r in self.rows:
            for c in self.columns:
                out.loc[r, c] = fmt(float(mean.loc[r, c]), float(std.loc[r, c]))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: every statistic as a list of rows, NaN as ``None``."""

        def grid(frame: pd.DataFrame) -> list[list[float | None]]:
            return [[None if pd.isna(v) else float(v) for v in frame.loc[r, self.columns]] for r in self.rows]

        return {
            "metric": self.metric,
            "reference": self.reference,
            "rows": list(self.rows),
            "columns": list(self.columns),
            "norm": self.norm,
            "eps": [self.column_eps(c) for c in self.columns],
            **{f: grid(getattr(self, f)) for f in _FIELDS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferMatrix:
        """Inverse of :meth:`to_dict` (e.g. for ``DIR/matrices/<metric>.json``)."""
        missing = [k for k in ("metric", "rows", "columns", *_FIELDS) if k not in data]
        if missing:
            raise ValueError(
                f"transfer matrix JSON lacks the key(s) {missing}; was it written by write_matrices?"
            )
        rows, columns = list(data["rows"]), list(data["columns"])
        frames = {
            f: pd.DataFrame(
                [[np.nan if v is None else v for v in line] for line in data[f]],
                index=rows,
                columns=columns,
                dtype=float,
            )
            for f in _FIELDS
        }
        reference = data.get("reference")
        eps = {c: float("nan") if e is None else float(e) for c, e in zip(columns, data.get("eps") or [], strict=False)}
        return cls(metric=data["metric"], rows=rows, columns=columns, reference=reference, **frames, eps=eps,
                   norm=str(data.get("norm", "Linf")))

    def to_frame(self) -> pd.DataFrame:
        """Pivoted table with a two-level header: (target column, statistic); the statistic ``eps`` is the
        column's evaluation radius, the same in every row."""
        parts: dict[tuple[str, str], Any] = {}
        for c in self.columns:
            parts.update({(c, f): getattr(self, f)[c] for f in _FIELDS})
            eps = self.column_eps(c)
            parts[(c, "eps")] = pd.Series(np.nan if eps is None else eps, index=self.rows)
        frame = pd.DataFrame(parts, index=pd.Index(self.rows, name="row"))
        frame.columns = pd.MultiIndex.from_tuples(list(parts), names=["column", "stat"])
        return frame


def _check_results(results: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(
            f"results table lacks the column(s) {missing}; a study results table has {list(RESULT_COLUMNS)}"
        )


def list_metrics(results: pd.DataFrame) -> list[str]:
    """Metrics present in a results table: the standard ones first (clean, fgsm, pgd20, cw, aa)."""
    _check_results(results)
    from transfer.engine.evaluation import order_metrics  # the engine's one metric order

    return order_metrics(results["metric"].astype(str))


def _baseline_row(results: pd.DataFrame, activation: str) -> str | None:
    """The row of the baseline jobs that train ``activation`` fresh (``sparta``: Sparta in place)."""
    if "activation" not in results.columns:
        return None
    match = results["activation"].astype(str).str.lower() == activation.lower()
    if "kind" in results.columns:
        match &= results["kind"] == "baseline"
    rows = results.loc[match, "row"]
    return str(rows.iloc[0]) if len(rows) else None


def reference_row(results: pd.DataFrame, reference: str | None = None) -> str | None:
    """The row label differences are taken to. ``reference`` is a row label (``SiLU``) or the activation
    of a baseline row (``relu``, ``silu``, ``pssilu``), case-insensitive; ``None`` means ReLU if the
    table has it (else no reference). A ``reference`` the table has no row for is a ``ValueError``."""
    labels = [str(r) for r in dict.fromkeys(results["row"])]
    wanted = REFERENCE_ROW if reference is None else str(reference).strip()
    by_case = {label.lower(): label for label in labels}
    found = by_case.get(wanted.lower()) or _baseline_row(results, wanted)
    if found is None and reference is not None:
        raise ValueError(
            f"reference row {reference!r} is not in the study; its rows are: {', '.join(labels)} "
            f"(give a row label or a baseline activation such as relu or silu, and list it under baselines)"
        )
    return found


def _ordered_rows(results: pd.DataFrame, reference: str | None) -> list[str]:
    """Reference first, then baselines, then transferred sources, each in order of appearance."""
    first = results.drop_duplicates("row")
    if "kind" in first.columns:
        rank = first["kind"].map(_KIND_ORDER).fillna(len(_KIND_ORDER))
        first = first.assign(_rank=rank.values, _pos=range(len(first))).sort_values(["_rank", "_pos"])
    rows = [str(r) for r in first["row"]]
    if reference in rows:
        rows.remove(reference)
        rows.insert(0, reference)
    return rows


def _ordered_columns(results: pd.DataFrame) -> list[str]:
    """Targets in order of their first target or baseline job; columns only source runs fill come last."""
    columns = [str(c) for c in dict.fromkeys(results["column"])]
    if "kind" not in results.columns:
        return columns
    targets = [str(c) for c in dict.fromkeys(results.loc[results["kind"] != "source", "column"])]
    return targets + [c for c in columns if c not in targets]


def _paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    seeds = a.index.intersection(b.index)
    return a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)


def _ttest(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3:
        return float("nan")
    from scipy.stats import ttest_rel

    with warnings.catch_warnings():  # identical samples: scipy warns and returns NaN, which is right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_rel(x, y).pvalue)


def _column_eps(sel: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Each column's evaluation ε from the table's ``eps`` column (NaN where absent or not one value)."""
    if "eps" not in sel.columns:
        return {c: float("nan") for c in columns}
    eps = pd.to_numeric(sel["eps"], errors="coerce")
    out = {}
    for c in columns:
        values = eps[sel["column"].astype(str) == c].dropna().unique()
        out[c] = float(values[0]) if len(values) and np.allclose(values, values[0]) else float("nan")
    return out


def transfer_matrix(results: pd.DataFrame, metric: str, reference: str | None = None) -> TransferMatrix:
    """Pivot the long results table for ``metric`` into a :class:`TransferMatrix`, differences taken to
    the ``reference`` row (see :func:`reference_row`; default ReLU).

    Several values for the same (row, column, seed) are averaged first, so each seed counts once.
    """
    _check_results(results)
    sel = results.loc[results["metric"].astype(str) == metric].copy()
    if sel.empty:
        raise ValueError(f"no results for metric {metric!r}; the table holds {list_metrics(results)}")
    sel["value"] = pd.to_numeric(sel["value"], errors="coerce")
    sel = sel.dropna(subset=["value"])
    reference = reference_row(sel, reference)
    rows = _ordered_rows(sel, reference)
    columns = _ordered_columns(sel)
    per_seed = sel.groupby(["row", "column", "seed"], sort=False)["value"].mean()
    cells = {
        (str(r), str(c)): v.droplevel(["row", "column"])
        for (r, c), v in per_seed.groupby(level=["row", "column"], sort=False)
    }

    frames = {f: pd.DataFrame(np.nan, index=rows, columns=columns, dtype=float) for f in _FIELDS}
    for (row, column), values in cells.items():
        stats = {"mean": values.mean(), "n": len(values)}
        stats["std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        ref = cells.get((reference, column)) if reference is not None else None
        x, y = _paired(values, ref) if ref is not None else (np.empty(0), np.empty(0))
        if len(x):
            d = x - y
            stats["diff_mean"] = d.mean()
            stats["diff_std"] = d.std(ddof=1) if len(d) > 1 else np.nan
            stats["p_value"] = np.nan if row == reference else _ttest(x, y)
        for name, value in stats.items():
            frames[name].loc[row, column] = float(value)
    norms = sel["norm"].dropna().astype(str).unique() if "norm" in sel.columns else []
    return TransferMatrix(metric=metric, rows=rows, columns=columns, reference=reference, **frames,
                          eps=_column_eps(sel, columns), norm=norms[0] if len(norms) == 1 else "Linf")


def present_references(results: pd.DataFrame, references: Sequence[str] = REFERENCES) -> list[str]:
    """The ``references`` (activation names or row labels) the table has a row for, in order."""
    present = []
    for ref in references:
        try:
            reference_row(results, ref)
        except ValueError:
            continue
        present.append(ref)
    return present


def write_matrices(
    results: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    metrics: list[str] | None = None,
    references: Sequence[str] = REFERENCES,
) -> dict[str, TransferMatrix]:
    """Write ``<metric>.csv`` (two-level header: target, statistic) and ``<metric>.json`` per metric,
    differences to ReLU; and ``<metric>.vs-<ref>.csv|json`` for every other of ``references`` the study
    has a row for (SiLU: Sparta's own initialisation). Returns the ReLU-referenced matrices."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = [r for r in present_references(results, references) if r.lower() != "relu"]
    matrices = {}
    for metric in metrics or list_metrics(results):
        tm = transfer_matrix(results, metric)
        write_text(out / f"{metric}.csv", tm.to_frame().to_csv())
        write_text(out / f"{metric}.json", json.dumps(tm.to_dict(), indent=2) + "\n")
        matrices[metric] = tm
        for ref in extra:
            other = transfer_matrix(results, metric, reference=ref)
            write_text(out / f"{metric}.vs-{ref.lower()}.csv", other.to_frame().to_csv())
            write_text(out / f"{metric}.vs-{ref.lower()}.json", json.dumps(other.to_dict(), indent=2) + "\n")
    return matrices
