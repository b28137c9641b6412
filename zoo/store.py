"""The write side of a registry root on disk: per-name locks, the ``.tmp`` staging area and its cleanup,
the ``.last_version`` marker, and writing one entry so that a reader sees all of it or none.

An entry is written completely into ``ROOT/.tmp/NAME@VERSION.*`` (the same file system), every file and
the folder fsynced, then renamed into ``ROOT/NAME/VERSION`` in one step. A write that fails (a full disk,
a file-size limit, an unwritable root) removes its staging folder and raises one :class:`ZooError`
saying what failed and that nothing was stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from transfer.atomic import STALE_SECONDS, fsync_path, umask, write_json, write_text

from .card import CARD_FILE, README_FILE, TENSOR_FILE
from .errors import ZooError
from .files import regular_file_bytes, sha256_file
from .readme import render_readme

__all__ = ["last_issued", "name_lock", "record_last_issued", "staging_area", "write_entry"]

_LAST_VERSION = ".last_version"


@contextmanager
def name_lock(root: Path, name: str, timeout: float) -> Iterator[None]:
    """Hold ``ROOT/.locks/NAME.lock`` (waiting at most ``timeout`` seconds for another process)."""
    lock_dir = root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout)
    try:
        with lock:
            yield
    except filelock.Timeout as exc:
        raise ZooError(
            f"another process has held the lock {lock.lock_file} for over {timeout:g} s; "
            "wait for it, or delete the lock file if no sparta process is running"
        ) from exc


def _is_locked(root: Path, name: str) -> bool:
    lock = filelock.FileLock(str(root / ".locks" / f"{name}.lock"), timeout=0)
    try:
        with lock:
            return False
    except (filelock.Timeout, OSError):
        return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and (for a folder) anything inside it."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.rglob("*")]
    except OSError:
        return time.time()  # vanishing while looked at: someone is working on it
    return max(times)


def staging_area(root: Path, name: str) -> Path:
    """``ROOT/.tmp``, cleared of what killed writers left there: every staging folder of ``name`` (whose
    lock the caller holds, so none of them is live) and those of other names that are
    :data:`~transfer.atomic.STALE_SECONDS` old and whose name is not locked."""
    tmp = root / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_SECONDS
    for leftover in tmp.iterdir():
        owner = leftover.name.partition("@")[0]
        if owner == name or (_newest_mtime(leftover) < cutoff and not _is_locked(root, owner)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return tmp


def last_issued(root: Path, name: str) -> int:
    """The highest version of ``name`` ever issued in ``root`` (0 if none was recorded)."""
    try:
        text = regular_file_bytes(root / name / _LAST_VERSION).decode("ascii", errors="replace")
    except FileNotFoundError:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        return 0


def record_last_issued(root: Path, name: str, version: int) -> None:
    write_text(root / name / _LAST_VERSION, f"{max(version, last_issued(root, name))}\n")


def _write_files(staging: Path, tensors: dict[str, torch.Tensor], make_card: Callable[[str], dict[str, Any]]) -> None:
    """The entry's three files in ``staging``, with the modes ``open()``/``mkdir`` give, on the disk."""
    save_file(tensors, str(staging / TENSOR_FILE))
    card = make_card(sha256_file(staging / TENSOR_FILE))
    write_json(staging / CARD_FILE, card, sort_keys=True)
    write_text(staging / README_FILE, render_readme(card))
    mask = umask()  # safetensors writes 0600, mkdtemp 0700
    for path in (staging / TENSOR_FILE, staging / CARD_FILE, staging / README_FILE):
        path.chmod(0o666 & ~mask)
        fsync_path(path)  # on the disk before the rename makes the entry visible
    staging.chmod(0o777 & ~mask)
    fsync_path(staging)


def write_entry(
    root: Path,
    name: str,
    version: int,
    tensors: dict[str, torch.Tensor],
    make_card: Callable[[str], dict[str, Any]],
    *,
    replacing: bool = False,
) -> Path:
    """Write ``ROOT/NAME/VERSION`` (the caller holds ``name``'s lock) and return it. ``make_card(sha256)``
    gives the card once the tensor file is written. ``replacing`` puts the entry in place of the one there
    (which is removed only once the new one is in place)."""
    tmp = staging_area(root, name)
    staging = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{name}@{version}."))
    dest = root / name / str(version)
    try:
        try:
            _write_files(staging, tensors, make_card)
        except (OSError, SafetensorError) as exc:
            raise ZooError(
                f"could not write {name}@{version} into {root} ({_reason(exc)}); nothing was stored "
                "(free some space or lift the file-size limit, then run it again)"
            ) from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if replacing and dest.exists():  # the broken entry goes to .tmp, then away
            old = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{name}@{version}.")) / "old"
            os.rename(dest, old)
        try:
            os.rename(staging, dest)
        except OSError:
            if old is not None:
                os.rename(old, dest)
            raise
        fsync_path(dest.parent)
        if old is not None:
            staging_area(root, name)  # removes the replaced entry (its name's lock is ours)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
