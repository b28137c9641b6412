"""Dataset threat models: declared per dataset, applied by train / eval / studies, recorded with every number;
matrices referenced to ReLU or SiLU."""

from __future__ import annotations

import copy
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import tiny_argv

from plots.heatmap import matrix_heatmap
from plots.overview import overview_figure
from studies.matrix import transfer_matrix, write_matrices
from studies.planner import plan_study
from studies.results import RESULT_COLUMNS, load_results
from studies.runner import run_study
from studies.spec import SpecError, parse_spec
from transfer.cli import main, run_command
from transfer.engine.config import TrainConfig
from transfer.engine.data import dataset_info, list_datasets
from transfer.engine.training import resolve_config
from transfer.threat_model import format_eps, strongest_attack

DOCS = Path(__file__).resolve().parents[1] / "docs" / "threat-models.md"
TINY = tiny_argv(recipe="fgsm-rs", val_subset=10, attacks="fgsm,pgd3")


def _documented() -> dict[str, tuple[float, float, int]]:
    """The table of docs/threat-models.md: dataset → (ε, step, training steps)."""
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|\s*([\d./]+)\s*\|\s*([\d./]+)\s*\|\s*(\d+)\s*\|", line)
        if m:
            rows[m[1]] = (float(Fraction(m[2])), float(Fraction(m[3])), int(m[4]))
    return rows


def test_every_dataset_declares_the_threat_model_its_docs_state():
    documented = _documented()
    assert set(documented) == set(list_datasets())
    for name, (eps, alpha, steps) in documented.items():
        threat = dataset_info(name).threat_model
        assert (threat.norm, threat.eps, threat.alpha, threat.steps) == pytest.approx(("Linf", eps, alpha, steps))
        assert dataset_info(name).to_dict()["threat_model"]["eps"] == threat.eps


def test_train_config_takes_the_dataset_threat_model_unless_given():
    for name in list_datasets():
        threat = dataset_info(name).threat_model
        resolved = resolve_config(TrainConfig(dataset=name).validate())
        assert (resolved.eps, resolved.alpha, resolved.steps) == (threat.eps, threat.alpha, threat.steps)
        assert resolved.eval_radius() == threat.eps
    given = TrainConfig(dataset="cifar10", eps=16 / 255).with_threat_model()  # the dataset's step ratio kept
    assert (given.eps, given.alpha, given.steps) == pytest.approx((16 / 255, 4 / 255, 10))
    fewer = TrainConfig(dataset="fashion-mnist", steps=5).with_threat_model()  # α·steps/ε kept: 0.025·10 = 0.05·5
    assert (fewer.eps, fewer.alpha, fewer.steps) == pytest.approx((0.1, 0.05, 5))
    own = TrainConfig(dataset="digits", eps=0.2, alpha=0.01, steps=3, eval_eps=0.3).with_threat_model()
    assert (own.eps, own.alpha, own.steps, own.eval_radius()) == (0.2, 0.01, 3, 0.3)


@pytest.mark.parametrize("field", ["eps", "alpha", "eval_eps"])
@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_a_radius_outside_the_unit_interval_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be in \(0, 1\]"):
        TrainConfig(dataset="digits", **{field: value}).validate()


def test_bad_radius_on_the_command_line_and_in_a_study_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the flag: usage line + one error line
        main(["train", *TINY, "--eps", "2", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "digits", "eps": 3}))
    assert run_command(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "eps must be in (0, 1]" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SpecError, match=r"eps must be in \(0, 1\]"):
        plan_study(parse_spec({**copy.deepcopy(SPEC), "train": {"eps": 0.0}}), check_mapping=False)


