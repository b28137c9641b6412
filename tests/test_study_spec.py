"""Study spec validation: every bad input is reported with its key and what is allowed."""

import copy
from pathlib import Path

import pytest

from studies.planner import plan_study
from studies.spec import SpecError, load_spec, parse_spec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "studies" / "configs").glob("*.toml"))

BASE = {
    "name": "tiny",
    "seeds": [0, 1],
    "baselines": ["relu", "sparta-in-place"],
    "train": {"epochs": 1, "width": 4, "input_size": 8},
    "eval": {"attacks": ["clean", "fgsm"], "n": 20},
    "sources": [{"arch": "resnet18", "dataset": "digits"}],
    "targets": [{"arch": "resnet34", "dataset": "digits"}],
}


def _problems(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def test_a_valid_spec_gets_defaults():
    spec = parse_spec(copy.deepcopy(BASE))
    assert spec.policies == ["stage"]
    assert spec.sources[0].activation == "sparta" and spec.sources[0].variant == "dw"
    assert spec.eval["attacks"] == ["clean", "fgsm"] and spec.eval["n"] == 20


def test_unknown_keys_are_named_with_suggestions():
    problems = _problems(polices=["stage"])
    assert any(p.startswith("polices: unknown key") and "policies" in p for p in problems)
    problems = _problems(train={"epochz": 1})
    assert any(p.startswith("train.epochz") and "epochs" in p for p in problems)
    problems = _problems(targets=[{"arch": "resnet34", "dataset": "digits", "lr": 0.1}])
    assert any(p.startswith("targets[0].lr: unknown key") for p in problems)


def test_wrong_types_are_named():
    problems = _problems(seeds="0")
    assert any(p.startswith("seeds: expected a non-empty list of integers") for p in problems)
    problems = _problems(train={"epochs": "two", "lr": 1})  # an int is a fine float
    assert problems == ["train.epochs: expected int, got str 'two'"]
    problems = _problems(eval={"attacks": "pgd20"})
    assert any(p.startswith("eval.attacks: expected a non-empty list") for p in problems)


def test_unknown_arch_dataset_policy_and_baseline():
    problems = _problems(
        sources=[{"arch": "resnet81", "dataset": "digitz"}],
        policies=["stag"],
        baselines=["relu", "sparta-inplace"],
    )
    text = "\n".join(problems)
    assert "sources[0].arch: unknown arch 'resnet81'" in text and "resnet18" in text
    assert "sources[0].dataset: unknown dataset 'digitz'" in text and "digits" in text
    assert "policies: unknown policy 'stag'" in text and "stage" in text
    assert "baselines: unknown baseline 'sparta-inplace'" in text and "sparta-in-place" in text


def test_empty_or_missing_targets_and_sources():
    assert any(p.startswith("targets: no targets") for p in _problems(targets=[]))
    assert any(p.startswith("sources: no sources") for p in _problems(sources=None))


def test_study_owned_and_eval_owned_train_keys_are_refused():
    problems = _problems(train={"arch": "resnet18", "seed": 3})
    assert all("is set by the study" in p for p in problems) and len(problems) == 2
    problems = _problems(train={"test_subset": 100})
    assert problems == ["train.test_subset: set it in the [eval] table as 'n'"]
    problems = _problems(targets=[{"arch": "resnet34"}])
    assert problems == ["targets[0].dataset: missing (every target needs arch and dataset)"]


def test_values_are_checked_by_trainconfig_at_plan_time():
    spec = parse_spec({**copy.deepcopy(BASE), "train": {"epochs": 0}})
    with pytest.raises(SpecError, match=r"sources\[0\]: TrainConfig: epochs must be an int >= 1"):
        plan_study(spec, check_mapping=False)


def test_toml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nseeds = [0,\n')
    with pytest.raises(SpecError, match="TOML syntax"):
        load_spec(bad)
    with pytest.raises(FileNotFoundError, match="shipped configs: .*quickstart"):
        load_spec(tmp_path / "nope.toml")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_validates_and_plans(config):
    spec = load_spec(config)
    plan = plan_study(spec, check_mapping=True)
    counts = plan.counts()
    s, t, b, p = len(spec.sources), len(spec.targets), len(spec.baselines), len(spec.policies)
    assert counts["per_seed"]["source"] == s and counts["per_seed"]["baseline"] == b * t
    assert counts["per_seed"]["target"] + counts["incompatible"] == s * t * p
    assert counts["total"] == len(spec.seeds) * (s + b * t) + counts["per_seed"]["target"] * len(spec.seeds)
    assert load_spec(config.stem).name == spec.name  # shipped configs load by name too


def test_machine_settings_reach_every_job_without_changing_job_ids(tmp_path):
    import argparse

    from studies.cli import _with_machine_settings

    spec = load_spec("quickstart")
    args = argparse.Namespace(data_dir=str(tmp_path), download=True, device="cuda:1")
    moved = _with_machine_settings(spec, args)
    before, after = plan_study(spec, check_mapping=False), plan_study(moved, check_mapping=False)
    assert [j.id for j in before.jobs] == [j.id for j in after.jobs]
    assert all(j.train["data_dir"] == str(tmp_path) and j.train["device"] == "cuda:1" for j in after.jobs)
    assert _with_machine_settings(spec, argparse.Namespace(data_dir=None, download=False, device=None)) is spec
