import copy

import pytest
import torch
from torch import nn

from transfer import create_backbone, find_sites, inject
from transfer.sites import InputSizeError, Site


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resnet18_has_17_sites_in_forward_order_with_stages():
    model = create_backbone("resnet18", 10, input_size=32)
    sites = find_sites(model, (3, 32, 32))
    assert len(sites) == 17
    assert [s.channels for s in sites] == [64] * 5 + [128] * 4 + [256] * 4 + [512] * 4
    assert [s.stage for s in sites] == [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert sites[0].name == "act1" and sites[1].name == "layer1.0.act1"
    depths = [s.relative_depth for s in sites]
    assert depths[0] == 0.0 and depths[-1] == 1.0 and depths == sorted(depths)
    assert sites[5].spatial == (16, 16) and sites[-1].spatial == (4, 4)
    assert len({s.name for s in sites}) == 17


def test_find_sites_leaves_the_model_as_it_was():
    model = create_backbone("resnet18", 10, input_size=16, width=4)
    model.train()
    before = _snapshot(model)
    hooks_before = len(model._forward_pre_hooks) + sum(len(m._forward_pre_hooks) for m in model.modules())
    assert len(find_sites(model, (3, 16, 16))) == 17
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    hooks_after = len(model._forward_pre_hooks) + sum(len(m._forward_pre_hooks) for m in model.modules())
    assert hooks_after == hooks_before


class Twice(nn.Module):
    """One ReLU module called on two tensors of different widths, like hrnet's fuse activation."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        u = self.relu(self.a(x)).mean((2, 3))
        v = self.relu(self.b(x)).mean((2, 3))
        return self.head(torch.cat([u, v], 1))


def test_module_called_twice_gives_two_sites_and_two_activations():
    model = Twice()
    sites = find_sites(model, (3, 8, 8))
    assert [(s.name, s.call_index, s.channels) for s in sites] == [("relu#0", 0, 4), ("relu#1", 1, 6)]
    report = inject(model, "sparta", input_shape=(3, 8, 8))
    assert list(report.mapping) == ["relu#0", "relu#1"]
    first, second = model.relu.activations
    assert first.channels == 4 and second.channels == 6
    x = torch.rand(2, 3, 8, 8)
    y0 = model(x)
    with torch.no_grad():
        second.weight.mul_(3)  # only the second call changes
    y1 = model(x)
    assert not torch.allclose(y0, y1)
    assert model(x).shape == (2, 2) and torch.equal(model(x), y1)  # counters reset every forward
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), y1)
    assert [s.name for s in find_sites(model, (3, 8, 8))] == ["relu#0", "relu#1"]


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("efficientnet_b0", "SiLU"), ("mobilenetv3_small_050", "Hardswish"), ("densenet121", "ReLU")],
)
def test_nested_and_timm_activation_classes_are_found(arch, kind):
    model = create_backbone(arch, 10, input_size=32)
    sites = find_sites(model, (3, 32, 32))
    assert any(s.kind == kind for s in sites)
    # nothing a site-finder should see is left out: every activation module is called somewhere
    paths = {s.module_path for s in sites}
    acts = [p for p, m in model.named_modules() if type(m).__name__ == kind]
    assert acts and set(acts) <= paths


def test_sigmoid_gates_are_not_sites():
    model = create_backbone("seresnet18", 10, input_size=32, width=8)
    gates = [p for p, m in model.named_modules() if type(m).__name__ == "Sigmoid"]  # one per SE block
    sites = find_sites(model, (3, 32, 32))
    assert len(gates) == 8 and {s.kind for s in sites} == {"ReLU"}
    assert len(sites) == 17 + 8  # the backbone's ReLUs and each SE block's inner ReLU, no gate
    assert not {s.module_path for s in sites} & set(gates)


def test_dla34_repeated_calls_each_become_sites():
    model = create_backbone("dla34", 10, input_size=32)
    sites = find_sites(model, (3, 32, 32))
    multi = [s for s in sites if "#" in s.name]
    assert multi and all(s.call_index >= 0 for s in multi)
    inject(model, "sparta")
    after = find_sites(model, (3, 32, 32))
    assert [s.name for s in after] == [s.name for s in sites]
    assert all(s.kind in ("Sparta", "PerCallActivation") for s in after)


def test_site_records_round_trip_and_input_size_errors():
    s = Site("a#1", "a", 1, 8, (4, 4), 2, 0.5, "ReLU")
    assert Site.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="lacks"):
        Site.from_dict({"name": "a"})
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        find_sites(nn.ReLU(), (3, 4))
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\).*got 32"):
        find_sites(nn.ReLU(), 32)


def test_channels_last_activations_are_marked_with_the_channels_of_the_nchw_twin():
    model = create_backbone("convnext_atto", 10, input_size=32, conv_mlp=False)  # nn.Linear MLP on NHWC
    sites = find_sites(model, (3, 32, 32))
    nhwc = [s for s in sites if s.layout == "NHWC"]
    assert nhwc and all(".mlp.act" in s.module_path for s in nhwc)
    conv_mlp = create_backbone("convnext_atto", 10, input_size=32)  # the same block with 1×1 convs: NCHW
    conv_sites = find_sites(conv_mlp, (3, 32, 32))
    assert len(conv_sites) == len(sites) and all(s.layout == "NCHW" for s in conv_sites)
    assert [(s.channels, s.spatial) for s in sites] == [(s.channels, s.spatial) for s in conv_sites]


def test_the_input_size_search_leaves_every_submodule_in_its_own_mode():
    class FixedSize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            assert x.shape[-1] == 32, "built for 32 px"
            return self.act(self.bn(self.conv(x))).mean((2, 3))

    model = FixedSize().train()
    model.bn.eval()  # deliberately frozen inside a training model
    with pytest.raises(InputSizeError, match=r"FixedSize cannot run on 16x16 px inputs.*runs at 32x32 px") as caught:
        find_sites(model, (3, 16, 16))
    assert (caught.value.tried, caught.value.needed) == (16, 32)
    assert model.training and model.conv.training and not model.bn.training
    assert torch.equal(model.bn.running_mean, torch.zeros(4))  # the search ran in eval mode
