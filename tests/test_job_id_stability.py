"""A study's job ids hash the training config, so a field added to ``TrainConfig`` would change the id of
every job already run, and a resumed study (or ``--reuse``) would silently train everything again. New
fields are hashed only when they differ from their default (``planner._HASHED_UNLESS_DEFAULT``)."""

from __future__ import annotations

import dataclasses

from studies.planner import _HASHED_UNLESS_DEFAULT, _NOT_HASHED, _hashed_train
from transfer.engine.config import TrainConfig

# The fields whose values every job id has hashed since studies were first run. Never extend this list:
# a new TrainConfig field goes into _HASHED_UNLESS_DEFAULT with its default (or _NOT_HASHED).
FIRST_RELEASE_FIELDS = {
    "activation", "activation_config", "activation_weight_decay", "alpha", "amp", "arch", "batch_size",
    "channels_last", "dataset", "epochs", "eps", "eval_attacks", "eval_batch_size", "eval_eps", "fgsm_step",
    "freeze", "gamma", "in_chans", "input_size", "lr", "milestones", "momentum", "nesterov", "patience",
    "plateau_tol", "policy", "recipe", "schedule", "seed", "steps", "test_subset", "trades_beta", "train_subset",
    "until_plateau", "val_subset", "weight_decay", "width",
}  # fmt: skip


def test_every_field_added_since_is_hashed_only_away_from_its_default():
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(TrainConfig)
    }
    added = set(defaults) - FIRST_RELEASE_FIELDS - set(_NOT_HASHED)
    unregistered = sorted(added - set(_HASHED_UNLESS_DEFAULT))
    assert not unregistered, (
        f"TrainConfig field(s) {unregistered} would change the id of every finished study "
        "job: add them to studies.planner._HASHED_UNLESS_DEFAULT with their defaults"
    )
    assert {k: defaults[k] for k in _HASHED_UNLESS_DEFAULT} == _HASHED_UNLESS_DEFAULT


def test_a_default_config_hashes_the_first_release_fields_only_and_a_set_new_field_counts():
    train = TrainConfig().to_dict()
    assert set(_hashed_train(train)) == FIRST_RELEASE_FIELDS
    assert _hashed_train({**train, "cpu_bf16": True})["cpu_bf16"] is True
    assert _hashed_train({**train, "init_from": "ckpt.safetensors"})["init_from"] == "ckpt.safetensors"
