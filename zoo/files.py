"""File-level helpers of the zoo: checksums, refusing pickles, reading verified bytes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes

from transfer.activation_set import read_safetensors

from .errors import IntegrityError, ZooError

__all__ = [
    "sha256_bytes",
    "sha256_file",
    "read_verified",
    "tensors_from_bytes",
    "read_untrusted",
    "write_json",
]

_ZIP_MAGIC = b"PK\x03\x04"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path``, only if their sha256 is ``sha256``; else :class:`IntegrityError`."""
    if not path.is_file():
        raise IntegrityError(f"{path}: the entry's tensor file is missing; remove the entry and save it again")
    data = path.read_bytes()
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


def read_untrusted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a file from outside the registry. Never unpickles: a pickle or
    ``torch.save`` archive (whatever its name) is refused before anything parses it."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if _looks_like_pickle(head):
        raise ZooError(
            f"{path}: this is a pickle / torch.save file, not safetensors, whatever its name says. The zoo "
            "never unpickles (a pickle can run arbitrary code); whoever trusts the file can convert it with "
            "transfer.save_activation_set and import the result"
        )
    try:
        return read_safetensors(path)
    except ValueError as exc:
        raise ZooError(f"{exc}; the zoo imports only safetensors activation sets") from exc


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
