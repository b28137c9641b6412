"""Planner counts and ids; the runner (dependency order, failures, resume) with a stand-in job function."""

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest

from studies.executors import Executor, create_executor, list_executors
from studies.jobs import job_dir, read_result
from studies.matrix import transfer_matrix
from studies.planner import plan_study
from studies.results import load_results
from studies.runner import job_states, load_plan, prepare_study, run_plan, run_study
from studies.spec import parse_spec
from transfer.atomic import write_json
from transfer.cli import main, run_command

SPEC = {
    "name": "fake",
    "seeds": [0, 1],
    "baselines": ["relu", "sparta-in-place"],
    "train": {"epochs": 1, "width": 4, "input_size": 8},
    "eval": {"attacks": ["clean", "pgd20"]},
    "sources": [{"arch": "resnet18", "dataset": "digits"}, {"arch": "resnet18", "dataset": "shapes"}],
    "targets": [
        {"arch": "resnet34", "dataset": "digits"},
        {"arch": "resnet18", "dataset": "shapes"},
        {"arch": "resnet18", "dataset": "digits"},
    ],
}


def spec(**changes):
    return parse_spec({**copy.deepcopy(SPEC), **changes})


def fake_job(job, directory, study_dir):
    """Stand-in for training: checks dependency order, counts its calls, fails on request."""
    with open(directory / "calls", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if job.kind == "target" and read_result(study_dir, job.source_job) is None:
        raise AssertionError(f"{job.id} ran before its source {job.source_job}")
    if (Path(study_dir) / f"fail-{job.kind}-s{job.seed}").exists():
        raise RuntimeError(f"injected failure of {job.id}")
    bonus = {"source": 0.0, "baseline": 5.0 if job.activation == "sparta" else 0.0, "target": 3.0}[job.kind]
    return {"metrics": {"clean": 80.0 + job.seed, "pgd20": 40.0 + bonus + job.seed}, "pid": os.getpid()}


def calls(study_dir, jid):
    return len((job_dir(study_dir, jid) / "calls").read_text().split())


def test_job_counts_per_seed_and_multiple_policies():
    plan = plan_study(spec(), check_mapping=False)
    s, t, b = 2, 3, 2
    shared = 2  # Sparta in place on resnet18/digits and resnet18/shapes is what the two sources train
    assert plan.counts()["per_seed"] == {"source": s, "target": s * t, "baseline": b * t - shared}
    assert plan.counts()["shared"] == 2 * shared
    assert plan.counts()["total"] == 2 * (s + s * t + b * t - shared)
    two = plan_study(spec(policies=["stage", "depth"]), check_mapping=False)
    assert two.counts()["per_seed"]["target"] == s * t * 2  # each policy is its own transfer job
    order = {j.id: i for i, j in enumerate(plan.jobs)}
    assert all(order[d] < order[j.id] for j in plan.jobs for d in j.deps)
    baselines = [j for j in plan.jobs if j.kind == "baseline"]
    assert len({(j.row, j.column, j.seed) for j in baselines}) == len(baselines)  # once per target and seed


def test_one_training_one_job_and_the_freezing_control_trains_its_own_seed():
    plan = plan_study(spec(seeds=[3]), check_mapping=False)
    sources = {j.column: j for j in plan.jobs if j.kind == "source"}
    assert sources["resnet18 / digits"].also == [
        {"kind": "baseline", "row": "Sparta (in place)", "column": "resnet18 / digits"}
    ]
    in_place = [(j.column, j.kind) for j in plan.jobs if "Sparta (in place)" in [r["row"] for r in j.rows()]]
    assert sorted(in_place) == [
        ("resnet18 / digits", "source"),
        ("resnet18 / shapes", "source"),
        ("resnet34 / digits", "baseline"),
    ]
    transfers = [j for j in plan.jobs if j.kind == "target"]
    controls = [j for j in transfers if j.row.endswith("(freezing control)")]
    assert sorted(j.column for j in controls) == ["resnet18 / digits", "resnet18 / shapes"]
    for j in transfers:
        source = plan.job(j.source_job)
        if j in controls:  # back into the source's own arch and dataset: another initialisation and order
            assert (j.arch, j.dataset) == (source.arch, source.dataset)
            assert j.seed == 3 and j.train["seed"] not in (3, source.train["seed"])
        else:
            assert j.train["seed"] == j.seed == 3
    # a target whose training differs from the source's gets its own in-place job
    targets = copy.deepcopy(SPEC["targets"])
    targets[2]["train"] = {"lr": 0.05}
    other = plan_study(spec(seeds=[3], targets=targets), check_mapping=False)
    assert not next(j for j in other.jobs if j.kind == "source" and j.dataset == "digits").also
    assert any(
        j.kind == "baseline" and j.row == "Sparta (in place)" and j.column == "resnet18 / digits" for j in other.jobs
    )


def test_ids_are_stable_and_follow_the_config():
    a, b = plan_study(spec(), check_mapping=False), plan_study(spec(), check_mapping=False)
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]
    assert len({j.id for j in a.jobs}) == len(a.jobs)
    targets = copy.deepcopy(SPEC["targets"])
    targets[0]["train"] = {"lr": 0.01}
    changed = plan_study(spec(targets=targets), check_mapping=False)
    moved = {j.id for j in a.jobs} ^ {j.id for j in changed.jobs}
    old = {j.id: j for j in a.jobs}
    assert moved and all(old[i].column == "resnet34 / digits" for i in moved if i in old)
    assert all(j.train["lr"] == 0.01 for j in changed.jobs if j.column == "resnet34 / digits")
    assert all(j.train["in_chans"] == (3 if j.dataset == "shapes" else 1) for j in a.jobs)


