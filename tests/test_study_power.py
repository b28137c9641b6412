"""`sparta study power`: seeds needed from a study's (or a pilot's) variance over seeds and images."""

import json

import numpy as np
import pytest

from studies.runner import run_study
from studies.spec import load_spec
from transfer.cli import main
from transfer.engine.per_image import PER_IMAGE_FILE, PerImage, save_per_image

SPEC = """
name = "pilot"
seeds = [0, 1, 2, 3]
baselines = ["relu", "silu"]
[train]
epochs = 1
width = 4
input_size = 8
[eval]
attacks = ["clean", "pgd20"]
n = 200
[[sources]]
arch = "resnet18"
dataset = "digits"
[[targets]]
arch = "resnet34"
dataset = "digits"
"""
IMAGES = 200


def bits_job(job, directory, study_dir):
    """Per-image bits: every row a seed-dependent shift of one base pattern (a seed effect and image noise)."""
    rng = np.random.default_rng(job.seed)
    base = np.random.default_rng(123).random(IMAGES) < 0.6
    shift = {"relu": 0, "silu": int(rng.integers(-16, 17))}.get(job.activation, 6)
    bits = base.copy()
    idx = np.flatnonzero(~bits if shift > 0 else bits)[: abs(shift)]
    bits[idx] = shift > 0
    bits ^= rng.random(IMAGES) < 0.03  # image-level noise of this model
    save_per_image(directory / PER_IMAGE_FILE, PerImage({"clean": bits, "pgd20": bits}, "abcd"))
    value = 100.0 * bits.mean()
    return {"metrics": {"clean": value, "pgd20": value}}


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    study = tmp_path_factory.mktemp("pilot")
    config = study.parent / "pilot.toml"
    config.write_text(SPEC)
    run = run_study(load_spec(config), study, job_fn=bits_job, progress=False, check_mapping=False)
    assert run.ok
    return study


