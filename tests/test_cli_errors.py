"""Every user error of the ``sparta`` CLI is one line that says what was wrong and what to do, exit code 2,
no traceback; Ctrl-C is one line and exit code 130, and the same command resumes. One test per cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import micro_study_toml, sparta_cli, tiny_argv
from torch import nn

from transfer import find_sites
from transfer.cli import main
from transfer.engine.checkpoint import load_checkpoint, save_checkpoint
from transfer.sites import InputSizeError

TINY = tiny_argv(recipe="standard", device=None)


def _study(size: int, source: str, target: str) -> str:
    return micro_study_toml(
        "tiny",
        baselines=("relu",),
        recipe="standard",
        attacks=("clean",),
        input_size=size,
        width=None,
        source=source,
        target=target,
        target_dataset="digits",
    )


def _refused(rc: int, err: str, *needles: str) -> str:
    """The error is exit code 2 and one line holding every needle; returns the line."""
    lines = [line for line in err.strip().splitlines() if "is unavailable" not in line]  # others' broken plugins
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run of TINY's config (its own: tests resume copies of it with TINY)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--device", "cpu", "--out", str(out)]) == 0
    return out


# ---- train / eval ------------------------------------------------------------------------------------


def test_train_out_pointing_at_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    _refused(
        *sparta_cli(capsys, "train", *TINY, "--device", "cpu", "--out", str(target))[::2], "notes.txt", "existing file"
    )
    assert target.read_text() == "mine"


@pytest.mark.parametrize("device", ["foo", "cuda:abc", "mps", "cuda:x1", "CPU"])
def test_unknown_device_for_train(tmp_path, capsys, device):
    rc, _, err = sparta_cli(capsys, "train", *TINY, "--device", device, "--out", str(tmp_path / "run"))
    _refused(rc, err, repr(device), "cuda:N")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["foo", "meta", "cuda:abc"])
def test_unknown_device_for_eval(finished_run, capsys, device):
    _refused(*sparta_cli(capsys, "eval", str(finished_run), "--device", device, "--no-progress")[::2], repr(device))


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1"])
def test_out_of_range_seed(tmp_path, capsys, seed):
    rc, _, err = sparta_cli(capsys, "train", *TINY, "--device", "cpu", "--seed", seed, "--out", str(tmp_path / "r"))
    _refused(rc, err, "seed", "2**63 - 1")


def test_a_checkpoint_whose_weights_do_not_fit_the_config(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "width": 8}))  # edited by hand
    _refused(*sparta_cli(capsys, "eval", str(run), "--no-progress")[::2], "checkpoint.pt", "do not fit")

    shutil.rmtree(run)
    shutil.copytree(finished_run, run)
    state = load_checkpoint(run / "checkpoint.pt")
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("fc.")}  # another model's
    save_checkpoint(run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    rc, _, err = sparta_cli(capsys, "train", *TINY, "--epochs", "2", "--device", "cpu", "--out", str(run))
    _refused(rc, err, "checkpoint.pt", "do not fit", "another run")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eval_attacks", 5),
        ("arch", 5),
        ("milestones", 5),
        ("milestones", ["a"]),
        ("dataset", 7),
        ("activation", 7),
        ("eval_eps", "x"),
        ("activation_config", [1]),
        ("device", 5),
        ("channels_last", "yes"),
        ("data_dir", 5),
    ],
)
def test_a_config_file_with_a_value_of_the_wrong_type(tmp_path, capsys, field, value):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({field: value}))
    rc, _, err = sparta_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run"))
    _refused(rc, err, field)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["[1]", '{"bogus": 1}', '{"width": "8"}'])
def test_eval_of_a_run_whose_config_json_is_broken(finished_run, tmp_path, capsys, content):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.json").write_text(content)
    _refused(*sparta_cli(capsys, "eval", str(run), "--no-progress")[::2], "config.json")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no model"])
def test_a_checkpoint_that_is_not_one(finished_run, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    else:
        save_checkpoint(path, {"epoch": 1})
    _refused(*sparta_cli(capsys, "eval", str(run), "--no-progress")[::2], "checkpoint.pt", "delete it")
    rc, _, err = sparta_cli(capsys, "train", *TINY, "--epochs", "2", "--device", "cpu", "--out", str(run))
    _refused(rc, err, "checkpoint.pt", "delete it")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import transfer.cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(transfer.cli, "run_command", interrupted)
    try:
        rc, out, err = sparta_cli(capsys, "study", "run", "quickstart", "--out", "somewhere")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped sparta's main as a traceback")
    assert (rc, out, err) == (130, "", "sparta: interrupted; run the same command to resume\n")


def test_ctrl_c_during_a_real_training_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "transfer.cli", "train", *TINY, "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    epochs = 200  # far more than run before the interrupt
    proc = subprocess.Popen(
        [*base, "--epochs", str(epochs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "sparta: interrupted; run the same command to resume"
    assert "Traceback" not in err
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 1 <= done < epochs  # interrupted mid-run: some epochs saved, the run not finished
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main([*base[3:], "--epochs", str(done + 1)]) == 0  # the same command, one epoch more
    assert f"resumed from {out / 'checkpoint.pt'} after epoch {done}" in (out / "train.log").read_text()


# ---- studies ------------------------------------------------------------------------------------------


def test_study_run_out_pointing_at_a_file(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(_study(8, "resnet18", "resnet18"))
    target = tmp_path / "results"
    target.write_text("mine")
    _refused(*sparta_cli(capsys, "study", "run", str(spec), "--out", str(target))[::2], "existing file")
    assert target.read_text() == "mine"


class _FixedSize(nn.Module):
    """A model that runs at 32×32 only, as a ViT built for one patch grid does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        assert x.shape[-1] == 32, f"Input width ({x.shape[-1]}) doesn't match model (32)."
        return self.act(self.conv(x)).mean((2, 3))


