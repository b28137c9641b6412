"""Zoo entries keyed by threat model (norm, ε, attack) like RobustBench's, and the Hugging Face–style
folder export that `sparta zoo import` reads back offline."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import sparta_cli, sparta_model

from transfer import extract, save_activation_set
from transfer.cli import main
from zoo import IntegrityError, Registry, ZooError

RECORDED = {"norm": "Linf", "eps": 0.1, "train_eps": 0.1, "alpha": 0.025, "steps": 10, "attack": "aa"}


@pytest.fixture(scope="module")
def sets():
    """Three runs' activation sets: one whose metrics.json recorded its threat model, one trained before
    threat models were recorded (only `eps` and its attacks' numbers), and one with no metrics at all."""
    model = sparta_model(width=4, input_size=8)
    metas = {
        "fmnist-aa": {
            "arch": "resnet18",
            "dataset": "fashion-mnist",
            "metrics": {
                "clean": 80.0,
                "pgd20": 45.0,
                "aa": 40.0,
                "eps": 0.1,
                "threat_model": RECORDED,
                "autoattack_version": "0.2.0",
            },
        },
        "fmnist-old": {
            "arch": "resnet18",
            "dataset": "fashion-mnist",
            "metrics": {"clean": 85.0, "fgsm": 60.0, "pgd20": 50.0, "cw": 51.0, "eps": 8 / 255},
        },
        "digits-bare": {"arch": "resnet18", "dataset": "digits"},
    }
    return {name: extract(model, meta=meta) for name, meta in metas.items()}


@pytest.fixture
def registry(tmp_path, sets):
    reg = Registry(tmp_path / "zoo", bundled_root=None)
    for name, aset in sets.items():
        reg.save(name, aset)
    return reg


def test_cards_carry_the_threat_model_recorded_or_read_off_old_metrics(registry):
    assert registry.info("fmnist-aa")["threat_model"] == {"norm": "Linf", "eps": 0.1, "attack": "aa"}
    assert registry.info("fmnist-old")["threat_model"] == {"norm": "Linf", "eps": 8 / 255, "attack": "pgd20"}
    assert registry.info("digits-bare")["threat_model"] is None
    readme = (registry.resolve("fmnist-aa").path / "README.md").read_text()
    first_lines = readme.split("\n---\n", 1)[1].strip().splitlines()[:3]  # after the YAML front matter
    assert first_lines[2] == (
        "**Threat model:** L∞, ε = 0.1, robust accuracy under `aa` (official AutoAttack, "
        "pyautoattack 0.2.0) on `fashion-mnist`: 40.00% robust, 80.00% clean."
    )
    assert (
        "ε = 8/255 (0.03137), robust accuracy under `pgd20`"
        in (registry.resolve("fmnist-old").path / "README.md").read_text()
    )
    assert "**Threat model:** not recorded" in (registry.resolve("digits-bare").path / "README.md").read_text()


def test_list_filters_by_threat_model(registry):
    def refs(**filters):
        return [r["ref"] for r in registry.list(**filters)]

    assert refs(dataset="fashion-mnist", eps=0.1) == ["fmnist-aa@1"]
    assert refs(eps=8 / 255) == refs(eps=0.0314) == ["fmnist-old@1"]  # 0.0314 is 8/255 to 0.1 %
    assert refs(eps=0.031) == []
    assert refs(norm="linf") == refs(norm="L∞") == ["fmnist-aa@1", "fmnist-old@1"]  # unknown matches no filter
    assert refs(norm="L2") == []
    assert len(refs()) == 3
    with pytest.raises(ZooError, match="eps"):
        registry.list(eps=8)
    with pytest.raises(ZooError, match="unknown norm"):
        registry.list(norm="l1")


def test_cli_list_filters_and_shows_the_threat_model(registry, capsys):
    root = str(registry.root)
    argv = ["zoo", "list", "--root", root, "--dataset", "fashion-mnist", "--eps", "0.1", "--json"]
    rc, out, _ = sparta_cli(capsys, *argv)
    assert rc == 0 and [r["ref"] for r in json.loads(out)] == ["fmnist-aa@1"]
    assert json.loads(out)[0]["threat_model"] == {"norm": "Linf", "eps": 0.1, "attack": "aa"}
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root, "--eps", "8/255")
    assert rc == 0 and "fmnist-old@1" in out and "L∞ ε = 8/255, pgd20" in out and "50.0 (pgd20)" in out
    assert "fmnist-aa@1" not in out
    with pytest.raises(SystemExit) as exit_info:  # an argparse error: usage and one error line
        main(["zoo", "list", "--root", root, "--eps", "3"])
    assert exit_info.value.code == 2 and "(0, 1]" in capsys.readouterr().err
    rc, out, _ = sparta_cli(capsys, "zoo", "info", "fmnist-aa", "--root", root)
    assert rc == 0 and "threat model L∞ ε = 0.1, aa" in out


