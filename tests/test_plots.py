"""The ``plots`` package: heatmaps read back against the matrix, gate maps of a real tiny run,
curves of a history, and ``sparta plot`` over a whole study directory."""

from __future__ import annotations

import dataclasses
import json
import shutil

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ttest_rel

from plots import NotAStudyError, curves_figure, load_history, matrix_heatmap, open_study, plot_study
from plots._figure import parse_formats, wrap_label
from plots.heatmap import SIGNIFICANCE_MARK, save_matrix_heatmaps
from studies.jobs import Job
from studies.matrix import transfer_matrix
from studies.results import RESULT_COLUMNS

RELU, INPLACE, MOVED = "ReLU", "Sparta (in place)", "Sparta dw ← resnet18/digits [stage]"
TARGETS = ("resnet18 / digits", "resnet34 / digits", "resnet18 / fashion-mnist")
# PGD-20 per (row, column) and seed 0, 1, 2. In-place Sparta is ReLU + 3 ± a little (significant),
# the moved Sparta ReLU + noise of both signs (not significant), and the third column has one seed only.
PGD = {
    (RELU, TARGETS[0]): [40.0, 42.0, 41.0],
    (INPLACE, TARGETS[0]): [43.2, 44.9, 44.1],
    (MOVED, TARGETS[0]): [41.0, 41.5, 41.6],
    (RELU, TARGETS[1]): [38.0, 39.0, 40.0],
    (INPLACE, TARGETS[1]): [41.1, 42.0, 43.2],
    (MOVED, TARGETS[1]): [39.5, 37.0, 41.0],
    (RELU, TARGETS[2]): [30.0],
    (INPLACE, TARGETS[2]): [35.5],
    (MOVED, TARGETS[2]): [29.0],
}
KIND = {RELU: "baseline", INPLACE: "baseline", MOVED: "target"}


def job_of(row: str, column: str, seed: int) -> str:
    tag = {RELU: "relu", INPLACE: "inplace", MOVED: "moved"}[row]
    return f"{tag}-{column.replace(' / ', '-')}-s{seed}"


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    records = []
    for (row, column), values in PGD.items():
        arch, dataset = column.split(" / ")
        for seed, value in enumerate(values):
            common = {
                "job_id": job_of(row, column, seed), "kind": KIND[row], "row": row, "column": column,
                "arch": arch, "dataset": dataset, "activation": "relu" if row == RELU else "sparta",
                "variant": "" if row == RELU else "dw", "policy": "stage" if row == MOVED else "",
                "source_job": "", "seed": seed,
            }  # fmt: skip
            records.append({**common, "metric": "pgd20", "value": value})
            records.append({**common, "metric": "clean", "value": value + 40.0})
    return pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))


def _cells(ax) -> dict[tuple[str, str], str]:
    """Annotation text of every heatmap cell, keyed by its (row, column) tick labels (see _key)."""
    rows = [_key(t.get_text()) for t in ax.get_yticklabels()]
    cols = [_key(t.get_text()) for t in ax.get_xticklabels()]
    out = {}
    for text in ax.texts:
        x, y = text.get_position()
        out[(rows[int(y)], cols[int(x)])] = text.get_text()
    return out


def _key(label: str) -> str:
    """A label without its whitespace, so a wrapped tick label matches the matrix label it shows."""
    return "".join(label.split())


def _expected(tm, row: str, column: str, diff: bool) -> str:
    """The cell text from the matrix's own statistics: ``mean ± std``, or ``Δ`` over ``[low, high]``; then
    a ``*`` where the Holm-adjusted p is below 0.05 over two or more paired seeds."""
    values = PGD[(row, column)]
    ref = None if row == RELU else PGD[(RELU, column)]
    if diff:
        d = np.subtract(values, ref)
        text = f"{d.mean():+.1f}\n[{tm.ci_low.loc[row, column]:+.1f}, {tm.ci_high.loc[row, column]:+.1f}]"
    else:
        text = f"{np.mean(values):.1f}" if len(values) == 1 else f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"
    if ref is not None and len(values) >= 2 and tm.p_adjusted.loc[row, column] < 0.05:
        text += SIGNIFICANCE_MARK
    return text


