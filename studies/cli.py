"""``sparta study plan|run|status`` (and, from ``studies.cli_results``, matrix|compare|power): the study
commands (a ``sparta.commands`` plugin)."""

from __future__ import annotations

import argparse
import dataclasses
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer.cli import threads_argument

from .cli_results import DIFF_NOTE, register_result_commands

if TYPE_CHECKING:
    from .spec import StudySpec

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="plan, run and summarise transfer studies (cross-CNN, cross-dataset)")
    sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    plan = sub.add_parser("plan", help="validate a study config and print its jobs without running anything")
    plan.add_argument("config", help="study TOML file, or a shipped config name (e.g. quickstart)")
    plan.add_argument(
        "--no-check",
        action="store_true",
        help="skip building the backbones to check that every transfer maps",
    )
    plan.add_argument(
        "--estimate",
        action="store_true",
        help="the study's cost: AT image-steps and FLOPs per job and in total, and the wall-clock at a "
        "rate measured on this CPU (or --rate) and at a GPU's physical limit (--peak-tflops)",
    )
    plan.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="IMG_STEPS_PER_S",
        help="--estimate: image-steps per second of the first job's model instead of measuring it here",
    )
    plan.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        metavar="TFLOPS",
        help="--estimate: the GPU's dense bf16 peak of the lower bound (default: an H100/H200 SXM's)",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=_cmd_plan)

    run = sub.add_parser("run", help="run a study (resumes: finished jobs are skipped)")
    run.add_argument("config", help="study TOML file, or a shipped config name (e.g. quickstart)")
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="study directory (created; reused to resume); required unless --rehearse",
    )
    run.add_argument(
        "--rehearse",
        action="store_true",
        help="every job of the config at toy size on synthetic images, to check the config, data, "
        "checkpoints, matrices and figures in minutes before renting a GPU (numbers meaningless; "
        "--out default: <name>-rehearsal)",
    )
    run.add_argument("--executor", default="local", help="local (default), process or ray")
    run.add_argument("--workers", type=int, default=None, help="process executor: worker processes (default 2)")
    run.add_argument(
        "--address",
        default=None,
        help="ray executor: address of an existing Ray cluster (default: start a local Ray)",
    )
    run.add_argument("--data-dir", default=None, help="dataset root for every job (torchvision layout)")
    run.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N for every job (default: the spec's)")
    run.add_argument(
        "--threads",
        type=threads_argument,
        default=None,
        help="torch threads per job (default: local, one per usable core; process, the usable cores "
        "shared out between workers; ray, the job's num_cpus)",
    )
    run.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="OTHER_DIR",
        help="take jobs already finished in another study directory (same job id: the same training) "
        "instead of training them again; repeatable",
    )
    run.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="machine-readable summary")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="done/running/failed/pending state of every job of a study directory")
    status.add_argument("study_dir", metavar="DIR")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    register_result_commands(sub)


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
            print(
                f"  zoo source zoo:{s.zoo} ({s.arch or '?'} / {s.dataset or '?'}): stored, not trained; its "
                "transfers inject it frozen"
            )
    width = max(len(j.id) for j in plan.jobs)
    for j in plan.jobs:
        deps = f"  needs {', '.join(j.deps)}" if j.deps else ""
        print(f"  {j.id:<{width}}  {j.row}  →  {j.column}{deps}")
    for item in plan.incompatible:
        print(f"  skipped (cannot map): {item['source']} → {item['target']} [{item['policy']}]: {item['reason']}")
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
    run = run_study(
        spec,
        out,
        executor=args.executor,
        executor_config=_executor_config(args),
        progress=not args.quiet and not args.json,
        reuse=args.reuse,
        job_fn=job_fn,
    )
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
    from .provenance import training_counts
    from .runner import JOB_STATES, job_states, load_plan

    jobs = load_plan(args.study_dir)
    states = job_states(args.study_dir, jobs)
    counts = {s: sum(i["state"] == s for i in states.values()) for s in JOB_STATES}
    trained = training_counts(args.study_dir, [j.id for j in jobs if states[j.id]["state"] == "done"])
    if args.json:
        _print_json(
            {
                "study_dir": str(args.study_dir),
                "counts": counts,
                "total": len(jobs),
                **_progress(jobs, states),
                "trained_in": trained,
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
    for line in _progress_lines(jobs, states):
        print(line)
    if len(trained) > 1:
        print("  trained in: " + ", ".join(f"{kind} ({n} jobs)" for kind, n in trained.items()))
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


def _progress(jobs: list, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which seeds are complete (every job of the seed done: its cells can be compared), the worker time of
    the done jobs, and the pending jobs' worker time estimated from the done jobs of the same row and column
    (else of any job)."""
    seeds = sorted({j.seed for j in jobs})
    complete = [s for s in seeds if all(states[j.id]["state"] == "done" for j in jobs if j.seed == s)]
    timed = {j.id: states[j.id].get("seconds") for j in jobs if states[j.id]["state"] == "done"}
    timed = {k: v for k, v in timed.items() if isinstance(v, (int, float))}
    by_cell: dict[tuple[str, str], list[float]] = {}
    for j in jobs:
        if j.id in timed:
            by_cell.setdefault((j.row, j.column), []).append(timed[j.id])
    overall = sum(timed.values()) / len(timed) if timed else None
    remaining = None
    if overall is not None:
        remaining = 0.0
        for j in jobs:
            if states[j.id]["state"] != "done":
                same = by_cell.get((j.row, j.column))
                remaining += sum(same) / len(same) if same else overall
    return {
        "seeds_complete": complete,
        "seeds": seeds,
        "done_worker_seconds": sum(timed.values()),
        "remaining_worker_seconds_estimate": remaining,
    }


def _progress_lines(jobs: list, states: dict[str, dict[str, Any]]) -> list[str]:
    p = _progress(jobs, states)
    complete = ", ".join(str(s) for s in p["seeds_complete"]) or "none"
    lines = [f"  seeds complete: {complete} ({len(p['seeds_complete'])} of {len(p['seeds'])})"]
    if p["remaining_worker_seconds_estimate"] is not None:
        lines.append(
            f"  worker time: {p['done_worker_seconds'] / 3600:.1f} h done; the rest about "
            f"{p['remaining_worker_seconds_estimate'] / 3600:.1f} h (the done jobs' mean time per row and column; "
            "divide by the workers for wall-clock)"
        )
    return lines