def _power(capsys, *args) -> dict:
    assert main(["study", "power", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_power_from_a_study_directory(pilot, capsys):
    small, large = _power(capsys, pilot, "--effect", 1), _power(capsys, pilot, "--effect", 8)
    assert small["metric"] == "pgd20"  # the strongest attack evaluated
    cells = {(c["row"], c["column"]): c for c in large["cells"]}
    silu = cells[("SiLU", "resnet34 / digits")]
    assert silu["pilot_seeds"] == 4 and silu["pilot_images"] == IMAGES and silu["unit"] == "images"
    assert silu["seed_sd"] > 1.5  # the seed effect is there
    need_small = {(c["row"], c["column"]): c["seeds_needed"] for c in small["cells"]}
    for key, cell in cells.items():
        assert cell["seeds_needed"] <= need_small[key] or need_small[key] != need_small[key]


def test_power_for_a_config_needs_a_pilot(pilot, tmp_path, capsys):
    config = tmp_path / "study.toml"
    config.write_text((pilot / "study.toml").read_text())
    assert main(["study", "power", str(config), "--effect", "4"]) == 2
    assert "give --pilot DIR" in capsys.readouterr().err
    result = _power(capsys, config, "--effect", 4, "--pilot", pilot)
    assert {c["row"] for c in result["cells"]} >= {"SiLU"}
    assert main(["study", "power", str(pilot), "--effect", "4"]) == 0
    text = capsys.readouterr().out
    assert "paired seeds to detect a 4-point difference in pgd20" in text and "seeds_needed" in text


def test_matrix_tables_for_a_paper(pilot, capsys):
    assert main(["study", "matrix", str(pilot), "--metric", "pgd20", "--diff", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| row | resnet34 / digits |") and "Sparta dw ← resnet18/digits [role]" in md
    assert "[" in md and any(v in md for v in ("better", "worse", "equivalent", "inconclusive"))
    assert main(["study", "matrix", str(pilot), "--metric", "pgd20", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}{lrr}" in latex and r"$\leftarrow$" in latex and r"$\pm$" in latex
    assert "←" not in latex and "±" not in latex  # every special character escaped
    assert main(["study", "matrix", str(pilot), "--metric", "pgd20", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("column,")


def test_per_class_accuracy_from_the_stored_bits(pilot, capsys):
    import pandas as pd

    from studies.matrix import transfer_matrix
    from studies.results import load_results
    from studies.runner import load_plan
    from studies.tables import per_class_accuracy, per_class_table

    frame = per_class_accuracy(pilot, load_plan(pilot), "pgd20")
    table = per_class_table(frame, "resnet34 / digits")
    assert list(table.columns) == [str(d) for d in range(10)] and "SiLU" in table.index
    cell = frame[(frame["row"] == "SiLU") & (frame["column"] == "resnet34 / digits")]
    weights = cell.drop_duplicates("class").set_index("class")["n"].reindex(table.columns)
    overall = float((table.loc["SiLU"] * weights).sum() / weights.sum())
    tm = transfer_matrix(load_results(pilot), "pgd20")
    assert overall == pytest.approx(tm.mean.loc["SiLU", "resnet34 / digits"])
    assert main(["study", "matrix", str(pilot), "--metric", "pgd20", "--per-class", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "accuracy per class (%), resnet34 / digits" in out and isinstance(table, pd.DataFrame)


def test_declared_comparisons_are_adjusted_over_themselves(pilot, capsys):
    from studies.endpoints import compare
    from studies.paired import PerImageStore
    from studies.results import load_results
    from studies.stats import holm

    pairs = [("SiLU", "ReLU", "resnet34 / digits"), ("Sparta dw ← resnet18/digits [role]", "ReLU", "resnet34 / digits")]
    table = compare(load_results(pilot), "pgd20", pairs, store=PerImageStore(pilot))
    assert list(table["row"]) == [p[0] for p in pairs] and set(table["seeds"]) == {4} and set(table["images"]) == {200}
    assert list(table["p_adjusted"]) == pytest.approx(list(holm(table["p_value"])))
    assert (table["ci_low"] <= table["diff"]).all() and (table["diff"] <= table["ci_high"]).all()
    argv = ["study", "compare", str(pilot), "--metric", "pgd20", "--format", "md"]
    for pair in pairs:
        argv += ["--pair", *pair]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| SiLU − ReLU \\| resnet34 / digits |" in out and "Holm over 2 comparison(s)" in out
    assert main(["study", "compare", str(pilot), "--pair", "GELU", "ReLU", "resnet34 / digits"]) == 2
    assert "no seed has both 'GELU' and 'ReLU'" in capsys.readouterr().err


def test_one_test_declared_twice_counts_once_in_holm(pilot, capsys):
    """The same jobs against the same reference, declared twice or under a second label (a source is also
    "Sparta (in place)" of its own column), are one test: Holm over the distinct ones."""
    import pandas as pd

    from studies.endpoints import compare
    from studies.paired import PerImageStore
    from studies.results import load_results
    from studies.stats import holm

    results = load_results(pilot)
    alias = pd.concat([results, results[results["row"] == "SiLU"].assign(row="SiLU (again)")], ignore_index=True)
    column, moved = "resnet34 / digits", "Sparta dw ← resnet18/digits [role]"
    pairs = [("SiLU", "ReLU", column), ("SiLU (again)", "ReLU", column), (moved, "ReLU", column)]
    table = compare(alias, "pgd20", pairs, store=PerImageStore(pilot))
    assert table.attrs["n_tests"] == 2
    distinct = holm(table["p_value"].iloc[[0, 2]])
    assert list(table["p_adjusted"]) == pytest.approx([distinct[0], distinct[0], distinct[1]])
    argv = ["study", "compare", str(pilot), "--metric", "pgd20", "--pair", "SiLU", "ReLU", column]
    assert main([*argv, "--pair", "SiLU", "ReLU", column, "--pair", moved, "ReLU", column]) == 0
    assert "Holm over 2 distinct tests (3 comparisons)" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tests"] == 1


def test_compare_against_another_study_tests_how_each_gap_changed(pilot, tmp_path, capsys):
    """The same design run twice, the transferred Sparta 6 images (3 points, before image noise) above ReLU in
    the pilot and 14 below it in the other: the gap changed by about 10 points on every seed; SiLU's did not."""

    def level_job(job, directory, study_dir):
        if job.kind != "target":
            return bits_job(job, directory, study_dir)
        rng = np.random.default_rng(job.seed)
        bits = np.random.default_rng(123).random(IMAGES) < 0.6
        bits[np.flatnonzero(bits)[:14]] = False  # 14 images (7 points) below ReLU here, 6 above in the pilot
        bits ^= rng.random(IMAGES) < 0.03
        save_per_image(directory / PER_IMAGE_FILE, PerImage({"clean": bits, "pgd20": bits}, "abcd"))
        return {"metrics": {"clean": 100.0 * bits.mean(), "pgd20": 100.0 * bits.mean()}}

    config = tmp_path / "pilot.toml"
    config.write_text(SPEC)
    other = tmp_path / "other"
    assert run_study(load_spec(config), other, job_fn=level_job, progress=False, check_mapping=False).ok
    transfer = "Sparta dw ← resnet18/digits [role]"
    argv = ["study", "compare", str(pilot), "--against", str(other), "--metric", "pgd20", "--json"]
    argv += ["--pair", transfer, "ReLU", "resnet34 / digits", "--pair", "SiLU", "ReLU", "resnet34 / digits"]
    assert main(argv) == 0
    moved, same = json.loads(capsys.readouterr().out)["comparisons"]
    gaps = []
    for study in (pilot, other):
        assert (
            main(
                [
                    "study",
                    "compare",
                    str(study),
                    "--metric",
                    "pgd20",
                    "--json",
                    "--pair",
                    transfer,
                    "ReLU",
                    "resnet34 / digits",
                ]
            )
            == 0
        )
        gaps.append(json.loads(capsys.readouterr().out)["comparisons"][0]["diff"])
    assert moved["diff"] == pytest.approx(gaps[0] - gaps[1]) and moved["diff"] > 8  # 20 images flipped, some noised
    assert moved["verdict"] == "better"
    assert moved["seeds"] == 4 and moved["images"] == IMAGES
    assert same["diff"] == pytest.approx(0.0) and same["verdict"] == "equivalent"
    assert main([a for a in argv if a != "--json"]) == 0
    assert f"here minus the same in {other}" in capsys.readouterr().out


def test_compare_and_status_say_when_a_pair_trained_on_different_devices(tmp_path, capsys):
    """Seed 2's ReLU trained under bf16 on CUDA (taken with --reuse from a GPU study, say), every other job
    in fp32 on the CPU: SiLU − ReLU mixes the device into seed 2's difference, and compare says so; a pair of
    two CPU jobs gets no warning."""

    def job_on_a_device(job, directory, study_dir):
        answer = bits_job(job, directory, study_dir)
        gpu = job.seed == 2 and job.activation == "relu"
        precision = {"device": "cuda", "ran": "bf16"} if gpu else {"device": "cpu", "ran": "fp32"}
        return {**answer, "train_metrics": {"precision": precision}}

    config = tmp_path / "pilot.toml"
    config.write_text(SPEC.replace("seeds = [0, 1, 2, 3]", "seeds = [0, 1, 2]"))
    study = tmp_path / "study"
    assert run_study(load_spec(config), study, job_fn=job_on_a_device, progress=False, check_mapping=False).ok
    transfer = "Sparta dw ← resnet18/digits [role]"
    argv = ["study", "compare", str(study), "--metric", "pgd20"]
    argv += ["--pair", "SiLU", "ReLU", "resnet34 / digits", "--pair", transfer, "SiLU", "resnet34 / digits"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "SiLU − ReLU | resnet34 / digits: the two jobs of 1 seed(s) trained differently" in err
    assert "seed 2: cpu/fp32 vs cuda/bf16" in err and f"{transfer} − SiLU" not in err
    assert main([*argv, "--json"]) == 0
    mixed, clean = (c["mixed_training"] for c in json.loads(capsys.readouterr().out)["comparisons"])
    assert mixed == {"2": ["cpu/fp32", "cuda/bf16"]} and clean == {}
    assert main(["study", "status", str(study)]) == 0
    assert "trained in: cpu/fp32 (" in capsys.readouterr().out
    assert main(["study", "status", str(study), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)["trained_in"]
    assert trained["cuda/bf16"] == 1 and sum(trained.values()) == len(list((study / "jobs").iterdir()))
