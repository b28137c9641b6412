"""Channels-last (NHWC) and token (NLC) sites: Sparta there equals Sparta on the NCHW map, token grids are
read from the model, sites without a grid are refused, and ConvNeXt/ViT inject, train and extract."""

import pytest
import torch
from helpers import micro_study_toml
from torch import nn

from transfer import create_activation, create_backbone, extract, find_sites, inject
from transfer.layouts import LayoutView, SiteLayout
from transfer.sites import module_at

ACTIVATIONS = [
    ("sparta", {"variant": "dw"}),
    ("sparta", {"variant": "full"}),
    ("sparta", {"variant": "portable"}),
    ("sparta", {"variant": "portable", "self_gate": False}),
    ("frelu", {}),
]


def _randomised(name, config, channels):
    torch.manual_seed(0)
    act = create_activation(name, channels, **config)
    with torch.no_grad():
        for p in act.parameters():
            p.normal_(0.0, 0.5)
    return act.eval()


@pytest.mark.parametrize(("name", "config"), ACTIVATIONS)
def test_nhwc_site_equals_the_nchw_computation_on_the_permuted_map(name, config):
    act = _randomised(name, config, 6)
    x = torch.randn(2, 5, 7, 6, requires_grad=True)  # N, H, W, C
    y = LayoutView(act, SiteLayout.of("NHWC", (5, 7)))(x)
    nchw = x.detach().permute(0, 3, 1, 2).contiguous().requires_grad_()
    reference = act(nchw)
    assert y.shape == x.shape and y.is_contiguous()  # the input's layout, channels last in memory
    torch.testing.assert_close(y, reference.permute(0, 2, 3, 1))
    y.square().sum().backward()
    reference.square().sum().backward()
    torch.testing.assert_close(x.grad, nchw.grad.permute(0, 2, 3, 1))


@pytest.mark.parametrize(("name", "config"), ACTIVATIONS)
def test_token_site_gates_the_grid_spatially_and_prefix_tokens_alone(name, config):
    act = _randomised(name, config, 4)
    prefix, (h, w) = 2, (3, 5)
    x = torch.randn(2, prefix + h * w, 4)
    y = LayoutView(act, SiteLayout.of("NLC", (h, w), prefix))(x)
    grid = x[:, prefix:].transpose(1, 2).reshape(2, 4, h, w).contiguous()  # row-major tokens → NCHW map
    torch.testing.assert_close(y[:, prefix:], act(grid).flatten(2).transpose(1, 2))
    for i in range(prefix):  # each prefix token alone, as a 1×1 map
        torch.testing.assert_close(y[:, i], act(x[:, i, :, None, None]).flatten(1))


def test_prefix_tokens_get_the_centre_tap_and_bias_of_dw_sparta():
    act = _randomised("sparta", {"variant": "dw"}, 4)
    x = torch.randn(3, 1 + 4, 4)
    y = LayoutView(act, SiteLayout.of("NLC", (2, 2), 1))(x)
    centre = act.weight[:, 0, 1, 1]
    torch.testing.assert_close(y[:, 0], x[:, 0] * torch.sigmoid(centre * x[:, 0] + act.bias))


def test_token_count_other_than_the_traced_grid_is_an_error():
    view = LayoutView(create_activation("sparta", 4), SiteLayout.of("NLC", (2, 2), 1))
    with pytest.raises(ValueError, match=r"1 prefix \+ 2x2 grid tokens got 7 tokens"):
        view(torch.randn(1, 7, 4))


def _tiny_vit(size=16):
    return create_backbone("vit_tiny_patch16_224", 10, input_size=size, depth=2, embed_dim=8, num_heads=2)


def test_vit_token_sites_read_channels_grid_and_class_token_from_the_model():
    model = _tiny_vit()  # 16 px: 2 px patches, an 8×8 grid (transfer/backbones.py)
    sites = find_sites(model, (3, 16, 16))
    assert model.patch_embed.grid_size == (8, 8) and model.sparta_info.stem == "cifar"
    assert [(s.layout, s.channels, s.spatial, s.prefix_tokens) for s in sites] == [("NLC", 32, (8, 8), 1)] * 2


