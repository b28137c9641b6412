"""An adversarial-training epoch on a shared CPU: beside a process that keeps one core busy, against alone.

    python benchmarks/bench_shared_cpu.py                                # sparta's defaults; target ratio ≤ 1.3×
    python benchmarks/bench_shared_cpu.py --wait-policy openmp-default   # OpenMP's own waits, for comparison
    python benchmarks/bench_shared_cpu.py --threads 1                    # one thread, for comparison

Each round runs ``sparta train`` (ResNet-18 width 8 with Sparta, 16×16 digits, PGD-10 AT, one epoch of
``--images`` images, no validation) twice, each in a fresh process with the environment a user has (no
``OMP_NUM_THREADS``, no ``OMP_WAIT_POLICY`` unless ``--wait-policy`` sets one): once alone and once while a
second process spins on one core. Rounds interleave the two, so other load on the machine hits both alike;
the report is the median epoch time (the run's ``train_seconds``) of each and their ratio. Results and the
commands: docs/performance.md, "Threads".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Variables that would make the measured runs differ from a user's default environment.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


def sparta_command(wait_policy: str) -> list[str]:
    """The installed ``sparta`` script beside this interpreter (else ``python -m transfer.cli``); for
    ``openmp-default``, the same CLI with torch imported first, so sparta leaves OpenMP's own policy."""
    if wait_policy == "openmp-default":
        return [sys.executable, "-c", "import sys, torch; from transfer.cli import main; sys.exit(main())"]
    script = Path(sys.executable).with_name("sparta")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "transfer.cli"]


def user_environment(wait_policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if wait_policy in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    return env


def epoch_seconds(args: argparse.Namespace, out: Path, env: dict[str, str]) -> float:
    """One training epoch in a fresh ``sparta train`` process; its ``train_seconds``."""
    cmd = [
        *sparta_command(args.wait_policy),
        "train",
        "--arch",
        "resnet18",
        "--dataset",
        "digits",
        "--activation",
        "sparta",
        "--recipe",
        "pgd",
        "--epochs",
        "1",
        "--width",
        str(args.width),
        "--input-size",
        "16",
        "--train-subset",
        str(args.images),
        "--val-subset",
        "0",
        "--test-subset",
        "16",
        "--attacks",
        "clean",
        "--seed",
        "0",
        "--out",
        str(out),
        "--no-progress",
        "--json",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout)["metrics"]["train_seconds"])


def busy_core() -> subprocess.Popen:
    """A process that keeps one core busy (unpinned, like other work on a shared machine)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alone/loaded pairs (default 3)")
    parser.add_argument("--images", type=int, default=512, help="training images in the epoch (default 512)")
    parser.add_argument("--width", type=int, default=8, help="ResNet-18 base width (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="`sparta train --threads` (default: sparta's)")
    parser.add_argument(
        "--wait-policy",
        choices=("default", "openmp-default", "passive", "active"),
        default="default",
        help="default: sparta's (OMP_WAIT_POLICY unset); openmp-default: "
        "OpenMP's own (torch imported before sparta); passive/active: OMP_WAIT_POLICY set so",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    env = user_environment(args.wait_policy)
    times: dict[str, list[float]] = {"alone": [], "loaded": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for condition in ("alone", "loaded") if r % 2 == 0 else ("loaded", "alone"):
                busy = busy_core() if condition == "loaded" else None
                try:
                    time.sleep(0.5 if busy else 0)  # let the busy loop start spinning
                    seconds = epoch_seconds(args, Path(tmp) / f"{condition}{r}", env)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                times[condition].append(seconds)
                print(f"round {r + 1}/{args.rounds} {condition:>6}: {seconds:7.2f} s", flush=True)
    alone, loaded = statistics.median(times["alone"]), statistics.median(times["loaded"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable",
        "load_average_before": load_before,
        "threads": args.threads or "default",
        "wait_policy": args.wait_policy,
        "images": args.images,
        "width": args.width,
        "seconds": times,
        "alone_median_s": alone,
        "loaded_median_s": loaded,
        "ratio": loaded / alone,
    }
    print(
        f"AT epoch ({args.images} images, width {args.width}, threads {result['threads']}, wait policy "
        f"{args.wait_policy}): alone {alone:.2f} s, beside a busy core {loaded:.2f} s, "
        f"ratio {loaded / alone:.2f}x (target <= 1.3x); load average before {load_before:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
