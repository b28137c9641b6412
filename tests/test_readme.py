"""The README's promises: its library example runs, its set-up commands are the ones CI runs."""

import re
from pathlib import Path

import pytest
import torch

from transfer import Sparta

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.mark.bundled_zoo
def test_library_example_injects_the_bundled_zoo_entry_frozen():
    (example,) = _blocks("python")
    scope = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - our own README
    model, report = scope["model"], scope["report"]
    assert report.source == "zoo:digits-resnet18-sparta-dw@2"
    assert all(e.source and e.frozen for e in report.entries)
    acts = [m for m in model.modules() if isinstance(m, Sparta)]
    assert acts and all(not p.requires_grad for m in acts for p in m.parameters())
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    (shown,) = _blocks("text")  # the output pasted under it, trimmed where a line says "..."
    printed = str(report).splitlines()
    assert all(line in printed for line in shown.splitlines() if not line.strip().startswith("..."))
    assert printed[0] == shown.splitlines()[0] and printed[-1] == shown.splitlines()[-1]


def test_ci_runs_exactly_the_readme_test_command_in_its_own_environment():
    import subprocess

    commands = [b.strip() for b in _blocks("bash")]
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    # CI reads the command out of the README (the same extraction, run here) and never deletes .venv
    extract = next(line for line in ci.splitlines() if line.startswith('test_command="$('))
    got = subprocess.run(
        ["bash", "-c", f'{extract}; echo "$test_command"'], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert got == test_command
    assert "rm -rf .venv" not in ci and 'VENV="${SPARTA_CI_VENV:-.ci/venv}"' in ci
    install = next(c for c in commands if "study run" in c and "pip install" in c)
    assert "quickstart.toml" in install


@pytest.mark.bundled_zoo
def test_bundled_entry_is_listed_and_verified():
    from zoo import Registry

    (row,) = [r for r in Registry().list() if r["name"] == "digits-resnet18-sparta-dw"]
    assert row["origin"] == "bundled" and row["arch"] == "resnet18" and row["dataset"] == "digits"
    aset = Registry().load("digits-resnet18-sparta-dw")
    assert len(aset.sites) == 17 and aset.meta["metrics"]["pgd20"] > 50
