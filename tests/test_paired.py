"""Per-image paired evaluation: stored correctness bits, per-seed McNemar description, and the matrix/heatmap
verdicts drawn from studies.stats over seeds and images together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from plots.heatmap import EQUIVALENCE_MARK, SIGNIFICANCE_MARK, cell_labels, marks
from studies.matrix import transfer_matrix, write_matrices
from studies.paired import PerImageStore, discordant, mcnemar_exact, paired_image_tests, paired_outcomes
from studies.results import _metrics as job_metrics
from studies.stats import paired_difference
from transfer import create_backbone, inject
from transfer.engine import per_image as per_image_mod
from transfer.engine.config import TrainConfig
from transfer.engine.evaluation import evaluate
from transfer.engine.per_image import (
    PER_IMAGE_FILE,
    PerImage,
    data_fingerprint,
    ensemble_metrics,
    ensembles_of,
    load_per_image,
    save_per_image,
    with_ensembles,
)
from transfer.engine.training import load_test_data, train

REF = np.array([1, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
# seed 0: one image only the row gets right, three only the reference gets right
ROW_S0 = np.array([1, 0, 0, 0, 1, 0, 1, 0], dtype=bool)
# seed 1: three only the reference gets right
ROW_S1 = np.array([0, 0, 0, 1, 0, 0, 1, 0], dtype=bool)


def test_mcnemar_matches_the_hand_computed_exact_test():
    # b = 1, c = 6: two-sided exact p = 2 · P(X ≤ 1), X ~ Bin(7, 1/2) = 2 · (1 + 7) / 128 = 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(1, 3) == pytest.approx(2 * (1 + 4) / 16)  # = 0.625
    assert mcnemar_exact(0, 3) == pytest.approx(2 / 8)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert discordant(ROW_S0, REF) == (1, 3) and discordant(ROW_S1, REF) == (0, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        discordant(ROW_S0, REF[:4])


def _results(seeds=(0, 1)) -> pd.DataFrame:
    records = []
    for seed in seeds:
        for row, bits in (("ReLU", REF), ("Sparta", ROW_S0 if seed == 0 else ROW_S1)):
            records.append(
                {
                    "job_id": f"{row}-{seed}",
                    "kind": "baseline",
                    "row": row,
                    "column": "r18 / digits",
                    "activation": row.lower(),
                    "seed": seed,
                    "metric": "pgd20",
                    "value": 100.0 * bits.mean(),
                }
            )
    return pd.DataFrame.from_records(records)


def _store() -> PerImageStore:
    return PerImageStore.from_mapping(
        {
            "ReLU-0": {"pgd20": REF},
            "ReLU-1": {"pgd20": REF},
            "Sparta-0": {"pgd20": ROW_S0},
            "Sparta-1": {"pgd20": ROW_S1},
        }
    )


def test_per_seed_tests_describe_each_pair_of_models_and_nothing_is_pooled():
    tests = paired_image_tests(_results(), "pgd20", "ReLU", _store())
    assert set(tests["scope"]) == {"seed"}  # a pooled McNemar test would treat seed noise as image noise
    per_seed = tests.set_index("seed")
    assert list(per_seed.index) == [0, 1]
    assert per_seed.loc[0, ["better", "worse"]].tolist() == [1, 3]
    assert per_seed.loc[0, "p_value"] == pytest.approx(0.625)
    assert per_seed.loc[1, "p_value"] == pytest.approx(0.25)
    assert per_seed.loc[1, "diff"] == pytest.approx(100 * (ROW_S1.mean() - REF.mean()))


def test_outcomes_pair_seeds_and_images_and_fall_back_to_accuracies():
    outcomes = paired_outcomes(_results(), "pgd20", "Sparta", "r18 / digits", "ReLU", _store())
    assert outcomes.unit == "images" and outcomes.seeds == (0, 1) and outcomes.row.shape == (2, 8)
    assert (outcomes.row[1] == ROW_S1).all() and (outcomes.ref == REF).all()
    store = _store()
    store._cache["Sparta-1"].fingerprint = "other images"  # one seed measured elsewhere: bits not comparable
    fallback = paired_outcomes(_results(), "pgd20", "Sparta", "r18 / digits", "ReLU", store)
    assert fallback.unit == "accuracies" and fallback.row.shape == (2, 1)
    assert fallback.row[:, 0].tolist() == pytest.approx([ROW_S0.mean(), ROW_S1.mean()])
    tests = paired_image_tests(_results(), "pgd20", "ReLU", store)
    assert tests["seed"].tolist() == [0]


def test_matrix_verdicts_come_from_the_statistics_and_one_seed_is_never_marked():
    ref, row = np.ones(40, dtype=bool), np.r_[np.zeros(20, dtype=bool), np.ones(20, dtype=bool)]
    results = _results(seeds=(0,))
    results.loc[results["row"] == "Sparta", "value"] = 50.0
    results.loc[results["row"] == "ReLU", "value"] = 100.0
    store = PerImageStore.from_mapping({"ReLU-0": {"pgd20": ref}, "Sparta-0": {"pgd20": row}})
    tm = transfer_matrix(results, "pgd20", per_image=store)
    cell = tm.cell("Sparta", "r18 / digits")
    expected = paired_difference(row[None].astype(float), ref[None].astype(float))
    assert (cell["diff_mean"], cell["ci_low"], cell["ci_high"]) == pytest.approx(
        (expected.diff, expected.ci_low, expected.ci_high)
    )
    assert cell["verdict"] == "worse" and cell["n_images"] == 40 and cell["n"] == 1
    # one seed: two trained models differ, which says nothing yet about the activations
    assert tm.single_seed() and marks(tm).to_numpy().tolist() == [[""], [""]]
    assert SIGNIFICANCE_MARK not in cell_labels(tm, diff=True)[0, 0]
    assert "[-" in cell_labels(tm, diff=True)[0, 0]  # the interval is printed


def test_seeds_that_disagree_are_not_marked_and_consistent_ones_are():
    rng = np.random.default_rng(0)
    ref = rng.random((6, 200)) < 0.6
    records, bits = [], {}
    for seed in range(6):
        for row, shift in (("ReLU", 0), ("Worse", -15), ("Noisy", (-15, 12)[seed % 2]), ("Same", 0)):
            b = ref[seed].copy()
            right, wrong = np.flatnonzero(b), np.flatnonzero(~b)
            if shift < 0:
                b[right[:-shift]] = False
            elif shift > 0:
                b[wrong[:shift]] = True
            bits[f"{row}-{seed}"] = {"pgd20": b}
            records.append(
                {
                    "job_id": f"{row}-{seed}",
                    "kind": "baseline",
                    "row": row,
                    "column": "c",
                    "activation": row.lower(),
                    "seed": seed,
                    "metric": "pgd20",
                    "value": 100 * b.mean(),
                }
            )
    tm = transfer_matrix(pd.DataFrame.from_records(records), "pgd20", per_image=PerImageStore.from_mapping(bits))
    assert tm.verdict.loc[["Worse", "Noisy", "Same"], "c"].tolist() == ["worse", "inconclusive", "equivalent"]
    assert marks(tm).loc[["Worse", "Noisy", "Same"], "c"].tolist() == [SIGNIFICANCE_MARK, "", EQUIVALENCE_MARK]
    assert (tm.p_adjusted.loc[["Worse", "Noisy", "Same"], "c"] >= tm.p_value.loc[["Worse", "Noisy", "Same"], "c"]).all()


def test_write_matrices_writes_the_paired_table(tmp_path):
    write_matrices(_results(), tmp_path, per_image=_store())
    table = pd.read_csv(tmp_path / "pgd20.paired.csv")
    assert set(table["scope"]) == {"seed"} and set(table["reference"]) == {"ReLU"}
    assert sorted(table["p_value"]) == pytest.approx([0.25, 0.625])


def test_per_image_bits_round_trip_packed(tmp_path):
    rng = np.random.default_rng(0)
    bits = PerImage({"clean": rng.random(8001) < 0.5, "apgd-ce": rng.random(8001) < 0.3}, "abc")
    path = save_per_image(tmp_path / PER_IMAGE_FILE, bits)
    assert path.stat().st_size < 2 * 1001 + 400  # one bit an image (plus a header), not one byte
    back = load_per_image(path)
    assert back.fingerprint == "abc" and back.n == 8001
    assert all(np.array_equal(back[m], bits[m]) for m in bits)
    (tmp_path / "foreign.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable per-image file"):
        load_per_image(tmp_path / "foreign.safetensors")


def test_evaluate_returns_per_image_correctness_consistent_with_its_accuracy():
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=1, input_size=8, width=4)
    inject(model, "relu")
    config = TrainConfig(dataset="digits", input_size=8, in_chans=1, test_subset=48)
    data = load_test_data(config)
    metrics, correct = evaluate(model, data, ["clean", "fgsm"], eps=0.1, batch_size=20, return_per_image=True)
    assert correct.n == 48 and correct.fingerprint == data_fingerprint(data)
    for name in ("clean", "fgsm"):
        assert metrics[name] == pytest.approx(100 * correct[name].mean())
    assert not (correct["fgsm"] & ~correct["clean"]).any()  # robust only if also clean-correct


def test_every_row_and_seed_of_a_column_sees_the_same_test_images():
    base = dict(dataset="digits", input_size=8, in_chans=1, test_subset=50)
    prints = {
        data_fingerprint(load_test_data(TrainConfig(seed=s, activation=a, **base)))
        for s in (0, 3)
        for a in ("relu", "sparta")
    }
    assert len(prints) == 1
    other = data_fingerprint(load_test_data(TrainConfig(**{**base, "test_subset": 40})))
    assert other not in prints


def test_a_run_stores_the_per_image_bits_of_its_final_metrics(tmp_path):
    config = TrainConfig(
        arch="resnet18",
        dataset="digits",
        width=4,
        input_size=8,
        epochs=1,
        batch_size=32,
        eps=0.1,
        alpha=0.05,
        steps=1,
        train_subset=64,
        test_subset=40,
        val_subset=20,
        eval_attacks=("clean", "fgsm"),
        device="cpu",
    )
    metrics = train(config, tmp_path, progress=False)
    bits = load_per_image(tmp_path / PER_IMAGE_FILE)
    assert set(bits) == {"clean", "fgsm"} and bits.n == 40
    assert metrics["fgsm"] == pytest.approx(100 * bits["fgsm"].mean())


def test_the_apgd_ensemble_is_the_per_image_worst_case_of_its_stages():
    ce = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    t = np.array([1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    full = with_ensembles(PerImage({"clean": np.ones(8, bool), "apgd-ce": ce, "apgd-t": t}, "0f"))
    assert np.array_equal(full["apgd-ce+t"], ce & t) and full.fingerprint == "0f"
    assert ensemble_metrics(full) == {"apgd-ce+t": 50.0}  # 4 of 8, below APGD-CE's 6 and APGD-T's 5
    alone = PerImage({"apgd-ce": ce}, "0f")
    assert with_ensembles(alone) is alone and ensemble_metrics(alone) == {}  # a member is missing
    assert ensembles_of(["clean", "apgd-ce", "apgd-t3", "apgd-t"]) == {
        "apgd-ce+t3": ("apgd-ce", "apgd-t3"),
        "apgd-ce+t": ("apgd-ce", "apgd-t"),
    }
    assert ensembles_of(["apgd-t", "pgd20"]) == {}


def test_evaluate_reports_an_ensemble_when_all_its_members_ran(monkeypatch):
    pair = {"fgsm+pgd3": ("fgsm", "pgd3")}
    monkeypatch.setattr(per_image_mod, "ensembles_of", lambda metrics: pair if {"fgsm", "pgd3"} <= set(metrics) else {})
    torch.manual_seed(0)
    model = create_backbone("resnet18", num_classes=10, in_chans=1, input_size=8, width=4)
    inject(model, "relu")
    data = load_test_data(TrainConfig(dataset="digits", input_size=8, in_chans=1, test_subset=40))
    metrics, correct = evaluate(model, data, ["clean", "fgsm", "pgd3"], eps=0.3, return_per_image=True)
    assert list(metrics) == ["clean", "fgsm", "pgd3", "fgsm+pgd3"]
    assert np.array_equal(correct["fgsm+pgd3"], correct["fgsm"] & correct["pgd3"])
    assert metrics["fgsm+pgd3"] == pytest.approx(100 * correct["fgsm+pgd3"].mean())
    assert metrics["fgsm+pgd3"] <= min(metrics["fgsm"], metrics["pgd3"])
    assert list(evaluate(model, data, ["clean", "fgsm"], eps=0.3)) == ["clean", "fgsm"]


def test_a_study_derives_the_ensemble_of_a_job_evaluated_before_it_existed(tmp_path):
    ce = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    t = np.array([1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    job = tmp_path / "jobs" / "j1"
    job.mkdir(parents=True)
    save_per_image(job / PER_IMAGE_FILE, PerImage({"apgd-ce": ce, "apgd-t": t}, "0f"))
    old = {"metrics": {"apgd-ce": 75.0, "apgd-t": 62.5}}
    assert job_metrics(tmp_path, "j1", old) == {"apgd-ce": 75.0, "apgd-t": 62.5, "apgd-ce+t": 50.0}
    assert job_metrics(tmp_path, "j2", old) == old["metrics"]  # no bits stored: nothing derived
    bits, fingerprint = PerImageStore(tmp_path).get("j1", "apgd-ce+t")
    assert np.array_equal(bits, ce & t) and fingerprint == "0f"
