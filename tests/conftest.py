import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models run fastest on one thread, and do not stall when the CPU is shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_zoo(request, tmp_path_factory, monkeypatch):
    """No test writes into the user's real zoo, and only tests marked ``bundled_zoo`` see the entries
    shipped in zoo/bundled (the others start from an empty zoo: ``SPARTA_ZOO_BUNDLED=none``)."""
    monkeypatch.setenv("SPARTA_ZOO", str(tmp_path_factory.mktemp("zoo")))
    if request.node.get_closest_marker("bundled_zoo") is None:
        monkeypatch.setenv("SPARTA_ZOO_BUNDLED", "none")


@pytest.fixture(scope="session")
def tiny_sparta_run(tmp_path_factory):
    """One finished run shared by the whole session: a one-epoch Sparta (dw) ResNet-18 of width 4 on 8 px
    digits, with robust validation. Read it only; a test that writes into a run copies it first."""
    from transfer.engine.config import TrainConfig
    from transfer.engine.training import train

    run = tmp_path_factory.mktemp("tiny-sparta-run") / "run"
    config = TrainConfig(
        arch="resnet18", dataset="digits", activation="sparta", width=4, input_size=8, epochs=1,
        batch_size=32, steps=1, train_subset=32, val_subset=16, test_subset=32, eval_attacks=("clean",),
        device="cpu", amp="off", seed=0,
    )  # fmt: skip
    train(config, run, progress=False)
    return run
