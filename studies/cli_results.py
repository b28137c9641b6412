"""``sparta study matrix|compare|power|archive``: the commands that read a study's results (added by
``studies.cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["DIFF_NOTE", "register_result_commands"]

DIFF_NOTE = (
    "paired difference [95 % interval over seeds × test images] and verdict, Holm over the matrix; docs/evaluation.md"
)


def register_result_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``matrix``, ``compare``, ``power`` and ``archive`` to the ``sparta study`` sub-parsers."""
    matrix = sub.add_parser("matrix", help="print the transfer matrices (mean ± std over seeds)")
    matrix.add_argument("study_dir", metavar="DIR")
    matrix.add_argument("--metric", default=None, help="one metric (clean, fgsm, pgd20, cw, aa); default: all")
    matrix.add_argument(
        "--reference",
        default=None,
        metavar="ROW",
        help="row the differences are taken to: relu (default), silu, another baseline activation or a row label",
    )
    matrix.add_argument("--diff", action="store_true", help="print the difference to the reference row instead")
    matrix.add_argument(
        "--margin",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="equivalence margin of the verdicts, percentage points (default 1)",
    )
    matrix.add_argument(
        "--format",
        default="text",
        choices=("text", "md", "latex", "csv"),
        help="table format: text (default), md (Markdown), latex, csv (every statistic)",
    )
    matrix.add_argument(
        "--per-class",
        action="store_true",
        help="accuracy per test class (from the per-image bits), one table per target column",
    )
    matrix.add_argument("--json", action="store_true", help="machine-readable output")
    matrix.set_defaults(func=_cmd_matrix)

    compare = sub.add_parser("compare", help="declared comparisons (row − reference in a column), Holm over them")
    compare.add_argument("study_dir", metavar="DIR")
    compare.add_argument(
        "--pair",
        nargs=3,
        action="append",
        required=True,
        metavar=("ROW", "REFERENCE", "COLUMN"),
        help="one comparison; repeat for each (Holm adjusts over all of them)",
    )
    compare.add_argument(
        "--against",
        default=None,
        metavar="OTHER_DIR",
        help="test how each gap changed: (row − reference here) − (the same there), over the seeds both studies "
        "have, image by image where they share test images (e.g. the same cells at 48 and at 24 epochs)",
    )
    compare.add_argument("--metric", default=None, help="metric (default: the strongest attack evaluated)")
    compare.add_argument("--margin", type=float, default=1.0, metavar="POINTS", help="equivalence margin (default 1)")
    compare.add_argument("--format", default="text", choices=("text", "md", "latex", "csv"))
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.set_defaults(func=_cmd_compare)

    power = sub.add_parser("power", help="how many paired seeds detect an effect, from a study's (or pilot's) variance")
    power.add_argument(
        "study",
        metavar="DIR_OR_CONFIG",
        help="a study directory (its own variance), or a study config with --pilot DIR",
    )
    power.add_argument(
        "--effect",
        type=float,
        required=True,
        metavar="POINTS",
        help="the true difference to detect, percentage points (e.g. 2)",
    )
    power.add_argument(
        "--pilot",
        default=None,
        metavar="DIR",
        help="a finished study (>= 2 seeds) to take the variance from, when DIR_OR_CONFIG is a config",
    )
    power.add_argument("--metric", default=None, help="metric (default: the strongest attack the study evaluated)")
    power.add_argument("--reference", default=None, metavar="ROW", help="reference row (default relu)")
    power.add_argument("--power", type=float, default=0.8, help="wanted power (default 0.8)")
    power.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05)")
    power.add_argument("--json", action="store_true", help="machine-readable output")
    power.set_defaults(func=_cmd_power)

    archive = sub.add_parser(
        "archive",
        help="copy a study directory without its model checkpoints (results, per-image bits, activations): "
        "small enough for git; matrix, compare, power and --reuse read it",
    )
    archive.add_argument("study_dir", metavar="DIR")
    archive.add_argument("--out", required=True, metavar="ARCHIVE", help="the archive directory to write")
    archive.add_argument("--overwrite", action="store_true", help="replace an existing ARCHIVE")
    archive.add_argument("--json", action="store_true", help="machine-readable output")
    archive.set_defaults(func=_cmd_archive)


