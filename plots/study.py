"""Every figure of a study directory, written into ``DIR/figures/``:

- ``matrix_<metric>.<fmt>`` and ``matrix_<metric>_diff.<fmt>`` — transfer-matrix heatmaps (the
  difference to ReLU), and ``matrix_<metric>_diff_vs-silu.<fmt>`` when the study has a SiLU row;
- ``intervals_<metric>.<fmt>`` (and ``_vs-silu``) — every row's difference and interval, by verdict;
- ``curves/<job>.<fmt>`` and ``curves_all.<fmt>`` — training curves per job and in one grid;
- ``gates/<job>.<fmt>`` — Sparta gate maps, one Sparta job per (row, column);
- ``overview.<fmt>`` — the one-page summary.

What the study cannot give yet is skipped with a note (``notes``), never a crash; a directory that is
not a study directory is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from studies.matrix import TransferMatrix, list_metrics, present_references, transfer_matrix
from studies.paired import PerImageStore

from ._figure import parse_formats, save_figure, slug
from .curves import curves_figure, curves_grid
from .heatmap import matrix_heatmap, save_matrix_heatmaps
from .intervals import save_interval_figure
from .overview import main_metric, overview_figure
from .studydir import StudyView, open_study

__all__ = ["plot_study"]

log = logging.getLogger(__name__)


def _matrices(view: StudyView, metrics: Sequence[str] | None, notes: list[str]) -> dict[str, TransferMatrix]:
    if view.results is None or not len(view.results):
        notes.append("no results table with finished jobs yet: transfer-matrix heatmaps skipped")
        return {}
    present = list_metrics(view.results)
    wanted = list(metrics) if metrics else present
    unknown = [m for m in wanted if m not in present]
    if unknown:
        raise ValueError(f"metric(s) {unknown} are not in {view.root}'s results; it holds {', '.join(present)}")
    per_image = PerImageStore(view.root)  # the jobs' per-image correctness: the heatmaps' McNemar marks
    return {m: transfer_matrix(view.results, m, per_image=per_image) for m in wanted}


def _other_references(view: StudyView, matrices: dict[str, TransferMatrix]) -> dict[str, list[TransferMatrix]]:
    """Per metric, the matrices referenced to each row of ``REFERENCES`` but ReLU that the study has (SiLU)."""
    if not matrices:
        return {}
    refs = [r for r in present_references(view.results) if r.lower() != "relu"]
    per_image = PerImageStore(view.root)
    return {m: [transfer_matrix(view.results, m, reference=r, per_image=per_image) for r in refs] for m in matrices}


def _gate_figures(
    view: StudyView,
    out: Path,
    formats: Sequence[str],
    n_images: int,
    max_runs: int,
    notes: list[str],
    bar: tqdm,
) -> list[Path]:
    runs = view.sparta_runs()
    if not runs:
        notes.append("no finished Sparta run in the study: gate maps skipped")
        return []
    if len(runs) > max_runs:
        notes.append(f"gate maps drawn for the first {max_runs} of {len(runs)} Sparta runs")
        runs = runs[:max_runs]
    from .gates import run_gate_maps  # torch and the training engine are needed only here

    plugins = sorted({p for job in view.jobs for p in job.plugins})  # their models are rebuilt here too
    if plugins:
        from transfer.plugins import load_plugins

        try:
            load_plugins(plugins)
        except ValueError as exc:  # the runs of a plugin's model are skipped below, each with why
            notes.append(f"the study's plugins could not be loaded for the gate maps: {exc}")
    written: list[Path] = []
    for jid in runs:
        bar.set_postfix_str(f"gates {jid}")
        try:
            fig = run_gate_maps(view.job_dir(jid), n_images)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            notes.append(f"gate maps of {jid} skipped: {type(exc).__name__}: {exc}")
            continue
        fig.suptitle(f"Sparta gate maps — {view.job_label(jid)}", fontsize=9)
        written += save_figure(fig, out / "gates" / slug(jid), formats)
    return written


def plot_study(
    study_dir: Path | str,
    formats: Iterable[str] | str = ("png", "pdf"),
    *,
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    gate_images: int = 4,
    max_gate_runs: int = 6,
    notes: list[str] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Draw every figure of ``study_dir`` into ``study_dir/figures`` and return the files written.

    ``metrics`` limits the heatmaps (default: every metric in the results table); ``alpha`` is the
    significance level of the ``*`` markers. Parts that cannot be drawn yet are appended to ``notes``
    (or logged as warnings when no list is given).
    """
    fmts = parse_formats(formats)
    if gate_images < 1 or max_gate_runs < 0:
        raise ValueError(f"gate_images must be >= 1 and max_gate_runs >= 0, got {gate_images}, {max_gate_runs}")
    view = open_study(study_dir)
    out = view.figures_dir
    collected: list[str] = []
    written: list[Path] = []
    with tqdm(total=4, desc="figures", unit="part", disable=not progress) as bar:
        bar.set_postfix_str("matrices")
        matrices = _matrices(view, metrics, collected)
        others = _other_references(view, matrices)
        for metric, tm in matrices.items():
            written += save_matrix_heatmaps(tm, out, fmts, alpha=alpha, notes=collected)
            written += save_interval_figure(tm, out, fmts, alpha=alpha, notes=collected)
            for other in others.get(metric, []):
                stem = out / f"matrix_{slug(metric)}_diff_vs-{slug(str(other.reference).lower())}"
                written += save_figure(matrix_heatmap(other, diff=True, alpha=alpha), stem, fmts)
                written += save_interval_figure(other, out, fmts, alpha=alpha, notes=collected)
        bar.update()

        bar.set_postfix_str("curves")
        histories = view.histories()
        if histories:
            for jid, history in histories.items():
                written += save_figure(curves_figure(history, view.job_label(jid)), out / "curves" / slug(jid), fmts)
            grid = curves_grid({view.job_label(j): h for j, h in histories.items()}, f"Training curves — {view.name}")
            written += save_figure(grid, out / "curves_all", fmts)
        else:
            collected.append("no job has a history.json yet: training curves skipped")
        bar.update()

        if max_gate_runs:
            written += _gate_figures(view, out, fmts, gate_images, max_gate_runs, collected, bar)
        bar.update()

        bar.set_postfix_str("overview")
        main = matrices[main_metric(list(matrices))] if matrices else None
        fig = overview_figure(
            other_references=others.get(main.metric, []) if main is not None else [],
            name=view.name,
            seeds=view.seeds(),
            status_counts=view.status_counts(),
            matrix=main,
            histories={view.job_label(j): h for j, h in _overview_jobs(view, histories).items()},
            alpha=alpha,
        )
        written += save_figure(fig, out / "overview", fmts)
        bar.update()

    for note in collected:
        if notes is None:
            log.warning(note)
        else:
            notes.append(note)
    return written


def _overview_jobs(view: StudyView, histories: dict[str, list]) -> dict[str, list]:
    """One history per matrix row (the first job of each row that has one), so the overview shows
    ReLU, in-place Sparta and a transferred Sparta side by side rather than three seeds of one."""
    by_row: dict[str, str] = {}
    for jid in histories:
        by_row.setdefault(view.job_row(jid), jid)
    return {jid: histories[jid] for jid in by_row.values()}
