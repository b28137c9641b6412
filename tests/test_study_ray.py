"""The Ray executor against a local Ray instance (2 CPUs, no dashboard, 127.0.0.1 only)."""

import os

import pytest

from studies.executors import create_executor
from studies.jobs import read_result
from studies.runner import load_plan, run_study
from studies.spec import parse_spec

ray = pytest.importorskip("ray", reason="the Ray executor needs the `ray` extra (pip install -e '.[ray]')")

SPEC = {
    "name": "ray",
    "seeds": [0],
    "baselines": ["relu"],
    "train": {"epochs": 1, "width": 4, "input_size": 8},
    "eval": {"attacks": ["clean"]},
    "sources": [{"arch": "resnet18", "dataset": "digits"}],
    "targets": [{"arch": "resnet34", "dataset": "digits"}, {"arch": "resnet18", "dataset": "shapes"}],
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.mark.ray
def test_ray_executor_runs_the_study_as_ray_tasks(tmp_path, local_ray):
    def job_fn(job, directory, study_dir):  # a closure: Ray ships it by value to its workers
        if job.kind == "target" and read_result(study_dir, job.source_job) is None:
            raise AssertionError(f"{job.id} ran before its source")
        return {"metrics": {"clean": 50.0 + (job.kind == "target")}, "pid": os.getpid()}

    executor = create_executor("ray")  # joins the running Ray; leaves it running afterwards
    assert executor.num_gpus == 0 and executor.slots is None
    run = run_study(parse_spec(SPEC), tmp_path, executor=executor, job_fn=job_fn, progress=False, check_mapping=False)
    jobs = load_plan(tmp_path)
    assert run.ok and set(run.finished) == {j.id for j in jobs} and len(jobs) == 1 + 2 + 2
    assert all(read_result(tmp_path, j.id)["pid"] != os.getpid() for j in jobs)
    assert ray.is_initialized()

    def broken(job, directory, study_dir):
        raise RuntimeError("boom")

    again = run_study(
        parse_spec({**SPEC, "seeds": [1]}),
        tmp_path / "b",
        executor=create_executor("ray"),
        job_fn=broken,
        progress=False,
        check_mapping=False,
    )
    assert len(again.failed) == 3 and len(again.blocked) == 2
    assert all("RuntimeError: boom" in e for e in again.failed.values())


@pytest.mark.ray
def test_ray_workers_import_the_study_plugins_before_a_job(tmp_path, local_ray, monkeypatch):
    from helpers import write_plugin

    from transfer import own_models
    from transfer.engine import data

    monkeypatch.setattr(data._REGISTRY, "_entries", dict(data._REGISTRY._entries))
    monkeypatch.setattr(own_models, "_FACTORIES", dict(own_models._FACTORIES))

    def plugin_names_known(job, directory, study_dir):  # a closure, shipped by value: fails unless this Ray
        from transfer.backbones import check_arch  # worker imported the study's plugin before the job
        from transfer.engine.data import dataset_info

        check_arch(job.arch)
        return {"metrics": {"clean": float(dataset_info(job.dataset).num_classes)}, "pid": os.getpid()}

    plugin = write_plugin(tmp_path / "plugins", "ray_study_plugin")
    run_on = {"arch": "ray-study-plugin-net", "dataset": "ray-study-plugin-data", "train": {"eps": 0.1}}
    spec = parse_spec({**SPEC, "plugins": [str(plugin)], "sources": [run_on], "targets": [run_on]})
    run = run_study(
        spec,
        tmp_path / "study",
        executor=create_executor("ray"),
        job_fn=plugin_names_known,
        progress=False,
        check_mapping=False,
    )
    assert run.ok and len(run.finished) == 3, run.failed
    assert all(read_result(tmp_path / "study", j)["metrics"]["clean"] == 2.0 for j in run.finished)