def test_unmappable_transfers_are_found_at_plan_time():
    plan = plan_study(spec(seeds=[0], policies=["exact", "stage"]), check_mapping=True)
    skipped = {(i["source"], i["target"], i["policy"]) for i in plan.incompatible}
    # resnet34 has sites resnet18 lacks (layer1.2, ...): exact cannot map them, stage can
    assert ("Sparta dw ← resnet18/digits", "resnet34 / digits", "exact") in skipped
    assert all(p != "stage" for *_, p in skipped)
    reason = next(i["reason"] for i in plan.incompatible if i["target"] == "resnet34 / digits")
    assert "layer1.2" in reason
    assert plan.counts()["target"] + len(plan.incompatible) == 2 * 3 * 2


def test_failures_block_dependents_and_a_rerun_redoes_only_unfinished_jobs(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "fail-source-s1").touch()
    first = run_study(spec(), study, job_fn=fake_job, progress=False, check_mapping=False)
    plan = load_plan(study)
    failed = {j.id for j in plan if j.kind == "source" and j.seed == 1}
    blocked = {j.id for j in plan if j.source_job in failed}
    assert set(first.failed) == failed and set(first.blocked) == blocked and not first.ok
    states = job_states(study, plan)
    assert {i for i, s in states.items() if s["state"] == "failed"} == failed
    assert {i for i, s in states.items() if s["state"] == "pending"} == blocked
    done_before = {i: (job_dir(study, i) / "result.json").stat().st_mtime_ns for i in first.finished}

    (study / "fail-source-s1").unlink()
    second = run_study(spec(), study, job_fn=fake_job, progress=False, check_mapping=False)
    assert second.ok and set(second.reused) == set(done_before)
    assert set(second.finished) == failed | blocked
    for jid, mtime in done_before.items():
        assert (job_dir(study, jid) / "result.json").stat().st_mtime_ns == mtime
        assert calls(study, jid) == 1
    assert all(calls(study, j) == 2 for j in failed)

    results = load_results(study)
    assert len(results) == 2 * sum(len(j.rows()) for j in plan)  # two metrics per row a job stands for
    tm = transfer_matrix(results, "pgd20")
    assert tm.diff_mean.loc["Sparta (in place)", "resnet34 / digits"] == pytest.approx(5.0)
    assert tm.mean.loc["Sparta dw ← resnet18/shapes [role]", "resnet18 / digits"] == pytest.approx(43.5)
    assert (study / "matrices" / "pgd20.json").is_file() and (study / "results.parquet").is_file()


