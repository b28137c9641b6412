"""Interval plots (``plots.intervals``): every drawn interval and label read back against the matrix's own
statistics, colours following the Holm-adjusted verdicts, and what cannot be drawn left out with a note."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from test_plots import INPLACE, MOVED, PGD, RELU, TARGETS, results  # noqa: F401 (results is a fixture)

from plots import interval_figure, save_interval_figure
from plots.intervals import VERDICT_COLOURS, cell_verdict
from studies.matrix import transfer_matrix
from studies.stats import format_points


def _panels(fig) -> dict[str, object]:
    """The figure's data panels, keyed by the column each one's title names."""
    return {ax.get_title().split(" (")[0]: ax for ax in fig.axes}


def _drawn(ax) -> dict[str, tuple[float, float, float, str]]:
    """Per row label of a panel: (interval low, high, point, colour of the point), read from its lines."""
    rows = ["".join(t.get_text().split()) for t in ax.get_yticklabels()]
    ticks = list(ax.get_yticks())
    segments = {}
    points = {}
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 2 and y[0] == y[1] and x[0] != x[1]:
            segments[float(y[0])] = (float(x[0]), float(x[1]))
        elif len(x) == 1:
            points[float(y[0])] = (float(x[0]), line.get_color())
    out = {}
    for row, y in zip(rows, ticks, strict=True):
        lo, hi = segments.get(float(y), (math.nan, math.nan))
        out[row] = (lo, hi, *points[float(y)])
    return out


def test_intervals_match_the_matrix_and_are_coloured_by_verdict(results):  # noqa: F811
    tm = transfer_matrix(results, "pgd20")
    fig = interval_figure(tm)
    panels = _panels(fig)
    assert list(panels) == list(TARGETS)  # every column compared with ReLU, in the matrix's order
    for column, ax in panels.items():
        drawn = _drawn(ax)
        assert set(drawn) == {"".join(r.split()) for r in (INPLACE, MOVED)}  # ReLU itself is not a row
        for row in (INPLACE, MOVED):
            lo, hi, point, colour = drawn["".join(row.split())]
            assert point == pytest.approx(float(tm.diff_mean.loc[row, column]))
            assert point == pytest.approx(np.mean(np.subtract(PGD[(row, column)], PGD[(RELU, column)])))
            if len(PGD[(row, column)]) >= 2:
                assert (lo, hi) == pytest.approx(
                    (float(tm.ci_low.loc[row, column]), float(tm.ci_high.loc[row, column]))
                )
                assert lo < point < hi
            assert colour == VERDICT_COLOURS[cell_verdict(tm, row, column)]
        labels = [t.get_text() for t in ax.texts]
        assert len(labels) == 2 and all(
            t.startswith(format_points(tm.diff_mean.loc[r, column]))
            for t, r in zip(labels, (INPLACE, MOVED), strict=True)
        )
        lo, hi = ax.get_xlim()
        assert lo == pytest.approx(-hi) and hi >= np.nanmax(np.abs(tm.ci_high.to_numpy(float)))
    # the fixture's in-place Sparta is ReLU + 3 on three seeds: better; the moved one noise: not better
    assert cell_verdict(tm, INPLACE, TARGETS[0]) == "better"
    assert cell_verdict(tm, MOVED, TARGETS[0]) in ("inconclusive", "equivalent")
    assert cell_verdict(tm, INPLACE, TARGETS[2]) == "1 seed"  # one seed: two models, no verdict drawn
    assert "1 seed" in _panels(fig)[TARGETS[2]].texts[0].get_text()
    assert f"Holm over {tm.holm_family()} tests" in fig._suptitle.get_text()


def test_alpha_changes_the_colours_not_the_numbers(results):  # noqa: F811
    tm = transfer_matrix(results, "pgd20")
    strict = _drawn(_panels(interval_figure(tm, alpha=1e-12))[TARGETS[0]])
    default = _drawn(_panels(interval_figure(tm))[TARGETS[0]])
    key = "".join(INPLACE.split())
    assert default[key][3] == VERDICT_COLOURS["better"] and strict[key][3] != VERDICT_COLOURS["better"]
    assert default[key][:3] == strict[key][:3]


def test_interval_files_and_a_matrix_without_reference(results, tmp_path):  # noqa: F811
    notes: list[str] = []
    files = save_interval_figure(transfer_matrix(results, "clean"), tmp_path, ("png",), notes=notes)
    assert [f.name for f in files] == ["intervals_clean.png"] and notes == []
    assert min(mpimg.imread(files[0]).shape[:2]) > 100
    no_relu = results[results.row != RELU]
    assert save_interval_figure(transfer_matrix(no_relu, "pgd20"), tmp_path, ("png",), notes=notes) == []
    assert len(notes) == 1 and "no interval plot for pgd20" in notes[0] and "reference" in notes[0]
    silu = transfer_matrix(results, "pgd20", reference=INPLACE)
    assert [f.name for f in save_interval_figure(silu, tmp_path, ("png",))] == [
        "intervals_pgd20_vs-sparta_in_place.png"
    ]
