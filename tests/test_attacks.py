"""Attacks: spec parsing, the ε-ball, [0, 1], no parameter gradients, BatchNorm and mode left alone,
and strength — ordered against each other, against a textbook PGD written out here, and against the
official AutoAttack's APGD-CE on a small trained model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transfer.backbones import create_backbone
from transfer.engine.attacks import (
    BN_MODES,
    NORMS,
    attack_mode,
    create_attack,
    list_attacks,
    margin_loss,
    parse_attack,
    projected_gradient_ascent,
    random_start,
)
from transfer.engine.data import TensorData, create_dataset
from transfer.engine.recipes import create_recipe

EPS = 8 / 255
# The strength comparisons use a larger ε: digits has 16 grey levels, and at 8/255 a small model loses
# few points, which would leave the ordering tests little to measure.
STRONG_EPS = 16 / 255


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item() * 100


@pytest.fixture(scope="session")
def digits_model() -> tuple[nn.Module, TensorData]:
    """A ResNet-18 of width 8 trained on 8×8 digits for three quick epochs (≈ 95 % clean)."""
    torch.manual_seed(0)
    train = create_dataset("digits", "train", input_size=8)
    test = create_dataset("digits", "test", input_size=8).subset(300, seed=0)
    model = create_backbone("resnet18", num_classes=10, in_chans=1, input_size=8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        for x, y in train.batches(64, shuffle=True, generator=g):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model, test


@pytest.fixture
def fresh_model(digits_model: tuple[nn.Module, TensorData]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A copy of the trained model (in train mode, no parameter grads) and 64 test inputs."""
    model, test = digits_model
    clone = copy.deepcopy(model).train()
    for p in clone.parameters():
        p.grad = None
    return clone, test.images[:64], test.labels[:64]


def test_parse_attack_specs() -> None:
    assert parse_attack("clean") == ("clean", {})
    assert parse_attack("fgsm") == ("fgsm", {})
    assert parse_attack("pgd20") == ("pgd", {"steps": 20, "keep_best": True})
    assert parse_attack("PGD7") == ("pgd", {"steps": 7, "keep_best": True})
    assert parse_attack("pgd20-l2") == ("pgd", {"steps": 20, "keep_best": True, "norm": "l2"})
    assert parse_attack("cw") == ("cw", {"steps": 20, "keep_best": True})
    assert parse_attack("cw50") == ("cw", {"steps": 50, "keep_best": True})
    assert parse_attack("aa") == ("autoattack", {})
    assert parse_attack("apgd-ce") == ("apgd-ce", {})
    for bad in ("pgd0", "pgdx", "deepfool", "cw20-l2", ""):
        with pytest.raises(ValueError, match="attack spec"):
            parse_attack(bad)


def test_registry_defaults_and_errors() -> None:
    assert {"clean", "fgsm", "pgd", "cw", "autoattack", "apgd-ce"} <= set(list_attacks())
    pgd = create_attack("pgd")
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.norm, pgd.loss) == (EPS, 2 / 255, 10, "linf", "ce")
    assert create_attack("pgd", eps=4 / 255).alpha == pytest.approx(1 / 255)
    cw = create_attack("cw")
    assert (cw.steps, cw.loss) == (20, "cw")
    fgsm = create_attack("fgsm")
    assert (fgsm.steps, fgsm.alpha, fgsm.random_start) == (1, EPS, False)
    assert create_attack("aa").config == {
        "eps": EPS,
        "version": "standard",
        "norm": "linf",
        "n_classes": None,
        "n_iter": None,
        "n_queries": None,
        "n_target_classes": None,
        "seed": 0,
        "verbose": False,
        "bn_mode": "eval",
    }
    name, config = parse_attack("pgd7")
    assert create_attack(name, **config).config["steps"] == 7
    with pytest.raises(ValueError, match="unknown attack 'bim'"):
        create_attack("bim")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['stpes'\]"):
        create_attack("pgd", stpes=3)
    for kwargs, msg in [
        ({"norm": "l1"}, "norm"),
        ({"loss": "dlr"}, "loss"),
        ({"steps": 0}, "steps"),
        ({"eps": -1.0}, "eps"),
        ({"alpha": 0.0}, "alpha"),
        ({"bn_mode": "frozen"}, "bn_mode"),
    ]:
        with pytest.raises(ValueError, match=msg):
            create_attack("pgd", **kwargs)
    with pytest.raises(ValueError, match="eval mode only"):
        create_attack("aa", bn_mode="train")


