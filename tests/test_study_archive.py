"""``sparta study archive``: a study's results without model checkpoints, still read as a study (matrices,
status) and as a ``--reuse`` source, a transfer from an archived source included."""

from __future__ import annotations

import json

import pytest
from helpers import micro_study_toml
from test_study_runner import fake_job, spec

from studies.archive import ARCHIVE_FILE, LEFT_OUT, archive_study
from studies.jobs import job_dir, read_result
from studies.runner import load_plan, run_study
from transfer.cli import run_command


@pytest.fixture
def finished(tmp_path):
    """A fake study (seed 0) whose transfer jobs failed, with model files in every finished job's directory."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "fail-target-s0").touch()
    run = run_study(spec(seeds=[0]), study, job_fn=fake_job, progress=False, check_mapping=False)
    assert run.failed and run.finished
    for jid in run.finished:
        for name in ("checkpoint.pt", "best.pt"):
            (job_dir(study, jid) / name).write_bytes(b"\0" * 1000)
        (job_dir(study, jid) / "logs").mkdir()
        (job_dir(study, jid) / "logs" / "epoch.log").write_text("kept\n")
    return study, run


def _matrix(capsys, study):
    assert run_command(["study", "matrix", str(study), "--metric", "pgd20", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_archive_keeps_every_result_and_leaves_out_models_and_unfinished_jobs(finished, tmp_path, capsys):
    study, run = finished
    report = archive_study(study, tmp_path / "archive")
    archive = tmp_path / "archive"
    assert sorted(report.jobs) == sorted(run.finished)
    assert sorted(report.unfinished) == sorted([*run.failed, *run.blocked])
    assert report.left_out_bytes == 2000 * len(run.finished)
    assert not [p for p in archive.rglob("*") if p.name in LEFT_OUT]
    for jid in run.finished:
        assert read_result(archive, jid) == read_result(study, jid)
        assert (job_dir(archive, jid) / "logs" / "epoch.log").read_text() == "kept\n"
    assert not any(job_dir(archive, jid).exists() for jid in report.unfinished)
    assert [j.id for j in load_plan(archive)] == [j.id for j in load_plan(study)]
    assert json.loads((archive / ARCHIVE_FILE).read_text())["jobs"] == len(run.finished)
    assert _matrix(capsys, archive) == _matrix(capsys, study)


def test_an_existing_archive_is_replaced_only_when_asked(finished, tmp_path, capsys):
    study, _ = finished
    out = tmp_path / "archive"
    assert run_command(["study", "archive", str(study), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] > 0
    (out / "mine.txt").write_text("a file of the old archive")
    with pytest.raises(FileExistsError, match="--overwrite"):
        archive_study(study, out)
    assert (out / "mine.txt").is_file()  # refused before anything changed
    assert run_command(["study", "archive", str(study), "--out", str(out), "--overwrite"]) == 0
    assert "model checkpoints left out" in capsys.readouterr().out
    assert not (out / "mine.txt").exists() and (out / ARCHIVE_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind
    with pytest.raises(ValueError, match="study directory itself"):
        archive_study(study, study, overwrite=True)
    with pytest.raises(FileNotFoundError, match="plan.json"):
        archive_study(tmp_path / "nowhere", tmp_path / "other")


@pytest.mark.slow
def test_a_study_reuses_an_archive_and_transfers_from_its_source(tmp_path):
    """The second study has a transfer the first did not run: its source comes from the archive, which has
    no model files, so the transfer must restore the Sparta from the archived activation.safetensors."""
    first_config, second_config = tmp_path / "first.toml", tmp_path / "second.toml"
    common = {"baselines": ("relu",), "recipe": "standard", "attacks": ("clean",)}
    first_config.write_text(micro_study_toml("first", target_dataset="shapes", **common))
    second_config.write_text(micro_study_toml("second", target_dataset="digits", **common))
    first = run_study(first_config, tmp_path / "first", progress=False)
    assert first.ok
    archive_study(tmp_path / "first", tmp_path / "archive")
    second = run_study(second_config, tmp_path / "second", progress=False, reuse=[tmp_path / "archive"])
    jobs = {j.kind: j for j in load_plan(tmp_path / "second")}
    assert second.ok and list(second.imported) == [jobs["source"].id]
    assert jobs["target"].id in second.finished
    assert read_result(tmp_path / "second", jobs["target"].id)["metrics"]["clean"] >= 0
