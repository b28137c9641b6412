"""Study spec validation: every bad input is reported with its key and what is allowed."""

import copy
from pathlib import Path

import pytest

from studies.planner import _hashed_train, plan_study
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
    assert spec.policies == ["role"]
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
    counts, n_seeds = plan.counts(), len(spec.seeds)
    s, t, b = len(spec.sources), len(spec.targets), len(spec.baselines)
    cells = sum(len(cell.policies) for cell in spec.transfer_cells())
    assert counts["per_seed"]["source"] == s
    assert counts["baseline"] + counts["shared"] == b * t * n_seeds  # a shared row is a source job's
    assert counts["per_seed"]["target"] + counts["incompatible"] == cells
    assert counts["total"] == n_seeds * (s + cells - counts["incompatible"]) + counts["baseline"]
    # one training, one job: no two jobs train the same thing (a transfer differs by its source)
    trained = [(j.source_job, repr(sorted(_hashed_train(j.train).items()))) for j in plan.jobs]
    assert len(set(trained)) == len(trained)
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


def test_rows_may_be_activation_configurations_with_readable_labels():
    baselines = [
        "relu",
        "sparta-in-place",
        {"activation": "sparta", "options": {"kernel_size": 1}},
        {"activation": "sparta", "train": {"activation_weight_decay": 0.0}},
        {"activation": "sparta", "variant": "full"},
        {"activation": "sparta", "options": {"beta": 8.0}, "label": "Sparta near-ReLU"},
    ]
    spec = parse_spec({**copy.deepcopy(BASE), "seeds": [0], "baselines": baselines})
    plan = plan_study(spec, check_mapping=False)
    rows = {j.row: j for j in plan.jobs if j.kind == "baseline"}
    assert set(rows) == {
        "ReLU",
        "Sparta (in place)",
        "Sparta (in place, 1×1 gate)",
        "Sparta (in place, act wd 0)",
        "Sparta full (in place)",
        "Sparta near-ReLU",
    }
    assert rows["Sparta (in place, 1×1 gate)"].train["activation_config"] == {"kernel_size": 1, "variant": "dw"}
    assert rows["Sparta (in place, act wd 0)"].train["activation_weight_decay"] == 0.0
    assert rows["Sparta near-ReLU"].train["activation_config"]["beta"] == 8.0
    assert len({j.id for j in rows.values()}) == len(rows)


def test_bad_rows_and_the_same_training_twice_are_refused():
    problems = _problems(
        baselines=[
            "relu",
            {"activation": "sparta", "options": {"kernel_size": 4}},
            {"activation": "sparta", "colour": "red"},
            {"options": {}},
        ]
    )
    text = "\n".join(problems)
    assert "baselines[1].options: Sparta kernel_size must be an odd int from 1 to 31" in text
    assert "baselines[2].colour: unknown key" in text and "baselines[3].activation: missing" in text
    assert _problems(baselines=["silu"]) == [
        "baselines: must include 'relu': the ReLU row is the reference every difference is taken to"
    ]
    twice = parse_spec(
        {
            **copy.deepcopy(BASE),
            "baselines": ["relu", "sparta-in-place", {"activation": "sparta", "label": "Sparta again"}],
        }
    )
    with pytest.raises(SpecError, match=r"baselines\[2\]: trains the same as the row 'Sparta \(in place\)'"):
        plan_study(twice, check_mapping=False)


def test_declared_transfers_choose_cells_and_policies():
    data = {
        **copy.deepcopy(BASE),
        "seeds": [0],
        "sources": [{"arch": "resnet18", "dataset": "digits"}, {"arch": "resnet18", "dataset": "shapes"}],
        "targets": [{"arch": "resnet34", "dataset": "digits"}, {"arch": "resnet18", "dataset": "shapes"}],
        "transfers": [
            {"source": "resnet18/digits", "target": "resnet34/digits", "policies": ["stage", "depth"]},
            {"source": 1, "target": "resnet18 / shapes"},
        ],
    }
    plan = plan_study(parse_spec(data), check_mapping=False)
    cells = sorted((j.row, j.column) for j in plan.jobs if j.kind == "target")
    assert cells == [
        ("Sparta dw ← resnet18/digits [depth]", "resnet34 / digits"),
        ("Sparta dw ← resnet18/digits [stage]", "resnet34 / digits"),
        ("Sparta dw ← resnet18/shapes [role] (freezing control)", "resnet18 / shapes"),
    ]
    bad = {**data, "transfers": [{"source": "resnet50/digits", "target": 5}, {"source": 0}]}
    text = "\n".join(_problems(**{k: v for k, v in bad.items() if k not in BASE or k == "sources"}))
    assert "transfers[0].source: 'resnet50/digits' is not one of the sources" in text
    assert "transfers[0].target: index 5 is out of range" in text
    assert "transfers[1].target: missing or not a name" in text


def test_a_typo_in_seeds_cannot_plan_a_million_jobs():
    problems = _problems(seeds=list(range(100_000)))
    assert problems[0].startswith("seeds: lists 100000 seeds; a study takes at most 1000")


def test_an_in_place_study_declares_no_transfers():
    data = {
        **copy.deepcopy(BASE),
        "seeds": [0],
        "targets": [{"arch": "resnet18", "dataset": "digits"}],
        "transfers": [],
        "baselines": ["relu", "sparta-in-place", {"activation": "sparta", "variant": "full"}],
    }
    plan = plan_study(parse_spec(data), check_mapping=False)
    assert [j.kind for j in plan.jobs] == ["source", "baseline", "baseline"]  # the source is "Sparta (in place)"
    assert {r["row"] for j in plan.jobs for r in j.rows()} == {
        "Sparta dw (source)",
        "Sparta (in place)",
        "ReLU",
        "Sparta full (in place)",
    }


def test_a_sweep_crosses_every_job_and_gives_each_point_its_own_column():
    data = {**copy.deepcopy(BASE), "seeds": [0], "baselines": ["relu"], "sweep": {"eps": [0.05, 0.1], "lr": [0.1]}}
    plan = plan_study(parse_spec(data), check_mapping=False)
    columns = {j.column for j in plan.jobs}
    assert columns == {
        f"{c} [eps={e}, lr=0.1]" for c in ("resnet18 / digits", "resnet34 / digits") for e in ("0.05", "0.1")
    }
    for job in plan.jobs:
        assert job.train["eps"] == job.extra["sweep"]["eps"] and job.train["lr"] == 0.1
        if job.kind == "target":  # a transfer takes the source trained at its own point
            assert plan.job(job.source_job).extra["sweep"] == job.extra["sweep"]
    assert plan.counts()["total"] == 2 * (1 + 1 + 1)  # per point: the source, ReLU on resnet34, the transfer
    problems = _problems(
        sweep={"seed": [1, 2], "eps": "0.1", "lr": [0.1, 0.1]},
        targets=[{"arch": "resnet34", "dataset": "digits", "train": {"lr": 0.2}}],
    )
    text = "\n".join(problems)
    assert "sweep.seed: not a TrainConfig field a study may sweep" in text
    assert "sweep.eps: expected a non-empty list of values" in text
    assert "sweep.lr: lists a value twice" in text and "sweep.lr: is also set by targets[0]" in text
