"""``sparta study run CONFIG --rehearse``: every job of a paper-scale config at toy size on synthetic images;
the synthetic datasets and the AutoAttack plumbing budget it runs on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from studies.planner import plan_study
from studies.rehearsal import (
    AA_ITERATIONS,
    EVAL_IMAGES,
    MARKER,
    TINY_WIDTH,
    TRAIN_SETTINGS,
    check_out_dir,
    rehearsal_spec,
    structure_differences,
)
from studies.spec import load_spec, parse_spec
from transfer import create_backbone, inject
from transfer.cli import main
from transfer.engine.attacks import create_attack, parse_attack
from transfer.engine.autoattack import plumbing_budget
from transfer.engine.data import TensorData, create_dataset, dataset_info, split_size
from transfer.engine.dataset_synthetic import synthetic_name
from transfer.engine.evaluation import evaluate

# A paper config in miniature: CIFAR-10 (never present in the tests), PGD-10 AT for 200 epochs, two seeds, a
# transfer (into the source's own arch: the freezing control), a baseline, the source's Sparta in place, and
# AutoAttack among the attacks. Only the rehearsal makes it runnable here.
PAPER_LIKE = """
name = "paper-like"
seeds = [0, 1]
policies = ["stage"]
baselines = ["relu", "sparta-in-place"]

[train]
recipe = "pgd"
epochs = 200
batch_size = 128
input_size = 16
val_subset = 1000
download = false

[eval]
attacks = ["clean", "pgd20", "aa"]

[[sources]]
arch = "resnet18"
dataset = "cifar10"

