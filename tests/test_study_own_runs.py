"""A study of one's own, run on the real training engine: a plugin's model and dataset in process-pool workers,
a folder target with a PReLU source, a resumed study whose folder changed, a zoo entry as a source, and a
script that runs a study without a ``__main__`` guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import sparta_model, write_image_folder, write_plugin

from studies.executors import START_FAILURE_HINT, create_executor
from studies.jobs import job_dir, read_result, read_status
from studies.planner import plan_study
from studies.results import load_results
from studies.runner import load_plan, prepare_study, run_plan
from studies.spec import load_spec
from transfer import extract, load_activation_set
from transfer.cli import main
from zoo import Registry

pytestmark = pytest.mark.slow

TRAIN = """
[train]
recipe = "fgsm-rs"
epochs = 1
batch_size = 16
width = 4
input_size = 8
train_subset = 32
val_subset = 0
device = "cpu"
"""


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A study with a plugin's model and dataset (plugins = [...], the module on PYTHONPATH only), a PReLU source
    and a folder target, run by `sparta study run --executor process --workers 2`."""
    from transfer import own_models
    from transfer.engine import data

    root = tmp_path_factory.mktemp("own")
    write_plugin(root / "plugins", "own_runs_plugin")
    folder = write_image_folder(root / "pets", n=8)
    config = root / "own.toml"
    config.write_text(
        f'name = "own"\nplugins = ["own_runs_plugin"]\nbaselines = ["relu"]\n{TRAIN}eps = 0.1\n'
        '[eval]\nattacks = ["clean", "fgsm"]\n'
        '[[sources]]\narch = "own-runs-plugin-net"\ndataset = "own-runs-plugin-data"\n'
        'activation = "prelu"\n'
        f'[[targets]]\narch = "own-runs-plugin-net"\ndataset = "folder:{folder}"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data._REGISTRY, "_entries", dict(data._REGISTRY._entries))
        mp.setattr(own_models, "_FACTORIES", dict(own_models._FACTORIES))
        mp.syspath_prepend(str(root / "plugins"))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(root / "plugins"), os.environ.get("PYTHONPATH", "")]))
        study = root / "study"
        code = main(
            [
                "study",
                "run",
                str(config),
                "--out",
                str(study),
                "--executor",
                "process",
                "--workers",
                "2",
                "--no-plot",
                "--quiet",
                "--json",
            ]
        )
        yield {"code": code, "config": config, "study": study, "folder": folder, "root": root}
        sys.modules.pop("own_runs_plugin", None)


def test_plugins_reach_the_process_workers_and_a_folder_target_takes_a_prelu_source(own):
    assert own["code"] == 0
    jobs = load_plan(own["study"])
    assert sorted(j.kind for j in jobs) == ["baseline", "source", "target"]
    assert all(read_result(own["study"], j.id) is not None for j in jobs)
    pids = {read_status(own["study"], j.id)["pid"] for j in jobs}
    assert os.getpid() not in pids  # every job ran in a worker, which imported the plugin itself
    (transfer,) = [j for j in jobs if j.kind == "target"]
    assert transfer.activation == "prelu" and transfer.dataset == f"folder:{own['folder']}"
    assert transfer.row == "PReLU ← own-runs-plugin-net/own-runs-plugin-data [role]"
    log = (job_dir(own["study"], transfer.id) / "train.log").read_text()
    assert "injected prelu" in log and transfer.source_job in log
    results = load_results(own["study"])
    assert set(results["metric"]) == {"clean", "fgsm"} and set(results["eps"]) == {0.1}


