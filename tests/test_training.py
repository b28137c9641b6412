"""Training engine: recipes, checkpoints, exact resume, divergence handling, frozen transfer, robustness."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_config

from transfer import create_backbone, extract, inject, load_activation_set
from transfer.engine import run_dir
from transfer.engine import training as training_mod
from transfer.engine.attacks import attack_mode, projected_gradient_ascent, random_start
from transfer.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from transfer.engine.config import TrainConfig
from transfer.engine.evaluation import evaluate
from transfer.engine.recipes import Standard, create_recipe, list_recipes
from transfer.engine.training import TrainingDivergedError, load_run, load_test_data, lr_factor, train

# Three PGD epochs with validation, evaluated clean and under PGD-20.
TINY = dict(
    recipe="pgd", epochs=3, lr=0.05, eps=0.1, alpha=0.05, steps=2, train_subset=160, test_subset=60,
    val_subset=40, eval_attacks=("clean", "pgd20"), schedule="step",
)  # fmt: skip


def tiny(**overrides) -> TrainConfig:
    """A run of a second or two: ResNet-18 at width 4 on 8×8 digits (``tiny_config``) with ``TINY``."""
    return tiny_config(**{**TINY, **overrides})


def _tiny_model(activation: str = "relu", **config):
    model = create_backbone("resnet18", num_classes=10, in_chans=1, input_size=8, width=4)
    inject(model, activation, **config)
    return model


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in ("seconds", "train_seconds")}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_gives_a_finite_loss_and_restores_the_model(name):
    torch.manual_seed(0)
    model = _tiny_model("sparta", variant="dw").train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss, logits = create_recipe(name, eps=0.1, alpha=0.05, steps=2)(model, x, y)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert logits.shape == (8, 10)
    loss.backward()
    assert model.training
    assert all(p.requires_grad and p.grad is not None for p in model.parameters())


def test_training_attack_stays_in_the_ball_and_touches_no_weights():
    torch.manual_seed(0)
    model = _tiny_model().train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    def ce(logits):
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum")

    with attack_mode(model, "eval"):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        x_adv = projected_gradient_ascent(model, x, ce, random_start(x, 0.1), eps=0.1, alpha=0.03, steps=5)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_before.items())
    with torch.no_grad():
        model.eval()
        assert ce(model(x_adv)) > ce(model(x))


def test_lr_schedules():
    step = TrainConfig(epochs=200, schedule="step")
    assert [lr_factor(step, e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    short = TrainConfig(epochs=1, schedule="step")
    assert lr_factor(short, 0) == 1.0  # a one-epoch run is never decayed from its start
    assert [lr_factor(TrainConfig(epochs=3, schedule="step"), e) for e in range(3)] == pytest.approx([1, 0.1, 0.01])
    cosine = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cosine, 0) == 1.0 and lr_factor(cosine, 5) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="constant"), 150) == 1.0


def test_config_round_trips_and_rejects_unknown_keys():
    config = tiny(activation="sparta", activation_config={"variant": "dw"})
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"\['learning_rate'\].*allowed keys: arch, dataset"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="recipe"):
        tiny(recipe="madry").validate()
    with pytest.raises(ValueError, match="unknown option"):
        tiny(activation="relu", activation_config={"variant": "dw"}).validate()
    with pytest.raises(ValueError, match="lr must be a finite number, got '0.1'"):
        tiny(lr="0.1").validate()
    with pytest.raises(ValueError, match="attack spec"):
        tiny(eval_attacks=("pgdx",)).validate()
    defaults = TrainConfig().with_threat_model()  # ε, step and steps: the default dataset's (CIFAR-10)
    paper = (defaults.eps, defaults.alpha, defaults.steps, defaults.lr, defaults.batch_size, defaults.weight_decay)
    assert paper == (8 / 255, 2 / 255, 10, 0.1, 128, 5e-4)


def test_run_directory_checkpoints_and_metrics(tmp_path):
    metrics = train(tiny(), tmp_path, progress=False)
    for name in (
        "config.json",
        "history.json",
        "metrics.json",
        "checkpoint.pt",
        "best.pt",
        "activation.safetensors",
        "train.log",
    ):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and {"model", "optimizer", "scaler", "rng", "history", "best"} <= set(ckpt)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == metrics["best"]["epoch"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_clean", "val_robust", "seconds"}
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.005, 0.0005])
    assert metrics["best"]["val_robust"] == max(h["val_robust"] for h in history)
    assert 0 <= metrics["pgd20"] <= 100 and 0 <= metrics["clean"] <= 100
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    aset = load_activation_set(tmp_path / "activation.safetensors")  # ReLU: no tensors, still a full record
    assert aset.activation == "relu" and aset.tensors == {} and len(aset.sites) == 17
    assert {"arch", "dataset", "recipe", "input_size", "width", "seed", "metrics", "train_config"} <= set(aset.meta)
    assert "epoch 3:" in (tmp_path / "train.log").read_text()

    model, config = load_run(tmp_path)
    assert config == TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    again = evaluate(model, load_test_data(config), ("clean",), eps=config.eps)
    assert again["clean"] == metrics["clean"]
    assert train(tiny(), tmp_path, progress=False) == metrics  # a finished run returns its metrics


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save({"rng": state}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_resume_after_a_kill_is_bit_identical(tmp_path, monkeypatch):
    config = tiny(activation="sparta", activation_config={"variant": "dw"})
    reference = train(config, tmp_path / "whole", progress=False)

    real_save = run_dir.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if path.name == "checkpoint.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(run_dir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", progress=False)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(run_dir, "save_checkpoint", real_save)
    resumed = train(config, tmp_path / "killed", progress=False)

    assert _without_timing(resumed) == _without_timing(reference)
    histories = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("whole", "killed")]
    assert _without_timing(histories[0]) == _without_timing(histories[1])
    states = [load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in ("whole", "killed")]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()


def test_extending_a_finished_run_equals_training_longer(tmp_path):
    whole = train(tiny(schedule="constant", epochs=3), tmp_path / "whole", progress=False)
    train(tiny(schedule="constant", epochs=2), tmp_path / "grown", progress=False)
    grown = train(tiny(schedule="constant", epochs=3), tmp_path / "grown", progress=False)
    assert _without_timing(grown) == _without_timing(whole)
    with pytest.raises(ValueError, match=r"different config \(seed: 0 → 1\)"):
        train(tiny(schedule="constant", epochs=3, seed=1), tmp_path / "grown", progress=False)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_call = Standard.__call__
    calls = {"n": 0}

    def poisoned(self, model, x, y):
        loss, logits = real_call(self, model, x, y)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] > 6 else loss), logits  # 5 steps per epoch: NaN in epoch 2

    monkeypatch.setattr(Standard, "__call__", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 2.*epoch 1\) is kept.*lower lr"):
        train(tiny(recipe="standard"), tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    assert not (tmp_path / "metrics.json").exists()
    assert "stopped: training loss became nan" in (tmp_path / "train.log").read_text()


def test_frozen_activation_set_is_bit_identical_after_training(tmp_path):
    source = _tiny_model("sparta", variant="dw")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-initial set, so any update would show
    aset = extract(source)
    aset.source = "test:perturbed"
    train(tiny(epochs=1, policy="exact"), tmp_path / "frozen", activation_set=aset, progress=False)
    train(tiny(epochs=1, policy="exact", freeze=False), tmp_path / "free", activation_set=aset, progress=False)

    frozen = load_activation_set(tmp_path / "frozen" / "activation.safetensors")
    assert frozen.tensors.keys() == aset.tensors.keys()
    assert all(torch.equal(frozen.tensors[k], aset.tensors[k]) for k in aset.tensors)
    free = load_activation_set(tmp_path / "free" / "activation.safetensors")
    assert any(not torch.equal(free.tensors[k], aset.tensors[k]) for k in aset.tensors)
    config = json.loads((tmp_path / "frozen" / "config.json").read_text())
    assert (config["activation"], config["activation_config"]["variant"], config["transfer_source"]) == (
        "sparta",
        "dw",
        "test:perturbed",
    )
    model, _ = load_run(tmp_path / "frozen")
    assert all(torch.equal(extract(model).tensors[k], aset.tensors[k]) for k in aset.tensors)


@pytest.mark.slow
def test_pgd_training_beats_standard_training_under_pgd20(tmp_path):
    """The issue's acceptance test. Digits at 16×16, L∞ ε = 0.1 (a tenth of the pixel range; 8×8
    digits upsampled have strokes of ~0.5–1.0 contrast, so 0.1 is visible but leaves digits legible):
    a standard-trained ResNet-18 (width 8) falls to ~0% PGD-20 accuracy, PGD-AT (3 steps of ε/1.2) keeps
    well over half. Measured margin ~60 points; the test asks for 20."""
    common = dict(
        arch="resnet18",
        dataset="digits",
        width=8,
        input_size=16,
        batch_size=64,
        lr=0.1,
        schedule="cosine",
        eps=0.1,
        alpha=0.1 / 1.2,
        steps=3,
        val_subset=0,
        test_subset=200,
        eval_attacks=("clean", "pgd20"),
        device="cpu",
    )
    standard = train(TrainConfig(recipe="standard", epochs=4, **common), tmp_path / "standard", progress=False)
    robust = train(TrainConfig(recipe="pgd", epochs=6, **common), tmp_path / "pgd", progress=False)
    assert standard["clean"] >= 80
    assert robust["pgd20"] >= standard["pgd20"] + 20, (standard, robust)


def test_activation_lr_scale_sets_the_activation_groups_lr_and_may_change_on_resume():
    from transfer.engine.config import RESUME_MAY_CHANGE
    from transfer.engine.epochs import create_optimizer
    from transfer.engine.schedule import set_learning_rate

    model = _tiny_model("sparta", variant="dw")
    config = tiny(lr=0.1, activation_lr_scale=0.25, epochs=4)
    optimizer = create_optimizer(config, model)
    assert set_learning_rate(optimizer, config, 2, []) == pytest.approx(0.01)  # step schedule: decayed once
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["activation"] == pytest.approx(0.0025) and lrs["backbone"] == lrs["backbone_no_decay"] == 0.1 * 0.1
    assert "activation_lr_scale" in RESUME_MAY_CHANGE and "attack_bn_mode" not in RESUME_MAY_CHANGE
    for bad in (0, -1.0, math.inf, "2"):
        with pytest.raises(ValueError, match="activation_lr_scale"):
            tiny(activation_lr_scale=bad).validate()


@pytest.mark.parametrize("recipe", ["pgd", "trades", "fgsm-rs"])
def test_attack_bn_mode_train_lets_the_training_attack_use_batch_statistics(recipe):
    counts = {}
    for mode in ("eval", "train"):
        torch.manual_seed(0)
        model = _tiny_model().train()
        model.layer1.eval()  # a deliberately frozen stage stays frozen whatever the attack does
        x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
        create_recipe(recipe, eps=0.1, alpha=0.05, steps=3, attack_bn_mode=mode)(model, x, y)
        counts[mode] = int(model.bn1.num_batches_tracked)
        assert model.training and not model.layer1.training and not model.layer1[0].bn1.training
    forwards = {"pgd": 3, "fgsm-rs": 1, "trades": 4}[recipe]  # attack steps (TRADES: + the clean forward)
    assert counts["train"] == counts["eval"] + forwards
    with pytest.raises(ValueError, match="attack_bn_mode must be one of"):
        tiny(attack_bn_mode="current").validate()


def test_the_best_model_is_evaluated_on_a_copy(tmp_path, monkeypatch):
    seen = []
    real = training_mod.evaluate

    def recording(model, *args, **kwargs):
        seen.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training_mod, "evaluate", recording)
    monkeypatch.setattr(training_mod, "validate", lambda model, data, config: (50.0, 60.0))
    metrics = train(tiny(epochs=2), tmp_path, progress=False)  # epoch 1 is the best: best.pt is not the last
    assert metrics["best"]["epoch"] == 1 and len(seen) == 2 and seen[1] is not seen[0]
    last = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(v, last[k]) for k, v in seen[0].state_dict().items())  # the trained model untouched
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    assert all(torch.equal(v, best[k]) for k, v in seen[1].state_dict().items())
