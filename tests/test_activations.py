import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transfer import Sparta, create_activation, list_activations

BASELINES = ["relu", "silu", "gelu", "softplus", "prelu", "frelu"]


def test_registry_lists_sparta_and_every_baseline():
    names = list_activations()
    for n in ["sparta", *BASELINES]:
        assert n in names
    assert list_activations("s*") == sorted(n for n in names if n.startswith("s"))


@pytest.mark.parametrize("variant", ["dw", "full", "portable"])
def test_sparta_at_init_is_swish(variant):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 5) * 3
    y = create_activation("sparta", 6, variant=variant)(x)
    torch.testing.assert_close(y, F.silu(x), rtol=0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(beta=st.floats(0.1, 8.0), channels=st.integers(1, 9))
def test_dw_sparta_with_centre_beta_is_swish_with_slope_beta(beta, channels):
    x = torch.randn(3, channels, 4, 4, generator=torch.Generator().manual_seed(channels))
    act = create_activation("sparta", channels, variant="dw", beta=beta)
    torch.testing.assert_close(act(x), x * torch.sigmoid(beta * x), rtol=1e-5, atol=1e-6)


def test_sparta_tends_to_relu_for_large_beta():
    x = torch.linspace(-3, 3, 61).view(1, 1, 1, 61)
    act = create_activation("sparta", 1, beta=200.0)
    assert (act(x) - F.relu(x)).abs().max() < 1e-2


def test_sparta_gate_sees_the_neighbourhood():
    act = create_activation("sparta", 1)
    with torch.no_grad():
        act.weight.zero_()
        act.weight[0, 0, 0, 1] = 5.0  # look at the pixel above
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 2] = 1.0  # a bright pixel above (2, 2)
    gate = act.gate(x).detach()
    assert gate[0, 0, 2, 2] > 0.99  # opened by its neighbour, though its own input is zero
    assert float(gate[0, 0, 4, 4]) == pytest.approx(0.5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_parameter_counts_follow_the_spec(k):
    for c in (4, 16, 64):
        dw = create_activation("sparta", c, variant="dw", kernel_size=k)
        full = create_activation("sparta", c, variant="full", kernel_size=k)
        portable = create_activation("sparta", c, variant="portable", kernel_size=k)
        assert sum(p.numel() for p in dw.parameters()) == c * k * k + c
        assert sum(p.numel() for p in full.parameters()) == c * c * k * k + c
        assert sum(p.numel() for p in portable.parameters()) == 2 * k * k + 1


def test_portable_without_self_gate_is_a_pure_spatial_gate():
    act = create_activation("sparta", 3, variant="portable", self_gate=False)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(act(x), x / 2)


@pytest.mark.parametrize("name", ["sparta", *BASELINES])
def test_every_activation_runs_on_4d_and_2d_and_keeps_shape(name):
    act = create_activation(name, 5)
    x = torch.randn(3, 5, 6, 6, requires_grad=True)
    y = act(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert act(torch.randn(3, 5)).shape == (3, 5)


def test_state_dict_round_trip_rebuilds_the_same_function():
    a = create_activation("sparta", 4, variant="dw", kernel_size=5)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    b = create_activation("sparta", 4, **a.config)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(a(x), b(x))
    assert set(a.state_dict()) == {"weight", "bias"}


def test_freeze_stops_gradients_and_keeps_eval_mode():
    act = create_activation("frelu", 4).freeze()
    assert all(not p.requires_grad for p in act.parameters())
    act.train()
    assert not act.training and not act.bn.training


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="unknown activation 'relu7'.*choose one of"):
        create_activation("relu7", 4)
    with pytest.raises(ValueError, match="unknown option.*takes: variant"):
        create_activation("sparta", 4, varient="dw")
    with pytest.raises(ValueError, match="variant 'wide'.*dw, full, portable"):
        create_activation("sparta", 4, variant="wide")
    with pytest.raises(ValueError, match="odd"):
        create_activation("sparta", 4, kernel_size=2)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        create_activation("sparta", 0)


def test_swish_alias_and_sparta_class():
    assert type(create_activation("swish", 3)).__name__ == "SiLU"
    assert isinstance(create_activation("sparta", 3), Sparta)


@pytest.mark.parametrize("variant", ["dw", "full", "portable"])
def test_sparta_keeps_channels_last_maps_channels_last(variant):
    """No memory-format copies on the engine's layout: a channels-last map gives a channels-last output
    and a channels-last input gradient."""
    gen = torch.Generator().manual_seed(0)
    act = create_activation("sparta", 5, variant=variant)
    x = torch.randn(3, 5, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = act(x)
    grad_y = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(y, x, grad_y)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in (y, grad))
    assert not y.is_contiguous() and not grad.is_contiguous()


@pytest.mark.parametrize(("name", "options", "message"), [
    ("sparta", {"kernel_size": 999999}, r"Sparta kernel_size must be an odd int from 1 to 31, got 999999"),
    ("sparta", {"kernel_size": 33}, r"Sparta kernel_size must be an odd int from 1 to 31, got 33"),
    ("sparta", {"kernel_size": True}, r"Sparta kernel_size must be an odd int from 1 to 31, got True"),
    ("sparta", {"kernel_size": 3.0}, r"Sparta kernel_size must be an odd int from 1 to 31, got 3.0"),
    ("sparta", {"beta": 1e308}, r"Sparta beta must be a finite number in \[0, 1000\], got 1e\+308"),
    ("sparta", {"beta": float("nan")}, r"Sparta beta must be a finite number in \[0, 1000\], got nan"),
    ("sparta", {"beta": -1.0}, r"Sparta beta must be a finite number in \[0, 1000\], got -1.0"),
    ("sparta", {"beta": "1"}, r"Sparta beta must be a finite number"),
    ("sparta", {"self_gate": "no"}, r"Sparta self_gate must be true or false, got 'no'"),
    ("frelu", {"kernel_size": 4}, r"FReLU kernel_size must be an odd int from 1 to 31, got 4"),
    ("softplus", {"beta": 1e-308}, r"Softplus beta must be a finite number in \[0.001, 1000\], got 1e-308"),
    ("softplus", {"beta": float("inf")}, r"Softplus beta must be a finite number in \[0.001, 1000\], got inf"),
    ("prelu", {"init": 1e9}, r"PReLU init must be a finite number in \[-1000, 1000\], got 1000000000.0"),
    ("pssilu", {"init_alpha": float("-inf")}, r"PSSiLU init_alpha must be a finite number in \[-1000, 1000\]"),
    ("pssilu", {"init_beta": float("nan")}, r"PSSiLU init_beta must be in \(0, 0.99\), got nan"),
    ("pssilu", {"per_channel": 1}, r"PSSiLU per_channel must be true or false, got 1"),
    ("psoftplus", {"init_alpha": 1e308}, r"PSoftplus init_alpha must be a finite number in \[0, 1000\]"),
])  # fmt: skip
def test_options_outside_their_documented_range_are_refused(name, options, message):
    with pytest.raises(ValueError, match=rf"^{message}"):
        create_activation(name, 4, **options)


@pytest.mark.parametrize(("name", "options"), [
    ("sparta", {"variant": "dw", "kernel_size": 31, "beta": 1000.0}),
    ("sparta", {"variant": "full", "kernel_size": 31, "beta": 0.0}),
    ("sparta", {"variant": "portable", "kernel_size": 31, "beta": 1000.0}),
    ("frelu", {"kernel_size": 31}), ("softplus", {"beta": 1e-3}), ("softplus", {"beta": 1000}),
    ("prelu", {"init": -1000.0}), ("pssilu", {"init_alpha": 1000.0, "init_beta": 0.98}),
    ("psoftplus", {"init_alpha": 1000.0}), ("psoftplus", {"init_alpha": 1e-9}),
])  # fmt: skip
def test_the_extremes_of_every_range_keep_the_forward_and_backward_finite(name, options):
    act = create_activation(name, 3, **options)
    x = (torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 1e4).requires_grad_()
    y = act(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in act.parameters() if p.grad is not None)
