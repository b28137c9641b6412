"""A study of one's own, planned (nothing trains here): plugins = [...], zoo entries as sources, folder datasets
(job ids, labels, the eps they need), the ids of studies planned before, the unguarded-script refusal."""

from __future__ import annotations

import copy
import multiprocessing as mp
import sys
from concurrent.futures.process import BrokenProcessPool

import pytest
from helpers import sparta_model, write_image_folder, write_plugin

from studies.executors import START_FAILURE_HINT, create_executor
from studies.jobs import Job, execute_job, job_id, read_status
from studies.planner import plan_study
from studies.runner import UnguardedScriptError, run_study
from studies.spec import SpecError, load_spec, parse_spec
from transfer import extract
from transfer.cli import main
from zoo import Registry

BASE = {
    "name": "own",
    "seeds": [0],
    "baselines": ["relu"],
    "train": {"epochs": 1, "width": 4, "input_size": 8},
    "eval": {"attacks": ["clean"], "n": 20},
    "sources": [{"arch": "resnet18", "dataset": "digits"}],
    "targets": [{"arch": "resnet18", "dataset": "digits"}],
}


def spec_data(**changes):
    return {**copy.deepcopy(BASE), **changes}


def problems(data, plan=False):
    """What a spec's check (``plan``: and its planning) finds wrong."""
    with pytest.raises(SpecError) as info:
        spec = parse_spec(data)
        if plan:
            plan_study(spec)
    return info.value.problems


@pytest.fixture
def registrations_end_with_the_test(monkeypatch):
    """What a plugin registers is gone after the test (other tests go over every registered dataset)."""
    from transfer import own_models
    from transfer.engine import data

    monkeypatch.setattr(data._REGISTRY, "_entries", dict(data._REGISTRY._entries))
    monkeypatch.setattr(own_models, "_FACTORIES", dict(own_models._FACTORIES))


def test_plugins_are_imported_where_the_spec_is_read_and_recorded_in_every_job(
    tmp_path, monkeypatch, registrations_end_with_the_test
):
    path = write_plugin(tmp_path, "spec_plugin_a")
    run = {"arch": "spec-plugin-a-net", "dataset": "spec-plugin-a-data", "train": {"eps": 0.1}}
    assert any("unknown dataset 'spec-plugin-a-data'" in p for p in problems(spec_data(sources=[run], targets=[run])))
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(spec_data(plugins=["spec_plugin_a.py"], sources=[run], targets=[run]))
    assert spec.plugins == ["spec_plugin_a.py"]
    plan = plan_study(spec)  # the plugin's model is built to check the mapping too
    assert {j.plugins for j in plan.jobs} == {(str(path.resolve()),)}  # a file: absolute, for any worker's cwd
    assert Job.from_dict(plan.jobs[0].to_dict()) == plan.jobs[0]


def test_a_plugin_that_cannot_be_imported_is_one_problem_naming_it_and_the_key(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "spec_broken_plugin.py").write_text("import a_dependency_that_is_missing_xyz\n")
    found = problems(spec_data(plugins=["no_such_plugin_xyz", "spec_broken_plugin"]))
    assert found[0].startswith("plugins[0]: plugin module 'no_such_plugin_xyz' not found; put the folder")
    assert found[1].startswith("plugins[1]: plugin module 'spec_broken_plugin' could not be imported: No module")
    assert problems(spec_data(plugins="my_plugin")) == [
        "plugins: expected a list of module names or .py files (e.g. plugins = [\"my_plugins\"]), got 'my_plugin'"
    ]
    assert problems(spec_data(plugins=["x", ""]))[0].startswith("plugins: expected a list")


def test_a_worker_that_cannot_load_the_plugins_fails_its_job_saying_so(tmp_path):
    job = plan_study(parse_spec(spec_data()), check_mapping=False).jobs[0]
    broken = Job.from_dict({**job.to_dict(), "plugins": ["no_such_plugin_xyz"]})
    outcome = execute_job(broken.to_dict(), str(tmp_path), lambda *a: {"metrics": {}})
    assert outcome["state"] == "failed"
    assert outcome["error"].startswith("PluginError: the study key plugins = ['no_such_plugin_xyz']: not loadable")
    assert "plugin module 'no_such_plugin_xyz' not found" in read_status(tmp_path, job.id)["error"]


def save_entry(name: str, eps: float | None, seed: int = 0) -> None:
    """A tiny Sparta set (ResNet-18, width 4, 8 px) in the test's zoo ($SPARTA_ZOO), of threat model ``eps``."""
    card = {"arch": "resnet18", "dataset": "digits"}
    if eps is not None:
        card["threat_model"] = {"norm": "Linf", "eps": eps, "attack": "pgd20"}
    Registry().save(name, extract(sparta_model(seed=seed, width=4, input_size=8)), card=card)


