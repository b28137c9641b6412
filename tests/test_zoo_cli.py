import json

import pytest
import torch
from helpers import sparta_cli

from transfer import create_backbone, extract, inject, save_activation_set
from transfer.cli import run_command
from zoo import Registry


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Two training runs' activation files (a ResNet-18 on digits, a ResNet-34 on fashion-mnist)."""
    out = {}
    for arch, dataset in (("resnet18", "digits"), ("resnet34", "fashion-mnist")):
        torch.manual_seed(0)
        model = create_backbone(arch, 10, input_size=16, width=4)
        inject(model, "sparta", variant="dw")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        meta = {"arch": arch, "dataset": dataset, "recipe": "pgd-at", "metrics": {"clean": 90.5, "pgd20": 41.0}}
        run = tmp_path_factory.mktemp(f"run-{arch}")
        out[arch] = save_activation_set(extract(model, meta=meta), run / "activation.safetensors")
    return out


def test_import_prints_the_entry_ref_as_train_save_to_zoo_needs(capsys, run_files):
    # `sparta train --save-to-zoo NAME` calls exactly this, into the default root ($SPARTA_ZOO)
    rc = run_command(["zoo", "import", str(run_files["resnet18"]), "--name", "digits-r18"])
    out = capsys.readouterr().out
    assert (rc, out) == (0, "digits-r18@1\n")
    assert Registry().load("digits-r18").source == "zoo:digits-r18@1"
    assert run_command(["zoo", "import", str(run_files["resnet18"].parent), "--name", "digits-r18"]) == 0
    assert capsys.readouterr().out == "digits-r18@2\n"


def test_list_info_export_import_remove_with_json(tmp_path, capsys, run_files):
    root, other = str(tmp_path / "zoo"), str(tmp_path / "other")
    for arch in ("resnet18", "resnet34"):
        rc, out, _ = sparta_cli(capsys, "zoo", "import", str(run_files[arch]), "--root", root, "--json")
        assert rc == 0 and json.loads(out)["version"] == 1
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root, "--json")
    assert rc == 0
    assert [r["ref"] for r in json.loads(out)] == ["digits-resnet18-sparta-dw@1", "fashion-mnist-resnet34-sparta-dw@1"]
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root, "--json", "--arch", "resnet34", "--variant", "dw")
    assert [r["dataset"] for r in json.loads(out)] == ["fashion-mnist"]
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root, "--dataset", "cifar10")
    assert rc == 0 and "no zoo entries" in out
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root)
    assert "digits-resnet18-sparta-dw@1" in out and "90.5" in out and "41.0" in out

    ref = "digits-resnet18-sparta-dw@1"
    rc, out, _ = sparta_cli(capsys, "zoo", "info", ref, "--root", root, "--json")
    card = json.loads(out)
    assert rc == 0 and card.pop("origin") == "user" and card.pop("path").endswith("digits-resnet18-sparta-dw/1")
    assert card == Registry(root).info(ref)
    rc, out, _ = sparta_cli(capsys, "zoo", "info", ref, "--root", root)
    assert rc == 0 and card["sha256"] in out and "resnet18" in out

    exported = tmp_path / "exported.safetensors"
    rc, out, _ = sparta_cli(capsys, "zoo", "export", ref, str(exported), "--root", root, "--json")
    assert rc == 0 and json.loads(out) == {"ref": ref, "path": str(exported)}
    rc, _, err = sparta_cli(capsys, "zoo", "export", ref, str(exported), "--root", root)
    assert rc == 2 and "--force" in err
    assert sparta_cli(capsys, "zoo", "export", ref, str(exported), "--root", root, "--force")[0] == 0
    rc, out, _ = sparta_cli(capsys, "zoo", "import", str(exported), "--root", other, "--json")
    assert rc == 0 and json.loads(out)["ref"] == ref
    assert Registry(other).info(ref) == Registry(root).info(ref)

    rc, out, _ = sparta_cli(capsys, "zoo", "remove", ref, "--root", root, "--json")
    assert rc == 0 and json.loads(out) == {"removed": [ref]}
    rc, out, _ = sparta_cli(capsys, "zoo", "list", "--root", root, "--json")
    assert [r["ref"] for r in json.loads(out)] == ["fashion-mnist-resnet34-sparta-dw@1"]


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, run_files):
    root = str(tmp_path / "zoo")
    rc, _, err = sparta_cli(capsys, "zoo", "info", "nope", "--root", root)
    assert rc == 2 and "no zoo entry named 'nope'" in err
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(run_files["resnet18"]), "--name", "Bad/Name", "--root", root)
    assert rc == 2 and "lower-case letters" in err
    fake = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, fake)
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(fake), "--root", root)
    assert rc == 2 and "pickle" in err
    rc, _, err = sparta_cli(capsys, "zoo", "remove", "nope@3", "--root", root)
    assert rc == 2 and "nope" in err
    assert Registry(root).list() == [] and not (tmp_path / "zoo").exists()  # refused inputs write nothing