[[targets]]
arch = "resnet18"
dataset = "cifar10"
"""


def _spec(tmp_path: Path, text: str = PAPER_LIKE):
    path = tmp_path / "paper_like.toml"
    path.write_text(text)
    return load_spec(path)


@pytest.mark.slow
def test_a_rehearsal_runs_every_job_end_to_end_without_the_dataset(tmp_path, monkeypatch, capsys) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("SPARTA_DATA_DIR", str(empty))  # where the real run would look: nothing there
    config = tmp_path / "paper_like.toml"
    config.write_text(PAPER_LIKE)
    monkeypatch.chdir(tmp_path)
    code = main(["study", "run", str(config), "--rehearse", "--quiet", "--no-plot"])
    out = capsys.readouterr().out
    assert code == 0, out
    study = tmp_path / "paper-like-rehearsal"  # the default --out: never the real run's directory
    assert out.startswith("REHEARSAL of ") and "cifar10: NOT FOUND" in out
    assert out.splitlines()[-1].startswith("REHEARSAL passed (jobs ")
    marker = (study / MARKER).read_text()
    assert "meaningless" in marker and "cifar10: NOT FOUND" in marker
    assert (study / "study.toml").read_text().startswith("# REHEARSAL of ")
    plan = json.loads((study / "plan.json").read_text())
    real = plan_study(_spec(tmp_path), check_mapping=False)
    assert plan["name"] == "paper-like-rehearsal" and len(plan["jobs"]) == len(real.jobs) == 6
    for job in plan["jobs"]:
        run = study / "jobs" / job["id"]
        config_json = json.loads((run / "config.json").read_text())
        assert config_json["dataset"] == "synthetic:cifar10" and job["dataset"] == "cifar10"
        assert (config_json["epochs"], config_json["width"], config_json["test_subset"]) == (1, TINY_WIDTH, EVAL_IMAGES)
        assert json.loads((run / "metrics.json").read_text())["n_test"] == EVAL_IMAGES
        assert (run / "checkpoint.pt").is_file() and (run / "result.json").is_file()
    assert sorted(j["kind"] for j in plan["jobs"]) == ["baseline"] * 2 + ["source"] * 2 + ["target"] * 2
    with open(study / "results.csv", newline="") as fh:
        results = list(csv.DictReader(fh))
    assert {r["metric"] for r in results} == {"clean", "pgd20", "aa"} and {r["seed"] for r in results} == {"0", "1"}
    assert {p.name for p in (study / "matrices").iterdir()} >= {"aa.csv", "pgd20.csv", "clean.csv"}
    # a real run refuses the rehearsal's directory: its numbers are meaningless
    assert main(["study", "run", str(config), "--out", str(study), "--quiet"]) == 2
    assert "holds a rehearsal" in capsys.readouterr().err


def test_the_rehearsal_plan_keeps_the_paper_configs_structure_at_toy_size() -> None:
    for name in ("paper_cross_cnn", "paper_cross_dataset"):
        spec = load_spec(name)
        real, toy = plan_study(spec, check_mapping=False), plan_study(rehearsal_spec(spec), check_mapping=False)
        assert structure_differences(real.jobs, toy.jobs) == []
        assert len(toy.jobs) == len(real.jobs) == 18 and {j.id for j in toy.jobs}.isdisjoint(j.id for j in real.jobs)
        for real_job, job in zip(real.jobs, toy.jobs, strict=True):
            assert (job.kind, job.row, job.column, job.dataset) == (
                real_job.kind,
                real_job.row,
                real_job.column,
                real_job.dataset,
            )
            assert job.train["eval_attacks"] == real_job.train["eval_attacks"] == ["clean", "fgsm", "pgd20", "cw", "aa"]
            assert {k: job.train[k] for k in TRAIN_SETTINGS} == TRAIN_SETTINGS
            assert (job.train["width"], job.train["test_subset"]) == (TINY_WIDTH, EVAL_IMAGES)
            # what the real run would do stays: the threat model, the recipe, per-target learning rates
            for key in ("eps", "alpha", "steps", "recipe", "lr", "input_size", "in_chans", "policy"):
                assert job.train[key] == real_job.train[key], key
    svhn = [
        j
        for j in plan_study(rehearsal_spec(load_spec("paper_cross_dataset")), check_mapping=False).jobs
        if j.dataset == "svhn"
    ]
    assert {j.train["lr"] for j in svhn} == {0.01}


def test_width_is_left_alone_unless_every_arch_takes_one() -> None:
    def toy(target_arch: str):
        return rehearsal_spec(
            parse_spec(
                {
                    "name": "w",
                    "sources": [{"arch": "resnet18", "dataset": "digits"}],
                    "targets": [{"arch": target_arch, "dataset": "digits", "train": {"width": 16, "epochs": 3}}],
                }
            )
        )

    resnets = toy("resnet34")
    assert resnets.train["width"] == TINY_WIDTH and resnets.train["epochs"] == 1
    assert resnets.targets[0].train == {}  # a run's own width and epochs give way to the rehearsal's
    mixed = toy("convnext_atto")
    assert "width" not in mixed.train and mixed.targets[0].train == {}


def test_a_rehearsal_and_a_real_run_never_share_a_directory(tmp_path) -> None:
    real = tmp_path / "real"
    (real / "jobs").mkdir(parents=True)
    (real / "plan.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a real study"):
        check_out_dir(real, rehearse=True)
    check_out_dir(real, rehearse=False)
    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / MARKER).write_text("REHEARSAL")
    check_out_dir(toy, rehearse=True)
    with pytest.raises(ValueError, match="holds a rehearsal"):
        check_out_dir(toy, rehearse=False)


def test_run_without_out_asks_for_it(capsys) -> None:
    assert main(["study", "run", "quickstart"]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_synthetic_datasets_have_the_shape_classes_and_threat_model_of_the_real_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPARTA_DATA_DIR", str(tmp_path))  # empty: the real files are nowhere
    for name in ("cifar10", "svhn", "mnist", "cifar100"):
        real, fake = dataset_info(name), dataset_info(synthetic_name(name))
        assert (fake.num_classes, fake.in_chans, fake.image_size, fake.classes, fake.threat_model) == (
            real.num_classes,
            real.in_chans,
            real.image_size,
            real.classes,
            real.threat_model,
        )
    train = create_dataset("synthetic:svhn", "train", input_size=12)
    test = create_dataset("synthetic:svhn", "test", input_size=12)
    assert tuple(train.images.shape[1:]) == (3, 12, 12) and len(train) == split_size("synthetic:svhn", "train")
    assert len(test) == split_size("synthetic:svhn", "test") and set(test.labels.tolist()) == set(range(10))
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    assert torch.equal(create_dataset("synthetic:svhn", "test", input_size=12).images, test.images)
    assert not torch.equal(train.images[: len(test)], test.images)
    assert synthetic_name("synthetic:mnist") == "synthetic:mnist"
    with pytest.raises(ValueError, match="needs the dataset it imitates"):
        dataset_info("synthetic:")


def test_the_plumbing_budget_sets_only_what_a_spec_leaves_unset() -> None:
    name, config = parse_attack("aa")
    with plumbing_budget(n_iter=AA_ITERATIONS, n_queries=8, n_target_classes=1):
        inside = create_attack(name, **config)
        own = create_attack(name, n_iter=7)
        kind, k_config = parse_attack("apgd-t3")
        k_targets = create_attack(kind, **k_config)
    outside = create_attack(name, **config)
    assert (inside.n_iter, inside.n_queries, inside.n_target_classes) == (AA_ITERATIONS, 8, 1)
    assert (own.n_iter, own.n_queries) == (7, 8) and k_targets.n_target_classes == 3
    assert (outside.n_iter, outside.n_queries, outside.n_target_classes) == (None, None, None)
    with pytest.raises(ValueError, match="n_queries"), plumbing_budget(1, 0, 1):
        pass


def test_apgd_t_and_aa_take_a_channels_last_colour_batch() -> None:
    """The official code flattens APGD-T's gradients with .view, which the engine's channels-last layout of a
    3-channel batch refused: every aa and apgd-t evaluation on colour images failed (found by a rehearsal)."""
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=8, width=4)
    inject(model, "relu")
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correct: each stage attacks all of them
    data = TensorData(x, y, dataset_info("cifar10"))
    with plumbing_budget(n_iter=2, n_queries=4, n_target_classes=2):
        metrics = evaluate(model, data, ["clean", "apgd-t", "aa"], eps=8 / 255)
    assert metrics["clean"] == 100.0 and set(metrics) == {"clean", "apgd-t", "aa"}


def test_sanity_checks_are_shrunk_and_the_study_toml_says_it_is_a_rehearsal() -> None:
    spec = rehearsal_spec(
        parse_spec(
            {
                "name": "tiny",
                "sources": [{"arch": "resnet18", "dataset": "digits"}],
                "targets": [{"arch": "resnet18", "dataset": "digits"}],
                "eval": {"attacks": ["clean"], "sanity": True},
            }
        )
    )
    assert spec.name == "tiny-rehearsal" and spec.eval["sanity"]["n"] == EVAL_IMAGES
    assert spec.source_text.startswith("# REHEARSAL of a study given as a Python object")
