"""Every ``benchmarks/`` script runs end to end at toy size and writes what its docs page quotes.

The numbers themselves are not checked here (speed targets live in the benchmarks, measured as ratios in
one run); these runs catch a script broken by an API change before someone needs its numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import micro_study_toml, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_benchmark_script_has_a_smoke_test() -> None:
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    # repro_onednn_1x1.py: its reproducer runs in tests/test_threads.py, its --cost mode below
    assert scripts == [
        "bench_eval_attacks.py",
        "bench_eval_cascade.py",
        "bench_finite_check.py",
        "bench_quickstart.py",
        "bench_shared_cpu.py",
        "bench_training.py",
        "portability.py",
        "repro_onednn_1x1.py",
        "stats_calibration.py",
    ], "add a toy-size run of the new script here"


def test_bench_training_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run(
        "bench_training.py",
        "--width",
        "4",
        "--batch",
        "4",
        "--input-size",
        "8",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"setup", "images_per_s", "ratios", "cpu_seconds", "page_faults"}
    assert set(result["cpu_seconds"]) == set(result["images_per_s"])
    setup, ips, ratios = result["setup"], result["images_per_s"], result["ratios"]
    assert (setup["input"], setup["attack"], setup["threads"], setup["rounds"]) == ("4x3x8x8", "PGD-1 Linf 8/255", 1, 1)
    assert {
        "reference AT step, ReLU, NCHW (public repos)",
        "our AT step, ReLU (engine: channels-last)",
        "our AT step, Sparta dw (engine)",
        "transfer.engine.attacks PGD, NCHW",
    } <= set(ips)
    assert all(math.isfinite(v) and v > 0 for v in [*ips.values(), *ratios.values()])
    assert any("[target >= 1.3]" in k for k in ratios) and any("[target <= 1.15 at width 16" in k for k in ratios)
    assert setup["gflops_per_at_image"]["sparta"] > setup["gflops_per_at_image"]["relu"] > 0
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == setup  # the setup line, then one line per variant and per ratio
    assert len(lines) == 1 + len(ips) + len(ratios)
    assert all(f"{k}: " in proc.stdout for k in ratios) and all(k in proc.stdout for k in ips)


def test_portability_survey_runs_on_a_cnn_and_a_transformer_family(tmp_path: Path) -> None:
    report = tmp_path / "portability.md"
    proc = _run(
        "portability.py",
        "--families",
        "resnet,vision_transformer",
        "--input-size",
        "32",
        "--out",
        str(report),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = "CNN: 1/1 families pass; transformer: 1/1 families pass"
    assert proc.stdout.strip().splitlines()[-1] == f"{summary}; report in {report}"
    text = report.read_text()
    assert "`python benchmarks/portability.py --input-size 32 --families resnet,vision_transformer`" in text
    assert "**CNN families: 1 / 1 pass (100.0 %).** **transformer families: 1 / 1 pass (100.0 %).**" in text
    assert "| resnet | `resnet18` | 32 | 17 | NCHW 17 | — |" in text
    assert "| vision_transformer | `vit_tiny_patch16_224` | 32 | 12 | NLC 12 | — |" in text


def test_bench_shared_cpu_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "shared.json"
    proc = _run(
        "bench_shared_cpu.py",
        "--rounds",
        "1",
        "--images",
        "16",
        "--width",
        "4",
        "--threads",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["threads"], result["images"], result["wait_policy"]) == (1, 16, "default")
    assert [len(result["seconds"][c]) for c in ("alone", "loaded")] == [1, 1]
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert "beside a busy core" in proc.stdout.splitlines()[-1] and "(target <= 1.3x)" in proc.stdout


def _bench_on_a_tiny_run(tmp_path: Path, script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``script RUN ARGS --threads 1 --json OUT`` on a run trained here first (``tiny_config``, one PGD step): the
    process (its exit 0 asserted) and the JSON it wrote."""
    from transfer.engine.training import train

    run, out = tmp_path / "run", tmp_path / "result.json"
    train(tiny_config(steps=1), run, progress=False)
    proc = _run(script, str(run), *args, "--threads", "1", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_bench_eval_attacks_runs_at_toy_size(tmp_path: Path) -> None:
    proc, result = _bench_on_a_tiny_run(
        tmp_path, "bench_eval_attacks.py", "--n", "8", "--attacks", "fgsm,pgd5", "--sanity", "--square-queries", "5"
    )
    assert (result["n"], result["threads"], list(result["attacks"])) == (8, 1, ["pgd20", "fgsm", "pgd5"])
    assert result["attacks"]["pgd20"]["x_pgd20"] == 1.0
    assert all(math.isfinite(r["cpu_s"]) and r["cpu_s"] > 0 for r in result["attacks"].values())
    assert len(result["sanity"]["signs"]) == 5 and "x PGD-20" in proc.stdout


def test_bench_eval_cascade_runs_at_toy_size(tmp_path: Path) -> None:
    proc, result = _bench_on_a_tiny_run(tmp_path, "bench_eval_cascade.py", "--n", "6", "--targets", "2")
    assert (result["n"], result["targets"], result["threads"], result["metric"]) == (6, 2, 1, "apgd-ce+t2")
    assert result["images_differing"]["apgd-ce"] == 0  # the same APGD-CE call both ways
    assert 0 <= result["images_differing"]["apgd-ce+t2"] <= 6
    for way in ("independent", "cascade"):
        assert result[way]["accuracy"] <= result[way]["apgd-ce"] and result[way]["cpu_s"] > 0
    assert result["cpu_ratio"] == pytest.approx(result["independent"]["cpu_s"] / result["cascade"]["cpu_s"])
    assert "images differing: apgd-ce+t2 " in proc.stdout and "CPU independent / cascade" in proc.stdout


def test_workaround_cost_runs_at_toy_size(tmp_path: Path) -> None:
    """The plain kernel may crash at this shape (it has, with SIGSEGV): either way the script exits 0 with
    one result line, the workaround timed and the plain model's time or its crash."""
    proc = _run(
        "repro_onednn_1x1.py", "--cost", "--width", "4", "--batch", "4", "--steps", "1", "--rounds", "1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("ResNet-18 width 4 (2 convolution(s) changed), 1x16x16, batch 4, PGD-1 AT step"), line
    plain = r"(?:plain [\d.]+ ms, ratio ([\d.]+)|plain crashed \(SIG\w+\), ratio n/a)"
    timed = re.search(rf"workaround ([\d.]+) ms, {plain}$", line)
    assert timed is not None and float(timed[1]) > 0 and (timed[2] is None or float(timed[2]) > 0), line


def test_a_crash_in_the_timing_child_is_a_result_not_a_failure() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from repro_onednn_1x1 import run_in_child
    finally:
        sys.path.pop(0)
    assert run_in_child(lambda: {"plain": 0.5}) == ({"plain": 0.5}, None)
    assert run_in_child(lambda: os.kill(os.getpid(), signal.SIGKILL)) == (None, "SIGKILL")


def test_bench_finite_check_runs_at_toy_size(tmp_path: Path) -> None:
    proc = _run(
        "bench_finite_check.py",
        "--widths",
        "4",
        "--batch",
        "4",
        "--input-size",
        "8",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("resnet18 width 4, batch 4, 8 px, PGD-1: step ") and line.endswith("% of the step)"), line


def test_bench_quickstart_times_a_study_and_reads_its_column_spreads(tmp_path: Path) -> None:
    config = tmp_path / "toy.toml"
    config.write_text(micro_study_toml("toy", baselines=("relu",)))  # source, transfer, ReLU
    out = tmp_path / "result.json"
    proc = _run(
        "bench_quickstart.py",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "study"),
        "--executor",
        "local",
        "--metric",
        "fgsm",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["executor"], result["metric"], result["target_wall_s"]) == ("local", "fgsm", 600)
    assert result["jobs"] == 3 and result["wall_s"] > 0
    columns = result["columns"]
    assert set(columns) == {"resnet18 / digits", "resnet18 / shapes"}
    shapes = columns["resnet18 / shapes"]
    assert shapes["rows"] == 2 and shapes["spread"] == pytest.approx(shapes["max"] - shapes["min"], abs=0.02)
    assert result["saturated_columns"] == [c for c, v in columns.items() if v["saturated"]]


def test_a_column_is_saturated_only_when_every_row_is_high_and_close(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_quickstart import column_spreads
    finally:
        sys.path.pop(0)
    rows = [
        ("a", "relu", 95.0),
        ("a", "silu", 93.5),
        ("b", "relu", 95.0),
        ("b", "silu", 92.0),
        ("c", "relu", 89.0),
        ("c", "silu", 89.5),
    ]
    table = tmp_path / "results.csv"
    table.write_text("column,row,metric,value\n" + "".join(f"{c},{r},pgd20,{v}\n" for c, r, v in rows))
    spreads = column_spreads(table, "pgd20")
    assert [spreads[c]["saturated"] for c in "abc"] == [True, False, False]
    assert spreads["b"]["spread"] == pytest.approx(3.0)


def test_stats_calibration_runs_at_toy_size(tmp_path: Path) -> None:
    proc = _run("stats_calibration.py", "--seeds", "2", "--cases", "3", "--images", "50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("2 seeds, 50 images, 3 null cases: studies.stats rejects ")
