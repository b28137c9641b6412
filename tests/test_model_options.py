"""TrainConfig.model_kwargs (timm keywords) and TrainConfig.optimizer: they reach the model and the optimizer,
bad values are refused, and study job ids of configs that leave them at their defaults do not change."""

import pytest
import torch

from studies.planner import _hash_config
from transfer.engine.config import TrainConfig
from transfer.engine.epochs import create_optimizer
from transfer.engine.training import build_model


def _config(**changes):
    return TrainConfig(arch="vit_tiny_patch16_224", dataset="digits", input_size=16, in_chans=1, **changes)


def test_model_kwargs_build_the_model_and_adamw_is_the_optimizer():
    config = _config(model_kwargs={"depth": 1, "embed_dim": 8, "num_heads": 2}, optimizer="adamw", lr=1e-3)
    model, _ = build_model(config.validate(), num_classes=10)
    assert len(model.blocks) == 1 and model.embed_dim == 8
    optimizer = create_optimizer(config, model)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 1e-3
    assert isinstance(create_optimizer(_config(), model), torch.optim.SGD)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"model_kwargs": {"in_chans": 3}}, r"model_kwargs may not set \['in_chans'\]"),
    ],
)
def test_bad_model_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes).validate()


def test_job_ids_hash_model_options_only_when_set():
    train = _config().to_dict()
    before = {k: v for k, v in train.items() if k not in ("model_kwargs", "optimizer")}  # a config of before
    assert _hash_config("baseline", train, None) == _hash_config("baseline", before, None)
    for changed in ({"optimizer": "adamw"}, {"model_kwargs": {"depth": 2}}):
        assert _hash_config("baseline", {**train, **changed}, None) != _hash_config("baseline", train, None)