def test_an_interrupted_job_is_reported_and_redone(tmp_path):
    s = spec(seeds=[0])
    plan = plan_study(s, check_mapping=False)
    prepare_study(s, tmp_path, plan)
    victim = plan.jobs[0].id
    write_json(
        job_dir(tmp_path, victim) / "status.json",
        {"state": "running", "pid": 2**22 + 12345, "host": os.uname().nodename, "attempts": 1},
    )
    assert job_states(tmp_path, plan.jobs)[victim]["state"] == "interrupted"
    with create_executor("local") as executor:
        run = run_plan(plan, tmp_path, executor, job_fn=fake_job, progress=False)
    assert run.ok and victim in run.finished
    assert json.loads((job_dir(tmp_path, victim) / "status.json").read_text())["attempts"] == 2


class _GoneExecutor(Executor):
    def submit(self, fn, *args):
        raise RuntimeError("the pool is gone")


def test_a_broken_executor_fails_one_job_and_starts_no_more(tmp_path):
    s = spec(seeds=[0])
    plan = plan_study(s, check_mapping=False)
    prepare_study(s, tmp_path, plan)
    run = run_plan(plan, tmp_path, _GoneExecutor(), job_fn=fake_job, progress=False)
    assert list(run.failed) == [plan.jobs[0].id] and "the pool is gone" in run.failed[plan.jobs[0].id]
    assert set(run.blocked) == {j.id for j in plan.jobs[1:]} and not run.finished


def test_process_executor_runs_jobs_in_worker_processes(tmp_path):
    run = run_study(
        spec(seeds=[0]),
        tmp_path,
        executor="process",
        executor_config={"workers": 2},
        job_fn=fake_job,
        progress=False,
        check_mapping=False,
    )
    assert run.ok and len(run.finished) == len(load_plan(tmp_path))
    pids = {read_result(tmp_path, j)["pid"] for j in run.finished}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_executor_registry_and_errors():
    assert {"local", "process", "ray"} <= set(list_executors())
    with pytest.raises(ValueError, match="unknown executor 'slurm'; choose one of"):
        create_executor("slurm")
    with pytest.raises(ValueError, match="--workers must be a positive integer"):
        create_executor("process", workers=0)
    with pytest.raises(ValueError, match="does not take these options"):
        create_executor("local", workers=2)
    # refused at once, not after minutes of retries; without the `ray` extra, with how to install it
    have_ray = importlib.util.find_spec("ray") is not None
    expected = "cannot reach a Ray cluster at '127.0.0.1:1'" if have_ray else r"needs Ray: pip install"
    with pytest.raises(ValueError, match=expected):
        create_executor("ray", address="127.0.0.1:1")


