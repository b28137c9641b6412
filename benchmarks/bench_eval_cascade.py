"""What the cascade spec ``apgd-ce+tK`` saves, and that it measures the same worst case: one trained run
evaluated both ways on the same images — ``apgd-ce`` and ``apgd-tK`` each on every image, their per-image
worst case derived (``apgd-ce+tK``), versus the spec ``apgd-ce+tK`` (APGD-T only on the images APGD-CE left
robust) — in accuracy, images whose bits differ, and CPU seconds.

    python benchmarks/bench_eval_cascade.py RUN_DIR --n 500 --targets 3 --threads 1

APGD-CE is the same call on the same batches both ways, so its bits agree exactly; APGD-T's random starts
depend on the batch it is given (all images, or only the survivors), so a few images may differ in
``apgd-ce+tK``. CPU time (``time.process_time``) is what the attacks cost; the wall time on a shared machine
can be several times larger. Results: docs/evaluation.md ("Strong evaluation").
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
from transfer.engine.training import load_run, load_test_data  # noqa: E402


def _timed_evaluation(model: torch.nn.Module, data, attacks: list[str], eps: float) -> dict:
    cpu = time.process_time()
    metrics, bits = evaluate(model, data, attacks, eps=eps, return_per_image=True)
    return {"metrics": metrics, "bits": bits, "cpu_s": time.process_time() - cpu}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory written by `sparta train`")
    p.add_argument("--n", type=int, default=500, help="test images (stratified subset, default 500)")
    p.add_argument("--targets", type=int, default=3, help="APGD-T's target classes K (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.n < 1 or args.targets < 1:
        p.error(f"--n and --targets must be >= 1, got {args.n} and {args.targets}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, config = load_run(args.run_dir)
    config = config.with_threat_model()
    data = load_test_data(config)
    data = data.subset(args.n, seed=0) if args.n < len(data) else data
    eps = config.eval_radius()
    stage, worst = f"apgd-t{args.targets}", f"apgd-ce+t{args.targets}"
    independent = _timed_evaluation(model, data, ["clean", "apgd-ce", stage], eps)
    cascade = _timed_evaluation(model, data, ["clean", worst], eps)

    def differing(metric: str) -> int:
        return int((independent["bits"][metric] != cascade["bits"][metric]).sum())

    result = {
        "run_dir": str(args.run_dir), "n": len(data), "eps": eps, "targets": args.targets,
        "threads": torch.get_num_threads(), "metric": worst,
        "independent": {"accuracy": independent["metrics"][worst], "apgd-ce": independent["metrics"]["apgd-ce"],
                        "cpu_s": independent["cpu_s"]},
        "cascade": {"accuracy": cascade["metrics"][worst], "apgd-ce": cascade["metrics"]["apgd-ce"],
                    "cpu_s": cascade["cpu_s"]},
        "images_differing": {worst: differing(worst), "apgd-ce": differing("apgd-ce")},
        "cpu_ratio": independent["cpu_s"] / cascade["cpu_s"],
    }  # fmt: skip
    print(
        f"{args.run_dir}: {len(data)} test images, L∞ eps {eps:g}, {result['threads']} thread(s), "
        f"clean {cascade['metrics']['clean']:.1f}%"
    )
    for way, spec in (("independent", f"apgd-ce + {stage}"), ("cascade", worst)):
        row = result[way]
        print(
            f"  {way:<11} ({spec}): {worst} {row['accuracy']:5.1f}%  apgd-ce {row['apgd-ce']:5.1f}%  "
            f"{row['cpu_s']:7.1f} s CPU"
        )
    print(
        f"  images differing: {worst} {result['images_differing'][worst]}, "
        f"apgd-ce {result['images_differing']['apgd-ce']}; CPU independent / cascade {result['cpu_ratio']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
