"""Transfer-matrix heatmaps (``docs/sparta.md`` §5.5): absolute accuracy per metric and the difference to
the ReLU row, each cell annotated ``mean ± std`` over seeds with a ``*`` where the difference to the
reference is significant (p < ``alpha``: McNemar's exact test on the same test images pooled over seeds
where the study stored per-image correctness, else the paired t-test across seeds; ``significance``),
and a ``†`` where some of the cell's runs had not plateaued (``docs/evaluation.md``).

The absolute map uses a sequential colormap; the difference map a diverging one whose limits are
symmetric about 0 (``vmin == -vmax``), so white always means "same as ReLU" and the two signs are
equally saturated for equal magnitudes.
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

from ._figure import eps_label, metric_title, new_figure, save_figure, slug, wrap_label

__all__ = [
    "ABSOLUTE_CMAP",
    "DIFF_CMAP",
    "SIGNIFICANCE_MARK",
    "cell_labels",
    "significance",
    "draw_matrix",
    "matrix_heatmap",
    "save_matrix_heatmaps",
    "seed_summary",
]

ABSOLUTE_CMAP = "viridis"
DIFF_CMAP = "RdBu"
SIGNIFICANCE_MARK = "*"
_CELL_W, _CELL_H = 1.5, 0.62  # inches per cell: room for "100.0 ± 10.0*" at 9 pt
_FONT = 9
_CHAR_W = 0.075  # inches per character at 9 pt, for sizing


def _rows(tm: TransferMatrix, diff: bool) -> list[str]:
    """The rows a map shows: all, or for the difference map all but the reference itself."""
    if not diff:
        return list(tm.rows)
    if tm.reference is None:
        raise ValueError(
            f"the {tm.metric} matrix has no ReLU reference row, so there is no difference to draw; "
            "add ReLU baseline jobs to the study spec"
        )
    rows = [r for r in tm.rows if r != tm.reference]
    if not rows:
        raise ValueError(f"the {tm.metric} matrix holds only the reference row {tm.reference!r}; nothing to compare")
    return rows


def significance(tm: TransferMatrix) -> tuple[pd.DataFrame, str]:
    """The p-values the significance marks use, and the test's name: McNemar's exact test on the same
    test images pooled over seeds (``studies.paired``; it says something with one seed) where the study
    stored per-image correctness, else the paired t-test over seeds."""
    if np.isfinite(tm.p_image.to_numpy(float)).any():
        return tm.p_image, "McNemar's exact test on the test images, pooled over seeds"
    return tm.p_value, "paired t-test over seeds"


def cell_labels(tm: TransferMatrix, *, diff: bool = False, alpha: float = 0.05, digits: int = 1) -> np.ndarray:
    """The annotation of every shown cell: ``mean ± std`` (std left out for one seed), signed for the
    difference map, with :data:`SIGNIFICANCE_MARK` where the test of :func:`significance` gives
    ``p < alpha`` and :data:`NOT_CONVERGED_MARK` where some of the cell's runs had not plateaued;
    empty where no value."""
    rows = _rows(tm, diff)
    text = tm.formatted(digits=digits, diff=diff, mark_unconverged=False).loc[rows, tm.columns]
    p = significance(tm)[0].loc[rows, tm.columns].to_numpy(float)
    unconverged = tm.not_converged().loc[rows, tm.columns].to_numpy(bool)
    labels = text.to_numpy(dtype=object, copy=True)
    for i, j in np.ndindex(labels.shape):
        if labels[i, j]:
            labels[i, j] += (SIGNIFICANCE_MARK if np.nan_to_num(p[i, j], nan=1.0) < alpha else "") + (
                NOT_CONVERGED_MARK if unconverged[i, j] else "")
    return labels


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


def _diff_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
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
    """Draw one transfer-matrix heatmap on ``ax`` (with its colour bar beside it)."""
    rows = _rows(tm, diff)
    values = (tm.diff_mean if diff else tm.mean).loc[rows, tm.columns].to_numpy(float)
    labels = cell_labels(tm, diff=diff, alpha=alpha, digits=digits)
    if diff:
        lim = _diff_limit(values)
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
        f"{name} accuracy minus {tm.reference} (pp)\nmean ± std of the paired differences"
        if diff
        else f"{name} accuracy (%)\nmean ± std"
    )
    p, test = significance(tm)
    notes = []
    if np.isfinite(p.to_numpy(float)).any():
        notes.append(f"{SIGNIFICANCE_MARK} p < {alpha:g} vs {tm.reference}, {test}")
    if tm.not_converged().to_numpy().any():
        notes.append(f"{NOT_CONVERGED_MARK} some runs had not plateaued")
    return f"{head} over {seed_summary(tm)}" + "".join("\n" + note for note in notes)  # one line each: fits the width


def matrix_heatmap(tm: TransferMatrix, *, diff: bool = False, alpha: float = 0.05, digits: int = 1) -> Figure:
    """A figure holding one transfer-matrix heatmap, sized by the matrix shape and its labels."""
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
