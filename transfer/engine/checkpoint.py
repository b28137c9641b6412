"""Checkpoints and run-directory files: plain state dicts, atomic writes, RNG states, no pickled objects.

Everything saved here loads with ``torch.load(path, weights_only=True)``: tensors, numbers, strings,
lists, tuples and dicts only (the NumPy RNG state is stored as a tensor, not as an ndarray).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "read_json",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "derive_seed",
    "RunLog",
]

CHECKPOINT_FORMAT = "sparta-checkpoint/1"


def read_json(path: str | os.PathLike[str]) -> Any:
    """A run directory's JSON file; invalid JSON is a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plain containers and tensors only) atomically with a format tag."""
    return atomic_write(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU, never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise ValueError(f"{path}: not a checkpoint (truncated, or not written by torch.save); delete it "
                             "to start the run afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: holds objects other than tensors and plain values, which are never loaded "
                         "(unpickling can run code); sparta checkpoints never hold them") from exc
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: unreadable checkpoint ({reason}); delete it to start the run afresh") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a sparta checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path}: a sparta checkpoint without model weights; delete it to start the run afresh")
    return state


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python RNG states as weights-only-loadable values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where the devices match)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``(seed, epoch)``: nearby inputs give unrelated seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (all devices), NumPy and Python; return a CPU generator seeded the same way."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


class RunLog:
    """Appends time-stamped lines to a run's ``train.log``; ``echo`` also shows them on stderr."""

    def __init__(self, path: str | os.PathLike[str], echo: bool = False) -> None:
        self.path = Path(path)
        self.echo = echo
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str, echo: bool = True) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            for line in message.splitlines() or [""]:
                f.write(f"{stamp}  {line}\n")
        if self.echo and echo:
            tqdm.write(message, file=sys.stderr)