def test_a_study_whose_folder_changed_is_refused_until_the_files_are_restored(own, capsys):
    added = own["folder"] / "train" / "c0" / "added.png"
    added.write_bytes((own["folder"] / "train" / "c0" / "0.png").read_bytes())
    argv = ["study", "run", str(own["config"]), "--out", str(own["study"]), "--no-plot", "--quiet"]
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"dataset 'folder:{own['folder']}' changed since the study in" in err
        assert "restore the files and run the study again to resume it, or run it into another --out" in err
        # a job planned on the files before they changed fails with the same words, in one line, not a traceback
        spec = load_spec(own["config"])
        added.unlink()
        plan = plan_study(spec, check_mapping=False)
        prepare_study(spec, own["root"] / "midway", plan)
        added.write_bytes((own["folder"] / "train" / "c0" / "0.png").read_bytes())  # changed after the plan
        run = run_plan(plan, own["root"] / "midway", create_executor("local"), progress=False)
        on_folder = {j.id for j in plan.jobs if j.dataset.startswith("folder:")}
        assert set(run.failed) == on_folder
        for jid in on_folder:
            error = read_status(own["root"] / "midway", jid)["error"]
            assert (
                error.startswith(
                    f"DatasetChangedError: dataset 'folder:{own['folder']}' changed since the study "
                    "planned this job on it (fingerprint "
                )
                and "\n" not in error
            )
    finally:
        added.unlink(missing_ok=True)
    assert main(argv) == 0  # restored: the study resumes, every job reused
    assert "0 job(s) run, 3 reused" in capsys.readouterr().out


def test_a_zoo_entry_is_a_source_that_trains_nothing_and_goes_in_frozen(tmp_path):
    stored = extract(sparta_model(seed=3, width=4, input_size=8))
    Registry().save(
        "tiny-digits",
        stored,
        card={"arch": "resnet18", "dataset": "digits", "threat_model": {"norm": "Linf", "eps": 0.1, "attack": "fgsm"}},
    )
    config = tmp_path / "zoo.toml"
    config.write_text(
        f'name = "from-zoo"\nbaselines = ["relu"]\n{TRAIN}[eval]\nattacks = ["clean"]\nn = 20\n'
        '[[sources]]\nzoo = "tiny-digits"\n[[targets]]\narch = "resnet18"\ndataset = "digits"\n'
    )
    study = tmp_path / "study"
    assert main(["study", "run", str(config), "--out", str(study), "--no-plot", "--quiet"]) == 0
    jobs = load_plan(study)
    assert sorted(j.kind for j in jobs) == ["baseline", "target"]  # no source job
    (transfer,) = [j for j in jobs if j.kind == "target"]
    result = read_result(study, transfer.id)
    assert result["zoo_source"] == "zoo:tiny-digits@1" and transfer.extra["zoo_source"] == "zoo:tiny-digits@1"
    trained = load_activation_set(job_dir(study, transfer.id) / "activation.safetensors")
    fresh = extract(sparta_model(seed=0, width=4, input_size=8))
    assert trained.tensors.keys() == stored.tensors.keys()
    for key, tensor in stored.tensors.items():  # injected frozen: the run ends with the stored tensors
        assert torch.equal(trained.tensors[key], tensor), key
    assert any(not torch.equal(fresh.tensors[k], t) for k, t in stored.tensors.items())
    table = load_results(study)
    assert set(table.loc[table["kind"] == "target", "source_job"]) == {"zoo:tiny-digits@1"}
    assert set(table.loc[table["kind"] == "target", "row"]) == {"Sparta dw ← zoo:tiny-digits@1 [role]"}
    config_json = json.loads((job_dir(study, transfer.id) / "config.json").read_text())
    assert config_json["transfer_source"] == "zoo:tiny-digits@1" and config_json["freeze"] is True


UNGUARDED = """
from studies.runner import run_study

run = run_study({config!r}, {out!r}, executor="process", executor_config={{"workers": 1}}, progress=False,
                check_mapping=False)
for error in run.failed.values():
    print("job error:", error)
"""


def test_a_script_without_a_main_guard_is_told_so_not_that_the_study_is_busy(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'name = "tiny"\nbaselines = ["relu"]\n{TRAIN}[eval]\nattacks = ["clean"]\n'
        '[[sources]]\narch = "resnet18"\ndataset = "digits"\n[[targets]]\narch = "resnet18"\n'
        'dataset = "digits"\n'
    )
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED.format(config=str(config), out=str(tmp_path / "study"))))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert (
        "UnguardedScriptError: run_study was called while a worker process of the process executor was "
        "starting" in done.stderr
    )
    assert "another `sparta study run`" not in done.stderr + done.stdout
    failed = [line for line in done.stdout.splitlines() if line.startswith("job error:")]
    assert failed and all(line.endswith(START_FAILURE_HINT) for line in failed)
