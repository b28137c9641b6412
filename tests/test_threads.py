"""Threads as users run them: torch's default thread count, no ``OMP_NUM_THREADS``, a CPU shared with other work.

The rest of the suite pins one thread for speed (conftest), which hid a oneDNN crash that two threads hit
(docs/known-issues.md). The tests here run subprocesses with the environment a user has, and check the
workaround, the ``--threads`` option, the OpenMP wait policy and the executors' thread shares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from transfer import threads, workarounds
from transfer.cli import main
from transfer.engine.config import TrainConfig
from transfer.engine.training import build_model, resolve_config
from transfer.workarounds import SubsampledPointwiseConv2d, avoid_onednn_1x1_bug, onednn_1x1_bug_affects

ROOT = Path(__file__).resolve().parents[1]
REPRODUCER = ROOT / "benchmarks" / "repro_onednn_1x1.py"
# What a user's shell does not have: every variable that pins threads, the wait policy or the ISA.
PINNING = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


def user_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in PINNING}, **extra}


def sparta(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed ``sparta`` script, as a user types it (``python -m transfer.cli`` from a bare checkout)."""
    script = Path(sys.executable).with_name("sparta")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "transfer.cli"]
    return subprocess.run([*cmd, *argv], env=env or user_env(), capture_output=True, text=True, timeout=timeout)


def python(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], env=env or user_env(), capture_output=True, text=True, timeout=timeout
    )


# --- the oneDNN workaround ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride", "groups", "side", "layout"),
    [
        ((2, 2), 1, 9, torch.channels_last),
        ((2, 1), 1, 8, torch.contiguous_format),
        ((3, 3), 2, 10, torch.channels_last),
    ],
)
def test_subsampled_conv_computes_the_strided_conv(stride, groups, side, layout):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel_size=1, stride=stride, groups=groups, bias=True).double()
    x = torch.randn(3, 4, side, side + 1, dtype=torch.float64, requires_grad=True)  # odd sizes count too
    reference = conv(x)  # NCHW, double: oneDNN's affected kernel is fp32 channels-last only
    ref_grads = torch.autograd.grad(reference.square().sum(), (x, conv.weight, conv.bias))
    assert avoid_onednn_1x1_bug(conv, force=True) == 1
    assert type(conv) is SubsampledPointwiseConv2d and conv.stride == stride
    conv.to(memory_format=layout)
    x_in = x.detach().contiguous(memory_format=layout).requires_grad_()
    out = conv(x_in)
    grads = torch.autograd.grad(out.square().sum(), (x_in, conv.weight, conv.bias))
    torch.testing.assert_close(out, reference)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
    conv.requires_grad_(False)  # as during the attack: input gradients only, through the plain conv
    torch.testing.assert_close(torch.autograd.grad(conv(x_in).square().sum(), x_in)[0], ref_grads[0])
    assert torch.autograd.gradcheck(lambda t: conv.requires_grad_(True)(t), (x_in[:1, :, :4, :5],))


def test_only_the_affected_convolutions_change_and_state_dicts_stay():
    model = nn.Sequential(
        nn.Conv2d(8, 16, 1, stride=2, bias=False),  # affected: 1×1, stride 2, 8 < 16 input channels
        nn.Conv2d(16, 16, 1, stride=2),  # 16 input channels: a full channel block, unaffected
        nn.Conv2d(8, 8, 1, stride=1),  # stride 1: no reduce-to-unit-stride path
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # not 1×1
        nn.Conv2d(8, 8, 1, stride=2, padding=1),  # padded: left alone
    )
    keys = list(model.state_dict())
    assert avoid_onednn_1x1_bug(model, force=True) == 1
    assert [type(m).__name__ for m in model] == ["SubsampledPointwiseConv2d"] + ["Conv2d"] * 4
    assert list(model.state_dict()) == keys
    assert avoid_onednn_1x1_bug(model, force=True) == 0  # already done


def test_the_workaround_follows_the_torch_version(monkeypatch):
    monkeypatch.setattr(workarounds.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert workarounds.torch_release("2.14.1+cu130") == (2, 14)
    assert workarounds.torch_release("2.15.0.dev20260101") == (2, 15)
    assert workarounds.torch_release("2.6.0a0+git1234") == (2, 6)
    assert not onednn_1x1_bug_affects("2.3.1")
    assert onednn_1x1_bug_affects("2.4.0") and onednn_1x1_bug_affects("2.14.1+cu130")
    monkeypatch.setattr(workarounds, "ONEDNN_1X1_FIXED_IN", (2, 15))
    assert onednn_1x1_bug_affects("2.14.1") and not onednn_1x1_bug_affects("2.15.0")
    model = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2))
    monkeypatch.setattr(torch, "__version__", "2.15.0")
    assert avoid_onednn_1x1_bug(model) == 0 and type(model[0]) is nn.Conv2d
    monkeypatch.setattr(workarounds.platform, "machine", lambda: "aarch64")  # oneDNN's x64 kernels only
    assert not onednn_1x1_bug_affects("2.14.1")


