"""Interval plots ("forest plots"): every row's paired difference to the reference, one panel per target
column, as a point with its 95 % interval over seeds and test images, coloured by its Holm-adjusted
verdict. The equivalence band (±margin) is shaded, so "inconclusive" (an interval that crosses 0 and
leaves the band) reads differently from "equivalent" (an interval inside it).

The heatmap shows many columns at a glance; this figure is for a study with few columns and many rows
(an ablation such as ``sparta_readings``), where what matters is how wide each interval is and which of
them clear zero. The numbers are the matrix's own (``studies.matrix.transfer_matrix``): nothing is
recomputed here, so figure, heatmap and ``sparta study matrix`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from studies.matrix import NOT_CONVERGED_MARK, TransferMatrix
from studies.stats import format_points

from ._figure import eps_label, metric_title, new_figure, save_figure, slug, wrap_label

__all__ = ["VERDICT_COLOURS", "cell_verdict", "draw_intervals", "interval_figure", "save_interval_figure"]

# blue/red as in the difference heatmap's RdBu; equivalent dark grey; inconclusive mid grey
VERDICT_COLOURS = {
    "better": "#2166ac", "worse": "#b2182b", "equivalent": "#404040", "inconclusive": "#8c8c8c", "1 seed": "#8c8c8c",
}  # fmt: skip
_FONT = 9
_ROW_H = 0.36  # inches per row
_PANEL_W = 3.4  # inches of the plotting area, without its labels
_CHAR_W = 0.075


def _compared(tm: TransferMatrix) -> dict[str, list[str]]:
    """Per column with a comparison, the rows that have a difference to the reference, in the matrix's order."""
    compared = {
        c: [r for r in tm.rows if r != tm.reference and math.isfinite(float(tm.diff_mean.loc[r, c]))]
        for c in tm.columns
    }
    compared = {c: rows for c, rows in compared.items() if rows}
    if tm.reference is None or not compared:
        raise ValueError(
            f"the {tm.metric} matrix has no row compared with a reference "
            f"(reference {tm.reference!r}): an interval plot needs a reference row and another row in one column"
        )
    return compared


def cell_verdict(tm: TransferMatrix, row: str, column: str, alpha: float | None = None) -> str:
    """better/worse (Holm-adjusted p below ``alpha``, the matrix's own by default), equivalent,
    inconclusive — or ``1 seed`` where the cell pairs a single seed (two trained models, not two
    activations: as in the heatmap, no verdict is drawn)."""
    alpha = tm.alpha if alpha is None else alpha
    if not float(tm.n_paired.loc[row, column]) >= 2:
        return "1 seed"
    if float(tm.p_adjusted.loc[row, column]) < alpha:
        return "better" if float(tm.diff_mean.loc[row, column]) > 0 else "worse"
    return "equivalent" if tm.verdict.loc[row, column] == "equivalent" else "inconclusive"


def _label(tm: TransferMatrix, row: str, column: str, alpha: float | None) -> str:
    d, lo, hi = (float(f.loc[row, column]) for f in (tm.diff_mean, tm.ci_low, tm.ci_high))
    interval = "" if math.isnan(lo) else f" [{format_points(lo)}, {format_points(hi)}]"
    mark = NOT_CONVERGED_MARK if float(tm.converged.loc[row, column]) < 1.0 else ""  # as tm.not_converged()
    return f"{format_points(d)}{interval} {cell_verdict(tm, row, column, alpha)}{mark}"


def draw_intervals(
    ax: Axes, tm: TransferMatrix, column: str, rows: Sequence[str], *, alpha: float | None = None, labels: bool = True
) -> None:
    """One column's panel: a point and interval per row of ``rows`` (top to bottom), the reference at 0,
    the equivalence band shaded, and each row's ``difference [interval] verdict`` written on the right."""
    y = np.arange(len(rows))[::-1]
    ax.axvspan(-tm.margin, tm.margin, color="#ececec", zorder=0, lw=0)
    ax.axvline(0.0, color="black", lw=0.8, zorder=1)
    text_at = blended_transform_factory(ax.transAxes, ax.transData)
    for yi, row in zip(y, rows, strict=True):
        d = float(tm.diff_mean.loc[row, column])
        if math.isnan(d):
            continue
        lo, hi = float(tm.ci_low.loc[row, column]), float(tm.ci_high.loc[row, column])
        colour = VERDICT_COLOURS.get(cell_verdict(tm, row, column, alpha), VERDICT_COLOURS["inconclusive"])
        if not math.isnan(lo):
            ax.plot([lo, hi], [yi, yi], color=colour, lw=2.0, solid_capstyle="butt", zorder=2)
        ax.plot([d], [yi], "o", color=colour, ms=5, zorder=3)
        if labels:
            ax.text(
                1.02,
                yi,
                _label(tm, row, column, alpha),
                transform=text_at,
                va="center",
                fontsize=_FONT - 1,
                color=colour,
            )
    ax.set_yticks(y)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"Δ to {tm.reference} (percentage points)", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT)
    ax.grid(axis="x", color="#dddddd", lw=0.5, zorder=0)
    eps = eps_label(tm.column_eps(column))
    ax.set_title(f"{column}" + (f" ({eps})" if eps else ""), fontsize=_FONT)


