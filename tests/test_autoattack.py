"""The official AutoAttack behind ``aa``/``apgd-ce``/``apgd-t``: the same adversarial images as the
``pyautoattack`` API called directly, its version beside every number, and the caller's state left alone."""

from __future__ import annotations

import copy
import json
import sys
from importlib.metadata import version

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_argv
from pyautoattack import AutoAttack as OfficialAutoAttack
from torch import nn

from transfer.cli import main, run_command
from transfer.engine.attacks import create_attack, parse_attack
from transfer.engine.autoattack import APGDCE, APGDT, OFFICIAL_METRICS, attack_provenance, is_official_metric
from transfer.engine.data import TensorData, create_dataset
from transfer.engine.evaluation import evaluate

# An MLP on 8×8 digits: AutoAttack's cost here is its Python loop (5,000 Square queries, 9 targets ×
# 100 steps twice), so the smallest model keeps the standard version at ~10 s per call on one thread.
EPS = 0.1
N = 16


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, TensorData]:
    torch.manual_seed(0)
    train = create_dataset("digits", "train", input_size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for x, y in train.batches(64, shuffle=True, generator=g):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    test = create_dataset("digits", "test", input_size=8)
    return model.eval(), TensorData(test.images[:N], test.labels[:N], test.info)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def _ours(spec: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    name, config = parse_attack(spec)
    return create_attack(name, eps=EPS, **config)(model, x, y)


def _official(model: nn.Module, stages: list[str] | None = None) -> OfficialAutoAttack:
    """The standard version as the package builds it, cut to ``stages`` (each with its standard settings)."""
    adversary = OfficialAutoAttack(model, eps=EPS, version="standard", seed=0, device="cpu")
    if stages is not None:
        adversary.attacks_to_run = stages
    return adversary


@pytest.mark.slow
def test_aa_is_the_official_standard_autoattack(mlp: tuple) -> None:
    model, data = mlp
    x, y = data.images, data.labels
    ours = _ours("aa", model, x, y)
    theirs, _ = _official(model).run_standard_evaluation(x, y, batch_size=N)
    assert torch.equal(ours, theirs)
    robust = int((_correct(model, x, y) & _correct(model, ours, y)).sum())
    # Some points survive APGD-CE, APGD-T and FAB-T, so all four stages ran on them.
    assert 0 < robust < int(_correct(model, x, y).sum())


@pytest.mark.parametrize("spec", ["apgd-ce", "apgd-t"])
def test_apgd_stages_are_the_standard_versions_stages(mlp: tuple, spec: str) -> None:
    model, data = mlp
    x, y = data.images, data.labels
    ours = _ours(spec, model, x, y)
    theirs, _ = _official(model, [spec]).run_standard_evaluation(x, y, batch_size=N)
    assert torch.equal(ours, theirs)
    assert _correct(model, ours, y).sum() < _correct(model, x, y).sum()  # the stage broke some points
    if spec == "apgd-ce":
        official_acc = 100.0 * float((_correct(model, theirs, y) & _correct(model, x, y)).float().mean())
        assert evaluate(model, data, ["clean", spec], eps=EPS)[spec] == pytest.approx(official_acc)


def test_apgd_t_with_k_targets_is_the_official_stage_with_k_target_classes(mlp: tuple) -> None:
    model, data = mlp
    x, y = data.images, data.labels
    assert parse_attack("apgd-t3") == ("apgd-t", {"n_target_classes": 3})
    ours = _ours("apgd-t3", model, x, y)
    official = _official(model, ["apgd-t"])
    official.apgd_targeted.n_target_classes = 3
    theirs, _ = official.run_standard_evaluation(x, y, batch_size=N)
    assert torch.equal(ours, theirs)
    metrics = evaluate(model, data, ["clean", "apgd-ce", "apgd-t3"], eps=EPS)
    assert list(metrics) == ["clean", "apgd-ce", "apgd-t3", "apgd-ce+t3"]  # and their per-image worst case
    assert metrics["apgd-ce+t3"] <= min(metrics["apgd-ce"], metrics["apgd-t3"])


def test_the_cascade_is_autoattacks_own_first_two_stages(mlp: tuple) -> None:
    model, data = mlp
    x, y = data.images, data.labels
    ours = _ours("apgd-ce+t3", model, x, y)
    official = _official(model, ["apgd-ce", "apgd-t"])  # AutoAttack runs APGD-T on APGD-CE's survivors
    official.apgd_targeted.n_target_classes = 3
    theirs, _ = official.run_standard_evaluation(x, y, batch_size=N)
    assert torch.equal(ours, theirs)


def test_the_cascade_runs_apgd_t_only_on_the_images_apgd_ce_left_robust(mlp: tuple, monkeypatch) -> None:
    model, data = mlp
    seen: dict[str, list[int]] = {"apgd-ce": [], "apgd-t": []}
    for cls in (APGDCE, APGDT):

        def spy(self, model, x, y, _perturb=cls.perturb, _name=cls.registry_name):
            seen[_name].append(len(x))
            return _perturb(self, model, x, y)

        monkeypatch.setattr(cls, "perturb", spy)
    metrics, bits = evaluate(model, data, ["clean", "apgd-ce+t3", "apgd-ce"], eps=EPS, return_per_image=True)
    assert list(metrics) == ["clean", "apgd-ce+t3", "apgd-ce"]
    survivors = int(bits["apgd-ce"].sum())
    assert 0 < survivors < int(bits["clean"].sum())  # APGD-CE broke some images, not all
    assert seen == {"apgd-ce": [N], "apgd-t": [survivors]}  # APGD-CE once, though asked for twice
    assert not (bits["apgd-ce+t3"] & ~bits["apgd-ce"]).any()  # robust to both ⊆ robust to APGD-CE
    assert metrics["apgd-ce+t3"] == 100.0 * int(bits["apgd-ce+t3"].sum()) / N
    seen["apgd-ce"].clear()
    alone, alone_bits = evaluate(model, data, ["clean", "apgd-ce"], eps=EPS, return_per_image=True)
    assert alone["apgd-ce"] == metrics["apgd-ce"] and (alone_bits["apgd-ce"] == bits["apgd-ce"]).all()
    cascade_only = evaluate(model, data, ["apgd-ce+t"], eps=EPS)  # its APGD-CE is reported beside it
    assert list(cascade_only) == ["apgd-ce", "apgd-ce+t"] and cascade_only["apgd-ce"] == metrics["apgd-ce"]


def test_the_cascade_spec_validates_wherever_specs_are_read(tmp_path, capsys) -> None:
    from studies.spec import SpecError, parse_spec
    from transfer.engine.config import TrainConfig

    assert TrainConfig(eval_attacks=("clean", "apgd-ce+t3")).validate().eval_attacks == ("clean", "apgd-ce+t3")
    with pytest.raises(ValueError, match="target classes must be >= 1"):
        TrainConfig(eval_attacks=("clean", "apgd-ce+t0")).validate()
    study = {"name": "tiny", "seeds": [0], "baselines": ["relu"], "train": {"epochs": 1, "width": 4, "input_size": 8},
             "eval": {"attacks": ["clean", "apgd-ce+t3"]}, "sources": [{"arch": "resnet18", "dataset": "digits"}],
             "targets": [{"arch": "resnet34", "dataset": "digits"}]}  # fmt: skip
    assert parse_spec(copy.deepcopy(study)).eval["attacks"] == ["clean", "apgd-ce+t3"]
    study["eval"]["attacks"] = ["clean", "apgd-ce+t0"]
    with pytest.raises(SpecError, match="target classes must be >= 1"):
        parse_spec(study)
    assert main(["eval", str(tmp_path), "--attacks", "apgd-ce+t0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "target classes must be >= 1" in err


def test_the_callers_model_rng_and_tracer_are_left_alone(mlp: tuple) -> None:
    """A plumbing check with cut-down iterations: the package reseeds the global RNG, clears
    ``sys.settrace`` and lets FAB write parameter gradients; none of that may reach the caller."""
    model = copy.deepcopy(mlp[0]).train()
    x, y = mlp[1].images[:8], mlp[1].labels[:8]
    torch.manual_seed(123)
    rng = torch.get_rng_state()

    def tracer(frame, event, arg):  # a stand-in for a debugger or coverage tool
        return None

    sys.settrace(tracer)
    try:
        x_adv = create_attack("aa", eps=0.05, n_iter=3, n_queries=20)(model, x, y)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_specs_options_and_provenance() -> None:
    assert {s: parse_attack(s)[0] for s in sorted(OFFICIAL_METRICS)} == {
        "aa": "autoattack", "aa-rand": "autoattack-rand", "apgd-ce": "apgd-ce", "apgd-t": "apgd-t",
        "apgd-ce+t": "apgd-ce+t", "square": "square",
    }  # fmt: skip
    assert create_attack("aa-rand").config["version"] == "rand"
    with pytest.raises(ValueError, match="eval mode only"):
        create_attack("aa", bn_mode="train")
    with pytest.raises(ValueError, match="n_iter"):
        create_attack("apgd-ce", n_iter=0)
    three_classes = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        create_attack("apgd-t")(three_classes, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
    assert attack_provenance(["clean", "pgd20", "aa"]) == {"autoattack_version": version("pyautoattack")}
    assert attack_provenance(["clean", "pgd20", "cw"]) == {}
    assert attack_provenance(["clean", "apgd-t3"]) == attack_provenance(["aa"])
    assert [is_official_metric(m) for m in ("apgd-t5", "apgd-ce+t", "apgd-ce+t3", "pgd20", "apgd-x")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="target classes must be >= 1"):
        parse_attack("apgd-t0")


TINY = tiny_argv(eps=0.1, alpha=0.05, steps=2, train_subset=96, test_subset=16, attacks=None)


def test_runs_and_sparta_eval_record_the_official_version(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert run_command(["train", *TINY, "--attacks", "apgd-ce", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "apgd-ce" in metrics and metrics["autoattack_version"] == version("pyautoattack")
    # ε = 1/2 breaks every point in AutoAttack's first stage, so the slow later stages have nothing to do.
    assert run_command(["eval", str(run), "--attacks", "aa", "--n", "4", "--eps", "1/2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"aa: official AutoAttack, pyautoattack {version('pyautoattack')}" in out
    assert (
        run_command(["eval", str(run), "--attacks", "aa", "--n", "4", "--eps", "1/2", "--no-progress", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["autoattack_version"] == version("pyautoattack") and result["metrics"]["aa"] == 0.0
    # The cascade reports APGD-CE beside it; with every point broken by APGD-CE, APGD-T gets no image.
    assert (
        run_command(
            ["eval", str(run), "--attacks", "apgd-ce+t3", "--n", "4", "--eps", "1/2", "--no-progress", "--json"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"] | {"clean": 0} == {"clean": 0, "apgd-ce": 0.0, "apgd-ce+t3": 0.0}
    assert result["autoattack_version"] == version("pyautoattack")
    assert run_command(["eval", str(run), "--attacks", "fgsm", "--n", "4", "--json", "--no-progress"]) == 0
    assert "autoattack_version" not in json.loads(capsys.readouterr().out)