def test_inputs_outside_unit_range_are_refused(fresh_model: tuple) -> None:
    model, x, y = fresh_model
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        create_attack("fgsm")(model, x * 2 - 1, y)
    with pytest.raises(ValueError, match="labels"):
        create_attack("fgsm")(model, x, y[:-1])


@pytest.mark.parametrize(("spec", "norm"), [("fgsm", "linf"), ("pgd5", "linf"), ("cw5", "linf"), ("pgd5-l2", "l2")])
def test_attack_stays_in_ball_and_leaves_the_model_alone(fresh_model: tuple, spec: str, norm: str) -> None:
    model, x, y = fresh_model
    name, config = parse_attack(spec)
    eps = 0.5 if norm == "l2" else EPS
    # One submodule in eval mode inside a train-mode model: both must come back as they were.
    model.layer2.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    seen_training: list[bool] = []
    hook = model.bn1.register_forward_hook(lambda m, i, o: seen_training.append(m.training))

    x_adv = create_attack(name, eps=eps, **config)(model, x, y)
    hook.remove()

    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert delta.abs().max() > 0
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad and x_adv.grad_fn is None and x_adv.shape == x.shape
    assert all(p.grad is None for p in model.parameters())
    assert seen_training and not any(seen_training)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), k


def test_bn_mode_train_and_current(fresh_model: tuple) -> None:
    model, x, y = fresh_model
    model.eval()
    before = model.bn1.running_mean.clone()
    seen: list[bool] = []
    hook = model.bn1.register_forward_hook(lambda m, i, o: seen.append(m.training))
    create_attack("pgd", steps=2, bn_mode="train")(model, x, y)
    assert seen and all(seen)
    assert not torch.equal(model.bn1.running_mean, before)  # train-mode attacks do move BN statistics
    assert not model.training and not model.bn1.training
    seen.clear()
    model.train()
    create_attack("pgd", steps=2, bn_mode="current")(model, x, y)
    hook.remove()
    assert seen and all(seen) and model.training
    assert set(BN_MODES) == {"eval", "train", "current"}


def test_attack_mode_restores_after_an_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    with pytest.raises(RuntimeError), attack_mode(model, "eval"):
        assert not model[1].training
        raise RuntimeError("boom")
    assert model.training and model[1].training


def test_attacks_work_under_no_grad_and_autocast(fresh_model: tuple) -> None:
    model, x, y = fresh_model
    with torch.no_grad():
        x_adv = create_attack("pgd", steps=2)(model, x, y)
    assert (x_adv - x).abs().max() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_bf = create_attack("pgd", steps=2)(model, x, y)
    assert x_bf.dtype == torch.float32 and (x_bf - x).abs().max() <= EPS + 1e-6


def test_fgsm_takes_one_signed_step_of_eps(fresh_model: tuple) -> None:
    model, x, y = fresh_model
    model.eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    assert torch.allclose(create_attack("fgsm")(model, x, y), expected, atol=1e-6)


@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_training_recipe_and_evaluation_pgd_run_the_same_loop(fresh_model: tuple, loss_scale: float) -> None:
    """PGD-AT's inner maximisation is the evaluation PGD (same start, steps and projection); an AMP loss
    scale (a power of two) leaves the L∞ steps unchanged, since they use the gradient's sign."""
    model, x, y = fresh_model
    recipe_model, attack_model = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(3)
    _, logits = create_recipe("pgd", eps=EPS, alpha=EPS / 4, steps=3, loss_scale=loss_scale)(recipe_model, x, y)
    torch.manual_seed(3)
    x_adv = create_attack("pgd", eps=EPS, alpha=EPS / 4, steps=3)(attack_model, x, y)
    assert attack_model.training
    assert torch.equal(logits, attack_model(x_adv))


def test_keeping_the_first_fooling_iterate_never_loses_a_fooled_sample(fresh_model: tuple) -> None:
    model, x, y = fresh_model
    model.eval()
    results = []
    for keep in (None, y):
        torch.manual_seed(5)
        with attack_mode(model):
            start = random_start(x, STRONG_EPS)
            results.append(
                projected_gradient_ascent(
                    model,
                    x,
                    lambda z: F.cross_entropy(z, y, reduction="sum"),
                    start,
                    eps=STRONG_EPS,
                    alpha=STRONG_EPS / 4,
                    steps=4,
                    keep_first_fooled=keep,
                )
            )
    with torch.no_grad():
        plain_wrong, kept_wrong = (model(r).argmax(1) != y for r in results)
    assert plain_wrong.any() and bool((kept_wrong | ~plain_wrong).all())  # kept ⊇ plain
    assert all((r - x).abs().max() <= STRONG_EPS + 1e-6 for r in results)


