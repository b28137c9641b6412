"""Transfer-matrix heatmaps (``docs/sparta.md`` §5.5): absolute accuracy per metric and the difference to
the ReLU row. Absolute cells read ``mean ± std`` over seeds; difference cells read the paired difference
and its 95 % interval over seeds and test images (``studies.stats``). A ``*`` marks a cell whose verdict
is better or worse than the reference (Holm-adjusted over the matrix, ``p_adjusted < alpha``), a ``≈``
one equivalent to it within the matrix's margin — and neither is drawn when a cell has a single seed:
then the difference is between two trained models, not a property of the activation (the title says
so). A ``†`` marks cells some of whose runs had not plateaued (``docs/evaluation.md``).

The absolute map uses a sequential colormap; the difference map a diverging one whose limits are
symmetric about 0 (``vmin == -vmax``), so white always means "same as ReLU" and the two signs are
equally saturated for equal magnitudes. Its limit covers the cells' 95 % intervals, not only their means:
scaled to the means alone, a −0.8-point cell whose interval is [−3.0, +1.4] is drawn as saturated as the
largest effect in the study, and a matrix of inconclusive cells looks like one of strong effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from studies.matrix import NOT_CONVERGED_MARK, TransferMatrix
from studies.stats import format_points

from ._figure import eps_label, metric_title, new_figure, save_figure, slug, wrap_label

__all__ = [
    "ABSOLUTE_CMAP",
    "DIFF_CMAP",
    "EQUIVALENCE_MARK",
    "SIGNIFICANCE_MARK",
    "cell_labels",
    "marks",
    "draw_matrix",
    "matrix_heatmap",
    "save_matrix_heatmaps",
    "seed_summary",
]

ABSOLUTE_CMAP = "viridis"
DIFF_CMAP = "RdBu"
SIGNIFICANCE_MARK = "*"
EQUIVALENCE_MARK = "≈"
_CELL_W, _CELL_H = 1.5, 0.62  # inches per cell: room for "100.0 ± 10.0*†", or a difference over its interval
_FONT = 9
_CHAR_W = 0.075  # inches per character at 9 pt, for sizing


def _rows(tm: TransferMatrix, diff: bool) -> list[str]:
    """The rows a map shows: all, or for the difference map those compared with the reference in some
    column (not the reference itself)."""
    if not diff:
        return list(tm.rows)
    if tm.reference is None:
        raise ValueError(
            f"the {tm.metric} matrix has no ReLU reference row, so there is no difference to draw; "
            "add ReLU baseline jobs to the study spec"
        )
    compared = tm.diff_mean.notna().any(axis=1)
    rows = [r for r in tm.rows if r != tm.reference and compared[r]]
    if not rows:
        raise ValueError(
            f"no row of the {tm.metric} matrix shares a column with the reference row {tm.reference!r}; "
            "nothing to compare (train the reference on the targets you compare on)"
        )
    return rows


def _shown(tm: TransferMatrix, diff: bool) -> TransferMatrix:
    """The matrix a map draws: all of it, or for the difference map only the columns where some row was
    compared with the reference (a source's own column with no ReLU run there would be all "n/a"; rows
    compared nowhere are left out by :func:`_rows`)."""
    if not diff:
        return tm
    rows = _rows(tm, diff)
    compared = tm.diff_mean.loc[rows, tm.columns].notna().any(axis=0)
    columns = [c for c in tm.columns if compared[c]]
    if not columns:
        raise ValueError(
            f"no column of the {tm.metric} matrix has both {tm.reference} and another row, so there is no "
            "difference to draw; add the reference row's jobs to the targets you compare on"
        )
    return tm if columns == list(tm.columns) else tm.with_columns(columns)


def marks(tm: TransferMatrix, alpha: float = 0.05) -> pd.DataFrame:
    """Per cell: :data:`SIGNIFICANCE_MARK` where the verdict is better or worse (Holm-adjusted p below
    ``alpha``), :data:`EQUIVALENCE_MARK` where it is equivalent, else ``""`` — and ``""`` everywhere a cell
    has fewer than two paired seeds (two trained models, not two activations)."""
    out = pd.DataFrame("", index=tm.rows, columns=tm.columns, dtype=object)
    seeds = tm.n_paired.loc[tm.rows, tm.columns].to_numpy(float)
    p = tm.p_adjusted.loc[tm.rows, tm.columns].to_numpy(float)
    verdict = tm.verdict.loc[tm.rows, tm.columns].to_numpy(object)
    for i, j in np.ndindex(out.shape):
        if not np.nan_to_num(seeds[i, j]) >= 2 or tm.rows[i] == tm.reference:
            continue
        if np.nan_to_num(p[i, j], nan=1.0) < alpha:
            out.iloc[i, j] = SIGNIFICANCE_MARK
        elif verdict[i, j] == "equivalent":
            out.iloc[i, j] = EQUIVALENCE_MARK
    return out


def cell_labels(tm: TransferMatrix, *, diff: bool = False, alpha: float = 0.05, digits: int = 1) -> np.ndarray:
    """The annotation of every shown cell: ``mean ± std`` (std left out for one seed), or for the
    difference map the paired difference with its interval (``-4.2 [-7.9, -0.5]``); then the mark of
    :func:`marks` and :data:`NOT_CONVERGED_MARK` where some of the cell's runs had not plateaued; empty
    where no value."""
    rows = _rows(tm, diff)
    labels = np.empty((len(rows), len(tm.columns)), dtype=object)
    mark = marks(tm, alpha).loc[rows, tm.columns].to_numpy(object)
    unconverged = tm.not_converged().loc[rows, tm.columns].to_numpy(bool)
    for i, row in enumerate(rows):
        for j, column in enumerate(tm.columns):
            text = _diff_label(tm, row, column, digits) if diff else _mean_label(tm, row, column, digits)
            labels[i, j] = text + (mark[i, j] + (NOT_CONVERGED_MARK if unconverged[i, j] else "") if text else "")
    return labels


def _mean_label(tm: TransferMatrix, row: str, column: str, digits: int) -> str:
    m, s = float(tm.mean.loc[row, column]), float(tm.std.loc[row, column])
    if np.isnan(m):
        return ""
    return f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _diff_label(tm: TransferMatrix, row: str, column: str, digits: int) -> str:
    d = float(tm.diff_mean.loc[row, column])
    if np.isnan(d):
        return ""
    lo, hi = float(tm.ci_low.loc[row, column]), float(tm.ci_high.loc[row, column])
    text = format_points(d, digits)
    return text if np.isnan(lo) else f"{text}\n[{format_points(lo, digits)}, {format_points(hi, digits)}]"


def seed_summary(tm: TransferMatrix) -> str:
    """``3 seeds``, ``1 seed`` or ``1–3 seeds`` (the range of per-cell seed counts)."""
    n = tm.n.to_numpy(float)
    n = n[~np.isnan(n)]
    if not n.size:
        return "no seeds"
    lo, hi = int(n.min()), int(n.max())
    return f"{hi} seed{'s' if hi != 1 else ''}" if lo == hi else f"{lo}–{hi} seeds"


def _column_eps(tm: TransferMatrix) -> list[str]:
    """Per-column ``ε = …`` texts when the columns' threat models differ (else the title carries ε)."""
    texts = [eps_label(tm.column_eps(c)) for c in tm.columns]
    return texts if len(set(texts)) > 1 else [""] * len(texts)