def _print_json(obj: Any) -> None:
    from transfer.cli import print_json

    print_json(obj)


def _cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix import NOT_CONVERGED_MARK, list_metrics, transfer_matrix
    from .paired import PerImageStore
    from .results import collect_results, load_results
    from .runner import load_plan
    from .tables import format_table

    root = Path(args.study_dir)
    # With a plan, the finished jobs as they are now (also while the study runs); else the written table.
    live = (root / "plan.json").is_file()
    results = collect_results(root, load_plan(root)) if live else load_results(root)
    if results.empty:
        raise ValueError(f"{root} has no finished jobs yet; see `sparta study status {root}`")
    metrics = list_metrics(results)
    if args.metric is not None and args.metric not in metrics:
        raise ValueError(f"no metric {args.metric!r} in {root}; it has {', '.join(metrics)}")
    chosen = [args.metric] if args.metric else metrics
    per_image = PerImageStore(root)
    matrices = [
        transfer_matrix(results, m, reference=args.reference, per_image=per_image, margin=args.margin) for m in chosen
    ]
    if args.json:
        _print_json({m.metric: m.to_dict() for m in matrices})
        return 0
    if args.per_class:
        return _print_per_class(root, chosen, args.format)
    for tm in matrices:
        if args.format != "text":
            print(format_table(tm, args.format, diff=args.diff))
            continue
        what = f"difference to {tm.reference} [{DIFF_NOTE}]" if args.diff else "mean ± std over seeds"
        print(f"{tm.metric} ({what}, %; {tm.threat_summary()}):")
        print(tm.formatted(diff=args.diff).to_string())
        if tm.not_converged().to_numpy().any():
            print(f"{NOT_CONVERGED_MARK}: some runs of the cell had not plateaued (docs/evaluation.md)")
        print()
    sys.stdout.flush()
    return 0


def _cmd_power(args: argparse.Namespace) -> int:
    from transfer.threat_model import strongest_attack

    from .matrix import list_metrics
    from .paired import PerImageStore
    from .power import power_table
    from .results import collect_results
    from .runner import load_plan
    from .spec import load_spec

    target = Path(args.study)
    if (target / "plan.json").is_file():
        pilot, images = target, None
    else:
        spec = load_spec(args.study)
        if args.pilot is None:
            raise ValueError(
                f"{args.study} is a config, not a finished study: give --pilot DIR, a study directory "
                "with at least 2 seeds whose seed-to-seed variance to use"
            )
        pilot, images = Path(args.pilot), spec.eval.get("n")
    if not (pilot / "plan.json").is_file():
        raise FileNotFoundError(f"{pilot} is not a study directory (no plan.json); run `sparta study run` first")
    results = collect_results(pilot, load_plan(pilot))
    if results.empty:
        raise ValueError(f"{pilot} has no finished jobs yet; see `sparta study status {pilot}`")
    metric = args.metric or strongest_attack(list_metrics(results)) or list_metrics(results)[-1]
    table = power_table(
        results,
        metric,
        effect=args.effect,
        reference=args.reference,
        store=PerImageStore(pilot),
        images=images,
        power=args.power,
        alpha=args.alpha,
    )
    if args.json:
        _print_json(
            {
                "metric": metric,
                "effect": args.effect,
                "power": args.power,
                "alpha": args.alpha,
                "cells": table.to_dict(orient="records"),
            }
        )
        return 0
    print(
        f"paired seeds to detect a {args.effect:g}-point difference in {metric} with power {args.power:g} "
        f"(two-sided, alpha {args.alpha:g}), from the variance of {pilot}:"
    )
    shown = table.assign(seeds_needed=table["seeds_needed"].map(lambda v: ">1000" if v != v else f"{v:.0f}"))
    print(shown.round(2).to_string(index=False))
    finite = table["seeds_needed"].dropna()
    if len(finite):
        print(
            f"median {finite.median():.0f}, largest {finite.max():.0f} paired seeds"
            + ("" if len(finite) == len(table) else f"; {len(table) - len(finite)} cell(s) need more than 1000")
        )
    return 0


