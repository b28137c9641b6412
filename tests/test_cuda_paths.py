"""The CUDA code paths, on any machine: what the engine and the training benchmark decide for a ``cuda``
device string — device parsing, mixed precision and loss scaling, where the data lives — checked without
running a CUDA kernel (nothing is mocked; autocast contexts are built, not entered). Where a GPU is present
the same tests take its branch. GPU timings are in docs/performance.md ("Not measured here")."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfer.engine import cpu_bf16
from transfer.engine.config import TrainConfig
from transfer.engine.epochs import autocast_setup
from transfer.engine.training import load_data, resolve_config, resolve_device

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_device_strings_resolve_or_point_to_the_cpu(spec):
    if HAS_CUDA:
        assert resolve_device(spec).type == "cuda"
    else:
        with pytest.raises(ValueError, match="torch sees no CUDA device; use --device cpu"):
            resolve_device(spec)
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize(
    ("amp", "dtype", "loss_scale"), [("bf16", torch.bfloat16, 1.0), ("fp16", torch.float16, 1024.0)]
)
def test_mixed_precision_on_cuda_autocasts_and_scales_fp16_only(amp, dtype, loss_scale):
    with pytest.warns(UserWarning) if not HAS_CUDA else contextlib.nullcontext():  # "CUDA is not available"
        factory, scale, scaler = autocast_setup(TrainConfig(amp=amp), torch.device("cuda"))
        context = factory()
    assert (context.device, context.fast_dtype) == ("cuda", dtype)
    assert scale == loss_scale
    assert isinstance(scaler, torch.amp.GradScaler) is (amp == "fp16")


@pytest.mark.parametrize(("amp", "device"), [("bf16", "cpu"), ("fp16", "cpu"), ("off", "cuda"), ("off", "cpu")])
def test_no_autocast_on_a_cpu_without_native_bf16_or_with_amp_off(amp, device, monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_features", set)  # no native bf16 (tests/test_cpu_bf16.py: the other case)
    factory, scale, scaler = autocast_setup(TrainConfig(amp=amp), torch.device(device))
    assert (factory, scale, scaler) == (contextlib.nullcontext, 1.0, None)


def test_every_split_is_placed_on_the_training_device():
    """Data stays resident on the device the run trains on; ``meta`` stands in for a GPU (no kernels)."""
    config = resolve_config(TrainConfig(dataset="digits", input_size=8, train_subset=60, test_subset=20, val_subset=10))
    train, val, test = load_data(config, torch.device("meta"))
    assert val is not None and (len(train), len(val), len(test)) == (60, 10, 20)
    assert {t.device.type for split in (train, val, test) for t in (split.images, split.labels)} == {"meta"}


def test_training_benchmark_on_cuda_runs_there_or_says_why_not(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_training.py"),
            "--device",
            "cuda",
            "--only",
            "activations",
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
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if not HAS_CUDA:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .endswith("--device cuda: torch sees no CUDA device on this machine; run it where there is one")
        )
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["setup"]["device"], result["setup"]["amp"]) == ("cuda", "bf16")
    assert result["cpu_seconds"] == {}