class _Ungridded(nn.Module):
    """Tokens (N, L, C) with L = 3 input channels: no grid of the model accounts for them."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 6)
        self.act = nn.GELU()
        self.head = nn.Linear(18, 2)

    def forward(self, x):
        return self.head(self.act(self.fc(x.flatten(2))).flatten(1))


def test_token_sites_without_a_grid_are_refused_for_spatial_activations_only():
    model = _Ungridded()
    (site,) = find_sites(model, (3, 4, 4))
    assert (site.layout, site.channels, site.spatial) == ("NLC", 6, (3,))
    for name in ("sparta", "frelu"):
        with pytest.raises(
            ValueError,
            match=r"_Ungridded: 1 activation site\(s\) see \(N, L, C\) tokens whose "
            r"spatial grid could not be found.*act \(L=3, C=6\)",
        ):
            inject(model, name, input_shape=(3, 4, 4))
    inject(model, "prelu", input_shape=(3, 4, 4))  # per channel, no neighbours: every token alone
    slopes = torch.linspace(-1.0, 1.0, 6)
    with torch.no_grad():
        module_at(model, site).weight.copy_(slopes)
    x = torch.randn(2, 3, 4, 4)
    z = model.fc(x.flatten(2))
    expected = model.head(torch.where(z >= 0, z, slopes * z).flatten(1))  # slopes along the last (channel) dim
    torch.testing.assert_close(model(x), expected)


def _train_one_step(model, size):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.rand(4, 3, size, size)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()


def test_convnext_and_vit_inject_train_one_step_extract_and_swap_portable_sparta():
    convnext = create_backbone(
        "convnext_atto", 10, input_size=32, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), conv_mlp=False
    )  # nn.Linear MLP: channels-last sites
    vit = _tiny_vit()
    sets = {}
    for name, model, size in (("convnext", convnext, 32), ("vit", vit, 16)):
        inject(model, "sparta", variant="portable")
        before = {n: p.detach().clone() for n, p in model.named_parameters() if ".act." in n}
        _train_one_step(model, size)
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
        sets[name] = extract(model)
        layouts = {s.layout for s in sets[name].sites}
        assert layouts == ({"NHWC"} if name == "convnext" else {"NLC"})
        for s in sets[name].sites:  # the set holds what the model's activations hold
            torch.testing.assert_close(sets[name].state_for(s.name)["weight"], module_at(model, s).weight)
    fresh_vit = _tiny_vit()
    report = inject(fresh_vit, sets["convnext"], policy="depth", freeze=True)  # NHWC → NLC
    assert all(e.source is not None for e in report.entries)
    assert torch.isfinite(fresh_vit(torch.rand(2, 3, 16, 16))).all()
    fresh_convnext = create_backbone(
        "convnext_atto", 10, input_size=32, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), conv_mlp=False
    )
    inject(fresh_convnext, sets["vit"], policy="depth", freeze=True)  # NLC → NHWC
    assert torch.isfinite(fresh_convnext(torch.rand(2, 3, 32, 32))).all()


def test_nhwc_and_nchw_convnext_with_the_same_weights_and_sparta_agree():
    kwargs = {"depths": (1, 1, 1, 1), "dims": (8, 8, 16, 16), "input_size": 32}
    nhwc = create_backbone("convnext_atto", 3, conv_mlp=False, **kwargs)
    nchw = create_backbone("convnext_atto", 3, conv_mlp=True, **kwargs)
    inject(nhwc, "sparta", variant="dw")
    with torch.no_grad():
        for p in nhwc.parameters():
            p.normal_(0.0, 0.3)
    nchw_state = nchw.state_dict()
    nchw.load_state_dict({k: v.reshape(nchw_state[k].shape) for k, v in nhwc.state_dict().items() if ".act." not in k})
    inject(nchw, extract(nhwc), policy="exact")  # the same site names: the sets move between layouts as they are
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(nhwc.eval()(x), nchw.eval()(x), rtol=1e-4, atol=1e-5)


def _study(target: str) -> str:
    """Portable Sparta (width 4) trained in a ResNet-18 on digits, moved by depth into ``target``."""
    return micro_study_toml(
        "layouts",
        baselines=("relu",),
        recipe="standard",
        attacks=("clean",),
        input_size=16,
        width=None,
        target=target,
        target_dataset="digits",
        policies=("depth",),
        source_options='variant = "portable"\ntrain = { width = 4 }\n',
    )


def _sparta_lines(capsys, *argv):
    """Like helpers.sparta_cli, stderr as lines without the notes of commands unavailable here."""
    from transfer.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.strip().splitlines() if "is unavailable" not in line]


def test_sites_lists_a_model_without_token_grid_then_refuses_it_in_one_line(capsys):
    rc, out, err = _sparta_lines(capsys, "sites", "mixer_s16_224", "--input-size", "32")
    assert "blocks.0.mlp_tokens.act" in out and "L=512" in out  # the table is shown, the sites marked
    assert rc == 2 and len(err) == 1 and "Traceback" not in "".join(err), err
    for needle in (
        "mixer_s16_224",
        "blocks.0.mlp_tokens.act (L=512, C=256)",
        "grid could not be found",
        "pointwise activation",
    ):
        assert needle in err[0], err[0]


def test_study_plan_refuses_sparta_for_a_target_without_token_grid(tmp_path, capsys):
    spec = tmp_path / "study.toml"
    spec.write_text(_study("mixer_s16_224"))
    rc, _, err = _sparta_lines(capsys, "study", "plan", str(spec))
    assert rc == 2 and "Traceback" not in "\n".join(err), err
    assert any("targets[0] (mixer_s16_224 on digits)" in line and "grid could not be found" in line for line in err)


def test_study_plan_takes_a_vit_target_at_16_px(tmp_path, capsys):
    spec = tmp_path / "study.toml"
    spec.write_text(_study("vit_tiny_patch16_224"))
    rc, out, err = _sparta_lines(capsys, "study", "plan", str(spec))
    assert rc == 0 and "3 jobs" in out, err  # a source, the transfer into the ViT, its ReLU baseline


def test_vit_gate_maps_show_the_token_grid():
    from plots.gates import compute_gate_maps

    model = _tiny_vit()
    inject(model, "sparta", variant="portable")
    maps = compute_gate_maps(model, torch.rand(3, 3, 16, 16))
    assert [tuple(m.shape) for m in maps.maps] == [(3, 8, 8)] * 2  # the grid, not the class token's 1×1 map
