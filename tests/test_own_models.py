"""Models of one's own: factories ``module:function``, registered backbones, any ``nn.Module`` given to
``train``, and fine-tuning from a local checkpoint (``init_from``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers import tiny_argv, tiny_config
from safetensors.torch import save_file

from transfer import create_backbone, load_init_weights, register_backbone
from transfer.cli import main
from transfer.engine.config import TrainConfig
from transfer.engine.training import load_run, train
from transfer.workarounds import SubsampledPointwiseConv2d

FACTORY_MODULE = '''
from torch import nn

def small_cnn(num_classes, in_chans, input_size, width=4):
    """A conv with a strided 1x1 shortcut-like conv (the oneDNN case make_safe fixes), BN, ReLU, a linear head."""
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))

def fixed(num_classes, in_chans, input_size):
    return small_cnn(num_classes, in_chans, input_size)

def ten_classes(num_classes, in_chans, input_size):
    return small_cnn(10, in_chans, input_size)

not_a_function = 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module ``own_factories_<n>`` of model factories on sys.path (and PYTHONPATH for subprocesses)."""
    name = f"own_factories_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _tiny(**changes) -> TrainConfig:
    """``tiny_config`` as an fgsm-rs run on 48 images in batches of 16, evaluated clean and under FGSM, with no
    width (the given model has its own)."""
    fields = dict(width=None, batch_size=16, train_subset=48, recipe="fgsm-rs", eval_attacks=("clean", "fgsm"))
    return tiny_config(**{**fields, **changes})


def _train_argv(out: Path, *extra: str, **flags: object) -> list[str]:
    """``sparta train`` of a tiny fgsm-rs run on 48 images (``tiny_argv``; ``flags`` override its flags), written
    to ``out``, then the ``extra`` arguments."""
    flags = {"batch_size": None, "recipe": "fgsm-rs", "train_subset": 48, **flags}
    return ["train", *tiny_argv(**flags), "--out", str(out), *extra]


def test_a_factory_model_gets_normalisation_record_and_workarounds(factories):
    model = create_backbone(f"{factories}:small_cnn", num_classes=5, in_chans=1, input_size=8, width=6)
    assert model[0].out_channels == 6  # width passed through
    assert model.sparta_info.input_shape == (1, 8, 8) and model.pixel_mean.shape == (1, 1, 1, 1)
    assert isinstance(model[3], SubsampledPointwiseConv2d) or not torch.backends.mkldnn.is_available()
    x = torch.rand(2, 1, 8, 8)
    shifted = model(x)
    model.pixel_mean.fill_(0.0)
    assert not torch.allclose(model(x), shifted)  # the normalisation acts inside the model
    assert create_backbone(f"{factories}:fixed", 5, 1, 8).sparta_info.stem == ""


@pytest.mark.parametrize(("arch", "width", "message"), [
    ("{m}:fixed", 4, r"width=4 was set, but its factory takes no width parameter"),
    ("{m}:ten_classes", None, r"returns \(2, 10\) for 2 images; it must return logits .* \(2, 5\)"),
    ("{m}:not_a_function", None, r"'not_a_function' is a int, not a function"),
    ("{m}:missing", None, r"module '{m}' has no 'missing'"),
    ("no_such_module_xyz:f", None, r"module 'no_such_module_xyz' not found; put the folder .* on PYTHONPATH"),
    ("{m}:", None, r"a factory is named 'module.path:function'"),
])  # fmt: skip
def test_factory_errors_say_what_to_do(factories, arch, width, message):
    with pytest.raises(ValueError, match=message.format(m=factories)):
        create_backbone(arch.format(m=factories), num_classes=5, in_chans=1, input_size=8, width=width)


def test_a_registered_backbone_is_an_arch_name(factories, monkeypatch):
    import importlib

    from transfer import own_models

    monkeypatch.setattr(own_models, "_FACTORIES", dict(own_models._FACTORIES))  # registered for this test only
    small_cnn = importlib.import_module(factories).small_cnn
    name = f"own-net-{factories}"
    register_backbone(name)(small_cnn)
    assert create_backbone(name, 3, 1, 8, width=2)[0].out_channels == 2
    TrainConfig(arch=name, dataset="digits").validate()
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(name)(small_cnn)
    with pytest.raises(ValueError, match="already registered .*by timm"):
        register_backbone("resnet18")
    with pytest.raises(ValueError, match=r"unknown arch 'own-net-nope'.*'module.path:function'"):
        TrainConfig(arch="own-net-nope", dataset="digits").validate()


