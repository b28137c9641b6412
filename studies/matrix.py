"""Transfer matrices: the long results table pivoted per metric (``docs/sparta.md`` §5.5).

Rows are activation sources (ReLU, Sparta trained in place, every stored Sparta), columns are targets
(``arch / dataset``). A cell holds the mean and standard deviation over seeds, the number of seeds, and
the difference to a reference row of the same column (ReLU by default; SiLU or any baseline with
``reference=``) *paired by seed*: only seeds present in both rows count. Each column carries the L∞ ε its
target was evaluated at (``TransferMatrix.eps``): targets on different datasets are attacked in their own
dataset's threat model, and a column is never pooled over several ε.

Every comparison with the reference is made by ``studies.stats.paired_difference`` over seeds and test
images together (per-image bits where the jobs stored them, ``studies.paired``; else the seeds'
accuracies): ``diff_mean``, its interval ``ci_low``/``ci_high``, ``p_value``, the equivalence test's
``p_equivalence`` (±``margin`` points), and ``p_adjusted`` — Holm over every compared cell of the matrix
(one metric, one reference; a job shown in two rows is one test, ``n_tests``) — from which ``verdict`` is
drawn: better, worse, equivalent or inconclusive.
``n_images`` is the images each seed compared (1 where only accuracies were available); ``n_seeds`` is
``n`` of the cell's paired seeds. With one seed a verdict compares two trained models, not activations
(``studies.stats``). Cells some of whose runs had not plateaued (``converged`` < 1) are marked ``†``
(``docs/evaluation.md``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer.atomic import write_text

from .matrix_verdicts import compare_cells
from .paired import PAIRED_COLUMNS, PerImageStore, paired_image_tests
from .references import REFERENCE_ROW, REFERENCES, present_references, reference_row
from .results import RESULT_COLUMNS
from .stats import format_points

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

_REQUIRED = ("row", "column", "seed", "metric", "value")
_KIND_ORDER = {"baseline": 0, "target": 1, "source": 2}
_REQUIRED_FIELDS = ("mean", "std", "n", "diff_mean", "diff_std", "p_value")
# Statistics added later: a matrix JSON written before them reads back with them NaN.
_EXTRA_FIELDS = (
    "ci_low", "ci_high", "p_equivalence", "p_adjusted", "n_paired", "n_images", "converged", "epochs_needed",
)  # fmt: skip
_FIELDS = _REQUIRED_FIELDS + _EXTRA_FIELDS
NOT_CONVERGED_MARK = "†"
DEFAULT_MARGIN = 1.0  # equivalence margin, percentage points
DEFAULT_ALPHA = 0.05


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
    # studies.stats.paired_difference vs the reference, over seeds and images: interval, equivalence test,
    # Holm-adjusted p over the matrix's compared cells, images per seed
    ci_low: pd.DataFrame | None = None
    ci_high: pd.DataFrame | None = None
    p_equivalence: pd.DataFrame | None = None
    p_adjusted: pd.DataFrame | None = None
    n_paired: pd.DataFrame | None = None  # seeds the row and the reference share (those compared)
    n_images: pd.DataFrame | None = None
    # share of the cell's runs whose robust validation accuracy had plateaued (transfer.engine.convergence),
    # and the mean epochs they needed; NaN where the runs recorded no convergence
    converged: pd.DataFrame | None = None
    epochs_needed: pd.DataFrame | None = None
    # better | worse | equivalent | inconclusive (from p_adjusted); "" for the reference and empty cells
    verdict: pd.DataFrame | None = None
    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    # the distinct tests Holm adjusted over: fewer than the compared cells where one job is shown in two
    # rows (a source is also "Sparta (in place)"); None in a matrix JSON written before it was recorded
    n_tests: int | None = None

    def __post_init__(self) -> None:
        for name in _EXTRA_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, pd.DataFrame(np.nan, index=self.rows, columns=self.columns, dtype=float))
        if self.verdict is None:
            self.verdict = pd.DataFrame("", index=self.rows, columns=self.columns, dtype=object)

    def holm_family(self) -> int:
        """How many tests the verdicts' Holm adjustment was over (the compared cells, when not recorded)."""
        if self.n_tests is not None:
            return self.n_tests
        return int(self.verdict.ne("").to_numpy().sum())

    def not_converged(self) -> pd.DataFrame:
        """True for every cell some of whose runs had not plateaued (marked :data:`NOT_CONVERGED_MARK`)."""
        return self.converged.loc[self.rows, self.columns].lt(1.0)

    def single_seed(self) -> bool:
        """Whether no compared cell has two paired seeds: its verdicts compare trained models, not activations."""
        compared = self.verdict.loc[self.rows, self.columns].ne("").to_numpy()
        return bool(compared.any()) and bool((self.n_paired.to_numpy(float)[compared] < 2).all())

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

    def with_columns(self, columns: list[str]) -> TransferMatrix:
        """The same matrix restricted to ``columns`` (in that order); its statistics are not recomputed, so
        ``p_adjusted`` stays Holm over the whole matrix's compared cells."""
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise KeyError(f"{unknown} are not columns of the {self.metric} matrix; it has {self.columns}")
        frames = {f.name: getattr(self, f.name) for f in fields(self)}
        frames = {name: v.loc[:, list(columns)] for name, v in frames.items() if isinstance(v, pd.DataFrame)}
        eps = {c: self.eps[c] for c in columns if c in self.eps}
        return replace(self, columns=list(columns), eps=eps, **frames)

    def cell(self, row: str, column: str) -> dict[str, Any]:
        """All statistics of one cell (numbers, and the ``verdict`` string)."""
        return {
            **{f: float(getattr(self, f).loc[row, column]) for f in _FIELDS},
            "verdict": str(self.verdict.loc[row, column]),
        }

    def formatted(self, digits: int = 1, diff: bool = False, mark_unconverged: bool = True) -> pd.DataFrame:
        """``mean ± std`` strings, or with ``diff`` the difference to the reference with its interval and
        verdict (``-4.2 [-7.9, -0.5] worse``); blank where empty; with :data:`NOT_CONVERGED_MARK` after
        cells some of whose runs had not plateaued."""
        out = pd.DataFrame(index=self.rows, columns=self.columns, dtype=object)
        unconverged = self.not_converged()
        for r in self.rows:
            for c in self.columns:
                if diff:
                    text = self._diff_text(r, c, digits)
                else:
                    m, s = float(self.mean.loc[r, c]), float(self.std.loc[r, c])
                    text = "" if math.isnan(m) else f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")
                mark = NOT_CONVERGED_MARK if mark_unconverged and text and unconverged.loc[r, c] else ""
                out.loc[r, c] = text + mark
        return out

    def _diff_text(self, row: str, column: str, digits: int) -> str:
        d = float(self.diff_mean.loc[row, column])
        if math.isnan(d):
            return ""
        lo, hi = float(self.ci_low.loc[row, column]), float(self.ci_high.loc[row, column])
        interval = "" if math.isnan(lo) else f" [{format_points(lo, digits)}, {format_points(hi, digits)}]"
        verdict = str(self.verdict.loc[row, column])
        if verdict and float(self.n_paired.loc[row, column]) < 2:
            verdict += " (1 seed: two models)"  # not yet a property of the activation (studies.stats)
        return f"{format_points(d, digits)}{interval}" + (f" {verdict}" if verdict else "")

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
            "margin": self.margin,
            "alpha": self.alpha,
            "n_tests": self.n_tests,
            **{f: grid(getattr(self, f)) for f in _FIELDS},
            "verdict": [[str(v) for v in self.verdict.loc[r, self.columns]] for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferMatrix:
        """Inverse of :meth:`to_dict` (e.g. for ``DIR/matrices/<metric>.json``)."""
        missing = [k for k in ("metric", "rows", "columns", *_REQUIRED_FIELDS) if k not in data]
        if missing:
            raise ValueError(f"transfer matrix JSON lacks the key(s) {missing}; was it written by write_matrices?")
        rows, columns = list(data["rows"]), list(data["columns"])
        frames: dict[str, Any] = {
            f: pd.DataFrame(
                [[np.nan if v is None else v for v in line] for line in data[f]],
                index=rows,
                columns=columns,
                dtype=float,
            )
            for f in _FIELDS
            if f in data
        }
        if "verdict" in data:
            frames["verdict"] = pd.DataFrame(data["verdict"], index=rows, columns=columns, dtype=object)
        reference = data.get("reference")
        eps = {c: float("nan") if e is None else float(e) for c, e in zip(columns, data.get("eps") or [], strict=False)}
        return cls(
            metric=data["metric"],
            rows=rows,
            columns=columns,
            reference=reference,
            **frames,
            eps=eps,
            norm=str(data.get("norm", "Linf")),
            margin=float(data.get("margin", DEFAULT_MARGIN)),
            alpha=float(data.get("alpha", DEFAULT_ALPHA)),
            n_tests=None if data.get("n_tests") is None else int(data["n_tests"]),
        )

    def to_frame(self) -> pd.DataFrame:
        """Pivoted table with a two-level header: (target column, statistic); the statistic ``eps`` is the
        column's evaluation radius, the same in every row."""
        parts: dict[tuple[str, str], Any] = {}
        for c in self.columns:
            parts.update({(c, f): getattr(self, f)[c] for f in _FIELDS})
            parts[(c, "verdict")] = self.verdict[c]
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


def _column_eps(sel: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Each column's evaluation ε from the table's ``eps`` column (NaN where not recorded). A column
    holding results at two radii is an error: its cells would average different threat models."""
    if "eps" not in sel.columns:
        return {c: float("nan") for c in columns}
    eps = pd.to_numeric(sel["eps"], errors="coerce")
    out = {}
    for c in columns:
        values = eps[sel["column"].astype(str) == c].dropna().unique()
        if len(values) and not np.allclose(values, values[0]):
            from transfer.threat_model import format_eps

            shown = ", ".join(sorted({format_eps(float(v)) for v in values}))
            raise ValueError(
                f"column {c!r} holds results at several evaluation radii (ε = {shown}); a matrix never averages "
                "threat models: give each ε its own column (a study [sweep] over eps does) or select one ε"
            )
        out[c] = float(values[0]) if len(values) else float("nan")
    return out


def transfer_matrix(
    results: pd.DataFrame,
    metric: str,
    reference: str | None = None,
    per_image: PerImageStore | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> TransferMatrix:
    """Pivot the long results table for ``metric`` into a :class:`TransferMatrix`, differences taken to
    the ``reference`` row (see :func:`reference_row`; default ReLU).

    Several values for the same (row, column, seed) are averaged first, so each seed counts once. Every
    cell is compared with the reference by ``studies.stats.paired_difference`` — over seeds and the
    jobs' per-image bits where ``per_image`` (``PerImageStore(study_dir)``) has them, else over the seeds'
    accuracies — and the verdicts come from Holm-adjusted p-values over the matrix's compared cells.
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
    eps = _column_eps(sel, columns)
    per_seed = sel.groupby(["row", "column", "seed"], sort=False)["value"].mean()
    cells = {
        (str(r), str(c)): v.droplevel(["row", "column"])
        for (r, c), v in per_seed.groupby(level=["row", "column"], sort=False)
    }
    frames = {f: pd.DataFrame(np.nan, index=rows, columns=columns, dtype=float) for f in _FIELDS}
    for (row, column), values in cells.items():
        frames["mean"].loc[row, column] = float(values.mean())
        frames["n"].loc[row, column] = float(len(values))
        frames["std"].loc[row, column] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
    verdict = pd.DataFrame("", index=rows, columns=columns, dtype=object)
    n_tests = None
    if reference is not None:
        n_tests = compare_cells(sel, metric, reference, per_image, frames, verdict, margin, alpha)
    _add_convergence(sel, frames)
    norms = sel["norm"].dropna().astype(str).unique() if "norm" in sel.columns else []
    return TransferMatrix(
        metric=metric,
        rows=rows,
        columns=columns,
        reference=reference,
        **frames,
        eps=eps,
        norm=norms[0] if len(norms) == 1 else "Linf",
        verdict=verdict,
        margin=margin,
        alpha=alpha,
        n_tests=n_tests,
    )


def _add_convergence(sel: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    """Per cell, the share of its runs whose robust validation accuracy had plateaued and the mean epochs
    they needed, from the results' ``converged`` (1/0, NaN: unknown) and ``epochs_needed`` columns."""
    if "converged" not in sel.columns:
        return
    runs = sel.drop_duplicates(["row", "column", "seed"])
    runs = runs.assign(
        _converged=pd.to_numeric(runs["converged"], errors="coerce"),
        _epochs=pd.to_numeric(runs.get("epochs_needed", np.nan), errors="coerce"),
    )
    for (row, column), group in runs.groupby(["row", "column"], sort=False):
        if group["_converged"].notna().any():
            frames["converged"].loc[str(row), str(column)] = float(group["_converged"].fillna(0.0).mean())
        if group["_epochs"].notna().any():
            frames["epochs_needed"].loc[str(row), str(column)] = float(group["_epochs"].mean())


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
    McNemar's exact test of every row against each reference, seed by seed — a description of each pair of
    trained models (``studies.paired``); the verdicts are the matrices'. Returns the ReLU-referenced
    matrices."""
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
            tests = [
                paired_image_tests(results, metric, m.reference, per_image)
                for m in (tm, *others)
                if m.reference is not None
            ]
            tests = [t for t in tests if len(t)]
            table = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(columns=list(PAIRED_COLUMNS))
            write_text(out / f"{metric}.paired.csv", table.to_csv(index=False))
    return matrices
