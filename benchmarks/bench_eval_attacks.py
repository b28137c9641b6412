"""What strong evaluation costs: the final-evaluation attacks (and the gradient-masking checks) on one
trained run, in CPU seconds and as multiples of PGD-20 measured in the same run.

    sparta train --arch resnet18 --dataset fashion-mnist --width 8 --input-size 16 --steps 3 --epochs 10 \
        --schedule cosine --train-subset 3000 --val-subset 500 --test-subset 1000 --attacks pgd20 \
        --device cpu --out runs/fm-r18
    python benchmarks/bench_eval_attacks.py runs/fm-r18 --n 200 --attacks pgd20,apgd-ce,apgd-t,aa --sanity \
        --threads 1

CPU time (``time.process_time``) is what the attacks cost; wall time on a machine shared with other work
can be several times larger. The ratios to PGD-20 carry over to other sizes of the same model roughly,
since every attack here is forward and backward passes of it (the AutoAttack stages only attack the
images still robust, so their cost grows with robust accuracy). Results: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer.engine.evaluation import evaluate  # noqa: E402
from transfer.engine.sanity import sanity_check  # noqa: E402
from transfer.engine.training import load_run, load_test_data  # noqa: E402


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory written by `sparta train`")
    p.add_argument("--n", type=int, default=200, help="test images (stratified subset, default 200)")
    p.add_argument("--attacks", default="pgd20,apgd-ce,apgd-t,aa", help="specs to time; pgd20 is always timed")
    p.add_argument("--sanity", action="store_true", help="also time `sparta eval --sanity` (standard settings)")
    p.add_argument("--square-queries", type=int, default=5000, help="Square's queries in the sanity check")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, config = load_run(args.run_dir)
    config = config.with_threat_model()
    data = load_test_data(config)
    data = data.subset(args.n, seed=0) if args.n < len(data) else data
    eps = config.eval_radius()
    specs = list(dict.fromkeys(["pgd20", *[a.strip() for a in args.attacks.split(",") if a.strip()]]))
    rows = {}
    for spec in specs:
        metrics, cpu, wall = _timed(lambda spec=spec: evaluate(model, data, ["clean", spec], eps=eps))
        rows[spec] = {"accuracy": metrics[spec], "clean": metrics["clean"], "cpu_s": cpu, "wall_s": wall}
    base = rows["pgd20"]["cpu_s"]
    for row in rows.values():
        row["x_pgd20"] = row["cpu_s"] / base
    result = {
        "run_dir": str(args.run_dir),
        "n": len(data),
        "eps": eps,
        "threads": torch.get_num_threads(),
        "attacks": rows,
    }
    if args.sanity:
        report, cpu, wall = _timed(lambda: sanity_check(model, data, eps=eps, square_queries=args.square_queries))
        result["sanity"] = {"cpu_s": cpu, "wall_s": wall, "x_pgd20": cpu / base, **report.to_dict()}

    print(f"{args.run_dir}: {len(data)} test images, L∞ eps {eps:g}, {torch.get_num_threads()} thread(s)")
    for spec, row in rows.items():
        print(f"  {spec:<8} {row['accuracy']:5.1f}%  {row['cpu_s']:7.1f} s CPU  {row['x_pgd20']:6.1f}x PGD-20")
    if args.sanity:
        s = result["sanity"]
        print(
            f"  sanity   {'pass' if s['passed'] else 'FAIL ' + ','.join(s['failed'])}  {s['cpu_s']:7.1f} s CPU  "
            f"{s['x_pgd20']:6.1f}x PGD-20"
        )
        print("\n".join(f"    {line}" for line in report.lines()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
