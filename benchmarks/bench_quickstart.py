"""Time the README's quickstart study end to end, and check that its PGD-20 picture says something.

Runs ``sparta study run CONFIG --out DIR`` in a fresh process, exactly as a user would (the default
thread policy; ``--executor``/``--workers`` as given), and prints one JSON object: the wall-clock time,
the number of jobs, and per target column of the PGD-20 matrix the spread between its rows. A column is
**saturated** when every row is at 90 % or more and all rows lie within 2 points of each other: such a
column cannot tell activations apart (issue 11's criterion for the quickstart's first picture).

    python benchmarks/bench_quickstart.py --executor process        # the README's command (~5.5 min, 2 cores)
    python benchmarks/bench_quickstart.py --executor local          # one job at a time, all cores per job

The target for the README's command: at most 10 minutes on an idle 2-core machine, no saturated column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SATURATED_AT, SATURATED_SPREAD = 90.0, 2.0


def column_spreads(results_csv: Path, metric: str) -> dict[str, dict[str, float | bool]]:
    """Per target column of a study's ``metric`` (its results table; each row's mean over seeds, in
    percent): the lowest and highest row, the spread, and whether the column is saturated (every row
    >= 90 % and the spread under 2 points)."""
    table = pd.read_csv(results_csv)
    table = table[table["metric"] == metric]
    if table.empty:
        raise SystemExit(f"{results_csv} holds no {metric!r} numbers; pass --metric with one the study evaluates")
    means = table.groupby(["column", "row"])["value"].mean()
    out: dict[str, dict[str, float | bool]] = {}
    for column, rows in means.groupby(level="column"):
        low, high = float(rows.min()), float(rows.max())
        out[str(column)] = {
            "rows": int(len(rows)),
            "min": round(low, 2),
            "max": round(high, 2),
            "spread": round(high - low, 2),
            "saturated": low >= SATURATED_AT and high - low < SATURATED_SPREAD,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "studies" / "configs" / "quickstart.toml"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench_quickstart"),
        help="study directory (removed first, so the run starts from nothing)",
    )
    parser.add_argument("--executor", default="process", help="local, process (the README's) or ray")
    parser.add_argument("--workers", type=int, default=None, help="process executor: worker processes")
    parser.add_argument("--metric", default="pgd20", help="matrix whose columns are checked (default pgd20)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "transfer.cli",
        "study",
        "run",
        args.config,
        "--out",
        str(args.out),
        "--executor",
        args.executor,
        "--quiet",
        "--no-plot",
    ]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    start = time.perf_counter()
    proc = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"the study failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    results = pd.read_csv(args.out / "results.csv")
    spreads = column_spreads(args.out / "results.csv", args.metric)
    result = {
        "config": str(args.config),
        "executor": args.executor,
        "workers": args.workers,
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_1min_after": os.getloadavg()[0],
        "jobs": int(results["job_id"].nunique()),
        "wall_s": round(wall, 1),
        "target_wall_s": 600,
        "metric": args.metric,
        "columns": spreads,
        "saturated_columns": [c for c, s in spreads.items() if s["saturated"]],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