def test_a_factory_trains_resumes_and_evaluates_from_the_cli(factories, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}")
    out = tmp_path / "run"
    arch = f"{factories}:small_cnn"
    assert main(_train_argv(out, arch=arch, attacks="clean,fgsm")) == 0
    assert main(_train_argv(out, arch=arch, attacks="clean,fgsm", epochs=2)) == 0  # resumed
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 2
    assert main(["eval", str(out), "--attacks", "fgsm", "--device", "cpu", "--no-progress"]) == 0
    model, config = load_run(out)
    assert config.arch == arch and model[0].out_channels == 4


def test_any_module_trains_through_the_api_and_resumes_when_given_again(factories, tmp_path):
    import importlib

    small_cnn = importlib.import_module(factories).small_cnn
    out = tmp_path / "run"
    given = small_cnn(10, 1, 8)
    train(_tiny(), out, model=given, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "given:torch.nn.modules.container.Sequential"
    assert not hasattr(given, "pixel_mean")  # used as it is: no normalisation added
    trained = {k: v.clone() for k, v in given.state_dict().items()}
    assert train(_tiny(epochs=2), out, model=small_cnn(10, 1, 8), progress=False)["epoch"] == 2
    with pytest.raises(ValueError, match=r"records a model that was given .*load_run\(run_dir, model=\.\.\.\)"):
        load_run(out)
    loaded, _ = load_run(out, model=small_cnn(10, 1, 8))
    assert any(not torch.equal(trained[k], v) for k, v in loaded.state_dict().items())  # the second epoch's
    with pytest.raises(ValueError, match="a model given to train\\(\\) is used as it is"):
        train(_tiny(width=4), tmp_path / "other", model=small_cnn(10, 1, 8), progress=False)
    with pytest.raises(ValueError, match=r"returns \(2, 3\) for 2 images"):
        train(_tiny(), tmp_path / "other", model=small_cnn(3, 1, 8), progress=False)
    assert not (tmp_path / "other").exists()


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A saved timm resnet18 state dict at width 4 (1000 classes, timm's deep stem), as .pth and .safetensors."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000, channels=(4, 8, 16, 32), stem_type="deep", stem_width=2)
    root = tmp_path_factory.mktemp("ckpt")
    torch.save({"state_dict": model.state_dict(), "epoch": 90}, root / "r18w4.pth")
    save_file(model.state_dict(), root / "r18w4.safetensors")
    return root, model.state_dict()


def test_init_from_loads_the_backbone_and_reports_classifier_and_stem(timm_checkpoint):
    root, weights = timm_checkpoint
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=16, width=4)
    fresh_fc = model.fc.weight.clone()
    report = load_init_weights(model, root / "r18w4.safetensors")
    assert torch.equal(model.layer3[1].conv2.weight, weights["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, weights["bn1.running_var"])
    assert torch.equal(model.fc.weight, fresh_fc)  # 1000 → 10 classes: kept fresh
    assert set(report.reinitialised) == {"fc.weight", "fc.bias", "conv1.weight"}
    assert "classifier" in report.reinitialised["fc.weight"] and "stem" in report.reinitialised["conv1.weight"]
    assert set(report.unused) == {k for k in weights if k.startswith("conv1.")}  # timm's deep stem
    record = report.to_dict()
    assert "layer3.1.conv2" in record["loaded"] and len(record["sha256"]) == 64


def test_init_from_keeps_timms_stem_when_asked_and_unwraps_a_state_dict_key(timm_checkpoint):
    root, weights = timm_checkpoint
    model = create_backbone("resnet18", 10, 3, 16, width=4, cifar_stem=False)
    report = load_init_weights(model, root / "r18w4.pth")
    assert torch.equal(model.conv1[0].weight, weights["conv1.0.weight"])
    assert set(report.reinitialised) == {"fc.weight", "fc.bias"} and not report.unused


def test_init_from_that_does_not_fit_names_the_tensors(timm_checkpoint, tmp_path):
    root, weights = timm_checkpoint
    wider = create_backbone("resnet18", 10, 3, 16, width=8)
    before = wider.layer1[0].conv1.weight.clone()
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: other shape .*layer1.0.conv1.weight \(4, 4, 3, 3\) "
        r"vs the model's \(8, 8, 3, 3\)",
    ):
        load_init_weights(wider, root / "r18w4.pth")
    assert torch.equal(wider.layer1[0].conv1.weight, before)  # nothing changed
    save_file({"extra.weight": torch.zeros(1), **weights}, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \(1\): extra.weight"):
        load_init_weights(create_backbone("resnet18", 10, 3, 16, width=4), tmp_path / "extra.safetensors")
    save_file({k: v for k, v in weights.items() if k != "layer4.1.bn2.weight"}, tmp_path / "less.safetensors")
    with pytest.raises(ValueError, match=r"missing \(1\): layer4.1.bn2.weight"):
        load_init_weights(create_backbone("resnet18", 10, 3, 16, width=4), tmp_path / "less.safetensors")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="never loaded"):
        load_init_weights(create_backbone("resnet18", 10, 3, 16, width=4), tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_init_weights(wider, tmp_path / "none.pth")


def test_init_from_through_the_cli_reports_to_the_log_and_metrics(timm_checkpoint, tmp_path, capsys):
    root, weights = timm_checkpoint
    out = tmp_path / "run"
    argv = _train_argv(out, "--in-chans", "3", "--init-from", str(root / "r18w4.pth"), "--lr", "1e-9", attacks="clean")
    assert main(argv) == 0
    record = json.loads((out / "metrics.json").read_text())["init_from"]
    assert set(record["reinitialised"]) == {"fc.weight", "fc.bias", "conv1.weight"}
    assert "re-initialised fc.weight: classifier" in (out / "train.log").read_text()
    model, config = load_run(out)
    assert config.init_from == str(root / "r18w4.pth")
    assert torch.allclose(model.layer2[0].conv1.weight, weights["layer2.0.conv1.weight"], atol=1e-6)  # lr ~0


def test_weights_through_timm_are_refused_with_the_right_reason(timm_checkpoint):
    root, _ = timm_checkpoint
    for kwargs in ({"pretrained": True}, {"checkpoint_path": "x.pth"}, {"pretrained_cfg_overlay": {"file": "x"}}):
        with pytest.raises(ValueError, match=r"model_kwargs may not set .*set init_from \(--init-from PATH\)"):
            TrainConfig(dataset="digits", model_kwargs=kwargs).validate()
    with pytest.raises(ValueError, match="pretrained_cfg_overlay only acts with pretrained=True"):
        create_backbone("resnet18", 10, 3, 16, width=4, pretrained_cfg_overlay={"file": "x"})
    with pytest.raises(ValueError, match="does not fit resnet18 with num_classes=10.*load_init_weights"):
        create_backbone("resnet18", 10, 3, 16, width=4, checkpoint_path=str(root / "r18w4.safetensors"))
    with pytest.raises(ValueError, match="would replace the loaded weights of conv1.*cifar_stem=False keeps"):
        create_backbone("resnet18", 1000, 3, 16, width=4, checkpoint_path=str(root / "r18w4.safetensors"))
    kept = create_backbone(
        "resnet18", 1000, 3, 16, width=4, cifar_stem=False, checkpoint_path=str(root / "r18w4.safetensors")
    )
    assert kept.sparta_info.stem == "timm"


def test_a_factory_in_a_cli_subprocess_needs_only_pythonpath(factories, tmp_path):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable,
        "-m",
        "transfer.cli",
        "sites",
        f"{factories}:small_cnn",
        "--in-chans",
        "1",
        "--input-size",
        "8",
        "--json",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [s["name"] for s in json.loads(done.stdout)["sites"]] == ["2", "4"]
    from transfer import Sparta, inject

    model = create_backbone(f"{factories}:small_cnn", 3, 1, 8)
    inject(model, "sparta", variant="dw")
    assert isinstance(model[2], Sparta) and isinstance(model[4], Sparta)
