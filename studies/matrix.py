"""Transfer matrices: the long results table pivoted per metric (``docs/sparta.md`` §5.5).

Rows are activation sources (ReLU, Sparta trained in place, every stored Sparta), columns are targets
(``arch / dataset``). A cell holds the mean and standard deviation over seeds, the number of seeds, and
the difference to a reference row of the same column (ReLU by default; SiLU or any baseline with
``reference=``) *paired by seed*: only seeds present in both rows count, so a missing seed never biases
the difference. Each column carries the L∞ ε its target was evaluated at (``TransferMatrix.eps``):
targets on different datasets are attacked in their own dataset's threat model. With three or more
paired seeds a paired t-test (``scipy.stats.ttest_rel``) gives a p-value; below that it is NaN.
Standard deviations are sample standard deviations (``ddof=1``) and NaN for a single seed.

Beside it, given the jobs' per-image correctness, McNemar's exact test on the same test images pooled
over seeds (``p_image``, ``studies.paired``): it needs no more than one seed. Cells some of whose runs
had not plateaued (``converged`` < 1) are marked ``†`` (``docs/evaluation.md``).
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

from .paired import PAIRED_COLUMNS, PerImageStore, paired_image_tests
from .results import RESULT_COLUMNS

__all__ = [
    "REFERENCES",
    "REFERENCE_ROW",
    "TransferMatrix",
    "NOT_CONVERGED_MARK",
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
_REQUIRED_FIELDS = ("mean", "std", "n", "diff_mean", "diff_std", "p_value")
# Statistics added later: a matrix JSON written before them reads back with them NaN.
_EXTRA_FIELDS = ("p_image", "better", "worse", "converged", "epochs_needed")
_FIELDS = _REQUIRED_FIELDS + _EXTRA_FIELDS
NOT_CONVERGED_MARK = "†"


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
    # McNemar's exact test vs the reference, pooled over seeds (studies.paired): p-value and the discordant
    # images summed over seeds (better: this row right, reference wrong; worse: the other way round)
    p_image: pd.DataFrame | None = None
    better: pd.DataFrame | None = None
    worse: pd.DataFrame | None = None
    # share of the cell's runs whose robust validation accuracy had plateaued (transfer.engine.convergence),
    # and the mean epochs they needed; NaN where the runs recorded no convergence
    converged: pd.DataFrame | None = None
    epochs_needed: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        for name in _EXTRA_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, pd.DataFrame(np.nan, index=self.rows, columns=self.columns, dtype=float))

    def not_converged(self) -> pd.DataFrame:
        """True for every cell some of whose runs had not plateaued (marked :data:`NOT_CONVERGED_MARK`)."""
        return self.converged.loc[self.rows, self.columns].lt(1.0)

    def column_eps(self, column: str) -> float | None:
        """The evaluation ε of ``column``, or None when the results did not record it."""
        value = self.eps.get(column)
        return None if value is None or math.isnan(value) else float(value)

    def threat_summary(self) -> str:
        """``L∞ ε = 8/255`` when every column shares one ε, else ``L∞ ε per column: a 0.1, b 8/255``."""
        from transfer.threat_model import format_eps

        norm = "L∞" if self.norm.lower() == "linf" else self.norm
        values = [self.column_eps(c) for c in self.columns]
        if len({format_eps(v) for v in values}) == 1:
            return f"{norm} ε = {format_eps(values[0])}"
        per_column = zip(self.columns, values, strict=True)
        return f"{norm} ε per column: " + ", ".join(f"{c} {format_eps(v)}" for c, v in per_column)

    def cell(self, row: str, column: str) -> dict[str, float]:
        """All statistics of one cell."""
        return {f: float(getattr(self, f).loc[row, column]) for f in _FIELDS}

    def formatted(self, digits: int = 1, diff: bool = False, mark_unconverged: bool = True) -> pd.DataFrame:
        """``mean ± std`` strings (or ``Δ ± std`` to the reference with ``diff``); blank where empty;
        with :data:`NOT_CONVERGED_MARK` after cells some of whose runs had not plateaued."""
        mean, std = (self.diff_mean, self.diff_std) if diff else (self.mean, self.std)
        sign = "+" if diff else ""

        def fmt(m: float, s: float) -> str:
            if math.isnan(m):
                return ""
            return f"{m:{sign}.{digits}f}" if math.isnan(s) else f"{m:{sign}.{digits}f} ± {s:.{digits}f}"

        out = pd.DataFrame(index=self.rows, columns=self.columns, dtype=object)
        unconverged = self.not_converged()
        for r in self.rows:
            for c in self.columns:
                text = fmt(float(mean.loc[r, c]), float(std.loc[r, c]))
                mark = NOT_CONVERGED_MARK if mark_unconverged and text and unconverged.loc[r, c] else ""
                out.loc[r, c] = text + mark
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
        missing = [k for k in ("metric", "rows", "columns", *_REQUIRED_FIELDS) if k not in data]
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
            if f in data
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
    from transfer.attack_names import order_metrics  # the one metric order

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


def transfer_matrix(
    results: pd.DataFrame, metric: str, reference: str | None = None, per_image: PerImageStore | None = None
) -> TransferMatrix:
    """Pivot the long results table for ``metric`` into a :class:`TransferMatrix`, differences taken to
    the ``reference`` row (see :func:`reference_row`; default ReLU).

    Several values for the same (row, column, seed) are averaged first, so each seed counts once. With
    ``per_image`` (the jobs' per-image correctness, ``PerImageStore(study_dir)``), each cell also gets
    McNemar's exact test against the reference pooled over seeds (``p_image``; ``studies.paired``).
    The results' ``converged``/``epochs_needed`` columns, where present, fill the convergence fields.
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
    _add_convergence(sel, frames)
    if per_image is not None and reference is not None:
        _add_per_image_tests(paired_image_tests(sel, metric, reference, per_image), frames)
    norms = sel["norm"].dropna().astype(str).unique() if "norm" in sel.columns else []
    return TransferMatrix(metric=metric, rows=rows, columns=columns, reference=reference, **frames,
                          eps=_column_eps(sel, columns), norm=norms[0] if len(norms) == 1 else "Linf")


def _add_convergence(sel: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    """Per cell, the share of its runs whose robust validation accuracy had plateaued and the mean epochs
    they needed, from the results' ``converged`` (1/0, NaN: unknown) and ``epochs_needed`` columns."""
    if "converged" not in sel.columns:
        return
    runs = sel.drop_duplicates(["row", "column", "seed"])
    runs = runs.assign(_converged=pd.to_numeric(runs["converged"], errors="coerce"),
                       _epochs=pd.to_numeric(runs.get("epochs_needed", np.nan), errors="coerce"))
    for (row, column), group in runs.groupby(["row", "column"], sort=False):
        if group["_converged"].notna().any():
            frames["converged"].loc[str(row), str(column)] = float(group["_converged"].fillna(0.0).mean())
        if group["_epochs"].notna().any():
            frames["epochs_needed"].loc[str(row), str(column)] = float(group["_epochs"].mean())


def _add_per_image_tests(tests: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    """The pooled McNemar test of each cell (``studies.paired``) into the ``p_image``/``better``/``worse`` frames."""
    for rec in tests.loc[tests["scope"] == "pooled"].itertuples():
        frames["p_image"].loc[rec.row, rec.column] = float(rec.p_value)
        frames["better"].loc[rec.row, rec.column] = float(rec.better)
        frames["worse"].loc[rec.row, rec.column] = float(rec.worse)


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
    per_image: PerImageStore | None = None,
) -> dict[str, TransferMatrix]:
    """Write ``<metric>.csv`` (two-level header: target, statistic) and ``<metric>.json`` per metric,
    differences to ReLU; and ``<metric>.vs-<ref>.csv|json`` for every other of ``references`` the study
    has a row for (SiLU: Sparta's own initialisation). With ``per_image``, also ``<metric>.paired.csv``:
    McNemar's exact test of every row against each reference, per seed and pooled (``studies.paired``).
    Returns the ReLU-referenced matrices."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = [r for r in present_references(results, references) if r.lower() != "relu"]
    matrices = {}
    for metric in metrics or list_metrics(results):
        tm = transfer_matrix(results, metric, per_image=per_image)
        write_text(out / f"{metric}.csv", tm.to_frame().to_csv())
        write_text(out / f"{metric}.json", json.dumps(tm.to_dict(), indent=2) + "\n")
        matrices[metric] = tm
        others = []
        for ref in extra:
            other = transfer_matrix(results, metric, reference=ref, per_image=per_image)
            write_text(out / f"{metric}.vs-{ref.lower()}.csv", other.to_frame().to_csv())
            write_text(out / f"{metric}.vs-{ref.lower()}.json", json.dumps(other.to_dict(), indent=2) + "\n")
            others.append(other)
        if per_image is not None:
            tests = [paired_image_tests(results, metric, m.reference, per_image)
                     for m in (tm, *others) if m.reference is not None]
            tests = [t for t in tests if len(t)]
            table = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(columns=list(PAIRED_COLUMNS))
            write_text(out / f"{metric}.paired.csv", table.to_csv(index=False))
    return matrices