def _column_labels(columns: Sequence[str], eps: Sequence[str] | None = None) -> tuple[list[str], bool]:
    """Column labels wrapped to fit under a cell, or — when even a wrapped line is wider than a cell —
    left on one line to be drawn slanted (the second value says which); a non-empty ``eps`` text is
    added under (or, slanted, after) its column's label."""
    eps = list(eps) if eps is not None else [""] * len(columns)
    wrapped = [wrap_label(c, 20) for c in columns]
    widest = max((len(line) for c in wrapped for line in c.split("\n")), default=1)
    if widest * _CHAR_W <= _CELL_W:
        return [f"{w}\n{e}" if e else w for w, e in zip(wrapped, eps, strict=True)], False
    return [f"{c} ({e})" if e else str(c) for c, e in zip(columns, eps, strict=True)], True


def _diff_limit(*arrays: np.ndarray) -> float:
    """The colour limit of a difference map: the largest magnitude among the means and interval bounds
    given (at least half a point, so a matrix of zeros still has a scale)."""
    finite = np.abs(np.concatenate([a[np.isfinite(a)] for a in arrays]))
    return max(float(finite.max()) if finite.size else 0.0, 0.5)


def draw_matrix(
    ax: Axes,
    tm: TransferMatrix,
    *,
    diff: bool = False,
    alpha: float = 0.05,
    digits: int = 1,
    label_width: int = 18,
    title: bool = True,
) -> None:
    """Draw one transfer-matrix heatmap on ``ax`` (with its colour bar beside it); the difference map
    leaves out columns without a comparison to the reference."""
    tm = _shown(tm, diff)
    rows = _rows(tm, diff)
    values = (tm.diff_mean if diff else tm.mean).loc[rows, tm.columns].to_numpy(float)
    labels = cell_labels(tm, diff=diff, alpha=alpha, digits=digits)
    if diff:
        bounds = [b.loc[rows, tm.columns].to_numpy(float) for b in (tm.ci_low, tm.ci_high)]
        lim = _diff_limit(values, *bounds)
        scale = {"cmap": DIFF_CMAP, "vmin": -lim, "vmax": lim, "center": 0.0}
        cbar_label = f"Δ to {tm.reference} (percentage points)"
    else:
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
        if hi - lo < 1.0:
            lo, hi = lo - 0.5, hi + 0.5
        scale = {"cmap": ABSOLUTE_CMAP, "vmin": lo, "vmax": hi}
        cbar_label = "accuracy (%)"
    ax.set_facecolor("#e6e6e6")  # cells without a value show through as light grey
    sns.heatmap(
        values,
        ax=ax,
        annot=labels,
        fmt="",
        annot_kws={"fontsize": _FONT},
        linewidths=0.6,
        linecolor="white",
        cbar_kws={"label": cbar_label, "shrink": 0.9},
        **scale,
    )
    for i, j in zip(*np.nonzero(~np.isfinite(values)), strict=True):
        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=_FONT - 1, color="#777777")

    labels, slanted = _column_labels(tm.columns, _column_eps(tm))
    ax.set_xticks(np.arange(len(tm.columns)) + 0.5)
    if slanted:
        ax.set_xticklabels(labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=_FONT)
    else:
        ax.set_xticklabels(labels, rotation=0, ha="center", fontsize=_FONT)
    ax.set_yticks(np.arange(len(rows)) + 0.5)
    ax.set_yticklabels([wrap_label(r, label_width) for r in rows], rotation=0, fontsize=_FONT)
    ax.set_xlabel("target (arch / dataset)", fontsize=_FONT)
    ax.set_ylabel("activation source", fontsize=_FONT)
    ax.tick_params(length=0)
    if title:
        ax.set_title(_title(tm, diff, alpha), fontsize=_FONT + 1)


