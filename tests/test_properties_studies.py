"""Hypothesis properties of the studies' data: zoo entry names made from free text, the long results table
(written and read back), and transfer matrices (their statistics, JSON and CSV forms); and the import
boundaries of the layout (the core never loads the engine, studies.jobs never loads studies.training_job)."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studies.matrix import TransferMatrix, transfer_matrix, write_matrices
from studies.results import RESULT_COLUMNS, load_results, write_results
from zoo.names import MAX_NAME_LENGTH, NAME_PATTERN, derive_name, validate_name

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- zoo.names.derive_name -------------------------------------------------------------------------------

_part = st.one_of(st.none(), st.text(max_size=30), st.integers(-5, 10**6), st.floats(allow_nan=False))
_word = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)


@SETTINGS
@given(st.lists(_part, max_size=6))
def test_derive_name_always_gives_a_valid_name(parts):
    name = derive_name(*parts)
    assert validate_name(name) == name
    assert NAME_PATTERN.fullmatch(name) and len(name) <= MAX_NAME_LENGTH
    assert name[-1] not in "-._"


@SETTINGS
@given(st.lists(_part, max_size=6))
def test_derive_name_is_idempotent_and_ignores_empty_parts(parts):
    name = derive_name(*parts)
    assert derive_name(name) == name
    assert derive_name(None, *parts, "") == name


@SETTINGS
@given(st.lists(_word, min_size=1, max_size=5))
def test_derive_name_joins_valid_words_in_order(words):
    joined = "-".join(words)
    expected = joined[:MAX_NAME_LENGTH].rstrip("-._")
    assert derive_name(*words) == expected
    assert derive_name(*(w.upper() for w in words)) == expected  # names are lower case


@SETTINGS
@given(st.text(max_size=20))
def test_derive_name_falls_back_to_activation_exactly_when_no_letter_or_digit_is_left(text):
    usable = any(c in "abcdefghijklmnopqrstuvwxyz0123456789" for c in text.lower())
    assert (derive_name(text) == "activation") == (not usable or text.lower().strip("-._") == "activation")


# -- the long results table ------------------------------------------------------------------------------

# any printable text: labels hold spaces, commas, quotes, arrows, "NA" and "None"; control characters are
# left out (the CSV writer does not quote a bare carriage return, and no study label has one)
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8)
_number = st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")))
_NUMBERS = ("eps", "epochs", "converged", "epochs_needed", "value")  # the table's float columns


@st.composite
def _results_tables(draw) -> pd.DataFrame:
    n = draw(st.integers(0, 6))
    records = []
    for _ in range(n):
        record = {c: draw(_text) for c in RESULT_COLUMNS}
        record.update(seed=draw(st.integers(0, 2**31)), **{c: draw(_number) for c in _NUMBERS})
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))
    return frame.astype({"seed": "int64", **dict.fromkeys(_NUMBERS, "float64")})


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    for column in want.columns:
        a, b = got[column].tolist(), want[column].tolist()
        if column in _NUMBERS:
            assert np.allclose(a, b, equal_nan=True, rtol=1e-12, atol=0), column
        else:
            assert a == b, column


@SETTINGS
@given(_results_tables())
def test_results_table_round_trips_through_parquet_and_csv(tmp_path_factory, table):
    root = tmp_path_factory.mktemp("study")
    written = write_results(table, root)
    assert {p.name for p in written} == {"results.csv", "results.parquet"}
    _assert_same_table(load_results(root), table)
    (root / "results.parquet").unlink()  # the CSV alone must give the same table: text stays text
    _assert_same_table(load_results(root), table)


# -- transfer matrices -----------------------------------------------------------------------------------

_ROWS = {"ReLU": ("baseline", "relu"), "SiLU": ("baseline", "silu"), "Sparta dw ← r18/digits": ("target", "sparta")}
_COLUMNS = ("resnet34 / digits", "resnet18 / shapes", "NA / x")


@st.composite
def _matrix_inputs(draw) -> pd.DataFrame:
    """A long table for one metric: every (row, column, seed) present or not, some with two values."""
    rows = draw(st.lists(st.sampled_from(list(_ROWS)), min_size=1, max_size=3, unique=True))
    columns = draw(st.lists(st.sampled_from(_COLUMNS), min_size=1, max_size=3, unique=True))
    seeds = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True))
    records = []
    for row in rows:
        for column in columns:
            for seed in seeds:
                for _ in range(draw(st.integers(0, 2))):
                    kind, activation = _ROWS[row]
                    value = draw(st.floats(0, 100))
                    records.append(
                        {"kind": kind, "row": row, "column": column, "activation": activation, "seed": seed,
                         "metric": "pgd20", "value": value}
                    )  # fmt: skip
    if not records:
        kind, activation = _ROWS[rows[0]]
        records.append({"kind": kind, "row": rows[0], "column": columns[0], "activation": activation,
                        "seed": seeds[0], "metric": "pgd20", "value": 50.0})  # fmt: skip
    return pd.DataFrame(records)


def _per_seed(table: pd.DataFrame, row: str, column: str) -> pd.Series:
    cell = table[(table["row"] == row) & (table["column"] == column)]
    return cell.groupby("seed")["value"].mean()


@SETTINGS
@given(_matrix_inputs())
def test_matrix_cells_are_the_per_seed_statistics(table):
    tm = transfer_matrix(table, "pgd20")
    assert sorted(tm.rows) == sorted(set(table["row"])) and sorted(tm.columns) == sorted(set(table["column"]))
    has_relu = "ReLU" in set(table["row"])
    assert (tm.reference == "ReLU") == has_relu and (tm.rows[0] == "ReLU") == has_relu
    for row in tm.rows:
        for column in tm.columns:
            values = _per_seed(table, row, column)
            cell = tm.cell(row, column)
            if values.empty:
                assert math.isnan(cell["mean"]) and math.isnan(cell["n"])
                continue
            assert cell["n"] == len(values) and math.isclose(cell["mean"], values.mean(), abs_tol=1e-9)
            assert math.isnan(cell["std"]) == (len(values) < 2)
            reference = _per_seed(table, "ReLU", column) if has_relu else pd.Series(dtype=float)
            paired = values.index.intersection(reference.index)
            if len(paired):
                diff = (values.loc[paired] - reference.loc[paired]).mean()
                assert math.isclose(cell["diff_mean"], diff, abs_tol=1e-9)
                assert row != "ReLU" or cell["diff_mean"] == 0
                if row == "ReLU":
                    assert math.isnan(cell["p_value"]) and cell["verdict"] == ""
                else:
                    assert cell["n_paired"] == len(paired) and cell["ci_low"] <= diff + 1e-9 <= cell["ci_high"] + 2e-9
                    assert cell["verdict"] in ("better", "worse", "equivalent", "inconclusive")
            else:
                assert math.isnan(cell["diff_mean"])


def _assert_same_matrix(got: TransferMatrix, want: TransferMatrix) -> None:
    assert (got.metric, got.rows, got.columns, got.reference) == (want.metric, want.rows, want.columns, want.reference)
    for stat in ("mean", "std", "n", "diff_mean", "diff_std", "p_value"):
        a, b = getattr(got, stat), getattr(want, stat)
        assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns), stat
        assert np.allclose(a.to_numpy(float), b.to_numpy(float), equal_nan=True, rtol=1e-12, atol=0), stat
    assert got.to_dict() == want.to_dict()


@SETTINGS
@given(_matrix_inputs())
def test_matrix_files_read_back_as_the_matrix(tmp_path_factory, table):
    """``<metric>.json`` gives the matrix back through ``from_dict``; ``<metric>.csv`` gives its frame."""
    out = tmp_path_factory.mktemp("matrices")
    tm = write_matrices(table, out)["pgd20"]
    _assert_same_matrix(TransferMatrix.from_dict(tm.to_dict()), tm)
    _assert_same_matrix(TransferMatrix.from_dict(json.loads((out / "pgd20.json").read_text("utf-8"))), tm)
    frame = tm.to_frame()
    back = pd.read_csv(out / "pgd20.csv", header=[0, 1], index_col=0, keep_default_na=False, na_values=[""])
    assert list(back.index) == list(frame.index) == tm.rows
    assert list(back.columns) == list(frame.columns)
    verdicts = [c for c in frame.columns if c[1] == "verdict"]
    read = back[verdicts].astype(object)
    assert read.where(read.notna(), "").astype(str).equals(frame[verdicts].astype(str))
    back, frame = back.drop(columns=verdicts), frame.drop(columns=verdicts)
    assert np.allclose(back.to_numpy(float), frame.to_numpy(float), equal_nan=True, rtol=1e-12, atol=0)


# -- import boundaries -----------------------------------------------------------------------------------


def _modules_after(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``imports``."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in imports) + "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_core_and_the_zoo_never_import_the_engine():
    loaded = _modules_after("transfer.inject", "transfer.activations", "zoo")
    assert {"transfer.inject", "transfer.activations", "zoo"} <= loaded  # the probe saw the imports
    assert sorted(m for m in loaded if m == "transfer.engine" or m.startswith("transfer.engine.")) == []


def test_study_jobs_do_not_import_the_study_engine():
    loaded = _modules_after("studies.jobs")
    assert "studies.jobs" in loaded and "studies.training_job" not in loaded
    assert not any(m.startswith("transfer.engine") for m in loaded)
