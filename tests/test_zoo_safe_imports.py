"""What the zoo reads from outside is checked before anything is stored, and every refusal is one line
(`sparta: error: ...`, exit 2) with nothing imported and nothing lost: half-copied Hugging Face folders,
links and special files, JSON nested deep enough to crash a recursive parser, a disk that fills up during
an import, and environment variables set to nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import sparta_model
from safetensors.torch import save_file

from transfer import extract, load_activation_set, save_activation_set
from transfer.activation_set import activation_set_to_header
from transfer.cli import main
from transfer.environment import EmptySettingError
from zoo import Registry, ZooError

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads alone ends in a RecursionError


@pytest.fixture(scope="module")
def aset():
    meta = {"arch": "resnet18", "dataset": "digits", "metrics": {"clean": 90.0, "pgd20": 40.0}}
    return extract(sparta_model(width=4, input_size=8), meta=meta)


@pytest.fixture
def source(tmp_path, aset) -> Registry:
    registry = Registry(tmp_path / "source", bundled_root=None)
    registry.save("digits-r18", aset)
    return registry


@pytest.fixture
def target(tmp_path) -> Registry:
    return Registry(tmp_path / "target", bundled_root=None)


@contextmanager
def _fails_fast(seconds: int = 30):
    """A read that blocks (a FIFO opened for reading) fails the test instead of hanging it."""

    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s: something opened a FIFO")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _refused(capsys, target: Registry, *argv: str, needles: tuple[str, ...] = ()) -> str:
    """Run `sparta ARGV --root TARGET`; assert one error line, exit 2, and an untouched target zoo."""
    with _fails_fast():
        rc = main([*argv, "--root", str(target.root)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("sparta: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert target.list() == [] and not [p for p in target.root.glob("*/*") if p.name.isdigit()]
    return lines[0]


# ---- Hugging Face folders: imported only whole ---------------------------------------------------------


def test_an_hf_folder_whose_config_json_is_cut_short_is_refused(source, target, tmp_path, capsys):
    folder = source.export("digits-r18", tmp_path / "hf", format="hf")
    config = folder / "config.json"
    config.write_bytes(config.read_bytes()[:100])  # the copy stopped here
    line = _refused(capsys, target, "zoo", "import", str(folder), needles=(str(config), "not valid JSON"))
    assert "Nothing was imported" in line


def test_an_hf_folder_whose_config_json_is_a_fifo_is_refused_without_opening_it(source, target, tmp_path, capsys):
    folder = source.export("digits-r18", tmp_path / "hf", format="hf")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    _refused(capsys, target, "zoo", "import", str(folder), needles=("FIFO", "not a regular file"))


def test_an_hf_folder_whose_tensor_file_links_elsewhere_is_refused(source, target, tmp_path, capsys):
    folder = source.export("digits-r18", tmp_path / "hf", format="hf")
    (folder / "activation.safetensors").unlink()
    (folder / "activation.safetensors").symlink_to("/etc/passwd")
    _refused(capsys, target, "zoo", "import", str(folder), needles=("symbolic link to /etc/passwd",))


def test_a_tensor_file_whose_bytes_differ_from_the_recorded_sha256_is_refused(source, target, tmp_path, capsys):
    folder = source.export("digits-r18", tmp_path / "hf", format="hf")
    other = Registry(tmp_path / "other", bundled_root=None)
    other.save("digits-r18", source.load("digits-r18"), card={"description": "another entry"})
    other.export("digits-r18", folder / "activation.safetensors", overwrite=True)  # a valid file, of another export
    _refused(capsys, target, "zoo", "import", str(folder), needles=("sha256", "does not match"))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_links_and_special_files_are_refused_as_plain_imports_too(source, target, tmp_path, capsys, kind):
    real = source.export("digits-r18", tmp_path / "real.safetensors")
    given = tmp_path / "given.safetensors"
    if kind == "symlink":
        given.symlink_to(real)
    else:
        os.mkfifo(given)
    _refused(capsys, target, "zoo", "import", str(given), needles=(str(given), "not a regular file"))
    run = tmp_path / "run"  # a run directory whose activation file is such a file
    run.mkdir()
    (run / "activation.safetensors").symlink_to(real)
    _refused(capsys, target, "zoo", "import", str(run), needles=("symbolic link",))


def test_a_fifo_in_place_of_a_stored_card_is_named_by_list_and_refused_by_info(source, capsys):
    broken = source.save("broken", source.load("digits-r18"))
    (broken.path / "card.json").unlink()
    os.mkfifo(broken.path / "card.json")
    with _fails_fast():
        rc = main(["zoo", "list", "--root", str(source.root)])
    out, err = capsys.readouterr()
    assert rc == 0 and "digits-r18@1" in out and "broken@1" not in out
    assert err.count("\n") == 1 and err.startswith("sparta zoo list: skipping broken@1:") and "FIFO" in err


# ---- JSON nested deeper than any file of the project ---------------------------------------------------


def test_a_deeply_nested_activation_set_header_is_refused_not_a_recursion_error(aset, target, tmp_path, capsys):
    path = tmp_path / "deep.safetensors"
    save_file(dict(aset.tensors), str(path), metadata={**activation_set_to_header(aset), "sparta.meta": DEEP})
    with pytest.raises(ValueError, match="'sparta.meta'.*nested deeper"):
        load_activation_set(path)
    _refused(capsys, target, "zoo", "import", str(path), needles=("sparta.meta", "nested deeper"))


def test_a_deeply_nested_embedded_card_or_hf_config_is_refused(source, target, tmp_path, capsys):
    exported = tmp_path / "deep-card.safetensors"
    aset = source.load("digits-r18")
    save_activation_set(aset, exported, extra={"sparta.zoo.card": DEEP})
    _refused(capsys, target, "zoo", "import", str(exported), needles=("embedded zoo card", "nested deeper"))
    folder = source.export("digits-r18", tmp_path / "hf", format="hf")
    (folder / "config.json").write_text(DEEP)
    _refused(capsys, target, "zoo", "import", str(folder), needles=("config.json", "nested deeper"))


def test_one_deeply_nested_card_is_skipped_by_list_and_an_error_for_info(source, capsys):
    broken = source.save("deep", source.load("digits-r18"))
    (broken.path / "card.json").write_text(DEEP)
    rc = main(["zoo", "list", "--root", str(source.root)])
    out, err = capsys.readouterr()
    assert rc == 0 and "digits-r18@1" in out and "deep@1" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparta zoo list: skipping deep@1:") and "nested deeper" in err
    rc = main(["zoo", "info", "deep", "--root", str(source.root)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "deep@1" in err and "nested deeper" in err
    with pytest.raises(ZooError, match="nested deeper"):
        source.load("deep")


# ---- a full disk or a file-size limit during an import -------------------------------------------------


_IMPORT_UNDER_LIMITS = """
import contextlib, io, json, resource, signal, sys
from transfer.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
results = []
for exported, root, limit in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["zoo", "import", exported, "--root", root])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


