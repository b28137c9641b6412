"""A micro study on the real training engine: a failed job and a SIGKILLed run are resumed without
re-running any finished job, and give the same matrix as a run that was not interrupted."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import micro_study_toml

from studies.jobs import job_dir, read_result, read_status
from studies.matrix import transfer_matrix
from studies.results import load_results
from studies.runner import job_states, load_plan, run_study
from studies.training_job import run_training_job

pytestmark = pytest.mark.slow

MICRO = micro_study_toml()


def _mtimes(study, ids):
    return {i: (job_dir(study, i) / "result.json").stat().st_mtime_ns for i in ids}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "micro.toml"
    path.write_text(MICRO)
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """The micro study with the ReLU baseline failing once, then re-run: each job ran once to its end."""
    study = tmp_path_factory.mktemp("reference")

    def relu_fails(job, directory, study_dir):
        if job.activation == "relu":
            raise RuntimeError("injected failure")
        return run_training_job(job, directory, study_dir)

    first = run_study(config, study, job_fn=relu_fails, progress=False)
    jobs = load_plan(study)
    relu = next(j.id for j in jobs if j.activation == "relu")
    assert list(first.failed) == [relu] and "injected failure" in first.failed[relu]
    assert len(first.finished) == 3 and not first.blocked
    before = _mtimes(study, first.finished)

    second = run_study(config, study, progress=False)
    assert second.finished == [relu] and set(second.reused) == set(before)
    assert _mtimes(study, before) == before
    assert read_status(study, relu)["attempts"] == 2
    return study, transfer_matrix(load_results(study), "fgsm")


def test_a_failed_job_is_redone_and_the_study_completes(reference):
    study, matrix = reference
    jobs = load_plan(study)
    assert all(s["state"] == "done" for s in job_states(study, jobs).values())
    target = next(j for j in jobs if j.kind == "target")
    source = read_result(study, target.source_job)
    assert read_result(study, target.id)["zoo_entry"] == source["zoo_entry"]
    assert (study / "zoo" / target.source_job).is_dir()  # the study-local zoo holds the source's set
    assert target.train["in_chans"] == 3 and source["job"]["train"]["in_chans"] == 1
    assert matrix.rows[0] == "ReLU" and "resnet18 / shapes" in matrix.columns
    assert "Sparta dw ← resnet18/digits [role]" in matrix.rows


def test_a_sigkilled_study_loses_no_finished_job(config, reference, tmp_path):
    study = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "transfer.cli",
        "study",
        "run",
        str(config),
        "--out",
        str(study),
        "--no-plot",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(study.glob("jobs/*/result.json")):
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no job finished within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    jobs = load_plan(study)
    states = job_states(study, jobs)
    done = [i for i, s in states.items() if s["state"] == "done"]
    assert len(done) == 1 and all(s["state"] in ("interrupted", "pending") for i, s in states.items() if i not in done)
    before = _mtimes(study, done)

    run = run_study(config, study, progress=False)
    assert run.ok and run.reused == done and len(run.finished) == len(jobs) - 1
    assert _mtimes(study, done) == before and read_status(study, done[0])["attempts"] == 1

    _, expected = reference
    got = transfer_matrix(load_results(study), "fgsm")
    assert got.rows == expected.rows and got.columns == expected.columns
    assert np.array_equal(got.mean.to_numpy(), expected.mean.to_numpy(), equal_nan=True)


def test_the_study_compares_rows_image_by_image_and_records_convergence(reference):
    import pandas as pd

    from studies.paired import PerImageStore

    study, matrix = reference
    paired = pd.read_csv(study / "matrices" / "fgsm.paired.csv")
    shapes = paired[(paired["column"] == "resnet18 / shapes") & (paired["reference"] == "ReLU")]
    assert set(shapes["row"]) == {"Sparta (in place)", "Sparta dw ← resnet18/digits [role]"}
    assert set(shapes["n_images"]) == {20} and set(shapes["scope"]) == {"seed"}
    cell = matrix.cell("Sparta (in place)", "resnet18 / shapes")
    one = shapes[shapes["row"] == "Sparta (in place)"].iloc[0]
    assert cell["diff_mean"] == pytest.approx(one["diff"])  # one seed: the same difference, image by image
    assert cell["n_images"] == 1  # load_results alone carries no per-image files: the seeds' accuracies …
    with_bits = transfer_matrix(load_results(study), "fgsm", per_image=PerImageStore(study))
    compared = with_bits.cell("Sparta (in place)", "resnet18 / shapes")
    assert compared["n_images"] == 20 and compared["n_paired"] == 1  # … the study's own matrices: image by image
    assert with_bits.single_seed()
    results = load_results(study)
    assert {"epochs", "converged", "epochs_needed"} <= set(results.columns)
    assert (results["epochs"] == 1).all() and results["converged"].isna().all()  # val_subset = 0: unknown
