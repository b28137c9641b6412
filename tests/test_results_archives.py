"""The study archives kept in docs/results/ (the data behind docs/results.md) still belong to their shipped
configs: every archived job is a job the config plans today, with the same id, so
``sparta study run CONFIG --reuse docs/results/DIR`` takes them instead of silently training them again.
The shipped config is the one the archive's own study.toml names (``fashion48-h200`` holds jobs of
``fashion48`` run on a GPU)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from studies.jobs import read_result
from studies.planner import plan_study
from studies.results import collect_results
from studies.runner import load_plan
from studies.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/plan.json"))


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: p.name)
def test_an_archived_study_is_reused_by_its_shipped_config(archive):
    name = tomllib.loads((archive / "study.toml").read_text())["name"]
    config = ROOT / "studies" / "configs" / f"{name}.toml"
    assert config.is_file(), f"{archive} holds study {name!r}, which has no shipped config {config.name}"
    planned = {job.id for job in plan_study(load_spec(config)).jobs}
    archived = load_plan(archive)
    finished = [job for job in archived if read_result(archive, job.id) is not None]
    assert finished, f"{archive} holds no finished job"
    assert {job.id for job in finished} <= planned, "archived jobs the shipped config no longer plans"
    results = collect_results(archive, archived)
    assert len(results) >= len(finished)
    assert not any((archive / "jobs" / job.id / "checkpoint.pt").exists() for job in finished)
