"""Every entry bundled in zoo/bundled is filed at its dataset's own threat model, and the command its card
records gives its numbers and tensors back when run again (one thread, the same seed)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from transfer.cli import main
from transfer.engine.autoattack import is_official_metric
from transfer.engine.config import TrainConfig
from transfer.engine.data import dataset_info
from zoo import Registry
from zoo.readme import render_readme
from zoo.roots import BUNDLED_ROOT

ENTRIES = sorted(f"{p.parent.name}@{p.name}" for p in BUNDLED_ROOT.glob("*/*") if p.is_dir())
# Where the bundled entries were built: torch's release and the CPU kernels it dispatches to. There
# one-thread CPU training is deterministic, so a re-run must give the tensors back bit for bit and every
# number exactly. A CPU of another family (AVX-512 kernels) or another torch may round differently; the
# rounding compounds over training into another draw of the model, so there only the metrics are
# compared, each within the 95 % binomial interval of its accuracy on the entry's n_test images.
BUILD_PLATFORM = ("2.14.1", "AVX2")
RERUN_TIMEOUT_S = 900  # about 75 s on a shared 2-core machine; this bounds a hang


def _platform() -> tuple[str, str]:
    return torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability()


def _card(ref: str, tmp_path) -> dict:
    return Registry(tmp_path / "user-zoo", bundled_root=BUNDLED_ROOT).info(ref)


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _with_option(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def test_the_bundled_entries_are_found():
    assert "digits-resnet18-sparta-dw@2" in ENTRIES


@pytest.mark.parametrize("ref", ENTRIES)
def test_a_bundled_entry_is_trained_and_evaluated_at_its_datasets_threat_model(ref, tmp_path):
    card = _card(ref, tmp_path)
    expected = dataset_info(card["dataset"]).threat_model
    threat, config, recorded = card["threat_model"], card["train_config"], card["metrics"]["threat_model"]
    assert threat["norm"] == expected.norm and math.isclose(threat["eps"], expected.eps)
    assert math.isclose(recorded["train_eps"], expected.eps) and config["eval_eps"] is None
    trained = (config["eps"], config["alpha"], config["steps"])
    assert trained == pytest.approx((expected.eps, expected.alpha, expected.steps))
    assert is_official_metric(threat["attack"]), f"{ref}: headline {threat['attack']} is not the official AutoAttack's"
    command = card["command"]
    assert command[:2] == ["sparta", "train"] and not {"--eps", "--alpha", "--steps"} & set(command)
    assert (_option(command, "--threads"), _option(command, "--device")) == ("1", "cpu") and "--seed" in command
    assert (BUNDLED_ROOT / ref.replace("@", "/") / "README.md").read_text() == render_readme(card)


@pytest.mark.bundled_zoo
def test_info_shows_the_bundled_command(capsys):
    assert main(["zoo", "info", ENTRIES[0]]) == 0
    assert "  command      sparta train --arch" in capsys.readouterr().out


@pytest.mark.bundled_zoo
@pytest.mark.parametrize("ref", ENTRIES)
def test_the_model_cards_example_injects_the_entry_frozen(ref):
    readme = (BUNDLED_ROOT / ref.replace("@", "/") / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - the model card we ship
    report = scope["report"]
    assert report.source.startswith(f"zoo:{ref.partition('@')[0]}@") and all(e.frozen for e in report.entries)


@pytest.mark.slow
@pytest.mark.parametrize("ref", ENTRIES)
def test_the_command_on_a_bundled_card_reproduces_its_tensors_and_metrics(ref, tmp_path):
    """The card's command, run in ``tmp_path`` with its own zoo. Its official AutoAttack evaluation is
    left out of the re-run: APGD-T's 9 target classes × 100 iterations on every image APGD-CE left
    robust take minutes on one CPU thread (the whole command took 20 min 24 s on a shared 2-core
    machine, about 19 of them APGD-CE and APGD-T). With the tensors equal bit for bit and the clean and
    PGD numbers exact, the model is the one those numbers were measured on, and an AutoAttack evaluation
    repeats itself on one model (its seed is fixed: tests/test_autoattack.py gets the same images from
    the official code run apart)."""
    card = _card(ref, tmp_path)
    command = card["command"]
    recorded_attacks = _option(command, "--attacks").split(",")
    attacks = [a for a in recorded_attacks if not is_official_metric(a)]
    env = {**os.environ, "SPARTA_ZOO": str(tmp_path / "zoo"), "SPARTA_ZOO_BUNDLED": "none"}
    rerun = [sys.executable, "-m", "transfer.cli", *_with_option(command, "--attacks", ",".join(attacks))[1:]]
    done = subprocess.run(rerun, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RERUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]

    again = Registry(tmp_path / "zoo", bundled_root=None).info(card["name"])
    recorded = {**card["train_config"], "eval_attacks": attacks}
    newer = {k: v for k, v in again["train_config"].items() if k not in recorded}  # fields added since the card
    assert {k: v for k, v in again["train_config"].items() if k in recorded} == recorded
    assert newer == {k: v for k, v in TrainConfig().to_dict().items() if k in newer}  # at their defaults
    assert again["metrics"]["n_test"] == card["metrics"]["n_test"]
    if _platform() == BUILD_PLATFORM:
        assert (again["content_sha256"], again["sha256"]) == (card["content_sha256"], card["sha256"])
        assert {a: again["metrics"][a] for a in attacks} == {a: card["metrics"][a] for a in attacks}
        return
    n = card["metrics"]["n_test"]
    for attack in attacks:
        p = card["metrics"][attack] / 100
        half_width = 100 * 1.96 * math.sqrt(max(p * (1 - p), 1 / n) / n)
        assert abs(again["metrics"][attack] - card["metrics"][attack]) <= half_width, attack