def test_find_sites_names_the_size_a_model_needs():
    model = _FixedSize()
    with pytest.raises(InputSizeError, match=r"cannot run on 16x16 px inputs \(AssertionError.*runs at 32x32 px"):
        find_sites(model, (3, 16, 16))
    assert [s.channels for s in find_sites(model, (3, 32, 32))] == [4]


def test_a_model_that_runs_at_no_size_keeps_its_own_error():
    class Broken(_FixedSize):
        def forward(self, x):
            raise RuntimeError("a bug in the model")

    with pytest.raises(RuntimeError, match="a bug in the model"):
        find_sites(Broken(), (3, 16, 16))


@pytest.mark.parametrize(
    ("source", "target", "bad", "needed"),
    [
        ("resnet18", "efficientformer_l1", "targets[0]", "224"),  # a ViT is built for the size (transfer/backbones.py)
        ("resnet18", "convnext_atto", "targets[0]", "32"),
        ("convnext_atto", "resnet18", "sources[0]", "32"),
    ],
)
def test_study_plan_names_the_model_the_size_it_needs_and_what_to_change(tmp_path, capsys, source, target, bad, needed):
    spec = tmp_path / "study.toml"
    spec.write_text(_study(16, source, target))
    rc, _, err = sparta_cli(capsys, "study", "plan", str(spec))
    arch = target if bad.startswith("targets") else source
    assert rc == 2 and "Traceback" not in err, err
    for needle in (bad, arch, "16x16", f"runs at {needed}x{needed}", f"set input_size to {needed}", f"{bad}.train"):
        assert needle in err, err


@pytest.mark.parametrize(
    "plan",
    [
        '{"jobs": [1, 2]}',
        '{"jobs": [{"id": "x"}]}',
        '{"jobs": [{"id": "x", "kind": "source", "seed": "0", "arch": 1, "dataset": "digits", "activation": "relu",'
        ' "variant": null, "policy": null, "source_job": null, "row": "r", "column": "c", "train": {}, "eval": {},'
        ' "deps": 5}]}',
        '{"jobs": {"a": 1}}',
        "[1]",
        "{not json",
    ],
)
@pytest.mark.parametrize("command", ["status", "matrix"])
def test_a_malformed_plan_json(tmp_path, capsys, plan, command):
    (tmp_path / "plan.json").write_text(plan)
    _refused(*sparta_cli(capsys, "study", command, str(tmp_path))[::2], "plan.json", "sparta study run")


def test_train_at_a_size_the_model_cannot_run(tmp_path, capsys):
    argv = [a for a in TINY if a not in ("--width", "4")]
    rc, _, err = sparta_cli(
        capsys, "train", *argv, "--device", "cpu", "--arch", "convnext_atto", "--out", str(tmp_path / "r")
    )
    _refused(rc, err, "convnext_atto", "8x8", "set input_size to")
    assert not Path(tmp_path / "r" / "checkpoint.pt").exists()


def test_sites_at_a_size_the_model_cannot_run(capsys):
    rc, _, err = sparta_cli(capsys, "sites", "convnext_atto", "--input-size", "8")
    _refused(rc, err, "convnext_atto", "8x8", "set input_size to")