def test_train_and_eval_apply_and_record_the_dataset_threat_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_command(["train", *TINY, "--out", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    digits = dataset_info("digits").threat_model
    want = {
        "norm": "Linf",
        "eps": digits.eps,
        "train_eps": digits.eps,
        "alpha": digits.alpha,
        "steps": digits.steps,
        "attack": "pgd3",
    }
    assert metrics["threat_model"] == want
    assert json.loads((run / "metrics.json").read_text())["threat_model"] == want
    config = json.loads((run / "config.json").read_text())
    assert (config["eps"], config["alpha"], config["steps"]) == (digits.eps, digits.alpha, digits.steps)

    assert run_command(["eval", str(run), "--attacks", "fgsm", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eps"] == digits.eps and out["threat_model"]["attack"] == "fgsm"
    assert run_command(["eval", str(run), "--attacks", "fgsm", "--eps", "0.2", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)["threat_model"]
    assert (out["eps"], out["train_eps"]) == (0.2, digits.eps)


SPEC = {
    "name": "threats",
    "seeds": [0],
    "baselines": ["relu", "silu", "sparta-in-place"],
    "train": {"epochs": 1, "width": 4, "input_size": 8},
    "eval": {"attacks": ["clean", "pgd20"]},
    "sources": [{"arch": "resnet18", "dataset": "digits"}],
    "targets": [{"arch": "resnet18", "dataset": name} for name in sorted(list_datasets())],
}


def test_a_cross_dataset_study_trains_every_target_in_its_own_threat_model():
    targets = copy.deepcopy(SPEC["targets"])
    override = next(t for t in targets if t["dataset"] == "shapes")
    override["train"] = {"eps": 16 / 255}
    plan = plan_study(parse_spec({**copy.deepcopy(SPEC), "targets": targets}), check_mapping=False)
    for job in plan.jobs:
        threat = dataset_info(job.dataset).threat_model
        if job.dataset == "shapes" and job.kind != "source":
            assert job.train["eps"] == 16 / 255 and job.train["alpha"] == pytest.approx(4 / 255)
        else:
            assert (job.train["eps"], job.train["alpha"], job.train["steps"]) == (
                threat.eps,
                threat.alpha,
                threat.steps,
            )


def _fake_job(job, directory, study_dir):
    """Stand-in for training that records the threat model as train() does; Sparta beats SiLU beats ReLU."""
    score = {"relu": 40.0, "silu": 43.0}.get(job.activation, 45.0)
    eps = job.train["eps"]
    threat = {
        "norm": "Linf",
        "eps": eps,
        "train_eps": eps,
        "alpha": job.train["alpha"],
        "steps": job.train["steps"],
        "attack": "pgd20",
    }
    return {"metrics": {"clean": 80.0, "pgd20": score}, "train_metrics": {"threat_model": threat}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    spec = {
        **copy.deepcopy(SPEC),
        "targets": [{"arch": "resnet18", "dataset": "digits"}, {"arch": "resnet18", "dataset": "shapes"}],
    }
    out = tmp_path_factory.mktemp("study") / "s"
    assert run_study(parse_spec(spec), out, job_fn=_fake_job, progress=False, check_mapping=False).ok
    return out


def test_results_and_matrices_carry_the_eps_of_each_column(study):
    results = load_results(study)
    assert list(results.columns) == list(RESULT_COLUMNS) and {"norm", "eps"} <= set(results.columns)
    for dataset, group in results.groupby("dataset"):
        assert set(group["eps"]) == {dataset_info(dataset).threat_model.eps} and set(group["norm"]) == {"Linf"}
    tm = transfer_matrix(results, "pgd20")
    assert tm.eps == {"resnet18 / digits": 0.1, "resnet18 / shapes": pytest.approx(8 / 255)}
    assert tm.threat_summary() == "L∞ ε per column: resnet18 / digits 0.1, resnet18 / shapes 8/255"
    assert json.loads((study / "matrices" / "pgd20.json").read_text())["eps"] == [0.1, pytest.approx(8 / 255)]
    ticks = [t.get_text() for t in matrix_heatmap(tm).axes[0].get_xticklabels()]
    assert any("ε = 0.1" in t for t in ticks) and any("ε = 8/255" in t for t in ticks)
    digits_only = transfer_matrix(results[results["dataset"] == "digits"], "pgd20")
    assert "L∞ ε = 0.1" in matrix_heatmap(digits_only).axes[0].get_title()


def test_differences_to_a_chosen_reference_row(study, capsys):
    results = load_results(study)
    vs_relu, vs_silu = transfer_matrix(results, "pgd20"), transfer_matrix(results, "pgd20", reference="silu")
    assert (vs_relu.reference, vs_silu.reference) == ("ReLU", "SiLU")
    column = "resnet18 / digits"
    assert vs_silu.diff_mean.loc["Sparta (in place)", column] == pytest.approx(45.0 - 43.0)
    assert vs_relu.diff_mean.loc["Sparta (in place)", column] == pytest.approx(45.0 - 40.0)
    assert vs_silu.diff_mean.loc["ReLU", column] == pytest.approx(40.0 - 43.0)
    assert transfer_matrix(results, "pgd20", reference="SiLU").reference == "SiLU"  # a row label works too
    assert (study / "matrices" / "pgd20.vs-silu.json").is_file()  # written by the runner's finalize step
    assert json.loads((study / "matrices" / "pgd20.vs-silu.json").read_text())["reference"] == "SiLU"
    with pytest.raises(ValueError, match="reference row 'gelu' is not in the study"):
        transfer_matrix(results, "pgd20", reference="gelu")

    assert main(["study", "matrix", str(study), "--metric", "pgd20", "--reference", "silu", "--diff"]) == 0
    assert "difference to SiLU" in capsys.readouterr().out
    assert main(["study", "matrix", str(study), "--reference", "gelu"]) == 2
    err = capsys.readouterr().err
    assert "reference row 'gelu' is not in the study" in err and len(err.strip().splitlines()) == 1


def test_overview_shows_the_difference_to_relu_and_to_silu(study):
    results = load_results(study)
    main_tm = transfer_matrix(results, "pgd20")
    fig = overview_figure(
        name="threats",
        seeds=[0],
        status_counts={"done": 1},
        matrix=main_tm,
        histories={},
        other_references=[transfer_matrix(results, "pgd20", reference="silu")],
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert any("minus ReLU" in t for t in titles) and any("minus SiLU" in t for t in titles)
    assert "ε per target" in fig.get_suptitle()


def test_write_matrices_skips_a_reference_the_study_lacks(tmp_path, study):
    no_silu = load_results(study).query("row != 'SiLU'")
    write_matrices(no_silu, tmp_path)
    assert (tmp_path / "pgd20.json").is_file() and not list(tmp_path.glob("*.vs-silu.*"))


def test_headline_attack_and_eps_formatting():
    assert strongest_attack(["clean", "fgsm", "pgd20", "cw", "aa"]) == "aa"
    assert strongest_attack(["fgsm", "apgd-ce", "pgd50", "apgd-t"]) == "apgd-t"
    assert strongest_attack(["apgd-ce", "apgd-t", "apgd-ce+t"]) == "apgd-ce+t"
    assert strongest_attack(["pgd20", "apgd-ce", "apgd-t3", "apgd-ce+t3"]) == "apgd-ce+t3"
    assert strongest_attack(["apgd-ce+t3", "apgd-ce+t"]) == "apgd-ce+t"  # 9 targets rank above 3
    assert strongest_attack(["apgd-t3", "apgd-ce"]) == "apgd-t3"
    assert strongest_attack(["fgsm", "pgd7", "pgd20", "cw"]) == "pgd20"
    assert strongest_attack(["fgsm", "cw"]) == "cw"
    assert strongest_attack(["clean", "pgd20-l2"]) is None
    assert (format_eps(8 / 255), format_eps(0.1), format_eps(0.025), format_eps(None)) == ("8/255", "0.1", "0.025", "?")
