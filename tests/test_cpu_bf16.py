"""bf16 on the CPU: the detection of native bf16, the precision training runs in because of it (bf16 autocast
for training and its attack where the CPU computes bf16 natively, fp32 with one log line elsewhere), the
final evaluation and validation never under autocast, and what metrics.json records. The native case is
forced by patching the probe: on a CPU without it, torch emulates bf16 (slowly, but correctly)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from torch import nn

from transfer.activations import Sparta
from transfer.engine import cpu_bf16 as detection
from transfer.engine import training
from transfer.engine.config import TrainConfig
from transfer.engine.cpu_bf16 import CpuBf16, cpu_bf16, cpu_features
from transfer.engine.epochs import autocast_setup, training_precision


def force_cpu(monkeypatch: pytest.MonkeyPatch, *features: str, capability: str = "AVX2") -> None:
    """Make this CPU report ``features`` (and torch's SIMD level ``capability``) to the detection."""
    monkeypatch.setattr(detection, "cpu_features", lambda: {"avx", "avx2", *features})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


@pytest.mark.parametrize(
    ("features", "capability", "expected"),
    [
        ((), "AVX2", CpuBf16(None, "AVX2")),
        (("avx512f",), "AVX512", CpuBf16(None, "AVX512")),  # AVX-512 without its BF16 extension emulates bf16
        (("avx512_bf16",), "AVX512", CpuBf16("avx512_bf16", "AVX512")),
        (("avx512_bf16", "amx_bf16", "amx_tile"), "AVX512", CpuBf16("amx_bf16", "AVX512")),
    ],
)
def test_detection_names_the_native_bf16_feature_or_none(monkeypatch, features, capability, expected):
    force_cpu(monkeypatch, *features, capability=capability)
    found = cpu_bf16()
    assert found == expected and found.native is (expected.feature is not None)
    assert found.name == (expected.feature or f"none ({capability})")


def test_features_come_from_torch_where_it_reports_them(monkeypatch):
    reported = {"avx2": True, "avx512_bf16": True, "amx_bf16": False, "l1d_cache_size": 32768, "architecture": "x"}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: reported, raising=False)  # on any torch
    assert cpu_features() == {"avx2", "avx512_bf16"}  # present features only, not sizes or names


