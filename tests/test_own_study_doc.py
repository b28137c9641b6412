"""docs/own-study.md is a walk-through that runs: its files are written, every command of its ``console`` blocks is
run in a fresh directory, in order, and each output line the page shows must be printed, in that order (numbers
and job-id hashes masked: they differ between machines; ``…`` stands for lines the page leaves out)."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from transfer.cli import main

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-study.md"
_SKIP = "…"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _files(text: str) -> dict[str, str]:
    """The files the page writes: ``python``/``toml`` blocks whose first line is ``# NAME``."""
    files = {}
    for block in _blocks(text, "python") + _blocks(text, "toml"):
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w.-]+\.(py|toml)", first):
            files[first[2:]] = block
    return files


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) of every ``console`` block, in order."""
    out: list[tuple[str, list[str]]] = []
    for block in _blocks(text, "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            else:
                out[-1][1].append(line)
    return out


def _normal(line: str) -> str:
    """A line with what differs between machines masked: hex hashes and numbers; whitespace collapsed."""
    line = re.sub(r"\b[0-9a-f]{8}\b", "<hash>", line)
    line = re.sub(r"[-+]?\d+(\.\d+)?", "#", line)
    return " ".join(line.split())


def _run(command: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    words = shlex.split(command)
    while "=" in words[0]:  # an environment setting: PYTHONPATH=. is the test's sys.path
        assert words.pop(0) == "PYTHONPATH=.", command
    if words[0] == "python":
        runpy.run_path(words[1], run_name="__main__")
    else:
        assert words[0] == "sparta", command
        assert main(words[1:]) == 0, f"{command}\n{capsys.readouterr().err}"
    return capsys.readouterr().out.splitlines()


def test_the_walk_through_runs_and_prints_what_it_shows(tmp_path, monkeypatch, capsys):
    text = DOC.read_text(encoding="utf-8")
    files = _files(text)
    assert set(files) == {"make_digits.py", "ownnet.py", "own-study.toml"}
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    commands = _commands(text)
    assert [c for c, _ in commands if "--format latex" in c or "--per-class" in c]  # the tables are exported
    try:
        for command, shown in commands:
            printed = [_normal(line) for line in _run(command, capsys)]
            position = 0
            for line in (_normal(s) for s in shown if s.strip() != _SKIP):
                assert line in printed[position:], (
                    f"{command}: the page shows\n  {line}\nnot printed in order:\n" + "\n".join(printed)
                )
                position = printed.index(line, position) + 1
    finally:
        sys.modules.pop("ownnet", None)
    results = (tmp_path / "runs" / "own-study" / "results.csv").read_text()
    assert "folder:digits-folder" in results and "eps=0.05" in results and "eps=0.1" in results
    init = (tmp_path / "runs" / "own-study" / "jobs").glob("target-*/init_from.json")
    assert len(list(init)) == 2  # each transfer started from the checkpoint the walk-through wrote
