"""A corrupt study-local zoo entry is repaired when the study runs again: it is written afresh from the
source job's run directory, under the same reference, and the transfer jobs go on."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import micro_study_toml

from studies.jobs import job_dir, read_result
from studies.runner import load_plan, run_study
from studies.training_job import study_zoo
from transfer import load_activation_set

MICRO = micro_study_toml("repair", baselines=("relu",), recipe="standard", attacks=("clean",))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = root / "repair.toml"
    config.write_text(MICRO)
    run = run_study(config, root / "study", progress=False)
    assert run.ok and len(run.finished) == 3
    return config, root / "study"


def _copy(finished, tmp_path):
    config, study = finished
    shutil.copytree(study, tmp_path / "study")
    return config, tmp_path / "study"


def _jobs(study):
    jobs = load_plan(study)
    return next(j for j in jobs if j.kind == "source"), next(j for j in jobs if j.kind == "target")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _edit_site_table(path):
    card = json.loads(path.read_text())
    card["sites"][1]["channels"] = 999
    path.write_text(json.dumps(card))


@pytest.mark.parametrize("damage", ["truncated tensors", "edited site table", "entry deleted"])
def test_rerunning_the_study_repairs_a_corrupt_study_zoo_entry(finished, tmp_path, damage):
    config, study = _copy(finished, tmp_path)
    source, target = _jobs(study)
    entry = read_result(study, source.id)["zoo_entry"]
    registry = study_zoo(study)
    before = registry.info(entry)
    path = registry.resolve(entry).path
    if damage == "truncated tensors":
        _truncate(path / "activation.safetensors")
    elif damage == "edited site table":
        _edit_site_table(path / "card.json")
    else:
        shutil.rmtree(path)
    (job_dir(study, target.id) / "result.json").unlink()  # the transfer job has to load the entry again

    run = run_study(config, study, progress=False)
    assert run.ok and run.finished == [target.id], run.failed
    repaired = registry.load(entry)
    trained = load_activation_set(job_dir(study, source.id) / "activation.safetensors")
    assert repaired.sites == trained.sites
    assert all(torch.equal(repaired.tensors[k], trained.tensors[k]) for k in trained.tensors)
    after = registry.info(entry)
    assert (after["content_sha256"], after["sites_sha256"]) == (before["content_sha256"], before["sites_sha256"])
    assert "repaired the study zoo entry" in (job_dir(study, target.id) / "job.log").read_text()
    assert not list((study / "zoo" / ".tmp").iterdir())


def test_when_the_source_run_cannot_restore_it_the_error_says_what_to_do(finished, tmp_path):
    config, study = _copy(finished, tmp_path)
    source, target = _jobs(study)
    entry = read_result(study, source.id)["zoo_entry"]
    _truncate(study_zoo(study).resolve(entry).path / "activation.safetensors")
    _truncate(job_dir(study, source.id) / "activation.safetensors")
    (job_dir(study, target.id) / "result.json").unlink()
    run = run_study(config, study, progress=False)
    error = run.failed[target.id]
    assert entry in error and "delete" in error and str(job_dir(study, source.id) / "result.json") in error
