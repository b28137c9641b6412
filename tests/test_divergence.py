"""A diverged run never reports success: weights and buffers are checked after every step and epoch, no
non-finite checkpoint or activation set is written, the message names the value and blames AMP only
when AMP ran (on the CPU: bf16 where the CPU computes it natively), and the run directory's config.json
always describes its checkpoint and metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_config

from transfer import load_activation_set
from transfer.cli import main
from transfer.engine import cpu_bf16
from transfer.engine.checkpoint import load_checkpoint
from transfer.engine.config import TrainConfig
from transfer.engine.training import TrainingDivergedError, train

# ResNet-18 at width 4 on 8×8 digits; 200 images in batches of 128: two steps an epoch.
DIVERGING = [
    "train",
    "--arch",
    "resnet18",
    "--activation",
    "sparta",
    "--variant",
    "dw",
    "--dataset",
    "digits",
    "--recipe",
    "standard",
    "--width",
    "4",
    "--input-size",
    "8",
    "--train-subset",
    "200",
    "--val-subset",
    "0",
    "--test-subset",
    "40",
    "--attacks",
    "clean",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--device",
    "cpu",
    "--amp",
    "off",
    "--no-progress",
]


# Two standard epochs of a Sparta (dw) ResNet at lr 0.05, fp32.
TINY = dict(
    recipe="standard", epochs=2, lr=0.05, train_subset=96, test_subset=40,
    activation="sparta", activation_config={"variant": "dw"}, amp="off",
)  # fmt: skip


def tiny(**overrides) -> TrainConfig:
    return tiny_config(**{**TINY, **overrides})


def _all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("lr", ["1e3", "1e4", "1e6"])
def test_a_run_with_a_huge_lr_never_reports_success_with_non_finite_values(tmp_path, capsys, lr):
    out = tmp_path / "run"
    rc = main([*DIVERGING, "--lr", lr, "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in ("checkpoint.pt", "best.pt"):
        if (out / name).exists():
            assert _all_finite(load_checkpoint(out / name)["model"]), name
    assert rc == 1 or lr != "1e6", "lr 1e6 diverges at this size"
    if rc == 0:  # the weights stayed finite all along (a few steps can survive a huge lr)
        assert _all_finite(load_activation_set(out / "activation.safetensors").tensors)
        return
    assert rc == 1, err
    assert "non-finite" in err or "became nan" in err or "became inf" in err
    assert "amp" not in err.lower()  # AMP off: not to blame
    assert not (out / "activation.safetensors").exists() and not (out / "metrics.json").exists()


def _poison_last_step(monkeypatch, target: str, value: float, calls_before: int) -> None:
    """After optimizer step number ``calls_before + 1``, set the tensor ``target`` (a parameter or buffer
    of the model) to ``value`` in one element, as an exploding update would."""
    real_step = torch.optim.SGD.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == calls_before + 1:
            model = poison["model"]
            tensor = dict(model.named_parameters(), **dict(model.named_buffers()))[target]
            with torch.no_grad():
                tensor[(0,) * tensor.dim()] = value
        return result

    poison = {}
    real_train = torch.nn.Module.train

    def remember(self, mode=True):
        if hasattr(self, "fc") and "model" not in poison:
            poison["model"] = self
        return real_train(self, mode)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    monkeypatch.setattr(torch.nn.Module, "train", remember)


@pytest.mark.parametrize(("target", "value"), [("layer2.1.act2.weight", math.nan), ("layer3.0.conv1.weight", math.inf)])
def test_a_parameter_going_non_finite_in_the_last_step_stops_the_run(tmp_path, monkeypatch, target, value):
    config = tiny()
    _poison_last_step(monkeypatch, target, value, calls_before=5)  # 3 steps an epoch: the last of epoch 2
    with pytest.raises(TrainingDivergedError) as info:
        train(config, tmp_path, progress=False)
    message = str(info.value)
    assert f"parameter {target!r}" in message and "epoch 2, step 3" in message
    assert "epoch 1) is kept" in message and "amp" not in message.lower()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and _all_finite(ckpt["model"])
    assert not (tmp_path / "activation.safetensors").exists() and not (tmp_path / "metrics.json").exists()
    assert json.loads((tmp_path / "config.json").read_text()) == ckpt["config"]


def test_a_buffer_going_non_finite_is_caught_before_the_checkpoint(tmp_path, monkeypatch):
    _poison_last_step(monkeypatch, "layer1.0.bn1.running_var", math.inf, calls_before=2)  # last step of epoch 1
    with pytest.raises(TrainingDivergedError, match=r"buffer 'layer1.0.bn1.running_var'.*epoch 1.*no epoch"):
        train(tiny(), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()


def test_divergence_on_resume_leaves_config_and_metrics_agreeing(tmp_path, monkeypatch):
    good = train(tiny(epochs=1), tmp_path, progress=False)
    before = json.loads((tmp_path / "config.json").read_text())
    _poison_last_step(monkeypatch, "layer1.0.act1.bias", math.nan, calls_before=0)
    with pytest.raises(TrainingDivergedError, match="epoch 1\\) is kept"):
        train(tiny(epochs=3, lr=0.5), tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == before == load_checkpoint(tmp_path / "checkpoint.pt")["config"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == good
    assert config["epochs"] == good["epoch"] == 1


def test_an_extended_run_that_diverges_later_keeps_no_stale_results(tmp_path, monkeypatch):
    train(tiny(epochs=1), tmp_path, progress=False)
    _poison_last_step(monkeypatch, "layer1.0.act1.bias", math.nan, calls_before=3)  # epoch 3, after a good epoch 2
    with pytest.raises(TrainingDivergedError, match="epoch 2\\) is kept"):
        train(tiny(epochs=3), tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == load_checkpoint(tmp_path / "checkpoint.pt")["config"] and config["epochs"] == 3
    # metrics.json and activation.safetensors were those of the 1-epoch model, which is gone: not kept
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "activation.safetensors").exists()
    monkeypatch.undo()
    metrics = train(tiny(epochs=3), tmp_path, progress=False)  # resumes from epoch 2 and finishes
    assert metrics["epoch"] == 3 and json.loads((tmp_path / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    ("amp", "asked", "native_bf16", "named"),
    [
        ("fp16", True, True, True),
        ("bf16", True, False, False),
        ("bf16", False, True, False),
        ("bf16", True, True, True),
    ],
)
def test_autocast_is_named_only_when_it_ran(tmp_path, monkeypatch, amp, asked, native_bf16, named):
    """On the CPU autocast runs (bf16) only where cpu_bf16 asks for it and the CPU computes bf16 natively
    (the probe is patched here); amp is CUDA's setting."""
    from transfer.engine import recipes

    real_call = recipes.Standard.__call__

    def nan_loss(self, model, x, y):
        loss, logits = real_call(self, model, x, y)
        return loss * math.nan, logits

    monkeypatch.setattr(recipes.Standard, "__call__", nan_loss)
    monkeypatch.setattr(cpu_bf16, "cpu_features", lambda: {"avx512_bf16"} if native_bf16 else set())
    with pytest.raises(TrainingDivergedError) as info:
        train(tiny(amp=amp, cpu_bf16=asked), tmp_path, progress=False)
    assert "training loss became nan" in str(info.value)
    assert ("or cpu_bf16 off (drop --cpu-bf16)" in str(info.value)) is named and "amp" not in str(info.value)
