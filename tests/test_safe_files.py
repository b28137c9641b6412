"""Files on shared folders: atomic writes honour the umask, killed writers' leftovers are cleaned up by
the next writer once stale, and zoo entries reach the disk before they are renamed into place."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from transfer import create_backbone, extract, inject
from transfer.atomic import STALE_SECONDS, atomic_write, write_text
from zoo import Registry


@pytest.fixture
def umask():
    """Set a umask for one test, restoring the old one afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask, mask, expected):
    umask(mask)
    path = write_text(tmp_path / "results.csv", "a,b\n")
    with open(tmp_path / "plain.csv", "w") as f:
        f.write("a,b\n")
    assert _mode(path) == _mode(tmp_path / "plain.csv") == expected


def test_files_of_writers_that_set_their_own_mode_get_the_umask_too(tmp_path, umask):
    from transfer import save_activation_set

    umask(0o022)
    path = save_activation_set(_aset(), tmp_path / "run" / "activation.safetensors")  # safetensors writes 0600
    assert _mode(path) == 0o644


def test_overwriting_keeps_the_mode_of_the_existing_file(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "plan.json"
    path.write_text("{}")
    path.chmod(0o640)
    write_text(path, "{}\n")
    assert _mode(path) == 0o640


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_the_next_writer_removes_stale_leftovers_of_killed_writes(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    stale = figures / ".transfer_pgd20.png.k3j_x9a2.tmp"  # a figure write killed long ago
    stale.write_bytes(b"half a png")
    _aged(stale, STALE_SECONDS + 60)
    fresh = figures / ".transfer_clean.png.ab12cd34.tmp"  # a writer still busy with it
    fresh.write_bytes(b"being written")
    mine = figures / ".notes.txt.ab12cd34.tmp.bak"  # not a staging file's name: never touched
    mine.write_bytes(b"user data")
    _aged(mine, STALE_SECONDS + 60)
    atomic_write(figures / "other.png", lambda tmp: Path(tmp).write_bytes(b"png"))
    assert not stale.exists()
    assert fresh.exists() and mine.exists()
    assert sorted(p.name for p in figures.iterdir()) == sorted([fresh.name, mine.name, "other.png"])


def _aset():
    torch.manual_seed(0)
    model = create_backbone("resnet18", 10, input_size=8, width=4)
    inject(model, "sparta", variant="dw")
    return extract(model, meta={"arch": "resnet18", "dataset": "digits"})


def test_zoo_staging_leftovers_are_cleaned_by_the_next_writer(tmp_path):
    registry = Registry(tmp_path, bundled_root=None)
    staging = tmp_path / ".tmp"
    staging.mkdir(parents=True)
    own = staging / "a@1.x1y2z3w4"  # a killed save of the name being written now (its lock is ours)
    own.mkdir()
    (own / "activation.safetensors").write_bytes(b"partial")
    other_stale = staging / "b@4.removed.q1w2e3r4"  # a killed removal of another name, long ago
    (other_stale / "entry").mkdir(parents=True)
    _aged(other_stale / "entry", STALE_SECONDS + 60)
    _aged(other_stale, STALE_SECONDS + 60)
    other_fresh = staging / "c@2.abcdefgh"  # maybe still being written by another process
    other_fresh.mkdir()
    registry.save("a", _aset())
    assert not own.exists() and not other_stale.exists()
    assert other_fresh.exists()
    assert registry.load("a@1").activation == "sparta"


def test_zoo_staging_of_a_locked_name_is_left_alone_however_old(tmp_path):
    import filelock

    registry = Registry(tmp_path, bundled_root=None)
    (tmp_path / ".locks").mkdir(parents=True)
    busy = tmp_path / ".tmp" / "slow@1.abcdefgh"
    busy.mkdir(parents=True)
    _aged(busy, STALE_SECONDS + 60)
    with filelock.FileLock(str(tmp_path / ".locks" / "slow.lock")):
        registry.save("a", _aset())
    assert busy.exists()


def test_last_version_marker_is_replaced_not_rewritten_in_place(tmp_path):
    registry = Registry(tmp_path, bundled_root=None)
    for _ in range(3):
        registry.save("a", _aset())
    registry.remove("a@1")
    marker = tmp_path / "a" / ".last_version"
    before = marker.stat().st_ino
    registry.remove("a@2")
    assert marker.read_text().strip() == "2"
    assert marker.stat().st_ino != before  # a rename: a reader never sees a truncated marker
    assert not list(tmp_path.glob("a/.*.tmp"))


def test_zoo_entry_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import zoo.store as store_mod

    synced: set[str] = set()
    real_fsync, real_rename = os.fsync, os.rename
    checked = []

    def fsync(fd):
        synced.add(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        src = os.path.realpath(src)
        if os.path.isdir(src) and Path(src).parent.name == ".tmp":
            files = {os.path.realpath(os.path.join(src, f)) for f in os.listdir(src)}
            assert files and files <= synced, f"not fsynced before the rename: {sorted(files - synced)}"
            assert src in synced  # the staging directory itself (its entries)
            checked.append(src)
        return real_rename(src, dst)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    monkeypatch.setattr(store_mod.os, "rename", rename)
    Registry(tmp_path, bundled_root=None).save("a", _aset())
    assert checked


def test_zoo_entry_honours_the_umask(tmp_path, umask):
    umask(0o022)
    ref = Registry(tmp_path, bundled_root=None).save("a", _aset())
    assert _mode(ref.path) == 0o755
    assert {p.name: _mode(p) for p in ref.path.iterdir()} == {
        "activation.safetensors": 0o644,
        "card.json": 0o644,
        "README.md": 0o644,
    }
    umask(0o077)
    ref = Registry(tmp_path, bundled_root=None).save("a", _aset())
    assert _mode(ref.path) == 0o700
    assert {_mode(p) for p in ref.path.iterdir()} == {0o600}
