"""Figures of a study directory: transfer-matrix heatmaps, interval plots, Sparta gate maps, training curves and a
one-page overview (``sparta plot DIR``). Figures are drawn with matplotlib's Agg canvas, never
through pyplot, so importing ``plots`` leaves the caller's backend alone."""

from ._figure import save_figure
from .curves import curves_figure, curves_grid, load_history
from .heatmap import matrix_heatmap, save_matrix_heatmaps
from .intervals import interval_figure, save_interval_figure
from .overview import overview_figure
from .study import plot_study
from .studydir import NotAStudyError, StudyView, open_study

__all__ = [
    "NotAStudyError",
    "StudyView",
    "compute_gate_maps",
    "curves_figure",
    "curves_grid",
    "gate_figure",
    "interval_figure",
    "load_history",
    "matrix_heatmap",
    "open_study",
    "overview_figure",
    "plot_study",
    "run_gate_maps",
    "save_figure",
    "save_interval_figure",
    "save_matrix_heatmaps",
]


def __getattr__(name: str) -> object:
    """Gate-map functions load lazily: they pull in torch and the model code, which heatmaps do not need."""
    if name in ("gate_figure", "run_gate_maps", "compute_gate_maps"):
        from . import gates

        return getattr(gates, name)
    raise AttributeError(f"module 'plots' has no attribute {name!r}")