def test_hf_folder_export_round_trips_through_import(registry, tmp_path, capsys):
    folder = tmp_path / "hub" / "fmnist-aa"
    folder.parent.mkdir()
    rc, out, _ = sparta_cli(
        capsys, "zoo", "export", "fmnist-aa", str(folder), "--format", "hf", "--root", str(registry.root), "--json"
    )
    assert rc == 0 and json.loads(out)["path"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "activation.safetensors", "config.json"]
    front = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert front["library_name"] == "sparta-transfer" and front["datasets"] == ["fashion-mnist"]
    config = json.loads((folder / "config.json").read_text())
    card = registry.info("fmnist-aa")
    assert config["format"] == "sparta-zoo-hf/1" and config["card"] == card
    assert config["threat_model"] == card["threat_model"] and config["ref"] == "fmnist-aa@1"

    other = Registry(tmp_path / "other", bundled_root=None)
    rc, out, _ = sparta_cli(capsys, "zoo", "import", str(folder), "--root", str(other.root))
    assert rc == 0 and out == "fmnist-aa@1\n"
    assert other.info("fmnist-aa") == card  # the same card: provenance, threat model, checksums, time
    original, back = registry.load("fmnist-aa"), other.load("fmnist-aa")
    assert all((original.tensors[k] == back.tensors[k]).all() for k in original.tensors)

    rc, _, err = sparta_cli(
        capsys, "zoo", "export", "fmnist-aa", str(folder), "--format", "hf", "--root", str(registry.root)
    )
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # as in a clone of a Hub repo
    assert (
        sparta_cli(
            capsys,
            "zoo",
            "export",
            "fmnist-old",
            str(folder),
            "--format",
            "hf",
            "--force",
            "--root",
            str(registry.root),
        )[0]
        == 0
    )
    assert json.loads((folder / "config.json").read_text())["ref"] == "fmnist-old@1"
    assert (folder / ".gitattributes").exists()


def test_a_tampered_hf_folder_is_refused_and_nothing_is_stored(registry, tmp_path, capsys):
    folder = registry.export("fmnist-aa", tmp_path / "hf", format="hf")
    target = Registry(tmp_path / "target", bundled_root=None)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["card"]["description"] = "edited by hand"
    config_path.write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="card differs"):
        target.import_file(folder)
    tensor = folder / "activation.safetensors"
    tensor.write_bytes(tensor.read_bytes()[:-8])  # truncated
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(folder), "--root", str(target.root))
    assert rc == 2 and "sha256" in err and len(err.strip().splitlines()) == 1
    assert target.list() == []
    with pytest.raises(ZooError, match="unknown export format"):
        registry.export("fmnist-aa", tmp_path / "x", format="onnx")


def test_a_run_directory_with_its_config_json_still_imports_as_a_run(tmp_path, sets):
    run = tmp_path / "run"
    save_activation_set(sets["fmnist-old"], run / "activation.safetensors")
    (run / "config.json").write_text(json.dumps({"arch": "resnet18", "dataset": "fashion-mnist"}))  # a TrainConfig
    ref = Registry(tmp_path / "zoo", bundled_root=None).import_file(run)
    assert str(ref) == "fashion-mnist-resnet18-sparta-dw@1"


@pytest.mark.bundled_zoo
def test_the_bundled_entry_is_filed_under_its_threat_model():
    (row,) = Registry().list(dataset="digits", eps=0.1, norm="Linf")
    assert row["ref"] == "digits-resnet18-sparta-dw@2" and row["threat_model"]["attack"] == "apgd-ce+t"
    assert Registry().list(dataset="digits", eps=8 / 255) == []  # digits' own 0.1, no longer CIFAR's 8/255
