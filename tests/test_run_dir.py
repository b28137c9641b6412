"""Safe run directories: one writer at a time, nothing created before every input is checked, a failed
write (full disk, file-size limit) reported in one line with what was kept, the typed checkpoint
record, and config.json written once per change of the config."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_argv, tiny_config

from transfer import create_backbone, extract, inject
from transfer.cli import main
from transfer.engine import run_dir, training
from transfer.engine.checkpoint import RunCheckpoint, load_checkpoint, save_checkpoint
from transfer.engine.config import TrainConfig
from transfer.engine.per_image import PerImage, save_per_image
from transfer.engine.run_dir import RunBusyError, RunWriteError, run_lock, writing
from transfer.engine.training import train

TINY = ["train", *tiny_argv(epochs=None, eps=0.1, alpha=0.05, steps=1, test_subset=16)]


def tiny(**overrides) -> TrainConfig:
    """The run of ``TINY`` as a config: one PGD epoch (one step), 16 test images."""
    return tiny_config(**{**dict(recipe="pgd", eps=0.1, alpha=0.05, steps=1, test_subset=16), **overrides})


def _sparta(cli: list[str], *, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """``sparta`` in a child process, with its file-size limit at ``fsize`` bytes (writes beyond it fail
    with EFBIG: SIGXFSZ is ignored)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    code = "import sys; from transfer.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *cli],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=limit if fsize else None,
    )


def test_a_second_train_into_a_busy_directory_fails_at_once_naming_the_holder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from transfer.engine.run_dir import "
            "run_lock\nwith run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as patched:
            patched.setattr(training, "load_data", lambda *a: pytest.fail("data loaded before the lock was tried"))
            with pytest.raises(RunBusyError, match=rf"in use by another training run \(pid {holder.pid} on "):
                train(tiny(), out, progress=False)  # the library takes the lock, not only the CLI
        assert main([*TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pid {holder.pid}" in err and "another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [".run.holder.json", ".run.lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # the OS released the killed holder's lock
        pass


def test_the_directory_is_created_only_after_every_input_is_checked(tmp_path, capsys):
    source = create_backbone("resnet18", 10, in_chans=1, input_size=8, width=8)
    inject(source, "sparta", variant="dw")
    wider = extract(source)  # width-8 sites: no exact match in a width-4 model
    with pytest.raises(ValueError, match="cannot map"):
        train(tiny(policy="exact"), tmp_path / "mismatch", activation_set=wider, progress=False)
    assert not (tmp_path / "mismatch").exists()
    assert main([*TINY, "--input-size", "100000", "--out", str(tmp_path / "huge")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "input_size must be at most 4096" in err
    assert not (tmp_path / "huge").exists()
    with pytest.raises(ValueError, match="input_size must be at most 4096"):
        tiny(input_size=4097).validate()
    tiny(input_size=4096).validate()


def test_a_file_size_limit_is_one_line_exit_3_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    fresh = _sparta([*TINY, "--epochs", "1", "--out", str(out)], fsize=20_000)  # below any checkpoint.pt
    assert fresh.returncode == 3, fresh.stderr
    line = fresh.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(f"sparta train: error: could not write {out / 'checkpoint.pt'} (")
    assert "no epoch had finished" in line and "ulimit -f" in line and "run the same command again" in line

    assert _sparta([*TINY, "--epochs", "1", "--out", str(out)]).returncode == 0
    size = (out / "checkpoint.pt").stat().st_size
    grown = _sparta([*TINY, "--epochs", "2", "--out", str(out)], fsize=size // 2)
    assert grown.returncode == 3, grown.stderr
    assert len(grown.stderr.strip().splitlines()) == 1
    assert f"checkpoint.pt of epoch 1 is intact in {out}" in grown.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # nothing corrupted, no temporary file left
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _sparta([*TINY, "--epochs", "2", "--out", str(out)]).returncode == 0
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 2


def test_a_safetensors_write_over_the_limit_is_a_run_write_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "per_image.safetensors"
    save_per_image(path, PerImage({"clean": [True, False]}, "ab"))
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    big = PerImage({"clean": torch.ones(200_000, dtype=torch.bool).numpy()}, "ab")
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(RunWriteError, match=rf"could not write {path} \("):
            writing(path, lambda: save_per_image(path, big))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before


def test_checkpoint_records_are_checked_and_old_checkpoints_resume(tmp_path):
    train(tiny(), tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    record = RunCheckpoint.from_state(state, path)
    assert record.epoch == 1 and record.to_state().keys() == state.keys() - {"format"}
    for broken, message in [
        ({**state, "epoch": "1"}, "'epoch' is a str"),
        ({**state, "history": []}, "'history'"),
        ({k: v for k, v in state.items() if k != "rng"}, "no 'rng'"),
    ]:
        with pytest.raises(ValueError, match=rf"not a resumable checkpoint \(.*{message}.*delete it"):
            RunCheckpoint.from_state(broken, path)
    # A checkpoint of before this record: a `scheduler` entry, no `scaler`, a config without the new fields.
    legacy = {k: v for k, v in state.items() if k not in ("scaler", "format")}
    legacy["scheduler"] = {"last_epoch": 1}
    legacy["config"] = {k: v for k, v in state["config"].items() if k not in ("activation_lr_scale", "attack_bn_mode")}
    save_checkpoint(path, legacy)
    assert train(tiny(epochs=2), tmp_path, progress=False)["epoch"] == 2


def test_config_json_is_written_once_per_change_of_the_config(tmp_path, monkeypatch):
    writes = []
    real = run_dir.write_json

    def counting(path, obj, **kwargs):
        if Path(path).name == "config.json":
            writes.append(obj["epochs"])
        return real(path, obj, **kwargs)

    monkeypatch.setattr(run_dir, "write_json", counting)
    train(tiny(epochs=3), tmp_path, progress=False)
    assert writes == [3]  # with the first checkpoint; not again with each epoch or the results
    train(tiny(epochs=3), tmp_path, progress=False)
    assert writes == [3]  # a finished run returns its metrics
    train(tiny(epochs=4), tmp_path, progress=False)
    assert writes == [3, 4]
    train(tiny(epochs=4, eval_attacks=("clean", "fgsm")), tmp_path, progress=False)  # evaluated again
    assert writes == [3, 4, 4] and json.loads((tmp_path / "config.json").read_text())["eval_attacks"] == [
        "clean",
        "fgsm",
    ]