def test_engine_models_carry_the_workaround_where_torch_needs_it():
    config = resolve_config(TrainConfig(arch="resnet18", dataset="digits", width=8, input_size=16))
    model, _ = build_model(config, num_classes=10)
    shortcuts = [type(model.get_submodule(f"layer{i}.0.downsample.0")) for i in (2, 3, 4)]
    # width 8: stages of 8, 16, 32 channels feed the shortcuts; only the 8-channel one is affected
    expected = SubsampledPointwiseConv2d if onednn_1x1_bug_affects() else nn.Conv2d
    assert shortcuts == [expected, nn.Conv2d, nn.Conv2d]


def test_reproducer_runs_clean_with_the_workaround_and_two_threads():
    proc = python(str(REPRODUCER), "--threads", "2", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.count("weight gradient right") == 2 and "SubsampledPointwiseConv2d" in proc.stdout


def test_a_torch_where_the_raw_reproducer_fails_gets_the_workaround():
    """The version gate is not too narrow: wherever plain torch crashes (or computes a wrong weight
    gradient) on the reproducer, the workaround is on."""
    proc = python(str(REPRODUCER), "--raw", "--threads", "2", timeout=60)
    if proc.returncode != 0:
        assert onednn_1x1_bug_affects(), f"plain torch {torch.__version__} failed ({proc.returncode}) unpatched"
    else:
        assert proc.stdout.count("weight gradient right") == 2


# A user's own loop over the library's model, as the README's "Library in five lines" builds it: channels-last,
# an odd batch (61), 16 px, torch's default threads (nothing pinned here). Then one more step, whose weight
# gradient at the affected shortcut (WIDTH input channels, 1×1, stride 2) is checked against float64 arithmetic
# on the very input and output gradient that shortcut saw: the sum over images and pixels of every stride-th
# input pixel times the output gradient there.
USER_LOOP = """
import json
import transfer  # first, as in the README: its OpenMP wait policy then applies (docs/performance.md)
import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = transfer.create_backbone("resnet18", num_classes=10, input_size=16, width=WIDTH)
transfer.inject(model, "sparta")
model = model.to(memory_format=torch.channels_last).train()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.rand(61, 3, 16, 16).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (61,))
for _ in range(STEPS):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
shortcut, seen = model.layer2[0].downsample[0], {}
shortcut.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out.retain_grad() or out))
optimizer.zero_grad()
F.cross_entropy(model(x), y).backward()
want = torch.einsum("nohw,nihw->oi", seen["out"].grad.double(), seen["x"][:, :, ::2, ::2].double())
error = (shortcut.weight.grad.double().flatten(1) - want).abs().max() / want.abs().max()
print(json.dumps({"threads": torch.get_num_threads(), "shortcut": type(shortcut).__name__, "error": float(error)}))
"""


@pytest.mark.slow
def test_a_users_own_channels_last_loop_over_the_library_model_runs_clean():
    """No workaround call in the user's code: create_backbone and inject apply it (docs/known-issues.md).
    Without it, torch 2.14.1 aborted this loop 3 runs of 3 at width 8 on AVX-512 ("free(): invalid next
    size"); on AVX2, whose channel block is 8, width 8 is not affected, so the loop runs at width 4 there,
    where without it one run of three hung and another got a weight gradient 3% off."""
    width = 4 if torch.backends.cpu.get_cpu_capability() == "AVX2" else 8
    expected = "SubsampledPointwiseConv2d" if onednn_1x1_bug_affects() else "Conv2d"
    for _ in range(3):
        proc = python("-c", USER_LOOP.replace("STEPS", "30").replace("WIDTH", str(width)), timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        assert result["shortcut"] == expected and result["error"] < 1e-5, result


def test_make_safe_covers_models_built_elsewhere_and_inject_applies_it():
    import timm

    from transfer import inject, make_safe

    def timm_resnet() -> nn.Module:  # width 8: shortcuts of 8 (affected), 16 and 32 input channels
        return timm.create_model("resnet18", num_classes=10, channels=(8, 16, 32, 64), stem_width=4, stem_type="deep")

    expected = SubsampledPointwiseConv2d if onednn_1x1_bug_affects() else nn.Conv2d
    plain = timm_resnet()
    assert make_safe(plain) == (expected is SubsampledPointwiseConv2d) and make_safe(plain) == 0
    shortcuts = [type(plain.get_submodule(f"layer{i}.0.downsample.0")) for i in (2, 3, 4)]
    assert shortcuts == [expected, nn.Conv2d, nn.Conv2d]
    injected = timm_resnet()
    inject(injected, "relu", input_shape=(3, 16, 16))
    assert type(injected.layer2[0].downsample[0]) is expected and make_safe(injected) == 0


# --- sparta as users run it -------------------------------------------------------------------------------


def test_sparta_train_with_two_threads_and_the_default_environment_exits_cleanly(tmp_path):
    """Narrow ResNet (width 4: shortcuts of 4 and 8 channels), channels-last, an odd last batch (75 = 2·32 + 11)
    and two threads: the conditions of the oneDNN crash, end to end in a subprocess."""
    proc = sparta(
        "train",
        "--arch",
        "resnet18",
        "--dataset",
        "digits",
        "--activation",
        "sparta",
        "--recipe",
        "pgd",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--width",
        "4",
        "--input-size",
        "16",
        "--batch-size",
        "32",
        "--train-subset",
        "75",
        "--val-subset",
        "0",
        "--test-subset",
        "20",
        "--attacks",
        "clean",
        "--threads",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)["metrics"]
    assert 0 <= metrics["clean"] <= 100 and metrics["train_seconds"] > 0


def test_threads_option_refuses_a_bad_count(capsys):
    for argv in (
        ["train", "--threads", "0"],
        ["eval", "run", "--threads", "two"],
        ["study", "run", "x", "--out", "y", "--threads", "-1"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "--threads: expected a positive number of threads" in capsys.readouterr().err


def test_openmp_waits_passively_unless_the_user_chose_or_torch_came_first(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not threads.prefer_passive_wait()  # torch is loaded here: OpenMP has read its settings already
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh process
    assert threads.prefer_passive_wait() and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not threads.prefer_passive_wait() and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_fresh_process_that_imports_transfer_gets_the_passive_policy():
    proc = python("-c", "import os, transfer, torch; print(os.environ.get('OMP_WAIT_POLICY'))")
    assert proc.returncode == 0 and proc.stdout.strip() == "PASSIVE", proc.stderr[-2000:]


# --- executors --------------------------------------------------------------------------------------------


def test_process_workers_run_with_the_threads_they_are_given():
    """Set on torch in the worker itself: the worker imported torch (through transfer) before any job ran,
    so an ``OMP_NUM_THREADS`` set there would come too late."""
    from studies.executors import ProcessExecutor

    with ProcessExecutor(workers=1, threads=1) as executor:
        assert executor.submit(torch.get_num_threads).result(timeout=300) == 1


def test_process_workers_share_the_usable_cores(monkeypatch):
    from studies import executors

    pools = []
    monkeypatch.setattr(executors, "usable_cores", lambda: 7)
    monkeypatch.setattr(executors.cf, "ProcessPoolExecutor", lambda **kwargs: pools.append(kwargs))
    executors.ProcessExecutor(workers=2, gpus=[])
    executors.ProcessExecutor(workers=8, gpus=[])
    assert [pool["initargs"][1] for pool in pools] == [3, 1]


def test_local_executor_sets_the_threads_it_is_given():
    from studies.executors import LocalExecutor

    before = torch.get_num_threads()
    try:
        assert LocalExecutor(threads=2).submit(torch.get_num_threads).result() == 2
    finally:
        torch.set_num_threads(before)


def test_study_threads_reach_every_executor():
    from argparse import Namespace

    from studies.cli import _executor_config

    def config(executor: str, threads: int | None) -> dict:
        return _executor_config(Namespace(executor=executor, threads=threads, workers=None, address=None))

    assert config("local", None) == {} and config("local", 3) == {"threads": 3}
    assert config("process", 3) == {"workers": 2, "threads": 3}
    assert config("ray", 3) == {"address": None, "num_cpus": 3}


def test_importing_the_threads_module_changes_nothing():
    """The wait policy is an explicit call (``transfer/__init__`` makes it), not a side effect of an import."""
    code = (
        "import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('t', sys.argv[1]); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    proc = python("-c", code, str(ROOT / "transfer" / "threads.py"))
    assert proc.returncode == 0 and proc.stdout.split() == ["None", "False"], proc.stderr[-2000:]
