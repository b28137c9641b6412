"""PSSiLU and PSoftplus (Dai et al. 2022), the learned pointwise peers of Sparta: formula, init, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from transfer import create_activation


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_pssilu_at_init_matches_the_hand_computed_formula():
    act = create_activation("pssilu", 3)
    assert act.alpha.item() == 1.0 and act.shift().item() == pytest.approx(0.1)
    x = torch.tensor([[-4.0, -2.0, 0.0, 1.0, 3.0]])
    # x · (σ(x) − 0.1) / 0.9, element by element
    want = [v * (_sigmoid(v) - 0.1) / 0.9 for v in (-4.0, -2.0, 0.0, 1.0, 3.0)]
    torch.testing.assert_close(act(x), torch.tensor([want]), rtol=0, atol=1e-6)
    assert act(torch.tensor([[-4.0]])).item() > 0  # large negative inputs give positive outputs (β > 0)
    assert want[3] == pytest.approx(0.701177, abs=1e-6)


def test_pssilu_with_other_parameters_and_its_constraints():
    act = create_activation("pssilu", 2, init_alpha=2.0, init_beta=0.5)
    x = torch.tensor([[1.5, -1.0]])
    want = [v * (_sigmoid(2.0 * v) - 0.5) / 0.5 for v in (1.5, -1.0)]
    torch.testing.assert_close(act(x), torch.tensor([want]), rtol=0, atol=1e-6)
    with torch.no_grad():
        act.alpha.fill_(-2.0)  # enters as |α|
        act.beta.fill_(-0.5)  # enters as |β|
    torch.testing.assert_close(act(x), torch.tensor([want]), rtol=0, atol=1e-6)
    with torch.no_grad():
        act.beta.fill_(3.0)
    assert act.shift().item() == pytest.approx(act.BETA_MAX)  # never 1: 1/(1 − β) stays finite
    assert torch.isfinite(act(torch.randn(4, 2) * 50)).all()


def test_gradients_reach_alpha_and_beta():
    for per_channel in (False, True):
        act = create_activation("pssilu", 4, per_channel=per_channel)
        x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 2
        act(x).square().sum().backward()
        assert act.alpha.grad is not None and act.beta.grad is not None
        assert act.alpha.grad.abs().min() > 0 and act.beta.grad.abs().min() > 0


def test_per_layer_and_per_channel_shapes_and_per_channel_broadcast():
    layer, channel = create_activation("pssilu", 5), create_activation("pssilu", 5, per_channel=True)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {"alpha": (1,), "beta": (1,)}
    assert {k: tuple(v.shape) for k, v in channel.state_dict().items()} == {"alpha": (5,), "beta": (5,)}
    with torch.no_grad():
        channel.alpha.copy_(torch.arange(1.0, 6.0))
    x = torch.ones(1, 5, 2, 2)
    y = channel(x)
    for c in range(5):  # channel c uses its own α = c + 1
        want = (_sigmoid(c + 1.0) - 0.1) / 0.9
        torch.testing.assert_close(y[0, c], torch.full((2, 2), want), rtol=0, atol=1e-6)


def test_psoftplus_starts_as_softplus_and_learns_its_slope():
    act = create_activation("psoftplus", 3)
    x = torch.linspace(-4, 4, 9).view(1, 9)
    torch.testing.assert_close(act(x), F.softplus(x), rtol=0, atol=1e-6)
    with torch.no_grad():
        act.alpha.fill_(3.0)
    torch.testing.assert_close(act(x), torch.log1p(torch.exp(3 * x)) / 3, rtol=1e-5, atol=1e-6)
    act(x).sum().backward()
    assert act.alpha.grad is not None and act.alpha.grad.abs().item() > 0


def test_bad_inits_are_explained_and_freezing_works():
    with pytest.raises(ValueError, match="init_beta must be in"):
        create_activation("pssilu", 2, init_beta=1.0)
    with pytest.raises(ValueError, match="init_alpha must be > 0"):
        create_activation("psoftplus", 2, init_alpha=0.0)
    act = create_activation("pssilu", 2).freeze()
    assert not any(p.requires_grad for p in act.parameters())