def test_a_zoo_source_is_pinned_trains_nothing_and_keys_its_transfers():
    save_entry("tiny-set", 0.1)
    data = spec_data(
        sources=[{"zoo": "tiny-set"}, {"arch": "resnet18", "dataset": "digits", "activation": "prelu"}],
        targets=[{"arch": "resnet18", "dataset": "digits"}, {"arch": "resnet34", "dataset": "digits"}],
        policies=["role", "stage"],
    )
    spec = parse_spec(data)
    assert spec.sources[0].zoo == "tiny-set@1" and spec.sources[0].activation == "sparta"
    plan = plan_study(spec)
    assert [j.kind for j in plan.jobs].count("source") == 1  # the PReLU source only
    from_zoo = [j for j in plan.jobs if j.extra.get("zoo_source")]
    assert {(j.column, j.policy) for j in from_zoo} == {
        (c, p) for c in ("resnet18 / digits", "resnet34 / digits") for p in ("role", "stage")
    }
    for j in from_zoo:
        assert j.kind == "target" and j.deps == () and j.source_job is None and j.train["freeze"]
        assert j.extra["zoo_source"] == j.train["transfer_source"] == "zoo:tiny-set@1"
        assert j.row == f"Sparta dw ← zoo:tiny-set@1 [{j.policy}]"  # not a freezing control, no option soup
    save_entry("tiny-set", 0.1, seed=1)  # a new version: a re-plan of "tiny-set" pins it, and its jobs are new
    again = plan_study(parse_spec(data))
    assert {j.extra["zoo_source"] for j in again.jobs if j.extra.get("zoo_source")} == {"zoo:tiny-set@2"}
    assert not {j.id for j in from_zoo} & {j.id for j in again.jobs}
    assert {j.id for j in plan.jobs if not j.extra.get("zoo_source")} <= {j.id for j in again.jobs}
    pinned = plan_study(parse_spec({**data, "sources": [{"zoo": "tiny-set@1"}, data["sources"][1]]}))
    assert [j.id for j in pinned.jobs] == [j.id for j in plan.jobs]
    cells = plan_study(parse_spec({**data, "transfers": [{"source": "zoo:tiny-set", "target": 1}]}))
    assert {(j.kind, j.column) for j in cells.jobs if j.kind != "baseline"} == {
        ("source", "resnet18 / digits"),
        ("target", "resnet34 / digits"),
    }


def test_a_zoo_source_of_another_threat_model_or_with_training_keys_is_refused():
    save_entry("cifar-eps", 8 / 255)
    found = problems(spec_data(sources=[{"zoo": "cifar-eps"}]), plan=True)
    assert len(found) == 1 and "\n" not in found[0]
    assert found[0].startswith("sources[0].zoo: zoo:cifar-eps@1 records the threat model Linf eps 8/255")
    assert (
        "targets[0] (resnet18 / digits) is evaluated at Linf eps 0.1: set eps = 0.0313725 in [train] or "
        "targets[0].train" in found[0]
    )
    plan_study(parse_spec(spec_data(sources=[{"zoo": "cifar-eps"}], train={**BASE["train"], "eps": 8 / 255})))
    found = problems(spec_data(sources=[{"zoo": "cifar-eps@1", "arch": "resnet18", "train": {"lr": 0.1}}]))
    assert found[0].startswith("sources[0].arch: a zoo source takes its activation from the entry's card")
    assert found[1].startswith("sources[0].train: a zoo source")
    assert problems(spec_data(sources=[{"zoo": "no-such-entry"}]))[0].startswith(
        "sources[0].zoo: no zoo entry named 'no-such-entry'"
    )
    assert problems(spec_data(sources=[{"zoo": 3}]))[0].startswith("sources[0].zoo: expected a zoo entry")
    save_entry("unknown-threat", None)  # a card without a threat model is taken as it is
    plan_study(parse_spec(spec_data(sources=[{"zoo": "unknown-threat"}])))


