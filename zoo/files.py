"""How the zoo reads files: only regular files (never a symlink, FIFO, device or socket), JSON only
through the depth-bounded :func:`transfer.atomic.parse_json`, tensors only from safetensors (a pickle is
refused before anything parses it), checksums taken of the very bytes that are then parsed.

Why refuse special files: reading a FIFO blocks until some writer appears (``sparta zoo list`` would hang
on one ``card.json``), a device can be endless, and a symlink can point anywhere (a "tensor file" that is
``/etc/passwd``). Each is recognised with ``lstat`` before it is opened, and checked again on the open
descriptor (``O_NOFOLLOW | O_NONBLOCK``), so a file swapped in between cannot slip through either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes

from transfer.activation_set import parse_safetensors
from transfer.atomic import parse_json

from .errors import IntegrityError, ZooError

__all__ = [
    "regular_file_bytes",
    "read_json_file",
    "sha256_bytes",
    "sha256_file",
    "read_verified",
    "tensors_from_bytes",
    "read_untrusted",
    "parse_untrusted",
]

_ZIP_MAGIC = b"PK\x03\x04"
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
)  # fmt: skip


def _refuse_unless_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    target = ""
    if stat.S_ISLNK(mode):
        with contextlib.suppress(OSError):
            target = f" to {os.readlink(path)}"
    raise ZooError(
        f"{path} is {kind}{target}, not a regular file; the zoo reads only regular files (a link can point "
        "anywhere, a FIFO or device may never end). Nothing was read: give the file itself"
    )


def regular_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file ``path``: ``FileNotFoundError`` if it is missing, :class:`ZooError`
    if it is a symlink or a special file (recognised before it is opened)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    _refuse_unless_regular(path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: it became a symlink since the lstat
        raise ZooError(f"{path}: cannot be opened as a regular file ({exc.strerror}); nothing was read") from None
    with open(fd, "rb") as f:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)  # swapped between the lstat and the open
        return f.read()


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """The JSON document in the regular file ``path`` (nesting bounded before parsing); :class:`ZooError`
    naming the file if it is special, not UTF-8 or not JSON; ``FileNotFoundError`` if it is missing."""
    data = regular_file_bytes(path)
    try:
        return parse_json(data.decode("utf-8"), what=str(path))
    except UnicodeDecodeError as exc:
        raise ZooError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except ValueError as exc:
        raise ZooError(str(exc)) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file the zoo itself has just written (a staging file); others go through
    :func:`regular_file_bytes` first."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path``, only if their sha256 is ``sha256``; else :class:`IntegrityError`."""
    try:
        data = regular_file_bytes(path)
    except FileNotFoundError:
        raise IntegrityError(
            f"{path}: the entry's tensor file is missing; remove the entry and save it again"
        ) from None
    actual = sha256_bytes(data)
    if actual != sha256:
        raise IntegrityError(
            f"{path}: sha256 {actual} does not match the card's {sha256}; the file is truncated, "
            "corrupted or was edited after it was stored. Nothing was loaded; remove the entry and store "
            "it again"
        )
    return data


def tensors_from_bytes(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise ZooError(f"{origin}: not a valid safetensors file ({exc})") from exc


def _looks_like_pickle(head: bytes) -> bool:
    """``torch.save`` writes a zip archive; plain pickles of protocol 2+ start with PROTO (0x80)."""
    return head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def parse_untrusted(data: bytes, origin: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of the bytes of a file from outside the registry. Never unpickles: a
    pickle or ``torch.save`` archive (whatever its name) is refused before anything parses it."""
    if _looks_like_pickle(data[:8]):
        raise ZooError(
            f"{origin}: this is a pickle / torch.save file, not safetensors, whatever its name says. The zoo "
            "never unpickles (a pickle can run arbitrary code); whoever trusts the file can convert it with "
            "transfer.save_activation_set and import the result"
        )
    try:
        return parse_safetensors(data, origin)
    except ValueError as exc:
        raise ZooError(f"{exc}; the zoo imports only safetensors activation sets") from exc


def read_untrusted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`parse_untrusted` of the regular file ``path``."""
    return parse_untrusted(regular_file_bytes(path), str(path))