def test_cli_plan_status_and_matrix(tmp_path, capsys):
    config = tmp_path / "fake.toml"
    config.write_text(
        'name = "fake"\nseeds = [0, 1, 2]\n[train]\nepochs = 1\nwidth = 4\ninput_size = 8\n'
        '[eval]\nattacks = ["clean", "pgd20"]\n'
        '[[sources]]\narch = "resnet18"\ndataset = "digits"\n'
        '[[targets]]\narch = "resnet34"\ndataset = "digits"\n'
    )
    assert run_command(["study", "plan", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["counts"]["total"] == 3 * (1 + 1 + 2)
    study = tmp_path / "study"
    run_study(config, study, job_fn=fake_job, progress=False)
    capsys.readouterr()
    assert run_command(["study", "status", str(study), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["done"] == 12 and status["total"] == 12
    assert run_command(["study", "matrix", str(study), "--metric", "pgd20", "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out)["pgd20"]
    assert matrix["rows"][0] == "ReLU" and matrix["reference"] == "ReLU"
    row = matrix["rows"].index("Sparta (in place)")
    assert matrix["diff_mean"][row][0] == pytest.approx(5.0)
    assert matrix["p_value"][row][0] < 0.05  # the same +5 on every seed
    assert run_command(["study", "matrix", str(study)]) == 0
    assert "41.0 ± 1.0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no metric 'aa'"):
        run_command(["study", "matrix", str(study), "--metric", "aa"])


def test_reuse_takes_finished_jobs_of_another_study_and_trains_only_the_new_ones(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_study(spec(seeds=[0]), first, job_fn=fake_job, progress=False, check_mapping=False).ok
    wider = spec(seeds=[0], baselines=["relu", "sparta-in-place", "silu"])
    run = run_study(wider, second, job_fn=fake_job, progress=False, check_mapping=False, reuse=[first])
    plan = load_plan(second)
    new = {j.id for j in plan if j.activation == "silu"}
    assert run.ok and set(run.finished) == new and set(run.imported) == {j.id for j in plan} - new
    assert all(v == str(first) for v in run.imported.values())
    for jid in run.imported:  # brought over, not trained again: the call log is the first study's
        assert calls(second, jid) == 1 and (job_dir(second, jid) / "result.json").is_file()
    assert all(calls(second, j) == 1 for j in new)
    with pytest.raises(FileNotFoundError, match="not a study directory"):
        run_study(
            wider,
            tmp_path / "third",
            job_fn=fake_job,
            progress=False,
            check_mapping=False,
            reuse=[tmp_path / "nowhere"],
        )
    before = (second / "plan.json").read_text()
    assert main(["study", "run", "quickstart", "--out", str(second), "--reuse", str(second), "--quiet"]) == 2
    assert (second / "plan.json").read_text() == before  # refused before anything was written


def test_a_swept_study_keeps_each_point_in_its_own_column_and_row_of_the_table(tmp_path):
    swept = spec(seeds=[0], sweep={"eps": [0.05, 0.1]})
    run = run_study(swept, tmp_path / "s", job_fn=fake_job, progress=False, check_mapping=False)
    assert run.ok
    results = load_results(tmp_path / "s")
    assert set(results["sweep"]) == {"eps=0.05", "eps=0.1"}
    tm = transfer_matrix(results, "pgd20")
    assert "resnet34 / digits [eps=0.05]" in tm.columns and "resnet34 / digits [eps=0.1]" in tm.columns
    assert (tm.n.loc["ReLU", tm.columns] == 1).all()  # one job per point and seed: nothing pooled


def test_status_says_which_seeds_are_complete_and_estimates_the_rest(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    (study / "fail-target-s1").touch()  # seed 1's transfers fail: seed 0 is complete, seed 1 is not
    run = run_study(spec(), study, job_fn=fake_job, progress=False, check_mapping=False)
    assert run.failed
    jobs = load_plan(study)
    seconds = {j.id: 10.0 * (1 + (j.kind == "target")) for j in jobs}
    for jid in run.finished:
        result = read_result(study, jid)
        write_json(job_dir(study, jid) / "result.json", {**result, "seconds": seconds[jid]})
    capsys.readouterr()
    assert run_command(["study", "status", str(study), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["seeds_complete"] == [0] and status["seeds"] == [0, 1]
    assert status["done_worker_seconds"] == pytest.approx(sum(seconds[j] for j in run.finished))
    unfinished = [j for j in jobs if j.id not in run.finished]
    assert unfinished and all(j.kind == "target" and j.seed == 1 for j in unfinished)
    # each pending transfer is estimated from seed 0's done transfer of its row and column (20 s)
    assert status["remaining_worker_seconds_estimate"] == pytest.approx(20.0 * len(unfinished))
    assert run_command(["study", "status", str(study)]) == 0
    assert "seeds complete: 0 (1 of 2)" in capsys.readouterr().out
