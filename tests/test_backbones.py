import copy
import json
import re
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from transfer import create_backbone
from transfer.cli import main, run_command
from transfer.workarounds import SubsampledPointwiseConv2d, onednn_1x1_bug_affects


def test_cifar_stem_for_small_inputs_and_timm_stem_for_large():
    small = create_backbone("resnet18", 10, input_size=32)
    assert small.sparta_info.stem == "cifar" and small.sparta_info.input_shape == (3, 32, 32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = create_backbone("resnet18", 10, input_size=224)
    assert large.sparta_info.stem == "timm" and large.conv1.stride == (2, 2)
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_width_scales_resnets_and_is_refused_elsewhere():
    model = create_backbone("resnet34", 7, input_size=16, width=4)
    assert model.bn1.num_features == 4 and model.layer4[0].conv1.out_channels == 32
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="width=4 is not supported for 'vgg11_bn'"):
        create_backbone("vgg11_bn", 10, width=4)
    with pytest.raises(ValueError, match="even"):
        create_backbone("resnet18", 10, width=5)


def test_normalisation_lives_inside_the_model():
    model = create_backbone("resnet18", 10, in_chans=1, input_size=16, width=4, mean=(0.3,), std=(0.2,)).eval()
    x = torch.rand(2, 1, 16, 16)
    y = model(x)
    plain = copy.deepcopy(model)
    plain._forward_pre_hooks.clear()
    torch.testing.assert_close(plain((x - 0.3) / 0.2), y)
    assert "pixel_mean" in model.state_dict()
    with pytest.raises(ValueError, match="need 1 values"):
        create_backbone("resnet18", 10, in_chans=1, mean=(0.5, 0.5, 0.5), std=(0.2,))


def test_unknown_arch_suggests_close_timm_names():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet19'.*Did you mean: .*resnet18"):
        create_backbone("resnet19", 10)


def test_efficientnet_gets_a_stride_one_stem():
    model = create_backbone("efficientnet_b0", 10, input_size=32)
    assert model.sparta_info.stem == "cifar" and model.conv_stem.stride == (1, 1)


def test_sites_cli_json_lists_17_resnet18_sites():
    out = subprocess.run(
        [sys.executable, "-m", "transfer.cli", "sites", "resnet18", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert (data["arch"], data["in_chans"], data["input_size"]) == ("resnet18", 3, 32)
    widths = [s["channels"] for s in data["sites"]]
    assert len(widths) == 17 and min(widths) == 64 and max(widths) == 512
    assert sorted(set(widths)) == [64, 128, 256, 512]


def test_sites_cli_table(capsys):
    assert run_command(["sites", "resnet18", "--width", "4", "--in-chans", "1", "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "17 activation sites for input 1x16x16" in out and "layer4.1.act2" in out


def test_sites_cli_explains_bad_sizes_in_one_line(capsys):
    bad = (("--input-size", "0", 4096), ("--input-size", "100000", 4096), ("--in-chans", "0", 1024))
    for flag, value, largest in bad:
        assert main(["sites", "resnet18", flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"sparta: error: {flag} must be in [1, {largest}], got {value}"


@pytest.mark.parametrize(("name", "value", "meaning"), [
    ("num_classes", 0, "classes"), ("num_classes", 10**7, "classes"), ("in_chans", 0, "input channels"),
    ("in_chans", 2.0, "input channels"), ("input_size", 0, "image in pixels"), ("input_size", 100000, "pixels"),
    ("input_size", True, "pixels"),
])  # fmt: skip
def test_sizes_out_of_bounds_are_refused_before_anything_is_built(name, value, meaning):
    sizes = {"num_classes": 10, "in_chans": 3, "input_size": 16, name: value}
    with pytest.raises(ValueError, match=rf"^{name} \(.*{meaning}\) must be an int in \[1, \d+\], got {value!r}$"):
        create_backbone("resnet18", width=4, **sizes)


def test_the_library_model_carries_the_onednn_workaround():
    model = create_backbone("resnet18", 10, input_size=16, width=8)  # shortcuts of 8 (affected), 16, 32 channels
    expected = SubsampledPointwiseConv2d if onednn_1x1_bug_affects() else nn.Conv2d
    shortcuts = [type(model.get_submodule(f"layer{i}.0.downsample.0")) for i in (2, 3, 4)]
    assert shortcuts == [expected, nn.Conv2d, nn.Conv2d]
    wide = create_backbone("resnet18", 10, input_size=16, width=16)
    assert not any(isinstance(m, SubsampledPointwiseConv2d) for m in wide.modules())


def _create_model_refusing_img_size(error: str):
    """timm.create_model as a family whose constructor raises ``error`` when given ``img_size``."""
    create_model = timm.create_model

    def create(arch, **kwargs):
        if "img_size" in kwargs:
            raise TypeError(error)
        return create_model(arch, **kwargs)

    return create


def test_a_family_without_img_size_is_built_without_it(monkeypatch):
    refusal = "VisionTransformer.__init__() got an unexpected keyword argument 'img_size'"
    monkeypatch.setattr(timm, "create_model", _create_model_refusing_img_size(refusal))
    model = create_backbone("vit_tiny_patch16_224", 10, input_size=32)
    assert model.patch_embed.img_size == (224, 224) and model.sparta_info.stem == "timm"


def test_a_type_error_inside_a_constructor_is_not_taken_for_a_missing_keyword(monkeypatch):
    bug = "unsupported operand type(s) for //: 'NoneType' and 'int'"
    monkeypatch.setattr(timm, "create_model", _create_model_refusing_img_size(bug))
    with pytest.raises(TypeError, match=re.escape(bug)):
        create_backbone("vit_tiny_patch16_224", 10, input_size=32)
    with pytest.raises(ValueError, match=r"resnet18 cannot be built with \['colour'\]: .*'colour'"):
        create_backbone("resnet18", 10, width=4, colour="red")
