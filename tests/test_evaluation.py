"""evaluate(): metric names, percent units, subsets, model modes, and attack strength on a known model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transfer.attack_names import METRIC_ORDER, SPEC_ALIASES, metric_name, order_metrics
from transfer.engine.attacks import create_attack, parse_attack
from transfer.engine.config import TrainConfig
from transfer.engine.data import DatasetInfo, TensorData
from transfer.engine.evaluation import DEFAULT_EVAL_ATTACKS, evaluate

INFO = DatasetInfo("toy", 2, 1, 4, ("dark", "bright"))


class MeanBrightness(nn.Module):
    """Class 1 iff the mean pixel is above 0.5, with a BatchNorm to watch modes and statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        m = self.bn(x.mean(dim=(1, 2, 3))[:, None] - 0.5)
        return torch.cat([-m, m], dim=1) * self.scale


def toy_data(n: int = 40, margin: float = 0.2) -> TensorData:
    """Images of constant brightness 0.5 ± margin: the margin is exactly the L∞ radius that flips them."""
    labels = torch.arange(n) % 2
    images = (0.5 + margin * (2 * labels.float() - 1)).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return TensorData(images, labels, INFO)


def test_metric_names_follow_the_contract():
    assert [metric_name(s) for s in ("clean", "FGSM", "pgd", "pgd20", "pgd7", "cw", "cw20", "autoattack", "aa")] == [
        "clean",
        "fgsm",
        "pgd20",
        "pgd20",
        "pgd7",
        "cw",
        "cw",
        "aa",
        "aa",
    ]


@pytest.mark.parametrize("alias", sorted(SPEC_ALIASES))
def test_an_alias_names_the_same_attack_and_metric_as_its_spec(alias):
    spec = SPEC_ALIASES[alias]
    assert metric_name(alias.upper()) == metric_name(spec) == spec
    kind, config = parse_attack(alias)
    assert (kind, config) == parse_attack(spec)
    if not config:  # a named spec: the registry knows the alias too
        assert type(create_attack(alias)) is type(create_attack(kind))


def test_one_default_attack_list_and_one_metric_order():
    import inspect

    from studies.spec import parse_spec

    assert TrainConfig().eval_attacks == DEFAULT_EVAL_ATTACKS
    assert inspect.signature(evaluate).parameters["attacks"].default == DEFAULT_EVAL_ATTACKS
    spec = parse_spec(
        {
            "name": "s",
            "sources": [{"arch": "resnet18", "dataset": "digits"}],
            "targets": [{"arch": "resnet18", "dataset": "digits"}],
        }
    )
    assert tuple(spec.eval["attacks"]) == DEFAULT_EVAL_ATTACKS
    ordered = order_metrics(["pgd7", "aa", "clean", "pgd20-l2", "fgsm", "aa"])
    assert ordered == ["clean", "fgsm", "aa", "pgd7", "pgd20-l2"]
    assert [metric_name(m) for m in METRIC_ORDER] == list(METRIC_ORDER)


def test_accuracies_are_percent_and_attacks_win_only_beyond_the_margin():
    model = MeanBrightness().eval()
    data = toy_data(margin=0.2)
    inside = evaluate(model, data, ("clean", "fgsm", "pgd20", "cw"), eps=0.1)
    assert inside == {"clean": 100.0, "fgsm": 100.0, "pgd20": 100.0, "cw": 100.0}
    beyond = evaluate(model, data, "clean,fgsm,pgd20,cw", eps=0.3)
    assert beyond == {"clean": 100.0, "fgsm": 0.0, "pgd20": 0.0, "cw": 0.0}


def test_modes_and_batchnorm_statistics_are_left_alone():
    model = MeanBrightness().train()
    stats = model.bn.running_mean.clone(), model.bn.running_var.clone()
    evaluate(model, toy_data(), ("clean", "pgd5"), eps=0.1, batch_size=7)
    assert model.training and model.bn.training
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])


def test_subset_and_bad_inputs():
    model = MeanBrightness().eval()
    half_wrong = toy_data(40)
    half_wrong.labels[:20] = 1 - half_wrong.labels[:20]  # the first half mislabeled: 50% accuracy
    assert evaluate(model, half_wrong, ("clean",), eps=0.1) == {"clean": 50.0}
    model.seen = 0
    assert evaluate(model, toy_data(40), ("clean",), eps=0.1, n=10) == {"clean": 100.0}
    assert model.seen == 10
    with pytest.raises(ValueError, match="cannot parse attack spec"):
        evaluate(model, toy_data(), ("pgdx",), eps=0.1)
    with pytest.raises(ValueError, match="at least one"):
        evaluate(model, toy_data(), (), eps=0.1)


class PeriodicBrightness(nn.Module):
    """Class 1 iff sin(2π·mean/0.4) > 0: not monotone, so a loss-ascent step can cross a whole wrong
    band and land in a right one (the attack "fixes" a misclassified image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wave = torch.sin(2 * math.pi * x.mean(dim=(1, 2, 3)) / 0.4)[:, None]
        return torch.cat([torch.zeros_like(wave), 10 * wave], dim=1)


def test_robust_means_correct_both_clean_and_attacked():
    # Both images are class 1. At brightness 0.39 the model says 0 (wrong); FGSM at ε = 0.2 steps down to
    # 0.19, where it says 1. At 0.45 it says 1; FGSM steps down to 0.25, where it says 0.
    images = torch.tensor([0.39, 0.45]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    data = TensorData(images, torch.tensor([1, 1]), INFO)
    model = PeriodicBrightness()
    with torch.no_grad():
        fixed = create_attack("fgsm", eps=0.2)(model, images[:1], data.labels[:1])
        assert model(fixed).argmax(1).item() == 1  # the attack alone would count image 0 as robust
    assert evaluate(model, data, ("clean", "fgsm"), eps=0.2) == {"clean": 50.0, "fgsm": 0.0}


def test_a_deliberately_eval_mode_batchnorm_stays_in_eval_mode():
    """``model.train(was_training)`` would turn a frozen BatchNorm inside a training model back to
    training; validation, evaluation, attacks and the sanity checks give every submodule its own mode."""
    from transfer.backbones import create_backbone
    from transfer.engine.data import create_dataset
    from transfer.engine.epochs import validate
    from transfer.engine.sanity import sanity_check

    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=1, input_size=8, width=4).train()
    model.layer1[0].bn1.eval()
    data = create_dataset("digits", "test", input_size=8).subset(8, seed=0)
    expected = {name: m.training for name, m in model.named_modules()}

    def modes_kept() -> bool:
        return {name: m.training for name, m in model.named_modules()} == expected

    validate(model, data, TrainConfig(eps=0.1, alpha=0.05, steps=1, eval_batch_size=4))
    assert modes_kept()
    evaluate(model, data, ("clean", "pgd1"), eps=0.1)
    assert modes_kept()
    for bn_mode in ("eval", "train", "current"):
        create_attack("pgd", eps=0.1, steps=1, bn_mode=bn_mode)(model, data.images, data.labels)
        assert modes_kept()
    sanity_check(model, data, eps=0.25, steps=1, restarts=1, square_queries=1, apgd_iter=1, noise_samples=1)
    assert modes_kept()