@pytest.mark.parametrize("norm", NORMS)
def test_the_pgd_loop_keeps_channels_last_inputs_channels_last(norm: str) -> None:
    """The engine trains channels-last; a layout conversion per attack step would cost a copy each."""
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=8, width=4)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    with attack_mode(model):
        x_adv = projected_gradient_ascent(
            model,
            x,
            lambda z: F.cross_entropy(z, y, reduction="sum"),
            random_start(x, 0.1, norm),
            eps=0.1,
            alpha=0.03,
            steps=2,
            norm=norm,
            keep_first_fooled=y,
        )
    assert x_adv.is_contiguous(memory_format=torch.channels_last) and not x_adv.is_contiguous()


def test_margin_loss_is_best_other_minus_true() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(margin_loss(logits, y), torch.tensor([-1.0, 6.0]))
    assert torch.allclose(margin_loss(logits, y, kappa=2.0), torch.tensor([-1.0, 2.0]))


def _textbook_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int):
    """Madry et al.'s L∞ PGD as papers write it: a uniform start in the ball, signed steps on the
    cross-entropy, projection onto the ball and [0, 1] after each; the last iterate."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_strength_ordering_and_parity_with_reference_attacks(digits_model: tuple) -> None:
    from pyautoattack import AutoAttack as OfficialAutoAttack

    model, test = digits_model
    x, y = test.images, test.labels
    acc = {"clean": _accuracy(model, x, y)}
    for spec in ("fgsm", "pgd20", "cw"):
        name, config = parse_attack(spec)
        # The same global seed before ours and the textbook PGD: both draw the same uniform random start,
        # so the comparison measures the algorithms, not two random starts.
        torch.manual_seed(0)
        acc[spec] = _accuracy(model, create_attack(name, eps=STRONG_EPS, **config)(model, x, y), y)
    torch.manual_seed(0)
    ours_last = create_attack("pgd", eps=STRONG_EPS, steps=20)(model, x, y)  # keep_best off: the last iterate
    torch.manual_seed(0)
    reference = _textbook_pgd(model, x, y, STRONG_EPS, STRONG_EPS / 4, 20)
    assert torch.allclose(ours_last, reference, atol=1e-6)
    acc["textbook_pgd20"] = _accuracy(model, reference, y)
    official = OfficialAutoAttack(model, eps=STRONG_EPS, version="custom", attacks=["apgd-ce"], seed=0)
    official.apgd.n_restarts = 1
    acc["official_apgd_ce"] = _accuracy(model, official.run_standard_evaluation(x, y, batch_size=len(x))[0], y)
    assert acc["clean"] > 85, acc  # the fixture model has learnt digits
    assert acc["pgd20"] <= acc["fgsm"] <= acc["clean"] - 10, acc
    assert acc["cw"] <= acc["fgsm"], acc
    assert acc["pgd20"] <= acc["textbook_pgd20"], acc  # keeping the first fooling iterate never loses one
    # 20 fixed steps against APGD's 100 adaptive ones: ours may be weaker, but not by much on this model.
    assert acc["official_apgd_ce"] - 3.0 <= acc["pgd20"], acc
    assert all(p.grad is None for p in model.parameters())


def test_cheap_autoattack_modes_run(digits_model: tuple) -> None:
    model, test = digits_model
    model = copy.deepcopy(model).train()
    x, y = test.images[:32], test.labels[:32]
    x_apgd = create_attack("apgd-ce", eps=STRONG_EPS, n_iter=5)(model, x, y)
    assert (x_apgd - x).abs().max() <= STRONG_EPS + 1e-6 and x_apgd.min() >= 0 and x_apgd.max() <= 1
    model.eval()
    assert _accuracy(model, x_apgd, y) < _accuracy(model, x, y)
    model.train()
    # A large ε breaks every point in AutoAttack's first stage, so the later (slow) stages are skipped.
    x_aa = create_attack("aa", eps=0.5)(model, x[:8], y[:8])
    assert (x_aa - x[:8]).abs().max() <= 0.5 + 1e-6
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
