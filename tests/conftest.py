import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_zoo(tmp_path_factory, monkeypatch):
    """No test writes into the user's real zoo or cache."""
    monkeypatch.setenv("SPARTA_ZOO", str(tmp_path_factory.mktemp("zoo")))
