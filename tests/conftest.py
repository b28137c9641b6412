import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models run fastest on one thread, and do not stall when the CPU is shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_zoo(tmp_path_factory, monkeypatch):
    """No test writes into the user's real zoo or cache."""
    monkeypatch.setenv("SPARTA_ZOO", str(tmp_path_factory.mktemp("zoo")))
