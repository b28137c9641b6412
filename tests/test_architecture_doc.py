"""docs/architecture.md against the code: its layout lists exactly the modules there are, every dotted name
it cites resolves, and no module outgrows the house limit."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("transfer", "transfer/engine", "zoo", "studies", "plots")
MAX_LINES = 450


def _layout_block() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return block.splitlines()


def _documented_modules() -> dict[str, set[str]]:
    """package → module file names the layout block lists under it (``a.py, b.py`` on one line count)."""
    listed: dict[str, set[str]] = {}
    package = None
    for line in _layout_block():
        header = re.match(r"^([a-z_/]+)/\s", line + " ")
        if header and header.group(1) in PACKAGES:
            package = header.group(1)
            listed.setdefault(package, set())
            continue
        if package is not None and line.startswith("  ") and not line.startswith("   " * 3):
            names = re.findall(r"\b([a-z0-9_]+\.py)\b", line.split("  ", 2)[1] if line.strip() else "")
            listed[package].update(names)
    return listed


def _modules(package: str) -> set[str]:
    return {p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}


def test_the_layout_lists_every_module_and_only_those():
    listed = _documented_modules()
    assert set(listed) == set(PACKAGES)
    for package in PACKAGES:
        actual = _modules(package)
        assert listed[package] == actual, (
            f"{package}/: missing from docs/architecture.md {sorted(actual - listed[package])}, "
            f"listed but gone {sorted(listed[package] - actual)}"
        )


def _cited_names() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    return set(re.findall(r"`((?:transfer|zoo|studies|plots)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))


@pytest.mark.parametrize("dotted", sorted(_cited_names()))
def test_every_dotted_name_the_doc_cites_exists(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"docs/architecture.md cites {dotted}, but {attr!r} is not there"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"docs/architecture.md cites {dotted}, which imports nothing")


def test_no_module_over_the_house_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for package in PACKAGES
        for p in (ROOT / package).glob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
