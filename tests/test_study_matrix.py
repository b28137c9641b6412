"""Transfer-matrix math on a synthetic long results table."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from studies.matrix import TransferMatrix, list_metrics, transfer_matrix, write_matrices
from studies.results import load_results

ROWS = {
    "ReLU": ("baseline", "relu"),
    "Sparta (in place)": ("baseline", "sparta"),
    "Sparta dw ← resnet18/digits [stage]": ("target", "sparta"),
}
COLUMNS = ["resnet34 / digits", "resnet18 / shapes"]


def _table(seeds=(0, 1, 2, 3), drop=(), seed=0):
    """Random values per (row, column, seed, metric); ``drop`` removes (row, seed) pairs."""
    rng = np.random.default_rng(seed)
    records = []
    for s in seeds:
        for col in COLUMNS:
            for row, (kind, act) in ROWS.items():
                if (row, s) in drop:
                    continue
                for metric in ("pgd20", "clean"):
                    records.append(
                        {
                            "job_id": f"{kind}-{row}-{col}-{s}",
                            "kind": kind,
                            "row": row,
                            "column": col,
                            "activation": act,
                            "seed": s,
                            "metric": metric,
                            "value": float(rng.uniform(10, 90)),
                        }
                    )
    records.append(
        {
            "job_id": "source-x",
            "kind": "source",
            "row": "Sparta dw (source)",
            "column": "resnet18 / digits",
            "activation": "sparta",
            "seed": 0,
            "metric": "pgd20",
            "value": 50.0,
        }
    )
    return pd.DataFrame(records)


def _values(df, row, col, metric="pgd20"):
    sel = df[(df.row == row) & (df.column == col) & (df.metric == metric)]
    return sel.set_index("seed")["value"].sort_index()


def test_means_stds_and_counts_match_the_table():
    df = _table(drop={("Sparta (in place)", 3)})
    tm = transfer_matrix(df, "pgd20")
    assert tm.reference == "ReLU"
    assert tm.rows[0] == "ReLU" and tm.rows[-1] == "Sparta dw (source)"  # baselines, targets, then sources
    assert tm.columns[:2] == COLUMNS and tm.columns[-1] == "resnet18 / digits"
    for row in ROWS:
        for col in COLUMNS:
            v = _values(df, row, col)
            assert tm.mean.loc[row, col] == pytest.approx(v.mean())
            assert tm.std.loc[row, col] == pytest.approx(v.std(ddof=1))
            assert tm.n.loc[row, col] == len(v)
    assert math.isnan(tm.mean.loc["ReLU", "resnet18 / digits"])


def test_differences_are_paired_by_seed_with_a_paired_t_test():
    df = _table(drop={("Sparta (in place)", 3)})
    tm = transfer_matrix(df, "pgd20")
    for row in ("Sparta (in place)", "Sparta dw ← resnet18/digits [stage]"):
        for col in COLUMNS:
            x, ref = _values(df, row, col), _values(df, "ReLU", col)
            seeds = x.index.intersection(ref.index)  # seed 3 has no in-place run: not paired
            d = x.loc[seeds] - ref.loc[seeds]
            assert tm.diff_mean.loc[row, col] == pytest.approx(d.mean())
            assert tm.diff_std.loc[row, col] == pytest.approx(d.std(ddof=1))
            # without per-image files the seeds' accuracies are compared: never surer than the paired t-test
            t = ttest_rel(x.loc[seeds], ref.loc[seeds])
            assert tm.p_value.loc[row, col] >= t.pvalue - 1e-12
            low, high = t.confidence_interval()
            assert tm.ci_low.loc[row, col] <= low + 1e-9 and tm.ci_high.loc[row, col] >= high - 1e-9
            assert tm.n_images.loc[row, col] == 1
    assert (tm.diff_mean.loc["ReLU", COLUMNS] == 0).all()
    assert tm.p_value.loc["ReLU"].isna().all() and (tm.verdict.loc["ReLU"] == "").all()
    cell = tm.cell("Sparta (in place)", COLUMNS[0])
    assert cell["n"] == 3 and set(cell) == {
        "mean",
        "std",
        "n",
        "diff_mean",
        "diff_std",
        "p_value",
        "ci_low",
        "ci_high",
        "p_equivalence",
        "p_adjusted",
        "n_paired",
        "n_images",
        "converged",
        "epochs_needed",
        "verdict",
    }
    assert cell["verdict"] in ("better", "worse", "equivalent", "inconclusive")
    assert np.isnan(cell["converged"])  # no convergence record


def test_two_seeds_give_a_wide_interval_and_one_seed_no_std():
    two = transfer_matrix(_table(seeds=(0, 1)), "pgd20")
    assert two.p_value.loc["Sparta (in place)", COLUMNS].notna().all()  # a t on one degree of freedom
    assert (two.verdict.loc["Sparta (in place)", COLUMNS] == "inconclusive").all()
    assert two.diff_std.loc["Sparta (in place)", COLUMNS].notna().all()
    one = transfer_matrix(_table(seeds=(5,)), "pgd20")
    assert one.std.loc["ReLU"].isna().all() and one.n.loc["ReLU", COLUMNS[0]] == 1
    assert "±" not in one.formatted().loc["ReLU", COLUMNS[0]]


def test_repeated_values_of_one_seed_count_once():
    df = _table(seeds=(0, 1, 2))
    doubled = pd.concat([df, df.assign(value=df.value + 2.0)])
    tm, base = transfer_matrix(doubled, "pgd20"), transfer_matrix(df, "pgd20")
    assert np.array_equal(tm.n.to_numpy(), base.n.to_numpy(), equal_nan=True)
    assert np.allclose(tm.mean.loc[list(ROWS), COLUMNS], base.mean.loc[list(ROWS), COLUMNS] + 1.0)


def test_written_matrices_round_trip(tmp_path):
    df = _table()
    (tmp_path / "study").mkdir()
    df.to_csv(tmp_path / "study" / "results.csv", index=False)
    loaded = load_results(tmp_path / "study")
    assert list_metrics(loaded) == ["clean", "pgd20"]
    written = write_matrices(loaded, tmp_path / "study" / "matrices")
    assert set(written) == {"clean", "pgd20"}
    back = TransferMatrix.from_dict(json.loads((tmp_path / "study" / "matrices" / "pgd20.json").read_text()))
    assert back.rows == written["pgd20"].rows and back.reference == "ReLU"
    assert np.allclose(back.mean.to_numpy(), written["pgd20"].mean.to_numpy(), equal_nan=True)
    csv = pd.read_csv(tmp_path / "study" / "matrices" / "pgd20.csv", header=[0, 1], index_col=0)
    assert csv.loc["ReLU", (COLUMNS[0], "mean")] == pytest.approx(written["pgd20"].mean.loc["ReLU", COLUMNS[0]])


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no results for metric 'aa'.*pgd20"):
        transfer_matrix(_table(), "aa")
    with pytest.raises(ValueError, match="lacks the column"):
        transfer_matrix(pd.DataFrame({"row": ["ReLU"], "value": [1.0]}), "pgd20")
    with pytest.raises(FileNotFoundError, match="no results.parquet or results.csv"):
        load_results(tmp_path)


def test_holm_adjusts_over_every_compared_cell_of_the_matrix():
    from studies.stats import holm

    tm = transfer_matrix(_table(), "pgd20")
    compared = tm.verdict.ne("").to_numpy()
    p, adjusted = tm.p_value.to_numpy()[compared], tm.p_adjusted.to_numpy()[compared]
    assert compared.sum() >= 4 and np.allclose(adjusted, holm(p)) and (adjusted >= p).all()


def test_a_job_shown_in_two_rows_is_one_test_in_holm():
    # one training, one job: the in-place Sparta jobs of the first column also stand for a source row there;
    # the two rows compare the same jobs with ReLU, so Holm must count that comparison once, not twice
    from studies.stats import holm

    df = _table()
    twin = df[(df.row == "Sparta (in place)") & (df.column == COLUMNS[0])].assign(row="Sparta dw (source)")
    tm = transfer_matrix(pd.concat([df, twin], ignore_index=True), "pgd20")
    compared = tm.verdict.ne("").to_numpy()
    assert tm.n_tests == compared.sum() - 1 == tm.holm_family()
    both = [("Sparta (in place)", COLUMNS[0]), ("Sparta dw (source)", COLUMNS[0])]
    assert tm.p_adjusted.loc[both[0]] == tm.p_adjusted.loc[both[1]]
    distinct = [(r, c) for r in tm.rows for c in tm.columns if tm.verdict.loc[r, c] and (r, c) != both[1]]
    expected = holm([tm.p_value.loc[cell] for cell in distinct])
    assert np.allclose([tm.p_adjusted.loc[cell] for cell in distinct], expected)
    plain = transfer_matrix(df, "pgd20")  # without the twin row nothing is shared
    assert plain.n_tests == plain.verdict.ne("").to_numpy().sum()
    back = TransferMatrix.from_dict(json.loads(json.dumps(tm.to_dict())))
    assert back.n_tests == tm.n_tests
    legacy = {k: v for k, v in tm.to_dict().items() if k != "n_tests"}  # a matrix JSON from before
    assert TransferMatrix.from_dict(legacy).holm_family() == compared.sum()


def test_a_column_at_two_radii_is_refused_not_averaged():
    df = _table()
    df["eps"] = 0.1
    df.loc[df["seed"] == 1, "eps"] = 0.05
    with pytest.raises(ValueError, match=r"several evaluation radii \(ε = 0.05, 0.1\)"):
        transfer_matrix(df, "pgd20")
