"""Plugins (entry points ``sparta.datasets``/``sparta.models``, ``--plugin MODULE``, ``load_plugins``) and zoo
entries as activation sources on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transfer.cli import main
from transfer.plugins import PluginError, load_plugins

PLUGIN = '''
import torch
from torch import nn

from transfer import register_backbone
from transfer.engine.data import DatasetSource, register_dataset
from transfer.threat_model import ThreatModel

CALLS = []


def register():
    """The sparta.models entry point: called once per process."""
    CALLS.append(1)

    @register_backbone("{net}")
    def net(num_classes, in_chans, input_size, width=4):
        return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(width, num_classes))


@register_dataset("{data}")
class Bright(DatasetSource):
    """Two classes of 8x8 grey images, dark and bright."""

    num_classes, in_chans, image_size, classes, offline = 2, 1, 8, ("dark", "bright"), True
    {threat}

    def load(self, split, *, data_dir, download, size_hint, **options):
        g = torch.Generator().manual_seed(int(split == "test"))
        y = torch.arange(40) % 2
        return (0.4 * torch.rand(40, 1, 8, 8, generator=g) + 0.5 * y.view(-1, 1, 1, 1)), y, "plugin"

{call}
'''


@pytest.fixture(autouse=True)
def _registrations_end_with_the_test(monkeypatch):
    """Plugins register into process-wide registries; what a test's plugins add is gone after it (so other
    modules' tests, which go over every registered dataset, see only the package's own)."""
    from transfer import own_models
    from transfer.engine import data

    monkeypatch.setattr(data._REGISTRY, "_entries", dict(data._REGISTRY._entries))
    monkeypatch.setattr(own_models, "_FACTORIES", dict(own_models._FACTORIES))


def write_plugin(folder: Path, module: str, data: str, net: str, threat: str = "", entry_point: bool = False) -> Path:
    """A plugin module registering dataset ``data`` on import and model ``net`` in ``register()``, which a
    ``sparta.models`` entry point calls (``entry_point``), else the module itself."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(PLUGIN.format(data=data, net=net, threat=threat, call="" if entry_point else "register()"))
    return path


def test_installed_entry_points_register_datasets_and_models_once_per_process(tmp_path):
    write_plugin(
        tmp_path,
        "ep_plugin",
        "ep-bright",
        "ep-net",
        "threat_model = ThreatModel(0.05, 0.0125, 10, 'own')",
        entry_point=True,
    )
    (tmp_path / "ep_broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    dist = tmp_path / "sparta_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sparta-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[sparta.datasets]\nbright = ep_plugin\nbroken = ep_broken\n\n[sparta.models]\nnet = ep_plugin:register\n"
    )
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("ignore")
        import ep_plugin
        from transfer import create_backbone
        from transfer.engine.data import dataset_info, list_datasets
        from transfer.engine.config import TrainConfig
        print(dataset_info("ep-bright").threat_model.eps, "ep-bright" in list_datasets())
        print(create_backbone("ep-net", 2, 1, 8, width=3)[0].out_channels)
        TrainConfig(arch="ep-net", dataset="ep-bright").validate()
        print(len(ep_plugin.CALLS))
        try:
            dataset_info("not-there")
        except ValueError as exc:
            print(exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["0.05 True", "3", "1"]
    assert "plugins that failed to load: broken = ep_broken (ImportError: needs a package" in lines[3]


def test_cli_plugin_modules_add_a_dataset_and_a_model(tmp_path, capsys):
    path = write_plugin(tmp_path, "cli_plugin", "cli-bright", "cli-net")
    out = tmp_path / "run"
    argv = [
        "train",
        "--plugin",
        str(path),
        "--dataset",
        "cli-bright",
        "--arch",
        "cli-net",
        "--width",
        "4",
        "--epochs",
        "1",
        "--val-subset",
        "0",
        "--recipe",
        "fgsm-rs",
        "--attacks",
        "clean,fgsm",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 2  # the plugin's dataset declares no threat model
    assert "dataset 'cli-bright' declares no threat model" in capsys.readouterr().err
    assert main([*argv, "--eps", "0.1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["arch"], config["eps"], config["steps"]) == ("cli-bright", "cli-net", 0.1, 10)
    assert main(["eval", str(out), "--plugin", str(path), "--device", "cpu", "--no-progress"]) == 0
    assert main(["train", "--plugin", "no_such_plugin_xyz", "--dataset", "digits"]) == 2
    assert "plugin module 'no_such_plugin_xyz' not found; put the folder" in capsys.readouterr().err


def test_load_plugins_imports_each_module_once_and_names_what_fails(tmp_path, monkeypatch):
    path = write_plugin(tmp_path, "api_plugin", "api-bright", "api-net")
    first = load_plugins([str(path)])
    assert load_plugins([str(path)]) == first  # not executed again: no duplicate registration
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "api_named.py").write_text("VALUE = 1\n")
    assert load_plugins(["api_named"])[0].VALUE == 1
    (tmp_path / "api_failing.py").write_text("raise RuntimeError('bad plugin')\n")
    with pytest.raises(PluginError, match=r"api_failing.py failed while loading: RuntimeError: bad plugin"):
        load_plugins([str(tmp_path / "api_failing.py")])
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([str(tmp_path / "absent.py")])
    (tmp_path / "api_deps.py").write_text("import a_dependency_that_is_missing_xyz\n")
    with pytest.raises(PluginError, match="'api_deps' could not be imported: No module named 'a_dependency"):
        load_plugins(["api_deps"])
    with pytest.raises(TypeError, match="a list of module names"):
        load_plugins("api_named")


ZOO_ARGS = [
    "--dataset",
    "digits",
    "--arch",
    "resnet18",
    "--width",
    "8",
    "--input-size",
    "16",
    "--epochs",
    "1",
    "--train-subset",
    "32",
    "--test-subset",
    "10",
    "--val-subset",
    "0",
    "--recipe",
    "standard",
    "--attacks",
    "clean",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.mark.bundled_zoo
def test_a_zoo_entry_is_an_activation_source_of_the_same_threat_model(tmp_path, capsys):
    out = tmp_path / "run"
    entry = "zoo:digits-resnet18-sparta-dw"  # the bundled entry (@2), evaluated at digits' own ε = 0.1
    assert main(["train", *ZOO_ARGS, "--eps", "8/255", "--activation-from", entry, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "zoo:digits-resnet18-sparta-dw@2 records the threat model Linf eps 0.1" in err
    assert "this run's is Linf eps 8/255" in err and not out.exists()
    assert main(["train", *ZOO_ARGS, "--activation-from", entry, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["transfer_source"] == "zoo:digits-resnet18-sparta-dw@2" and config["activation"] == "sparta"
    assert "from zoo:digits-resnet18-sparta-dw@2 (policy stage)" in (out / "train.log").read_text()
    assert main(["train", *ZOO_ARGS, "--activation-from", "zoo:no-such-entry", "--out", str(tmp_path / "x")]) == 2
    assert "no zoo entry named 'no-such-entry'" in capsys.readouterr().err
