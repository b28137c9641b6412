"""One attack-name table (transfer.attack_names) that the registry, the error text and the official
AutoAttack's metric set are derived from; bounded step counts; no import cycle inside the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from transfer.attack_names import MAX_STEPS, NAMED_SPECS, SPEC_ALIASES, SPEC_FAMILIES, AttackSpec, parse_spec
from transfer.cli import main
from transfer.engine.attacks import create_attack, parse_attack, spec_attacks
from transfer.engine.autoattack import OFFICIAL_METRICS, _Official

ENGINE = Path(__file__).resolve().parents[1] / "transfer" / "engine"


def test_every_named_spec_runs_one_registered_attack_under_every_spelling():
    assert set(spec_attacks()) == set(NAMED_SPECS)
    for alias, spec in SPEC_ALIASES.items():
        if spec in NAMED_SPECS:
            assert type(create_attack(alias)) is spec_attacks()[spec]
    assert {s for s, cls in spec_attacks().items() if issubclass(cls, _Official)} == OFFICIAL_METRICS
    assert {"aa", "aa-rand", "apgd-ce", "apgd-t", "apgd-ce+t", "square"} == OFFICIAL_METRICS


def test_the_error_lists_what_the_table_holds():
    with pytest.raises(ValueError, match="cannot parse attack spec 'deepfool'") as info:
        parse_attack("deepfool")
    message = str(info.value)
    assert all(f"{name} (" in message for name in [*NAMED_SPECS, *SPEC_FAMILIES])
    assert all(f"{alias} = {spec}" in message for alias, spec in SPEC_ALIASES.items())


def test_the_grammar():
    assert parse_spec("PGD") == AttackSpec("pgd20", "pgd", steps=20)
    assert parse_spec("pgd7-l2") == AttackSpec("pgd7-l2", "pgd", steps=7, norm="l2")
    assert parse_spec("cw20") == AttackSpec("cw", "cw", steps=20)
    assert parse_spec("apgd-t3") == AttackSpec("apgd-t3", "apgd-t", targets=3)
    assert parse_spec("autoattack") == AttackSpec("aa", "aa")
    assert parse_spec("apgd-ce+t3") == AttackSpec("apgd-ce+t3", "apgd-ce+t", targets=3)
    assert parse_spec("APGD-CE+T") == AttackSpec("apgd-ce+t", "apgd-ce+t")
    assert parse_attack("apgd-ce+t3") == ("apgd-ce+t", {"n_target_classes": 3})
    assert parse_spec(f"pgd{MAX_STEPS}").steps == MAX_STEPS == 10_000
    with pytest.raises(ValueError, match="target classes must be >= 1"):
        parse_spec("apgd-ce+t0")
    for spec in ("apgd-ce+", "apgd-ce+t1234567", "apgd-t1234567", "pgd20-l1"):
        with pytest.raises(ValueError, match="cannot parse attack spec"):
            parse_spec(spec)


@pytest.mark.parametrize("spec", [f"pgd{MAX_STEPS + 1}", "pgd100000", "cw100000", "pgd" + "9" * 5000])
def test_step_counts_above_the_maximum_are_refused(spec):
    with pytest.raises(ValueError, match="at most 10,000 steps") as info:
        parse_attack(spec)
    assert len(str(info.value)) < 300  # a huge spec is cut, not echoed


def test_sparta_eval_refuses_a_huge_step_count_at_once(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--attacks", "pgd100000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "at most 10,000 steps" in err


def _engine_imports() -> dict[str, set[str]]:
    """Module → the engine modules it imports at module level (imports inside functions excluded)."""
    graph = {}
    for path in ENGINE.glob("*.py"):
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps
    return graph


def test_no_engine_module_imports_itself_back():
    graph = _engine_imports()
    assert "autoattack" not in graph["attacks"] and "dataset_sources" not in graph["data"]

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    assert [m for m in graph if m != "__init__" and reaches(m, m)] == []


def test_any_engine_module_alone_knows_every_spec_and_dataset():
    code = (
        "import transfer.engine.evaluation as e; from transfer.engine.attacks import create_attack, parse_attack;"
        "from transfer.engine.data import list_datasets;"
        "print(type(create_attack('aa')).__name__, parse_attack('apgd-t3'), 'digits' in list_datasets())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["AutoAttack", "('apgd-t',", "{'n_target_classes':", "3})", "True"]