def test_an_import_that_hits_the_file_size_limit_stores_nothing_and_says_so(source, tmp_path):
    """One process, two limits: the first write (the tensor file, written by safetensors) fails, then the
    second (card.json, the atomic writer's); ``RLIMIT_FSIZE`` stands in for a full disk."""
    long = source.save("digits-r18", source.load("digits-r18"), card={"description": "a long story " * 2000})
    exported = source.export("digits-r18", tmp_path / "e.safetensors")
    sizes = {p.name: p.stat().st_size for p in long.path.iterdir()}
    assert sizes["card.json"] > sizes["activation.safetensors"]  # a limit between them fails at the card
    cases = [
        (str(exported), str(tmp_path / f"zoo-{fails_at}"), limit)
        for fails_at, limit in (
            ("tensors", sizes["activation.safetensors"] - 1),
            ("card", sizes["activation.safetensors"]),
        )
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_UNDER_LIMITS, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    for (rc, err), (_, root, _) in zip(json.loads(proc.stdout), cases, strict=True):
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert "could not write digits-r18@1" in lines[0] and "File too large" in lines[0], lines[0]
        assert "nothing was stored" in lines[0]
        assert not (Path(root) / "digits-r18").exists() or not list((Path(root) / "digits-r18").iterdir())
        assert not list((Path(root) / ".tmp").iterdir())  # no half entry left behind
        assert Registry(root, bundled_root=None).import_file(exported).version == 1  # once there is room


# ---- environment variables: set but empty is an error --------------------------------------------------


@pytest.mark.parametrize("variable", ["SPARTA_ZOO", "SPARTA_ZOO_BUNDLED"])
def test_an_empty_zoo_variable_is_an_error_naming_it(monkeypatch, capsys, variable):
    monkeypatch.setenv(variable, "")
    with pytest.raises(EmptySettingError, match=variable):
        Registry()
    rc = main(["zoo", "list"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"environment variable {variable} is set but empty" in err


def test_sparta_zoo_bundled_none_means_no_bundled_entries(monkeypatch, tmp_path, aset):
    shipped = tmp_path / "shipped"
    Registry(shipped, bundled_root=None).save("shipped-entry", aset)
    monkeypatch.setenv("SPARTA_ZOO_BUNDLED", str(shipped))
    assert [r["ref"] for r in Registry(tmp_path / "user").list()] == ["shipped-entry@1"]
    for value in ("none", "None"):
        monkeypatch.setenv("SPARTA_ZOO_BUNDLED", value)
        assert Registry(tmp_path / "user").bundled_root is None
        assert Registry(tmp_path / "user").list() == []
    assert not Path("none").exists()


def test_a_zoo_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "zoo").mkdir()  # what every study directory holds
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", "import zoo; print(zoo.Registry.__module__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "zoo.registry", proc.stderr[-2000:]
