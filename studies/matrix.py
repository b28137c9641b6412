"""Transfer matrices: the long results table pivoted per metric (``SPARTA.md`` §5.5).

Rows are activation sources (ReLU, Sparta trained in place, every stored Sparta), columns are targets
(``arch / dataset``). A cell holds the mean and standard deviation over seeds, the number of seeds, and
the difference to the ReLU row of the same column *paired by seed*: only seeds present in both rows
count, so a missing seed never biases the difference. With three or more paired seeds a paired t-test
(``scipy.stats.ttest_rel``) gives a p-value; below that it is NaN. Standard deviations are sample
standard deviations (``ddof=1``) and NaN for a single seed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer.atomic import write_text

__all__ = [
    "REFERENCE_ROW",
    "RESULT_COLUMNS",
    "TransferMatrix",
    "list_metrics",
    "load_results",
    "transfer_matrix",
    "write_matrices",
]

REFERENCE_ROW = "ReLU"
RESULT_COLUMNS = (
    "job_id",
    "kind",
    "row",
    "column",
    "arch",
    "dataset",
    "activation",
    "variant",
    "policy",
    "source_job",
    "seed",
    "metric",
    "value",
)
_REQUIRED = ("row", "column", "seed", "metric", "value")
_METRIC_ORDER = ("clean", "fgsm", "pgd20", "cw", "aa")
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
        return cls(metric=data["metric"], rows=rows, columns=columns, reference=reference, **frames)

    def to_frame(self) -> pd.DataFrame:
        """Pivoted table with a two-level header: (target column, statistic)."""
        parts = {(c, f): getattr(self, f)[c] for c in self.columns for f in _FIELDS}
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
    present = list(dict.fromkeys(results["metric"].astype(str)))
    known = [m for m in _METRIC_ORDER if m in present]
    return known + [m for m in present if m not in known]


def _reference_label(results: pd.DataFrame) -> str | None:
    """The ReLU row: the label ``ReLU``, else the row of the ReLU baseline jobs."""
    labels = set(results["row"])
    if REFERENCE_ROW in labels:
        return REFERENCE_ROW
    if "activation" in results.columns:
        is_relu = results["activation"].astype(str).str.lower() == "relu"
        if "kind" in results.columns:
            is_relu &= results["kind"] == "baseline"
        relu = results.loc[is_relu, "row"]
        if len(relu):
            return str(relu.iloc[0])
    return None


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


def transfer_matrix(results: pd.DataFrame, metric: str) -> TransferMatrix:
    """Pivot the long results table for ``metric`` into a :class:`TransferMatrix`.

    Several values for the same (row, column, seed) are averaged first, so each seed counts once.
    """
    _check_results(results)
    sel = results.loc[results["metric"].astype(str) == metric].copy()
    if sel.empty:
        raise ValueError(f"no results for metric {metric!r}; the table holds {list_metrics(results)}")
    sel["value"] = pd.to_numeric(sel["value"], errors="coerce")
    sel = sel.dropna(subset=["value"])
    reference = _reference_label(sel)
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
    return TransferMatrix(metric=metric, rows=rows, columns=columns, reference=reference, **frames)


def load_results(study_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The long results table of a study directory (``results.parquet``, else ``results.csv``).

    A study still running has no table yet: ``sparta study matrix DIR`` rebuilds it from the finished jobs.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"study directory {root} does not exist")
    parquet, csv = root / "results.parquet", root / "results.csv"
    if parquet.is_file():
        try:
            return pd.read_parquet(parquet)
        except (ImportError, ValueError):
            if not csv.is_file():
                raise
    if csv.is_file():
        return pd.read_csv(csv, dtype={"job_id": str, "source_job": str, "policy": str, "variant": str})
    raise FileNotFoundError(
        f"{root} has no results.parquet or results.csv; run `sparta study run CONFIG --out {root}` "
        f"(or `sparta study matrix {root}` to build the table from the jobs finished so far)"
    )




def write_matrices(
    results: pd.DataFrame, out_dir: str | os.PathLike[str], metrics: list[str] | None = None
) -> dict[str, TransferMatrix]:
    """Write ``<metric>.csv`` (two-level header: target, statistic) and ``<metric>.json`` per metric."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    matrices = {}
    for metric in metrics or list_metrics(results):
        tm = transfer_matrix(results, metric)
        write_text(out / f"{metric}.csv", tm.to_frame().to_csv())
        write_text(out / f"{metric}.json", json.dumps(tm.to_dict(), indent=2) + "\n")
        matrices[metric] = tm
    return matrices