def _title(tm: TransferMatrix, diff: bool, alpha: float) -> str:
    if any(_column_eps(tm)):  # ε differs between targets: it is printed under each column
        name = f"{metric_title(tm.metric)} (L∞, ε per target)"
    else:
        name = metric_title(tm.metric, tm.column_eps(tm.columns[0]) if tm.columns else None)
    head = (
        f"{name} accuracy minus {tm.reference} (pp)\npaired difference [95 % interval over seeds × test images]"
        if diff
        else f"{name} accuracy (%)\nmean ± std"
    )
    notes = []
    compared = tm.holm_family()
    if tm.single_seed():
        notes.append("1 seed: differences between two trained models,")
        notes.append("not properties of the activations; no cell is marked")
    elif compared:
        notes.append(
            f"{SIGNIFICANCE_MARK} better/worse than {tm.reference} (Holm over {compared} tests, p < {alpha:g})"
        )
        notes.append(f"{EQUIVALENCE_MARK} equivalent within ±{tm.margin:g} pp (TOST)")
    if tm.not_converged().to_numpy().any():
        notes.append(f"{NOT_CONVERGED_MARK} some runs had not plateaued")
    return f"{head} over {seed_summary(tm)}" + "".join("\n" + note for note in notes)  # one line each: fits


def matrix_heatmap(tm: TransferMatrix, *, diff: bool = False, alpha: float = 0.05, digits: int = 1) -> Figure:
    """A figure holding one transfer-matrix heatmap, sized by the matrix shape and its labels."""
    tm = _shown(tm, diff)
    rows = _rows(tm, diff)
    row_chars = max((len(line) for r in rows for line in wrap_label(r).split("\n")), default=4)
    row_lines = max((wrap_label(r).count("\n") + 1 for r in rows), default=1)
    labels, slanted = _column_labels(tm.columns, _column_eps(tm))
    lines = max(c.count("\n") + 1 for c in labels)
    label_h = 0.5 * max(len(c) for c in labels) * _CHAR_W if slanted else lines * 0.18  # 30°: half its length
    width = 1.6 + row_chars * _CHAR_W + len(tm.columns) * _CELL_W
    height = 1.3 + label_h + len(rows) * max(_CELL_H, 0.2 * row_lines)
    fig = new_figure(max(width, 4.5), max(height, 2.6), layout="constrained")
    draw_matrix(fig.add_subplot(), tm, diff=diff, alpha=alpha, digits=digits)
    return fig


def save_matrix_heatmaps(
    tm: TransferMatrix,
    out_dir: Path | str,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    alpha: float = 0.05,
    notes: list[str] | None = None,
) -> list[Path]:
    """Write ``matrix_<metric>.<fmt>`` and ``matrix_<metric>_diff.<fmt>``; a difference map that cannot
    be drawn (no ReLU row, nothing but ReLU) is left out with a note."""
    out_dir = Path(out_dir)
    written = save_figure(matrix_heatmap(tm, alpha=alpha), out_dir / f"matrix_{slug(tm.metric)}", formats)
    try:
        fig = matrix_heatmap(tm, diff=True, alpha=alpha)
    except ValueError as exc:
        if notes is not None:
            notes.append(f"no difference map for {tm.metric}: {exc}")
        return written
    return written + save_figure(fig, out_dir / f"matrix_{slug(tm.metric)}_diff", formats)
