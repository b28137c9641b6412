"""``sparta study plan|run|status|matrix``: the study commands (a ``sparta.commands`` plugin)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer.cli import threads_argument

if TYPE_CHECKING:
    from .spec import StudySpec

__all__ = ["register"]

DIFF_NOTE = ("paired difference [95 % interval over seeds × test images] and verdict, Holm over the matrix; "
             "docs/evaluation.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study", help="plan, run and summarise transfer studies (cross-CNN, cross-dataset)"
    )
    sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    plan = sub.add_parser("plan", help="validate a study config and print its jobs without running anything")
    plan.add_argument("config", help="study TOML file, or a shipped config name (e.g. quickstart)")
    plan.add_argument(
        "--no-check",
        action="store_true",
        help="skip building the backbones to check that every transfer maps",
    )
    plan.add_argument("--estimate", action="store_true",
                      help="the study's cost: AT image-steps and FLOPs per job and in total, and the wall-clock at a "
                      "rate measured on this CPU (or --rate) and at a GPU's physical limit (--peak-tflops)")
    plan.add_argument("--rate", type=float, default=None, metavar="IMG_STEPS_PER_S",
                      help="--estimate: image-steps per second of the first job's model instead of measuring it here")
    plan.add_argument("--peak-tflops", type=float, default=None, metavar="TFLOPS",
                      help="--estimate: the GPU's dense bf16 peak of the lower bound (default: an H100/H200 SXM's)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=_cmd_plan)

    run = sub.add_parser("run", help="run a study (resumes: finished jobs are skipped)")
    run.add_argument("config", help="study TOML file, or a shipped config name (e.g. quickstart)")
    run.add_argument("--out", default=None, metavar="DIR",
                     help="study directory (created; reused to resume); required unless --rehearse")
    run.add_argument("--rehearse", action="store_true",
                     help="every job of the config at toy size on synthetic images, to check the config, data, "
                     "checkpoints, matrices and figures in minutes before renting a GPU (numbers meaningless; "
                     "--out default: <name>-rehearsal)")
    run.add_argument("--executor", default="local", help="local (default), process or ray")
    run.add_argument(
        "--workers", type=int, default=None, help="process executor: worker processes (default 2)"
    )
    run.add_argument(
        "--address",
        default=None,
        help="ray executor: address of an existing Ray cluster (default: start a local Ray)",
    )
    run.add_argument("--data-dir", default=None, help="dataset root for every job (torchvision layout)")
    run.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N for every job (default: the spec's)")
    run.add_argument("--threads", type=threads_argument, default=None,
                     help="torch threads per job (default: local, one per usable core; process, the usable cores "
                     "shared out between workers; ray, the job's num_cpus)")
    run.add_argument("--reuse", action="append", default=[], metavar="OTHER_DIR",
                     help="take jobs already finished in another study directory (same job id: the same training) "
                     "instead of training them again; repeatable")
    run.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="machine-readable summary")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser(
        "status", help="done/running/failed/pending state of every job of a study directory"
    )
    status.add_argument("study_dir", metavar="DIR")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    matrix = sub.add_parser("matrix", help="print the transfer matrices (mean ± std over seeds)")
    matrix.add_argument("study_dir", metavar="DIR")
    matrix.add_argument(
        "--metric", default=None, help="one metric (clean, fgsm, pgd20, cw, aa); default: all"
    )
    matrix.add_argument(
        "--reference",
        default=None,
        metavar="ROW",
        help="row the differences are taken to: relu (default), silu, another baseline activation or a row label",
    )
    matrix.add_argument(
        "--diff", action="store_true", help="print the difference to the reference row instead"
    )
    matrix.add_argument("--margin", type=float, default=1.0, metavar="POINTS",
                        help="equivalence margin of the verdicts, percentage points (default 1)")
    matrix.add_argument("--format", default="text", choices=("text", "md", "latex", "csv"),
                        help="table format: text (default), md (Markdown), latex, csv (every statistic)")
    matrix.add_argument("--per-class", action="store_true",
                        help="accuracy per test class (from the per-image bits), one table per target column")
    matrix.add_argument("--json", action="store_true", help="machine-readable output")
    matrix.set_defaults(func=_cmd_matrix)

    compare = sub.add_parser("compare", help="declared comparisons (row − reference in a column), Holm over them")
    compare.add_argument("study_dir", metavar="DIR")
    compare.add_argument("--pair", nargs=3, action="append", required=True, metavar=("ROW", "REFERENCE", "COLUMN"),
                         help="one comparison; repeat for each (Holm adjusts over all of them)")
    compare.add_argument("--metric", default=None, help="metric (default: the strongest attack evaluated)")
    compare.add_argument("--margin", type=float, default=1.0, metavar="POINTS", help="equivalence margin (default 1)")
    compare.add_argument("--format", default="text", choices=("text", "md", "latex", "csv"))
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.set_defaults(func=_cmd_compare)

    power = sub.add_parser("power", help="how many paired seeds detect an effect, from a study's (or pilot's) variance")
    power.add_argument("study", metavar="DIR_OR_CONFIG",
                       help="a study directory (its own variance), or a study config with --pilot DIR")
    power.add_argument("--effect", type=float, required=True, metavar="POINTS",
                       help="the true difference to detect, percentage points (e.g. 2)")
    power.add_argument("--pilot", default=None, metavar="DIR", help="a finished study (>= 2 seeds) to take the "
                       "variance from, when DIR_OR_CONFIG is a config")
    power.add_argument("--metric", default=None, help="metric (default: the strongest attack the study evaluated)")
    power.add_argument("--reference", default=None, metavar="ROW", help="reference row (default relu)")
    power.add_argument("--power", type=float, default=0.8, help="wanted power (default 0.8)")
    power.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05)")
    power.add_argument("--json", action="store_true", help="machine-readable output")
    power.set_defaults(func=_cmd_power)


def _print_json(obj: Any) -> None:
    from transfer.cli import print_json

    print_json(obj)


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planner import plan_study
    from .spec import load_spec

    spec = load_spec(args.config)
    plan = plan_study(spec, check_mapping=not args.no_check)
    if args.estimate:
        from .estimate import print_estimate

        return print_estimate(plan, rate=args.rate, peak_tflops=args.peak_tflops, as_json=args.json)
    if args.json:
        _print_json(plan.to_dict())
        return 0
    c = plan.counts()
    print(
        f"study {plan.name}: {c['total']} jobs = {len(plan.seeds)} seed(s) × "
        f"({c['per_seed']['source']} source + {c['per_seed']['target']} transfer + "
        f"{c['per_seed']['baseline']} baseline)"
    )
    cells = spec.transfer_cells()
    print(
        f"  S={len(spec.sources)} sources, T={len(spec.targets)} targets, B={len(spec.baselines)} rows in place, "
        f"{len(cells)} transfer cell(s) × their policies; {c['shared']} row(s) shown by a source job that trains "
        "exactly that (one training, one job)"
    )
    for s in spec.sources:
        if s.zoo is not None:
            print(f"  zoo source zoo:{s.zoo} ({s.arch or '?'} / {s.dataset or '?'}): stored, not trained; its "
                  "transfers inject it frozen")
    width = max(len(j.id) for j in plan.jobs)
    for j in plan.jobs:
        deps = f"  needs {', '.join(j.deps)}" if j.deps else ""
        print(f"  {j.id:<{width}}  {j.row}  →  {j.column}{deps}")
    for item in plan.incompatible:
        print(
            f"  skipped (cannot map): {item['source']} → {item['target']} [{item['policy']}]: "
            f"{item['reason']}"
        )
    return 0


def _executor_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers is not None and args.executor != "process":
        raise ValueError(f"--workers is for --executor process, not {args.executor!r}")
    if args.address is not None and args.executor != "ray":
        raise ValueError(f"--address is for --executor ray, not {args.executor!r}")
    threads = {} if args.threads is None else {"num_cpus" if args.executor == "ray" else "threads": args.threads}
    if args.executor == "process":
        return {"workers": args.workers if args.workers is not None else 2, **threads}
    if args.executor == "ray":
        return {"address": args.address, **threads}
    return threads


def _plot_available() -> bool:
    return any(ep.name == "plot" for ep in entry_points(group="sparta.commands"))


def _draw_figures(study_dir: Path, formats: str | None = None) -> str:
    """Run ``sparta plot DIR [--format FORMATS]`` through the dispatcher; returns what happened, in words."""
    if not _plot_available():
        return "figures: the `plot` command is not installed"
    from transfer.cli import run_command

    try:
        code = run_command(["plot", str(study_dir), *(["--format", formats] if formats else [])])
    except SystemExit as exc:  # the plot plugin failed to load: argparse refuses the command
        code = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # figures are a convenience; the study's results are already written
        return f"figures: not drawn ({type(exc).__name__}: {exc}); run `sparta plot {study_dir}` to retry"
    if code:
        return f"figures: `sparta plot` exited with {code}; run `sparta plot {study_dir}` to retry"
    return f"figures: {study_dir / 'figures'}"


def _with_machine_settings(spec: StudySpec, args: argparse.Namespace) -> StudySpec:
    """Where the data lives and which device runs the jobs: settings of this machine, not of the study,
    so they are not part of any job id and a study moved to another machine resumes where it was."""
    extra: dict[str, Any] = {}
    if args.data_dir is not None:
        extra["data_dir"] = str(Path(args.data_dir).expanduser())
    if args.download:
        extra["download"] = True
    if args.device is not None:
        extra["device"] = args.device
    return dataclasses.replace(spec, train={**spec.train, **extra}) if extra else spec


def _cmd_run(args: argparse.Namespace) -> int:
    if args.out is None and not args.rehearse:
        raise ValueError("give the study directory: --out DIR (or --rehearse for a toy-size rehearsal)")
    from .matrix import NOT_CONVERGED_MARK, list_metrics, present_references, transfer_matrix
    from .paired import PerImageStore
    from .rehearsal import REHEARSAL_FIGURES, REHEARSAL_THREADS, check_out_dir, prepare_rehearsal, run_rehearsal_job
    from .runner import run_study
    from .spec import load_spec
    from .training_job import run_training_job

    spec, job_fn, rehearsal = _with_machine_settings(load_spec(args.config), args), run_training_job, None
    if args.rehearse:
        rehearsal = prepare_rehearsal(spec, args.out)
        spec, out, job_fn = rehearsal.spec, rehearsal.out, run_rehearsal_job
        args.threads = REHEARSAL_THREADS if args.threads is None else args.threads
        if not args.json:
            print("\n".join(rehearsal.lines()), flush=True)
    else:
        out = Path(args.out)
        check_out_dir(out, rehearse=False)
    run = run_study(spec, out, executor=args.executor, executor_config=_executor_config(args),
                    progress=not args.quiet and not args.json, reuse=args.reuse, job_fn=job_fn)
    figures = None if args.no_plot else _draw_figures(out, REHEARSAL_FIGURES if rehearsal else None)
    if args.json:
        extra = {"rehearsal": rehearsal.to_dict()} if rehearsal else {}
        _print_json({**run.to_dict(), "figures": figures, **extra})
        return 0 if run.ok else 1
    print(
        f"study in {out}: {len(run.finished)} job(s) run, {len(run.reused)} reused, "
        f"{len(run.failed)} failed, {len(run.blocked)} blocked ({run.seconds:.0f}s)"
        + (f"; {len(run.imported)} taken from --reuse" if run.imported else "")
    )
    for jid, error in run.failed.items():
        print(f"  FAILED {jid}: {error}\n    log: {out / 'jobs' / jid / 'job.log'}")
    if run.results is not None and len(run.results):
        metrics = list_metrics(run.results)
        metric = "pgd20" if "pgd20" in metrics else metrics[-1]
        tm = transfer_matrix(run.results, metric, per_image=PerImageStore(out))
        print(f"\n{metric} (mean ± std over seeds, %; {tm.threat_summary()}):")
        print(tm.formatted().to_string())
        if tm.not_converged().to_numpy().any():
            print(f"{NOT_CONVERGED_MARK}: some runs of the cell had not plateaued (docs/evaluation.md)")
        if tm.epochs_needed.notna().to_numpy().any():
            print("\nepochs needed (first epoch within a point of the best robust validation accuracy, mean):")
            print(tm.epochs_needed.round(1).to_string())
        for ref in present_references(run.results):
            diff = transfer_matrix(run.results, metric, reference=ref, per_image=PerImageStore(out))
            print(f"\n{metric}, difference to {diff.reference} (percentage points; {DIFF_NOTE}):")
            print(diff.formatted(diff=True).drop(index=diff.reference).to_string())
        print(f"\nresults: {out / 'results.csv'}, matrices: {out / 'matrices'}")
    if figures:
        print(figures)
    if rehearsal is not None:
        print(rehearsal.verdict(run.ok, run.seconds))
    if not run.ok:
        again = " --rehearse" if rehearsal is not None else ""
        print(f"re-run `sparta study run {args.config} --out {out}{again}` to retry the failed and blocked jobs")
    return 0 if run.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .runner import JOB_STATES, job_states, load_plan

    jobs = load_plan(args.study_dir)
    states = job_states(args.study_dir, jobs)
    counts = {s: sum(i["state"] == s for i in states.values()) for s in JOB_STATES}
    if args.json:
        _print_json(
            {
                "study_dir": str(args.study_dir),
                "counts": counts,
                "total": len(jobs),
                "jobs": [
                    {
                        "job_id": j.id,
                        "kind": j.kind,
                        "row": j.row,
                        "column": j.column,
                        "seed": j.seed,
                        **states[j.id],
                    }
                    for j in jobs
                ],
            }
        )
        return 0
    print(f"{args.study_dir}: {len(jobs)} jobs — " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    width = max((len(j.id) for j in jobs), default=4)
    for j in jobs:
        info = states[j.id]
        extra = ""
        if info["state"] == "done" and info.get("seconds") is not None:
            extra = f"{info['seconds']:.0f}s"
        elif info["state"] == "failed":
            extra = str(info.get("error", ""))
        print(f"  {info['state']:<11} {j.id:<{width}}  {j.row} → {j.column}  {extra}")
    return 0


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
    matrices = [transfer_matrix(results, m, reference=args.reference, per_image=per_image, margin=args.margin)
                for m in chosen]
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
            raise ValueError(f"{args.study} is a config, not a finished study: give --pilot DIR, a study directory "
                             "with at least 2 seeds whose seed-to-seed variance to use")
        pilot, images = Path(args.pilot), spec.eval.get("n")
    if not (pilot / "plan.json").is_file():
        raise FileNotFoundError(f"{pilot} is not a study directory (no plan.json); run `sparta study run` first")
    results = collect_results(pilot, load_plan(pilot))
    if results.empty:
        raise ValueError(f"{pilot} has no finished jobs yet; see `sparta study status {pilot}`")
    metric = args.metric or strongest_attack(list_metrics(results)) or list_metrics(results)[-1]
    table = power_table(results, metric, effect=args.effect, reference=args.reference, store=PerImageStore(pilot),
                        images=images, power=args.power, alpha=args.alpha)
    if args.json:
        _print_json({"metric": metric, "effect": args.effect, "power": args.power, "alpha": args.alpha,
                     "cells": table.to_dict(orient="records")})
        return 0
    print(f"paired seeds to detect a {args.effect:g}-point difference in {metric} with power {args.power:g} "
          f"(two-sided, alpha {args.alpha:g}), from the variance of {pilot}:")
    shown = table.assign(seeds_needed=table["seeds_needed"].map(lambda v: ">1000" if v != v else f"{v:.0f}"))
    print(shown.round(2).to_string(index=False))
    finite = table["seeds_needed"].dropna()
    if len(finite):
        print(f"median {finite.median():.0f}, largest {finite.max():.0f} paired seeds"
              + ("" if len(finite) == len(table) else f"; {len(table) - len(finite)} cell(s) need more than 1000"))
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
    from .results import collect_results
    from .runner import load_plan
    from .tables import render

    root = Path(args.study_dir)
    results = collect_results(root, load_plan(root))
    if results.empty:
        raise ValueError(f"{root} has no finished jobs yet; see `sparta study status {root}`")
    metric = args.metric or strongest_attack(list_metrics(results)) or list_metrics(results)[-1]
    table = compare(results, metric, [tuple(p) for p in args.pair], store=PerImageStore(root), margin=args.margin)
    if args.json:
        _print_json({"metric": metric, "margin": args.margin, "comparisons": table.to_dict(orient="records")})
        return 0
    cells = comparison_cells(table)
    print(render(cells, args.format, f"{metric}: row − reference (points) [95 % interval over seeds × test images], "
                                     f"Holm over {len(table)} comparison(s), equivalence margin ±{args.margin:g}"))
    return 0

