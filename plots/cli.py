"""``sparta plot DIR``: draw every figure of a study directory into ``DIR/figures/``."""

from __future__ import annotations

import argparse
import sys

from transfer.cli import print_json

__all__ = ["register"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw a study's figures (heatmaps, gate maps, curves, overview) into DIR/figures",
        description="Draw the transfer-matrix heatmaps, Sparta gate maps, training curves and the one-page "
        "overview of a study directory into DIR/figures/. Parts the study cannot give yet are skipped "
        "with a note.",
    )
    p.add_argument("study_dir", metavar="DIR", help="a study directory (the --out of `sparta study run`)")
    p.add_argument("--format", default="png,pdf", help="comma-separated file formats: png, pdf, svg (default png,pdf)")
    p.add_argument("--metrics", type=_csv, default=None, help="heatmaps for these metrics only, e.g. clean,pgd20")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the * markers (default 0.05)")
    p.add_argument("--gate-images", type=int, default=4, help="test images per gate-map figure (default 4)")
    p.add_argument(
        "--max-gate-runs",
        type=int,
        default=6,
        help="at most this many Sparta runs get gate maps; 0 skips them (default 6)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from .study import plot_study

    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
    notes: list[str] = []
    files = plot_study(
        args.study_dir,
        args.format,
        metrics=args.metrics,
        alpha=args.alpha,
        gate_images=args.gate_images,
        max_gate_runs=args.max_gate_runs,
        notes=notes,
        progress=not args.json,
    )
    if args.json:
        print_json({"study_dir": args.study_dir, "files": [str(f) for f in files], "notes": notes})
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {len(files)} file(s):")
    for f in files:
        print(f"  {f}")
    return 0
