"""A one-page study overview: the main metric's transfer matrix and its differences to ReLU and to
SiLU (Sparta's own initialisation: smoothness without attention), the curves of a few jobs, and the
job states, under a header with the spec name, seeds and threat model.

Every part that the study cannot give yet (no finished job, no ReLU row, no history) is replaced by
a short grey note in its place, so the page can be drawn at any moment of a study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from studies.matrix import TransferMatrix

from ._figure import metric_title, new_figure, wrap_label
from .curves import draw_curves
from .heatmap import draw_matrix

__all__ = ["STATE_COLORS", "main_metric", "overview_figure"]

_SIDE_BY_SIDE_MAX = 4  # matrix columns up to which the two heatmaps share a row

STATE_COLORS = {
    "done": "#2ca02c",
    "running": "#1f77b4",
    "pending": "#bbbbbb",
    "interrupted": "#ff7f0e",
    "failed": "#d62728",
}


def main_metric(metrics: Sequence[str]) -> str:
    """The metric an overview leads with: the strongest L∞ attack present (AutoAttack, APGD-CE+T, APGD-T, APGD-CE,
    PGD with the most steps, CW, FGSM: ``transfer.engine.threat.strongest_attack``), else the first
    other metric, clean accuracy only when nothing else is there."""
    if not metrics:
        raise ValueError("no metrics to choose from")
    from transfer.threat_model import strongest_attack

    others = [m for m in metrics if m != "clean"]
    return strongest_attack(metrics) or (others[0] if others else metrics[0])


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        color="#777777",
        fontsize=9,
        wrap=True,
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#dddddd")


def _draw_states(ax: Axes, counts: Mapping[str, int]) -> None:
    states = [s for s in STATE_COLORS if counts.get(s)] + sorted(s for s in counts if s not in STATE_COLORS)
    if not states:
        _placeholder(ax, "no jobs planned")
        return
    values = [counts[s] for s in states]
    bars = ax.barh(states, values, color=[STATE_COLORS.get(s, "#999999") for s in states])
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_title(f"jobs ({sum(values)})", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)


def overview_figure(
    *,
    name: str,
    seeds: Sequence[int],
    status_counts: Mapping[str, int],
    matrix: TransferMatrix | None,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    alpha: float = 0.05,
    max_curves: int = 3,
    other_references: Sequence[TransferMatrix] = (),
) -> Figure:
    """Draw the overview page. ``histories`` maps a panel title to a run's history; the first
    ``max_curves`` are drawn. Beside the difference to ``matrix``'s reference (ReLU) the page shows
    the difference map of each of ``other_references`` — the same metric referenced to another row,
    e.g. SiLU, Sparta's initialisation."""
    ncols = len(matrix.columns) if matrix is not None else 2
    nrows = len(matrix.rows) if matrix is not None else 3
    row_chars = max(
        (len(line) for r in (matrix.rows if matrix else []) for line in wrap_label(r).split("\n")), default=10
    )
    map_w = 2.6 + row_chars * 0.075 + ncols * 1.5
    map_h = max(3.2, 1.9 + 0.62 * nrows)
    stacked = ncols > _SIDE_BY_SIDE_MAX  # wide matrices go one above the other, not side by side
    per_row = 1 if stacked else 2
    panels: list[tuple[TransferMatrix | None, bool]] = [(matrix, False), (matrix, True)]
    panels += [(m, True) for m in other_references] if matrix is not None else []
    map_rows = -(-len(panels) // per_row)
    width = max(13.0, map_w * per_row)
    heights = [map_h] * map_rows + [3.2]
    fig = new_figure(width, sum(heights) + 0.5, layout="constrained")
    parts = fig.subfigures(len(heights), 1, height_ratios=heights)
    map_axes = [ax for part in parts[:-1] for ax in np.atleast_1d(part.subplots(1, per_row))]
    bottom = parts[-1]
    for ax, (tm, diff) in zip(map_axes, panels, strict=False):
        if tm is None:
            _placeholder(ax, "no difference to ReLU yet" if diff else "no finished job yet: no transfer matrix")
            continue
        try:
            draw_matrix(ax, tm, diff=diff, alpha=alpha)
        except ValueError as exc:
            _placeholder(ax, str(exc))
    for ax in map_axes[len(panels) :]:
        ax.set_axis_off()

    curves = list(histories.items())[:max_curves]
    axes = bottom.subplots(1, max(len(curves), 1) + 1, width_ratios=[3] * max(len(curves), 1) + [1.6])
    if curves:
        for ax, (title, history) in zip(axes[:-1], curves, strict=True):
            draw_curves(ax, history, "\n".join(wrap_label(title, 48).split("\n")[:3]), legend=ax is axes[0])
    else:
        _placeholder(axes[0], "no training history yet")
    _draw_states(axes[-1], status_counts)

    seed_text = ", ".join(map(str, seeds)) if seeds else "none"
    metric = ""
    if matrix is not None:
        eps = {matrix.column_eps(c) for c in matrix.columns}
        threat = matrix.threat_summary() if len(eps) == 1 else "L∞ ε per target (under each column)"
        metric = f" — main metric {metric_title(matrix.metric)}, {threat}"
    fig.suptitle(f"Study {name}{metric} — seeds: {seed_text}", fontsize=12, fontweight="bold")
    return fig
