"""Sparta's gradients against finite differences (``torch.autograd.gradcheck``, float64), for every
variant, on feature maps and on the (N, C) inputs seen after global pooling, with respect to the
input and to the activation's own parameters."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from transfer import create_activation
from transfer.activations import SPARTA_VARIANTS

CHANNELS = 3


def _sparta(variant, seed=0, **config):
    """A float64 Sparta with every parameter moved off its initialisation (at init the portable gate
    ignores [mean, max] entirely, so gradients through them would go unchecked)."""
    act = create_activation("sparta", CHANNELS, variant=variant, **config).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in act.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return act


def _check(act, x):
    """gradcheck of act(x) with respect to x and every parameter of act."""
    names = [n for n, _ in act.named_parameters()]

    def fn(x, *params):
        return functional_call(act, dict(zip(names, params, strict=True)), (x,))

    inputs = (x.requires_grad_(), *(p.detach().clone().requires_grad_() for p in act.parameters()))
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("variant", SPARTA_VARIANTS)
def test_gradients_on_feature_maps(variant):
    x = torch.randn(2, CHANNELS, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _check(_sparta(variant), x)


@pytest.mark.parametrize("variant", SPARTA_VARIANTS)
def test_gradients_on_pooled_n_by_c_inputs(variant):
    x = torch.randn(4, CHANNELS, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    act = _sparta(variant)
    assert act(x).shape == (4, CHANNELS)
    _check(act, x)


def test_gradients_of_the_pure_spatial_portable_gate():
    x = torch.randn(2, CHANNELS, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _check(_sparta("portable", self_gate=False), x)


@pytest.mark.parametrize("self_gate", [True, False])
@pytest.mark.parametrize("shape", [(2, CHANNELS, 4, 4), (5, CHANNELS)])
def test_portable_channel_max_splits_the_gradient_between_two_tied_channels(shape, self_gate):
    """At every position channels 0 and 1 tie for the maximum, 0.5 above the rest. Nudging one of them
    by ±ε moves the max by ε or not at all, so the central difference gives each half the gradient:
    gradcheck passes only if the max's gradient is split evenly between the tied channels (as
    ``amax`` does), not routed to one of them (as ``max(dim)`` does). Exactly two channels tie: with
    k > 2 the central difference still gives 1/2 but an even split gives 1/k."""
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    top = x.amax(dim=1, keepdim=True) + 0.5
    x = torch.cat([top, top, x[:, 2:]], dim=1)
    assert torch.equal(x[:, 0], x[:, 1]) and (x[:, 0] - x[:, 2:].amax(dim=1) >= 0.5 - 1e-12).all()
    _check(_sparta("portable", seed=5, self_gate=self_gate), x)