def test_absolute_heatmap_annotates_mean_std_and_significance(results):
    tm = transfer_matrix(results, "pgd20")
    fig = matrix_heatmap(tm)
    ax = fig.axes[0]
    cells = _cells(ax)
    assert len(cells) == len(PGD)
    for row, column in PGD:
        got = cells[(_key(row), _key(column))]
        assert got == _expected(tm, row, column, diff=False), (row, column)
    marked = {k for k, v in cells.items() if v.endswith(SIGNIFICANCE_MARK)}
    assert marked == {(_key(INPLACE), _key(TARGETS[0])), (_key(INPLACE), _key(TARGETS[1]))}
    # the seed-level t-test agrees on those two, and the single-seed column is never marked
    assert all(ttest_rel(PGD[(INPLACE, c)], PGD[(RELU, c)]).pvalue < 0.01 for c in TARGETS[:2])
    assert "PGD-20" in ax.get_title() and "1–3 seeds" in ax.get_title()
    norm = ax.collections[0].norm
    assert norm.vmin == pytest.approx(min(np.mean(v) for v in PGD.values()))
    assert norm.vmax == pytest.approx(max(np.mean(v) for v in PGD.values()))


def test_diff_heatmap_leaves_out_a_column_without_the_reference(results):
    # a source's own column (its dataset has no ReLU run) has no difference to draw: it is left out of the
    # difference map, not drawn as a column of "n/a", while the absolute map keeps it
    own = results[results.job_id == job_of(INPLACE, TARGETS[0], 0)].assign(
        job_id="source-shapes-s0", kind="source", row="Sparta dw (source)", column="resnet18 / shapes",
        dataset="shapes")  # fmt: skip
    tm = transfer_matrix(pd.concat([results, own], ignore_index=True), "pgd20")
    assert "resnet18 / shapes" in tm.columns
    absolute = matrix_heatmap(tm).axes[0]
    assert [_key(t.get_text()) for t in absolute.get_xticklabels()][-1] == _key("resnet18 / shapes")
    diff = matrix_heatmap(tm, diff=True).axes[0]
    assert [_key(t.get_text()) for t in diff.get_xticklabels()] == [_key(c) for c in TARGETS]
    assert _key("Sparta dw (source)") not in {_key(t.get_text()) for t in diff.get_yticklabels()}
    assert not any(t.get_text() == "n/a" for t in diff.texts)
    only_own = transfer_matrix(own, "pgd20")
    with pytest.raises(ValueError, match="no ReLU reference row|no column"):
        matrix_heatmap(only_own, diff=True)
    assert tm.with_columns(list(TARGETS)).diff_mean.equals(tm.diff_mean.loc[:, list(TARGETS)])
    with pytest.raises(KeyError, match="not columns"):
        tm.with_columns(["resnet50 / imagenet"])


def test_diff_heatmap_is_centred_at_zero_without_the_reference_row(results):
    tm = transfer_matrix(results, "pgd20")
    ax = matrix_heatmap(tm, diff=True).axes[0]
    norm = ax.collections[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax)
    assert norm.vmax >= max(abs(np.mean(np.subtract(PGD[(r, c)], PGD[(RELU, c)]))) for r in (INPLACE, MOVED)
                            for c in TARGETS) - 1e-9  # fmt: skip
    # the colour scale covers every cell's interval, so an uncertain small mean is not drawn saturated
    wide_low = tm.ci_low.copy()
    wide_low.loc[MOVED, TARGETS[0]] = -12.5
    wide = matrix_heatmap(dataclasses.replace(tm, ci_low=wide_low), diff=True).axes[0].collections[0].norm
    assert (wide.vmin, wide.vmax) == (pytest.approx(-12.5), pytest.approx(12.5))
    cells = _cells(ax)
    assert {r for r, _ in cells} == {_key(INPLACE), _key(MOVED)}
    for row in (INPLACE, MOVED):
        for column in TARGETS:
            assert cells[(_key(row), _key(column))] == _expected(tm, row, column, diff=True)
    assert "minus ReLU" in ax.get_title()


def test_heatmap_files_open(results, tmp_path):
    notes: list[str] = []
    files = save_matrix_heatmaps(transfer_matrix(results, "clean"), tmp_path, ("png", "pdf"), notes=notes)
    assert sorted(f.name for f in files) == sorted(
        ["matrix_clean.png", "matrix_clean.pdf", "matrix_clean_diff.png", "matrix_clean_diff.pdf"]
    )
    for f in files:
        if f.suffix == ".png":
            image = mpimg.imread(f)
            assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        else:
            assert f.read_bytes()[:4] == b"%PDF"
    assert not notes
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_diff_map_without_relu_is_skipped_with_a_note(results, tmp_path):
    no_relu = results[results["row"] != RELU]
    notes: list[str] = []
    files = save_matrix_heatmaps(transfer_matrix(no_relu, "pgd20"), tmp_path, ("png",), notes=notes)
    assert [f.name for f in files] == ["matrix_pgd20.png"]
    assert len(notes) == 1 and "ReLU" in notes[0]