RUN_METRICS = {  # as a training run's metrics.json records them
    "clean": 98.66666666666667, "fgsm": 96.0, "pgd20": 95.77777777777777, "cw": 95.71111111111111, "epoch": 15,
    "eps": 8 / 255, "n_test": 450, "train_seconds": 86.07257654099976, "autoattack_version": None,
    "threat_model": {"norm": "Linf", "eps": 8 / 255, "attack": "pgd20"},
    "best": {"clean": 98.44444444444444, "fgsm": 95.11111111111111, "pgd20": 95.05555555555556,
             "cw": 95.01111111111111, "epoch": 11, "val_robust": 97.01492537313433},
}  # fmt: skip


def test_info_prints_the_threat_model_once_then_the_metrics_as_a_table(tmp_path, capsys, run_files):
    from transfer import load_activation_set

    registry = Registry(tmp_path / "zoo", bundled_root=None)
    aset = load_activation_set(run_files["resnet18"])
    registry.save("run", aset, card={"metrics": RUN_METRICS})
    registry.save("plain", aset, card={"metrics": {"pgd20": 41.04, "clean": 90.54}})
    rc, out, _ = sparta_cli(capsys, "zoo", "info", "run", "--root", str(registry.root))
    lines = out.splitlines()
    start = lines.index("  threat model L∞ ε = 8/255, pgd20")
    assert lines[start + 1 : start + 8] == [
        "  metrics      accuracy in % (450 test images; best = epoch 11 of 15)",
        "               metric      final  best",
        "               clean        98.7  98.4",  # clean, then attacks from weakest to strongest
        "               fgsm         96.0  95.1",
        "               cw           95.7  95.0",
        "               pgd20        95.8  95.1",
        "               val_robust      -  97.0",
    ]
    assert lines[start + 8].startswith("  sites ") and out.count("ε") == 1 and "98.44" not in out
    rc, out, _ = sparta_cli(capsys, "zoo", "info", "plain", "--root", str(registry.root))
    assert "               metric  final\n               clean    90.5\n               pgd20    41.0\n" in out
    rc, out, _ = sparta_cli(capsys, "zoo", "info", "run", "--root", str(registry.root), "--json")
    assert json.loads(out)["metrics"]["best"]["clean"] == RUN_METRICS["best"]["clean"]  # the raw values


def test_info_leaves_out_a_best_column_that_repeats_the_final_one(tmp_path, capsys, run_files):
    from transfer import load_activation_set

    registry = Registry(tmp_path / "zoo", bundled_root=None)
    aset = load_activation_set(run_files["resnet18"])
    final = {"clean": 97.3, "pgd20": 71.3, "epoch": 12, "n_test": 450}
    no_validation = {**final, "best": {"clean": 97.3, "pgd20": 71.3, "epoch": 12, "val_robust": None}}
    validated = {**final, "best": {"clean": 97.3, "pgd20": 71.3, "epoch": 12, "val_robust": 75.0}}
    registry.save("no-val", aset, card={"metrics": no_validation})
    registry.save("val", aset, card={"metrics": validated})
    out = sparta_cli(capsys, "zoo", "info", "no-val", "--root", str(registry.root))[1]
    assert "accuracy in % (450 test images; after 12 epochs)\n               metric  final\n" in out
    out = sparta_cli(capsys, "zoo", "info", "val", "--root", str(registry.root))[1]
    assert "(450 test images; best = epoch 12 of 12)" in out and "val_robust      -  75.0" in out
