"""Convergence: the plateau criterion, until-plateau training with its schedules, and the † marks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_config

from plots.heatmap import cell_labels
from studies.matrix import NOT_CONVERGED_MARK, transfer_matrix
from transfer.engine import training as training_mod
from transfer.engine.config import TrainConfig
from transfer.engine.convergence import convergence_record, declined, plateau_epoch, plateaued
from transfer.engine.training import lr_factor, train


def test_plateau_criterion_on_hand_made_curves():
    climbing = [10, 20, 30, 40, 50]
    assert not plateaued(climbing, 3, 1.0)
    flat = [10, 20, 30, 30.5, 30.2, 30.4]
    assert not plateaued(flat[:5], 3, 1.0)  # best before [10, 20] vs last three 30.5: still climbing
    assert plateaued(flat, 3, 1.0)  # best before 30, last three 30.5: within a point
    declining = [10, 40, 30, 25, 20, 15]
    assert plateaued(declining, 3, 1.0) and declined(declining, 3, 1.0)  # past its peak (robust overfitting)
    assert not declined(flat, 3, 1.0) and not declined(climbing, 3, 1.0)
    noisy_flat = [30, 52, 49, 53, 50, 51, 52.5]  # no new best by a point in the last three epochs
    assert plateaued(noisy_flat, 3, 1.0) and not declined(noisy_flat, 3, 1.0)
    assert not plateaued([30, 52, 49, 53, 50, 51, 54.5], 3, 1.0)  # 54.5 beats 53 by 1.5: still climbing
    assert not plateaued([50, 50, 50], 3, 1.0)  # needs more than `patience` epochs
    assert plateau_epoch(flat, 3, 1.0) == 6
    assert plateau_epoch([50] * 10, 3, 1.0) == 4
    assert plateau_epoch([50] * 10, 3, 1.0, start=4) == 8
    assert plateau_epoch(climbing, 3, 1.0) is None

    history = [{"val_robust": v} for v in flat]
    record = convergence_record(history, 3, 1.0)
    assert record["converged"] is True and record["epochs"] == 6 and record["declined"] is False
    assert convergence_record([{"val_robust": v} for v in declining], 3, 1.0)["declined"] is True
    assert record["best_epoch"] == 4 and record["epochs_needed"] == 3 and record["best_val_robust"] == 30.5
    unknown = convergence_record([{"val_robust": None}] * 4, 3, 1.0)
    assert unknown["converged"] is None and unknown["declined"] is None and unknown["epochs_needed"] is None


def _tiny(**overrides) -> TrainConfig:
    """Up to 10 standard epochs at a constant lr 0.05, validated on 20 images."""
    specific = dict(
        recipe="standard", epochs=10, lr=0.05, eps=0.1, alpha=0.05, steps=1, val_subset=20, schedule="constant"
    )
    return tiny_config(**{**specific, **overrides})


def _scripted_validation(monkeypatch, robust):
    """Make the per-epoch validation report ``robust`` (one value per epoch) so plateaus are known."""
    values = iter(robust)
    monkeypatch.setattr(training_mod, "validate", lambda model, data, config: (50.0, float(next(values))))


def test_until_plateau_stops_at_the_plateau_and_a_rerun_does_not_train_again(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [10, 20, 30, 30.5, 30.2, 30.4, 31, 32, 33, 34])
    metrics = train(_tiny(until_plateau=True), tmp_path, progress=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 6 and metrics["epoch"] == 6
    assert metrics["convergence"]["converged"] is True and metrics["convergence"]["epochs_needed"] == 3
    assert "robust validation accuracy plateaued" in (tmp_path / "train.log").read_text()
    _scripted_validation(monkeypatch, [])  # a finished run trains (and validates) no further epoch
    assert train(_tiny(until_plateau=True), tmp_path, progress=False) == metrics


def test_plateau_schedule_decays_once_then_stops_at_the_second_plateau(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [50] * 12)
    config = _tiny(until_plateau=True, schedule="plateau", gamma=0.1, epochs=12)
    metrics = train(config, tmp_path, progress=False)
    lrs = [h["lr"] for h in json.loads((tmp_path / "history.json").read_text())]
    assert lrs == pytest.approx([0.05] * 4 + [0.005] * 4)
    assert metrics["epoch"] == 8 and metrics["convergence"]["converged"] is True
    assert metrics["lr_decay_epoch"] == 5  # the first epoch trained at lr × gamma
    history = [{"val_robust": 50.0}] * 5
    assert lr_factor(config, 3, history) == 1.0 and lr_factor(config, 4, history) == pytest.approx(0.1)


def test_a_fixed_budget_run_records_that_it_was_still_climbing(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [10, 20, 30, 40, 50])
    metrics = train(_tiny(epochs=5, schedule="cosine"), tmp_path, progress=False)
    assert metrics["epoch"] == 5 and "lr_decay_epoch" not in metrics  # recorded for the plateau schedule only
    assert metrics["convergence"]["converged"] is False and metrics["convergence"]["epochs_needed"] == 5


def test_a_plateau_run_that_never_decayed_records_null(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [10, 20, 30])
    metrics = train(_tiny(epochs=3, schedule="plateau"), tmp_path, progress=False)
    assert metrics["lr_decay_epoch"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"until_plateau": True, "schedule": "cosine"}, "until_plateau needs schedule 'plateau' or 'constant'"),
        ({"until_plateau": True, "val_subset": 0}, "needs robust validation"),
        ({"schedule": "plateau", "val_subset": None}, "needs robust validation"),
        ({"patience": 0}, "patience must be an int >= 1"),
        ({"plateau_tol": 0}, "plateau_tol must be a number > 0"),
    ],
)
def test_plateau_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**overrides).validate()


def test_matrix_results_and_heatmap_mark_cells_that_had_not_converged():
    records = []
    for seed in (0, 1):
        for row, converged in (("ReLU", 1.0), ("Sparta", 1.0 if seed == 0 else 0.0), ("SiLU", np.nan)):
            records.append(
                {
                    "job_id": f"{row}-{seed}",
                    "kind": "baseline",
                    "row": row,
                    "column": "c",
                    "activation": row.lower(),
                    "seed": seed,
                    "metric": "pgd20",
                    "value": 40.0 + seed,
                    "converged": converged,
                    "epochs_needed": 4.0 + 2 * seed,
                }
            )
    tm = transfer_matrix(pd.DataFrame.from_records(records), "pgd20")
    assert tm.converged.loc["Sparta", "c"] == 0.5 and tm.converged.loc["ReLU", "c"] == 1.0
    assert np.isnan(tm.converged.loc["SiLU", "c"])  # unknown: no validation recorded
    assert tm.epochs_needed.loc["Sparta", "c"] == 5.0
    text = tm.formatted()
    assert text.loc["Sparta", "c"].endswith(NOT_CONVERGED_MARK)
    assert not text.loc["ReLU", "c"].endswith(NOT_CONVERGED_MARK)
    labels = dict(zip(tm.rows, cell_labels(tm)[:, 0], strict=True))
    assert labels["Sparta"].endswith(NOT_CONVERGED_MARK) and NOT_CONVERGED_MARK not in labels["SiLU"]
    back = type(tm).from_dict(tm.to_dict())
    assert back.converged.loc["Sparta", "c"] == 0.5