def _print_per_class(root: Path, metrics: list[str], fmt: str) -> int:
    """``sparta study matrix DIR --per-class``: rows × test classes per target column, mean over seeds."""
    from .runner import load_plan
    from .tables import per_class_accuracy, per_class_table, render

    jobs = load_plan(root)
    for metric in metrics:
        frame = per_class_accuracy(root, jobs, metric)
        if frame.empty:
            raise ValueError(f"no job of {root} stored per-image bits for {metric!r}; per-class accuracy needs them")
        for column in dict.fromkeys(frame["column"]):
            table = per_class_table(frame, column).map(lambda v: f"{v:.1f}")
            print(render(table, fmt, f"{metric}, accuracy per class (%), {column}, mean over seeds"))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from transfer.threat_model import strongest_attack

    from .endpoints import compare, comparison_cells
    from .matrix import list_metrics
    from .paired import PerImageStore
    from .provenance import mixed_pairs, trainings
    from .results import collect_results
    from .runner import load_plan
    from .tables import render

    root = Path(args.study_dir)
    results = collect_results(root, load_plan(root))
    if results.empty:
        raise ValueError(f"{root} has no finished jobs yet; see `sparta study status {root}`")
    metric = args.metric or strongest_attack(list_metrics(results)) or list_metrics(results)[-1]
    against = None
    if args.against is not None:
        other = Path(args.against)
        against = (collect_results(other, load_plan(other)), PerImageStore(other))
    table = compare(
        results, metric, [tuple(p) for p in args.pair], store=PerImageStore(root), margin=args.margin, against=against
    )
    training = trainings(root, results["job_id"])
    mixed = {tuple(p): mixed_pairs(results, training, *p) for p in args.pair}
    if args.json:
        records = table.to_dict(orient="records")
        for record, pair in zip(records, args.pair, strict=True):
            record["mixed_training"] = {str(s): list(t) for s, t in mixed[tuple(pair)].items()}
        _print_json(
            {"metric": metric, "margin": args.margin, "n_tests": table.attrs["n_tests"], "comparisons": records}
        )
        return 0
    for (row, ref, column), seeds in mixed.items():
        if seeds:
            which = "; ".join(f"seed {s}: {a} vs {b}" for s, (a, b) in seeds.items())
            print(
                f"warning: {row} − {ref} | {column}: the two jobs of {len(seeds)} seed(s) trained differently "
                f"({which}), so their difference mixes the activation with the device and precision "
                "(jobs taken with --reuse from a study run elsewhere?)",
                file=sys.stderr,
            )
    cells = comparison_cells(table)
    print(
        render(
            cells,
            args.format,
            f"{metric}: row − reference (points)"
            + (f", here minus the same in {args.against}" if args.against else "")
            + " [95 % interval over seeds × test images], "
            f"Holm over {_tests(table)}, equivalence margin ±{args.margin:g}",
        )
    )
    return 0


def _tests(table) -> str:
    """``3 comparison(s)``, or ``3 distinct tests (4 comparisons)`` when one test was declared twice."""
    n = table.attrs["n_tests"]
    return f"{n} comparison(s)" if n == len(table) else f"{n} distinct tests ({len(table)} comparisons)"


def _cmd_archive(args: argparse.Namespace) -> int:
    from .archive import archive_study

    report = archive_study(args.study_dir, args.out, overwrite=args.overwrite)
    if args.json:
        _print_json(report.to_dict())
        return 0
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print(
        f"archived {len(report.jobs)} finished job(s) of {args.study_dir} to {report.path} ({mb(report.bytes)}; "
        f"model checkpoints left out: {mb(report.left_out_bytes)})"
    )
    if report.unfinished:
        print(f"{len(report.unfinished)} unfinished job(s) left out: a study run with --reuse trains them")
    return 0
