"""`sparta train` / `sparta eval`: JSON round trip, zoo hand-off, fail-fast data errors."""

from __future__ import annotations

import argparse
import json

import pytest
from helpers import tiny_argv

from transfer.cli import main, parse_eps, run_command
from transfer.engine import cli as run_cli
from transfer.engine import run_inputs
from transfer.engine.dataset_sources import DEBIAN_FASHION_MNIST

TINY = tiny_argv(eps=0.1, alpha=0.05, steps=2, train_subset=96, test_subset=40, val_subset=20, attacks="fgsm")


def test_train_then_eval_round_trip_in_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_command(["train", *TINY, "--activation", "sparta", "--variant", "dw", "--out", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_dir"] == str(run)
    assert set(out["metrics"]) >= {"clean", "fgsm", "best", "eps"}
    config = json.loads((run / "config.json").read_text())
    assert (config["activation"], config["activation_config"], config["eps"]) == ("sparta", {"variant": "dw"}, 0.1)

    assert run_command(["eval", str(run), "--attacks", "fgsm,pgd5", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["metrics"]) == ["clean", "fgsm", "pgd5"]
    assert result["n"] == 40 and result["eps"] == 0.1
    assert result["metrics"]["clean"] == out["metrics"]["clean"]  # the same model, rebuilt from the run

    assert run_command(["eval", str(run), "--n", "10", "--which", "best", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


def test_plateau_flags_reach_the_config_and_the_convergence_record(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--schedule", "plateau", "--until-plateau", "--patience", "1", "--plateau-tol", "2.5"]
    assert run_command(["train", *TINY, "--epochs", "3", *flags, "--out", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    config = json.loads((run / "config.json").read_text())
    assert (config["schedule"], config["until_plateau"], config["patience"], config["plateau_tol"]) == (
        "plateau",
        True,
        1,
        2.5,
    )
    record = metrics["convergence"]
    assert (record["patience"], record["tolerance"]) == (1, 2.5) and 2 <= record["epochs"] <= 3


def test_save_to_zoo_goes_through_the_dispatcher(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_run_command(argv):
        calls.append(list(argv))
        print("imported")  # must not end up in the JSON on stdout
        return 0

    monkeypatch.setattr(run_cli, "run_command", fake_run_command)
    run = tmp_path / "run"
    assert run_command(["train", *TINY, "--out", str(run), "--save-to-zoo", "digits-tiny", "--json"]) == 0
    assert calls == [["zoo", "import", str(run / "activation.safetensors"), "--name", "digits-tiny"]]
    captured = capsys.readouterr()
    assert json.loads(captured.out)["zoo"] == {"name": "digits-tiny", "exit_code": 0}
    assert "imported" in captured.err


def test_missing_cifar10_fails_fast_with_the_data_layers_message(tmp_path, capsys, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was built before the data was found")

    monkeypatch.setattr(run_inputs, "create_backbone", no_models)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    code = main(["train", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cifar10 (train) not found" in err and "--download" in err
    assert not out.exists()


def test_bad_inputs_exit_2_with_a_reason(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.1}))
    assert run_command(["train", "--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert run_command(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.1") == 0.1
    with pytest.raises(argparse.ArgumentTypeError, match="fraction"):
        parse_eps("eight")
    with pytest.raises(argparse.ArgumentTypeError, match="pixel units"):
        parse_eps("8")


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.joinpath("train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist package is not installed (.ci/run installs it)",
)
def test_train_on_the_real_fashion_mnist_files_without_a_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARTA_DATA_DIR", str(tmp_path / "cache"))  # the default root, kept out of $HOME
    tiny = [a if a != "digits" else "fashion-mnist" for a in TINY]
    assert run_command(["train", *tiny, "--train-subset", "256", "--out", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["metrics"]["clean"] <= 100
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == "fashion-mnist" and config["data_dir"] is None