def test_wrap_label_and_formats():
    long = "Sparta portable ← wide_resnet50_2/fashion-mnist [depth]"
    lines = wrap_label(long, 18).split("\n")
    assert len(lines) > 2 and all(len(line) <= 18 for line in lines)
    assert "".join(lines).replace(" ", "") == long.replace(" ", "")
    assert wrap_label("ReLU") == "ReLU"
    assert parse_formats("PNG, svg,png") == ("png", "svg")
    with pytest.raises(ValueError, match="jpeg"):
        parse_formats("png,jpeg")


def test_overview_leads_with_the_strongest_attack():
    from plots.overview import main_metric

    assert main_metric(["clean", "fgsm", "pgd20", "cw"]) == "pgd20"
    assert main_metric(["clean", "pgd20", "pgd50", "aa"]) == "aa"
    assert main_metric(["clean", "pgd10", "pgd50"]) == "pgd50"
    assert main_metric(["clean"]) == "clean"
    assert main_metric(["clean", "pgd20", "apgd-ce", "apgd-t"]) == "apgd-t"  # AutoAttack-grade leads
    assert main_metric(["clean", "pgd20-l2"]) == "pgd20-l2"


def _history(n: int, shift: float = 0.0) -> list[dict]:
    return [
        {"epoch": e + 1, "lr": 0.1, "train_loss": 2.0 / (e + 1), "train_acc": 20.0 + 5 * e,
         "val_clean": 50.0 + 4 * e + shift, "val_robust": 20.0 + 3 * e - (4.0 * e if e > 2 else 0.0) + shift,
         "seconds": 0.5}
        for e in range(n)
    ]  # fmt: skip


def test_curves_plot_history_on_two_axes(tmp_path):
    history = _history(6)
    (tmp_path / "history.json").write_text(json.dumps(history))
    fig = curves_figure(load_history(tmp_path), "job")
    ax, twin = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["val clean (%)"].get_ydata()) == [e["val_clean"] for e in history]
    assert list(lines["val robust (%)"].get_ydata()) == [e["val_robust"] for e in history]
    assert list(lines["train acc (%) on the trained inputs"].get_ydata()) == [e["train_acc"] for e in history]
    assert ax.get_ylim() == (0, 100)  # percent, whatever the run reached
    best = next(v for k, v in lines.items() if k.startswith("best robust"))
    assert list(best.get_xdata()) == [3]  # the robust peak, not the last epoch
    assert list(twin.get_lines()[0].get_ydata()) == [e["train_loss"] for e in history]
    with pytest.raises(FileNotFoundError, match="history.json"):
        load_history(tmp_path / "nope")


@pytest.fixture(scope="module")
def sparta_run(tiny_sparta_run):
    """A real one-epoch run of a tiny Sparta ResNet on digits (the session's, read only)."""
    return tiny_sparta_run


def test_gate_maps_of_a_trained_run(sparta_run):
    from plots.gates import compute_gate_maps, run_gate_maps, stage_gate_sites
    from transfer.engine.training import load_run

    model, _ = load_run(sparta_run)
    stages = sorted({s.stage for s in model.sparta_info.sites})
    chosen = stage_gate_sites(model)
    assert [s.stage for s, _ in chosen] == stages
    for site, _ in chosen:  # the last site of its stage
        assert site == [s for s in model.sparta_info.sites if s.stage == site.stage][-1]
    images = torch.rand(3, 1, 8, 8)
    gm = compute_gate_maps(model, images)
    assert len(gm.maps) == len(stages)
    for site, amap in zip(gm.sites, gm.maps, strict=True):
        assert tuple(amap.shape) == (3, *site.spatial)
        assert float(amap.min()) >= 0.0 and float(amap.max()) <= 1.0
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed

    fig = run_gate_maps(sparta_run, n_images=2)
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 2 * (1 + len(stages))
    maps = [a.images[0] for a in panels if a.images[0].get_cmap().name == "magma"]
    assert len(maps) == 2 * len(stages)
    assert all(m.norm.vmin == 0 and m.norm.vmax == 1 for m in maps)


