"""Training curves of run directories: clean and robust validation accuracy per epoch (left axis, %),
and the training loss on a twin axis (right), read from ``history.json``.

The best robust epoch is marked: adversarial training overfits robustly (Rice et al. 2020), so the
peak of ``val_robust`` — not the last epoch — is the number a run is judged by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ._figure import new_figure, wrap_label

__all__ = ["load_history", "draw_curves", "curves_figure", "curves_grid", "CURVE_STYLE"]

CURVE_STYLE = {
    "train_acc": {"color": "#9467bd", "label": "train acc (%) on the trained inputs", "alpha": 0.6},
    "val_clean": {"color": "#1f77b4", "label": "val clean (%)"},
    "val_robust": {"color": "#d62728", "label": "val robust (%)"},
    "train_loss": {"color": "#555555", "label": "train loss", "linestyle": "--"},
}


def load_history(run_dir: Path | str) -> list[dict[str, Any]]:
    """``RUN_DIR/history.json``: a list with one dict per epoch. A clear error if absent or malformed."""
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the run has not finished an epoch yet")
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError(f"{path} must hold a list of per-epoch dicts (epoch, train_loss, val_clean, val_robust)")
    return history


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    def value(e: Mapping[str, Any]) -> float:
        v = e.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan

    return np.array([value(e) for e in history], dtype=float)


def _epochs(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    epochs = _series(history, "epoch")
    return np.where(np.isnan(epochs), np.arange(1, len(history) + 1), epochs)


def draw_curves(ax: Axes, history: Sequence[Mapping[str, Any]], title: str = "", *, legend: bool = True) -> Axes:
    """Accuracy curves on ``ax`` and the training loss on a twin axis; returns the twin axis."""
    epochs = _epochs(history)
    marker = "o" if len(history) <= 12 else None
    for key in ("train_acc", "val_clean", "val_robust"):
        values = _series(history, key)
        if np.isfinite(values).any():
            ax.plot(epochs, values, marker=marker, markersize=3, **CURVE_STYLE[key])
    robust = _series(history, "val_robust")
    if np.isfinite(robust).any():
        best = int(np.nanargmax(robust))
        ax.plot(
            epochs[best],
            robust[best],
            marker="*",
            markersize=11,
            color=CURVE_STYLE["val_robust"]["color"],
            markeredgecolor="black",
            linestyle="none",
            label=f"best robust (epoch {epochs[best]:g})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("accuracy (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    twin = ax.twinx()
    loss = _series(history, "train_loss")
    if np.isfinite(loss).any():
        twin.plot(epochs, loss, marker=marker, markersize=3, **CURVE_STYLE["train_loss"])
    twin.set_ylabel("train loss", fontsize=8, color=CURVE_STYLE["train_loss"]["color"])
    twin.tick_params(labelsize=7, labelcolor=CURVE_STYLE["train_loss"]["color"])
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)
    return twin


def curves_figure(history: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """One run's curves."""
    if not history:
        raise ValueError("the history is empty: no epoch to plot")
    fig = new_figure(6.0, 3.8, layout="constrained")
    draw_curves(fig.add_subplot(), history, title)
    return fig


def curves_grid(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "", max_cols: int = 4) -> Figure:
    """Every run's curves in a grid (one panel per run, titled by its key), with one shared legend."""
    items = [(k, h) for k, h in histories.items() if h]
    if not items:
        raise ValueError("no run has a history to plot")
    cols = min(max_cols, len(items))
    rows = math.ceil(len(items) / cols)
    fig = new_figure(0.6 + 3.6 * cols, 0.6 + 2.7 * rows, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()  # one accuracy scale for all
    for ax, (name, history) in zip(axes, items, strict=False):
        draw_curves(ax, history, wrap_label(name, 46), legend=False)
    for ax in axes[len(items) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], **{k: v for k, v in style.items()}) for style in CURVE_STYLE.values()]
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            markersize=10,
            color=CURVE_STYLE["val_robust"]["color"],
            markeredgecolor="black",
            linestyle="none",
            label="best robust epoch",
        )
    )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
