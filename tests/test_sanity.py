"""Gradient-masking checks: `sparta eval RUN_DIR --sanity`, the study option, and each sign's verdict."""

from __future__ import annotations

import json
import shutil

import pytest

from studies.spec import SpecError, parse_spec
from studies.training_job import SANITY_FILE, run_sanity
from transfer.cli import run_command
from transfer.engine.config import TrainConfig
from transfer.engine.sanity import SIGNS, _signs, eps_sweep

QUICK = [
    "--n",
    "32",
    "--restarts",
    "2",
    "--restart-steps",
    "5",
    "--square-queries",
    "20",
    "--noise-samples",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_run(tiny_sparta_run, tmp_path_factory):
    """A copy of the session's tiny trained run (the checks write sanity.json into it)."""
    out = tmp_path_factory.mktemp("sanity") / "run"
    shutil.copytree(tiny_sparta_run, out)
    return out


def test_sanity_on_a_tiny_trained_model_reports_all_five_signs(tiny_run, capsys):
    code = run_command(["eval", str(tiny_run), "--sanity", "--json", *QUICK])
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["signs"]] == list(SIGNS)
    assert report["n"] == 32 and report["eps"] == 0.1 and report["autoattack_version"]
    assert code == (0 if report["passed"] else 1)
    signs = {s["name"]: s for s in report["signs"]}
    sweep = signs["eps_sweep"]["values"]
    assert list(sweep) == [f"pgd20 eps={r:g}" for r in (0.1, 0.2, 0.4, 0.5)]
    pgd20 = signs["single_step"]["values"]["pgd20"]
    assert sweep["pgd20 eps=0.1"] == pgd20 == signs["more_iterations"]["values"]["pgd20"]
    assert signs["single_step"]["passed"] == (signs["single_step"]["values"]["fgsm"] >= pgd20 - 1.0)
    for sign in report["signs"]:
        assert all(0.0 <= v <= 100.0 for v in sign["values"].values())
        assert all(v <= signs["random_noise"]["values"]["clean"] for v in sign["values"].values())

    assert run_command(["eval", str(tiny_run), "--sanity", *QUICK, "--n", "8"]) in (0, 1)
    text = capsys.readouterr().out
    assert text.count("PASS") + text.count("FAIL") >= 5 and "eps_sweep" in text


def test_sanity_without_a_model_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(dataset="digits").to_dict()))
    assert run_command(["eval", str(tmp_path), "--sanity", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no trained model (checkpoint.pt missing)" in err and "\n" not in err and "Traceback" not in err
    assert run_command(["eval", str(tmp_path / "nowhere"), "--sanity"]) == 2
    assert "holds no trained model" in capsys.readouterr().err


def test_each_sign_fails_on_the_profile_it_guards_against():
    sound = {
        "clean": 90.0,
        "pgd20@0.1": 50.0,
        "pgd20@0.2": 20.0,
        "pgd20@0.5": 0.0,
        "pgd100x5": 49.0,
        "apgd-ce": 48.0,
        "apgd-t": 46.0,
        "square": 60.0,
        "fgsm": 60.0,
        "noise": 85.0,
    }
    radii, verdict = [0.1, 0.2, 0.5], lambda acc: {s.name: s.passed for s in _signs(acc, radii, 100, 5, 1.0)}
    assert all(verdict(sound).values())
    masked = {
        "eps_sweep": {"pgd20@0.5": 30.0},  # the attack cannot break the model even at ε = 0.5
        "more_iterations": {"pgd100x5": 55.0},  # more steps and restarts find less
        "black_box": {"square": 40.0},  # gradient-free beats gradients
        "single_step": {"fgsm": 45.0},  # one step beats twenty
        "random_noise": {"noise": 45.0},  # random points beat gradient ascent
    }
    for name, change in masked.items():
        failed = [s for s, ok in verdict({**sound, **change}).items() if not ok]
        assert failed == [name]
    assert not verdict({**sound, "pgd20@0.2": 55.0})["eps_sweep"]  # accuracy rising with ε
    assert verdict({**sound, "square": 45.5})["black_box"]  # below APGD-CE, not below APGD-T − tolerance
    assert not verdict({**sound, "square": 44.5})["black_box"]


def test_eps_sweep_doubles_up_to_half_the_pixel_range():
    assert eps_sweep(0.1) == [0.1, 0.2, 0.4, 0.5]
    assert eps_sweep(8 / 255)[:2] == [8 / 255, 16 / 255] and eps_sweep(8 / 255)[-1] == 0.5
    assert eps_sweep(0.6) == [0.6]
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
        eps_sweep(0)


def test_study_option_writes_sanity_json_per_job(tiny_run):
    result = run_sanity(tiny_run, {"n": 16, "steps": 3, "restarts": 1, "square_queries": 10, "noise_samples": 1})
    written = json.loads((tiny_run / SANITY_FILE).read_text())
    assert [s["name"] for s in written["signs"]] == list(SIGNS) and written["n"] == 16
    assert result == {"passed": written["passed"], "failed": written["failed"]}


def test_spec_accepts_and_checks_the_sanity_option():
    base = {
        "name": "s",
        "sources": [{"arch": "resnet18", "dataset": "digits"}],
        "targets": [{"arch": "resnet18", "dataset": "digits"}],
    }
    assert parse_spec({**base, "eval": {"sanity": True}}).eval["sanity"] == {}
    assert parse_spec({**base, "eval": {"sanity": False}}).eval["sanity"] is None
    assert parse_spec(base).eval["sanity"] is None
    assert parse_spec({**base, "eval": {"sanity": {"n": 100}}}).eval["sanity"] == {"n": 100}
    with pytest.raises(SpecError) as err:
        parse_spec({**base, "eval": {"sanity": {"queries": 5, "restarts": 0}}})
    assert "eval.sanity.queries: unknown key" in str(err.value)
    assert "eval.sanity.restarts: expected a positive integer" in str(err.value)


def test_the_sanity_option_reaches_every_job_and_its_id():
    from studies.planner import plan_study

    base = {
        "name": "s",
        "sources": [{"arch": "resnet18", "dataset": "digits"}],
        "targets": [{"arch": "resnet18", "dataset": "digits"}],
        "train": {"width": 4, "input_size": 8},
    }
    off = plan_study(parse_spec(base), check_mapping=False)
    on = plan_study(parse_spec({**base, "eval": {"sanity": {"n": 10}}}), check_mapping=False)
    assert all(j.eval["sanity"] == {"n": 10} for j in on.jobs) and all(j.eval["sanity"] is None for j in off.jobs)
    assert {j.id for j in on.jobs}.isdisjoint(j.id for j in off.jobs)  # turning the checks on re-runs the jobs
    assert "sanity" not in on.jobs[0].train  # not a TrainConfig field