class _Twice(torch.nn.Module):
    """One ReLU module called at two resolutions: injection makes it a PerCallActivation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_gate_maps_hook_each_call_of_a_multi_call_site():
    from plots.gates import compute_gate_maps
    from transfer import PerCallActivation, inject

    torch.manual_seed(0)
    model = _Twice()
    inject(model, "sparta", input_shape=(1, 8, 8))
    assert isinstance(model.act, PerCallActivation)
    first, second = model.act.activations
    with torch.no_grad():
        for p in (*first.parameters(), *second.parameters()):  # two different gates, so a mix-up shows
            p.normal_()
    x = torch.rand(2, 1, 8, 8)
    gm = compute_gate_maps(model, x)
    assert [s.name for s in gm.sites] == ["act#0", "act#1"]
    with torch.no_grad():
        h = model.conv1(x)
        want0 = first.gate(h).mean(1)
        want1 = second.gate(model.conv2(first(h))).mean(1)
    torch.testing.assert_close(gm.maps[0], want0)
    torch.testing.assert_close(gm.maps[1], want1)


def _plan_job(row: str, column: str, seed: int) -> dict:
    arch, dataset = column.split(" / ")
    return Job(
        id=job_of(row, column, seed), kind=KIND[row], seed=seed, arch=arch, dataset=dataset,
        activation="relu" if row == RELU else "sparta", variant=None, policy=None, source_job=None,
        row=row, column=column, train={}, eval={},
    ).to_dict()  # fmt: skip


@pytest.fixture()
def study_dir(tmp_path, results, sparta_run):
    root = tmp_path / "study"
    (root / "jobs").mkdir(parents=True)
    (root / "study.toml").write_text('name = "tiny-transfer"\n')
    results.to_csv(root / "results.csv", index=False)
    jobs = [_plan_job(r, c, s) for (r, c), values in PGD.items() for s in range(len(values))]
    jobs.append(_plan_job(RELU, TARGETS[0], 7))  # planned, never started
    (root / "plan.json").write_text(json.dumps({"name": "tiny-transfer", "jobs": jobs}))
    for job in jobs[:-1]:
        jd = root / "jobs" / job["id"]
        jd.mkdir()
        (jd / "result.json").write_text(json.dumps({"job_id": job["id"], "metrics": {"pgd20": 1.0}}))
    for job in jobs[:3]:  # a few jobs with curves keep the test fast; the rest have none
        (root / "jobs" / job["id"] / "history.json").write_text(json.dumps(_history(4, shift=job["seed"])))
    inplace = root / "jobs" / job_of(INPLACE, TARGETS[0], 0)
    for name in ("config.json", "checkpoint.pt", "history.json"):
        shutil.copy(sparta_run / name, inplace / name)
    return root


def test_plot_study_writes_every_figure(study_dir):
    notes: list[str] = []
    files = plot_study(study_dir, formats=("png",), notes=notes)
    names = {str(f.relative_to(study_dir / "figures")) for f in files}
    sparta_job = job_of(INPLACE, TARGETS[0], 0)
    with_history = [job_of(RELU, TARGETS[0], s) for s in range(3)] + [sparta_job]  # its run's own history
    curves = {f"curves/{jid}.png" for jid in with_history}
    expected = {"matrix_clean", "matrix_clean_diff", "matrix_pgd20", "matrix_pgd20_diff", "curves_all", "overview",
                "intervals_clean", "intervals_pgd20", f"gates/{sparta_job}"}  # fmt: skip
    assert names == {f"{stem}.png" for stem in expected} | curves
    for f in files:
        image = mpimg.imread(f)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert notes == []
    view = open_study(study_dir)
    assert view.name == "tiny-transfer" and view.seeds() == [0, 1, 2, 7]
    assert view.status_counts() == {"done": sum(len(v) for v in PGD.values()), "pending": 1}
    assert view.sparta_runs() == [sparta_job]


def test_plot_cli_json_svg_and_metric_filter(study_dir, capsys):
    from transfer.cli import main

    shutil.rmtree(study_dir / "jobs")
    assert main(["plot", str(study_dir), "--format", "pdf,svg", "--metrics", "pgd20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = sorted(p.split("/figures/")[1] for p in out["files"])
    stems = ("matrix_pgd20", "matrix_pgd20_diff", "intervals_pgd20", "overview")
    assert names == sorted(f"{s}.{fmt}" for s in stems for fmt in ("pdf", "svg"))
    assert any("history" in n for n in out["notes"]) and any("Sparta" in n for n in out["notes"])
    figures = study_dir / "figures"
    assert (figures / "overview.pdf").read_bytes()[:4] == b"%PDF"
    assert (figures / "overview.svg").read_text().lstrip().startswith("<?xml")


def test_plot_rejects_what_is_not_a_study(tmp_path, study_dir, capsys):
    from transfer.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAStudyError, match="not a study directory"):
        plot_study(empty)
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="aa"):
        plot_study(study_dir, metrics=["aa"])
