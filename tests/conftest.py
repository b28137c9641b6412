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
