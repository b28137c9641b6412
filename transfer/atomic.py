"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it; and the
one way JSON is read back (:func:`parse_json`, :func:`read_json`).

A crash (or SIGKILL) leaves either the old file or the new one, never half of one. Every module of
the project that writes a result, a checkpoint, a figure or a table goes through here.

JSON contract: :func:`write_json` writes atomically; :func:`read_json` raises (``FileNotFoundError`` for
a missing file, ``ValueError`` naming the file for anything unreadable). Reading is bounded: a document
nested deeper than :data:`MAX_JSON_DEPTH` is refused before ``json`` parses it (the parser recurses once
per level, so a hostile file of nested brackets would otherwise end in a ``RecursionError``). Callers
that treat an unreadable file as "not there yet" catch those errors themselves, by name.

The temporary file is created as ``open()`` creates files (mode ``0o666`` less the umask), so what
lands on a shared folder is as readable as any other file the user writes there. A writer killed
mid-write leaves its ``.NAME.<random>.tmp`` behind; the next write into that directory removes
such leftovers once they are :data:`STALE_SECONDS` old (a live writer keeps touching its file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH", "STALE_SECONDS", "atomic_write", "fsync_path", "parse_json", "read_json", "remove_stale",
    "umask", "write_json", "write_text",
]  # fmt: skip

STALE_SECONDS = 3600.0
MAX_JSON_DEPTH = 64  # nesting levels a JSON document of the project may have (its own files use < 10)
_TMP_ALPHABET = string.ascii_lowercase + string.digits + "_"
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a directory's entries') contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask, read from /proc where possible (setting it to read it races other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_open_would_give(path: Path) -> int:
    """An existing file keeps its permission bits; a new one gets ``0o666`` less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


def _create_tmp(path: Path) -> str:
    """A new empty file ``.NAME.<random>.tmp`` beside ``path``, with the mode ``open()`` would give it."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{''.join(secrets.choice(_TMP_ALPHABET) for _ in range(8))}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"no free temporary name beside {path}")


def remove_stale(directory: str | os.PathLike[str], older_than: float = STALE_SECONDS) -> list[Path]:
    """Delete the temporary files killed atomic writes left in ``directory`` that have not been
    touched for ``older_than`` seconds; return what was deleted."""
    removed = []
    cutoff = time.time() - older_than
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not _TMP_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    tmp = _create_tmp(path)
    try:
        write(tmp)
        os.chmod(tmp, _mode_open_would_give(path))  # writers such as safetensors' make their files 0600
        fsync_path(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself; some file systems cannot sync a directory
            fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON (values JSON cannot hold are written as ``str``)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (one linear scan, no recursion)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_json(text: str, *, what: str = "JSON text", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, or a ``ValueError`` naming ``what`` for invalid JSON or for nesting deeper
    than ``max_depth`` (refused before parsing)."""
    if _json_depth_exceeds(text, max_depth):
        raise ValueError(f"{what}: JSON nested deeper than {max_depth} levels; refused (not written by this toolkit)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike[str], *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document in ``path``: ``FileNotFoundError`` if it is missing, ``ValueError`` naming the file
    if it is not UTF-8, not JSON, or nested deeper than ``max_depth``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    return parse_json(text, what=str(path), max_depth=max_depth)
