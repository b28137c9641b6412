"""evaluate(): metric names, percent units, subsets, model modes, and attack strength on a known model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer.engine.data import DatasetInfo, TensorData
from transfer.engine.evaluation import evaluate, metric_name

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
    assert [metric_name(s) for s in ("clean", "FGSM", "pgd", "pgd20", "pgd7", "cw", "cw20", "autoattack", "aa")] == \
        ["clean", "fgsm", "pgd20", "pgd20", "pgd7", "cw", "cw", "aa", "aa"]


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