def test_a_folder_target_needs_eps_and_gets_readable_ids_and_labels(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "My Pets")
    target = {"arch": "resnet18", "dataset": f"folder:{folder}"}
    config = tmp_path / "own.toml"
    config.write_text(
        f'name = "own"\nbaselines = ["relu"]\n[train]\nepochs = 1\nwidth = 4\n'
        f'[[sources]]\narch = "resnet18"\ndataset = "digits"\nactivation = "prelu"\n'
        f'[[targets]]\narch = "resnet18"\ndataset = "folder:{folder}"\n'
    )
    assert main(["study", "plan", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    named = [line for line in err if "eps = ..." in line]
    assert len(named) == 1 and named[0].startswith(f"  - targets[0]: dataset 'folder:{folder}' declares no threat")
    plan = plan_study(parse_spec(spec_data(targets=[target], train={**BASE["train"], "eps": 0.1})))
    on_folder = [j for j in plan.jobs if j.dataset == f"folder:{folder}"]
    assert len(on_folder) == 2 and {j.column for j in on_folder} == {"resnet18 / folder:My Pets"}
    assert all(j.id.startswith(f"{j.kind}-resnet18-folder-my-pets-s0-") for j in on_folder)
    assert all(j.train["dataset_fingerprint"] for j in on_folder)
    gone = problems(spec_data(targets=[{"arch": "resnet18", "dataset": f"folder:{tmp_path / 'nowhere'}"}]))
    assert gone[0].startswith("targets[0].dataset: ") and "unknown dataset" not in gone[0]
    other = write_image_folder(tmp_path / "b" / "My Pets")  # another folder of the same name: the same column
    clash = problems(
        spec_data(
            targets=[target, {"arch": "resnet18", "dataset": f"folder:{other}"}], train={**BASE["train"], "eps": 0.1}
        ),
        plan=True,
    )
    assert clash == [
        "targets[1]: resnet18 / folder:My Pets is already targets[0] (two datasets of one name: rename "
        "one of their folders or files)"
    ]


def test_job_ids_are_directory_names_and_studies_planned_before_keep_theirs():
    assert job_id("target", "mymodels:small_cnn", "npz:/data/Digits.npz", 0, {}).startswith(
        "target-mymodels-small_cnn-npz-digits.npz-s0-"
    )
    long = job_id("source", "m" * 80, "folder:/x/" + "d" * 80, 3, {})
    assert len(long) <= 100 and "/" not in long
    ids = {j.id for j in plan_study(load_spec("quickstart"), check_mapping=False).jobs}
    # planned before init_from and dataset fingerprints existed: fields at their defaults are not hashed
    assert {"baseline-resnet18-digits-s0-000cb8c2", "baseline-resnet18-shapes-s0-59c7f1b3"} <= ids


def test_the_fine_tune_example_starts_every_digits_job_from_its_checkpoint():
    plan = plan_study(load_spec("own_finetune_example"))
    on_digits = [j for j in plan.jobs if j.dataset == "digits"]
    assert len(on_digits) == 4 and all(j.train["init_from"].endswith("checkpoint.pt") for j in on_digits)
    (transfer,) = [j for j in on_digits if j.kind == "target"]
    assert (
        transfer.train["freeze"]
        and transfer.activation == "sparta"
        and plan.job(transfer.source_job).dataset == "shapes"
    )


def test_run_study_in_a_worker_that_is_still_starting_says_the_script_needs_a_main_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(UnguardedScriptError, match=r'Call it under `if __name__ == "__main__":`'):
        run_study(parse_spec(spec_data()), tmp_path / "study")
    assert not (tmp_path / "study").exists()  # refused before the lock: no "another run is using" it


def test_a_process_pool_that_never_started_is_explained():
    executor = create_executor("process", workers=1)
    try:
        broken = BrokenProcessPool("A child process terminated abruptly")
        hint = f"BrokenProcessPool: A child process terminated abruptly; {START_FAILURE_HINT}"
        assert executor.explain(broken) == hint
        executor._started.set()  # a worker got as far as its initializer: a death later is something else
        assert START_FAILURE_HINT not in executor.explain(broken)
        assert executor.explain(ValueError("x")) == "ValueError: x"
    finally:
        executor.shutdown()


def test_gate_maps_load_the_study_plugins_before_rebuilding_its_models(tmp_path, monkeypatch):
    from tqdm import tqdm

    from plots import gates, study
    from plots.studydir import StudyView

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "gate_plugin_probe.py").write_text("LOADED = True\n")
    job = plan_study(parse_spec(spec_data()), check_mapping=False).jobs[0]
    view = StudyView(tmp_path, "own", jobs=[Job.from_dict({**job.to_dict(), "plugins": ["gate_plugin_probe"]})])
    monkeypatch.setattr(StudyView, "sparta_runs", lambda self: [job.id])
    seen = []

    def gate_maps(*args):  # the model would be rebuilt here: the plugin must be imported by now
        seen.append("gate_plugin_probe" in sys.modules)
        raise ValueError("no model here")

    monkeypatch.setattr(gates, "run_gate_maps", gate_maps)
    notes: list[str] = []
    try:
        assert study._gate_figures(view, tmp_path, ("png",), 1, 1, notes, tqdm(disable=True)) == []
    finally:
        sys.modules.pop("gate_plugin_probe", None)
    assert seen == [True] and notes == [f"gate maps of {job.id} skipped: ValueError: no model here"]