def test_without_torch_s_probe_the_linux_flags_are_read(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 AVX512_BF16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.setattr(detection, "CPUINFO", cpuinfo)
    assert cpu_features() == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert cpu_bf16().feature == "avx512_bf16"
    monkeypatch.setattr(detection, "CPUINFO", tmp_path / "missing")  # not Linux: no native bf16 assumed
    assert cpu_features() == set() and not cpu_bf16().native


@pytest.mark.skipif(platform.system() != "Linux" or not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo")
def test_detection_agrees_with_the_kernel_s_flags_on_this_machine():
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    flags = set(flags.split(":", 1)[1].split())
    expected = next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    assert cpu_bf16().feature == expected


@pytest.mark.parametrize(
    ("amp", "asked", "device", "features", "ran", "why"),
    [
        ("bf16", True, "cpu", ("avx512_bf16",), "bf16", None),
        ("off", True, "cpu", ("amx_bf16",), "bf16", None),  # amp is CUDA's setting; cpu_bf16 is the CPU's
        (
            "bf16",
            True,
            "cpu",
            (),
            "fp32",
            "cpu_bf16 asked for; this CPU has no native bf16 (AVX2): training runs in fp32",
        ),
        ("bf16", False, "cpu", ("avx512_bf16",), "fp32", None),  # opt-in: native bf16 alone changes nothing
        ("fp16", False, "cpu", ("avx512_bf16",), "fp32", None),
        ("bf16", False, "cuda", (), "bf16", None),
        ("fp16", True, "cuda", (), "fp16", None),
        ("off", True, "cuda", (), "fp32", None),
        (
            "bf16",
            True,
            "meta",
            ("avx512_bf16",),
            "fp32",
            "amp bf16 asked for; autocast is used on CUDA only, not on meta: training runs in fp32",
        ),
    ],
)
def test_training_precision_follows_amp_cpu_bf16_device_and_cpu(monkeypatch, amp, asked, device, features, ran, why):
    force_cpu(monkeypatch, *features)
    precision = training_precision(amp, torch.device(device), asked)
    assert (precision.ran, precision.why_fp32) == (ran, why)
    native = (features[0] if features else "none (AVX2)") if device == "cpu" else None
    assert precision.record() == {"amp": amp, "cpu_bf16": asked, "device": device, "native_bf16": native, "ran": ran}


@pytest.mark.parametrize(("native", "asked"), [(True, True), (False, True), (True, False)])
def test_cpu_autocast_is_set_up_only_where_asked_for_and_native(monkeypatch, native, asked):
    force_cpu(monkeypatch, *(("avx512_bf16",) if native else ()))
    factory, loss_scale, scaler = autocast_setup(TrainConfig(amp="bf16", cpu_bf16=asked), torch.device("cpu"))
    context = factory()
    assert (loss_scale, scaler) == (1.0, None)  # bf16 has fp32's range: no loss scaling
    if native and asked:
        assert isinstance(context, torch.autocast) and (context.device, context.fast_dtype) == ("cpu", torch.bfloat16)
    else:
        assert not isinstance(context, torch.autocast)


def test_cpu_bf16_is_off_by_default_and_a_cli_flag():
    from transfer.engine.cli import _train_config, register_train

    assert TrainConfig().cpu_bf16 is False  # parity on a native-bf16 CPU not shown yet: docs/performance.md
    import argparse

    parser = argparse.ArgumentParser()
    register_train(parser.add_subparsers())
    args = parser.parse_args(["train", "--cpu-bf16", "--dataset", "digits"])
    assert _train_config(args).cpu_bf16 is True
    assert _train_config(parser.parse_args(["train", "--dataset", "digits"])).cpu_bf16 is False


def _tiny_run(**overrides) -> TrainConfig:
    """One PGD epoch (one step) of a Sparta (dw) ResNet in batches of 16, bf16 asked for on the CPU."""
    specific = dict(
        recipe="pgd", steps=1, batch_size=16, train_subset=32, val_subset=8, test_subset=16,
        eval_attacks=("clean", "fgsm"), activation="sparta", activation_config={"variant": "dw"},
        amp="bf16", cpu_bf16=True,
    )  # fmt: skip
    return tiny_config(**{**specific, **overrides})


@pytest.mark.parametrize("native", [True, False])
def test_training_autocasts_where_native_and_evaluation_never(tmp_path, monkeypatch, native):
    """A spy on every forward of the model: the phase it ran in (training, validation or the final
    evaluation), the model's mode (eval mode during the training attack) and whether CPU autocast was on."""
    force_cpu(monkeypatch, *(("avx512_bf16",) if native else ()))
    phase, seen = ["setup"], []  # setup: building the model traces it (eval mode, no autocast)

    def spy(module: nn.Module, args: tuple) -> None:
        if module.__class__.__name__ == "ResNet":
            seen.append((phase[0], module.training, torch.is_autocast_enabled("cpu")))

    def in_phase(name: str, fn):
        def run(*args, **kwargs):
            phase[0] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "setup"

        return run

    monkeypatch.setattr(training, "train_epoch", in_phase("train", training.train_epoch))
    monkeypatch.setattr(training, "validate", in_phase("validate", training.validate))
    monkeypatch.setattr(training, "evaluate", in_phase("evaluate", training.evaluate))
    handle = nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        metrics = training.train(_tiny_run(), tmp_path, progress=False)
    finally:
        handle.remove()

    ran = "bf16" if native else "fp32"
    by_phase = {
        p: {(mode, autocast) for q, mode, autocast in seen if q == p} for p in ("train", "validate", "evaluate")
    }
    assert by_phase["train"] == {(True, native), (False, native)}  # the training step and its attack (eval mode)
    assert by_phase["validate"] == by_phase["evaluate"] == {(False, False)}  # always fp32
    record = {
        "amp": "bf16",
        "cpu_bf16": True,
        "device": "cpu",
        "native_bf16": "avx512_bf16" if native else "none (AVX2)",
        "ran": ran,
    }
    assert metrics["precision"] == record == json.loads((tmp_path / "metrics.json").read_text())["precision"]
    log = (tmp_path / "train.log").read_text()
    assert f"training in {ran} (amp bf16, cpu_bf16, native bf16: {record['native_bf16']})" in log
    why = "cpu_bf16 asked for; this CPU has no native bf16 (AVX2): training runs in fp32"
    assert log.count(why) == (0 if native else 1)


def test_sparta_adds_no_casts_of_its_own_under_cpu_bf16_autocast():
    """The gate's conv, sigmoid and product stay in the conv's bf16: the only casts are autocast's own of
    the fp32 master weight and bias, as for any conv (no fp32 round trip of the activation map)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, ...]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default:
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    for variant in ("dw", "full", "portable"):
        sparta = Sparta(4, variant=variant)
        x = torch.randn(2, 4, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16), Casts() as casts:
            y = sparta(x)
        assert y.dtype == torch.bfloat16 and y.shape == x.shape, variant
        assert sorted(casts.shapes) == sorted([tuple(sparta.weight.shape), tuple(sparta.bias.shape)]), variant