def _title(tm: TransferMatrix, alpha: float) -> str:
    eps = {tm.column_eps(c) for c in tm.columns}
    name = metric_title(tm.metric, next(iter(eps)) if len(eps) == 1 else None)
    seeds = sorted({int(n) for n in tm.n_paired.to_numpy(float).ravel() if math.isfinite(n)})
    if seeds == [1]:
        seed_text = "1 seed (differences between two trained models)"
    else:
        seed_text = f"{seeds[0]} paired seeds" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} paired seeds"
    return (
        f"{name}: accuracy minus {tm.reference}, {seed_text}\n"
        "unadjusted 95 % interval over seeds × test images; shaded: equivalence margin "
        f"±{tm.margin:g} pp\nverdict (Holm over {tm.holm_family()} tests, p < {alpha:g}): "
        "blue better, red worse, dark grey equivalent, grey inconclusive"
    )


def interval_figure(tm: TransferMatrix, *, alpha: float | None = None, label_width: int = 30) -> Figure:
    """A figure with one interval panel per column that has a comparison with the reference, stacked
    top to bottom on one shared x axis (so a study of many targets grows down, not sideways). ``alpha``
    is the significance level of the colours (default: the matrix's own)."""
    alpha = tm.alpha if alpha is None else alpha
    per_column = _compared(tm)
    columns = list(per_column)
    rows = [r for c in columns for r in per_column[c]]
    row_chars = max(len(line) for r in rows for line in wrap_label(r, label_width).split("\n"))
    text_chars = max(len(_label(tm, r, c, alpha)) for c in columns for r in per_column[c])
    width = 0.6 + row_chars * _CHAR_W + _PANEL_W + text_chars * _CHAR_W * 0.9
    height = 1.2 + len(columns) * 0.9 + len(rows) * _ROW_H
    fig = new_figure(width, height, layout="constrained")
    ratios = [len(per_column[c]) + 1 for c in columns]
    axes = fig.subplots(len(columns), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": ratios})[:, 0]
    values = np.concatenate(
        [f.loc[per_column[c], c].to_numpy(float) for c in columns for f in (tm.ci_low, tm.ci_high, tm.diff_mean)]
    )
    values = values[np.isfinite(values)]
    lim = max(float(np.abs(values).max()) if values.size else 0.0, tm.margin) * 1.1
    for ax, column in zip(axes, columns, strict=True):
        draw_intervals(ax, tm, column, per_column[column], alpha=alpha)
        ax.set_yticklabels([wrap_label(r, label_width) for r in per_column[column]], fontsize=_FONT)
        ax.set_xlim(-lim, lim)
    for ax in axes[:-1]:
        ax.set_xlabel("")
    fig.suptitle(_title(tm, alpha), fontsize=_FONT + 1)
    return fig


def save_interval_figure(
    tm: TransferMatrix,
    out_dir: Path | str,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    alpha: float | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Write ``intervals_<metric>.<fmt>`` (vs the matrix's reference, with ``_vs-<ref>`` unless it is
    ReLU); a matrix with nothing compared is left out with a note."""
    try:
        fig = interval_figure(tm, alpha=alpha)
    except ValueError as exc:
        if notes is not None:
            notes.append(f"no interval plot for {tm.metric}: {exc}")
        return []
    suffix = "" if str(tm.reference).lower() == "relu" else f"_vs-{slug(str(tm.reference).lower())}"
    return save_figure(fig, Path(out_dir) / f"intervals_{slug(tm.metric)}{suffix}", formats)
