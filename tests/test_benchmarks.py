"""Every ``benchmarks/`` script runs end to end at toy size and writes what its docs page quotes.

The numbers themselves are not checked here (speed targets live in the benchmarks, measured as ratios in
one run); these runs catch a script broken by an API change before someone needs its numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_every_benchmark_script_has_a_smoke_test() -> None:
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    assert scripts == ["bench_training.py", "portability.py"], "add a toy-size run of the new script here"


def test_bench_training_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run("bench_training.py", "--width", "4", "--batch", "4", "--input-size", "8", "--steps", "1",
                "--rounds", "1", "--threads", "1", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"setup", "images_per_s", "ratios"}
    setup, ips, ratios = result["setup"], result["images_per_s"], result["ratios"]
    assert (setup["input"], setup["attack"], setup["threads"], setup["rounds"]) == ("4x3x8x8", "PGD-1 Linf 8/255", 1, 1)
    assert {"reference AT step, ReLU, NCHW (public repos)", "our AT step, ReLU (engine: channels-last)",
            "our AT step, Sparta dw (engine)", "transfer.engine.attacks PGD, NCHW"} <= set(ips)
    assert all(math.isfinite(v) and v > 0 for v in [*ips.values(), *ratios.values()])
    assert any("[target >= 1.3]" in k for k in ratios) and any("[target <= 1.35]" in k for k in ratios)
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == setup  # the setup line, then one line per variant and per ratio
    assert len(lines) == 1 + len(ips) + len(ratios)
    assert all(f"{k}: " in proc.stdout for k in ratios) and all(k in proc.stdout for k in ips)


def test_portability_survey_runs_on_one_family(tmp_path: Path) -> None:
    report = tmp_path / "portability.md"
    proc = _run("portability.py", "--families", "resnet", "--input-size", "32", "--out", str(report), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"1/1 CNN families pass; report in {report}"
    text = report.read_text()
    assert "`python benchmarks/portability.py --input-size 32`" in text
    assert "**Pass rate: 1 / 1 CNN families (100.0 %).**" in text
    assert "| resnet | `resnet18` | 17 | — |" in text
