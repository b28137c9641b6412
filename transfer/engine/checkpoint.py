"""Checkpoints: plain state dicts, atomic writes, RNG states, no pickled objects; and
:class:`RunCheckpoint`, the one typed record of a run's ``checkpoint.pt``.

Everything saved here loads with ``torch.load(path, weights_only=True)``: tensors, numbers, strings,
lists, tuples and dicts only (the NumPy RNG state is stored as a tensor, not as an ndarray).
"""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "derive_seed",
]

CHECKPOINT_FORMAT = "sparta-checkpoint/1"


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
            raise ValueError(
                f"{path}: not a checkpoint (truncated, or not written by torch.save); delete it to start the run afresh"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: holds objects other than tensors and plain values, which are never loaded "
            "(unpickling can run code); sparta checkpoints never hold them"
        ) from exc
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
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
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


@dataclass
class RunCheckpoint:
    """``checkpoint.pt`` of a run directory: everything exact resume needs, after epoch ``epoch``.

    The epoch loop writes it (:meth:`to_state`), resume reads and checks it (:meth:`from_state`); no
    other code touches its keys. Checkpoints written before the learning rate was set in one place also
    hold a ``scheduler`` entry, which is not needed and not read.
    """

    epoch: int  # epochs finished (1-based count)
    config: dict[str, Any]  # TrainConfig.to_dict() of the run that wrote it
    model: dict[str, torch.Tensor]  # model.state_dict()
    optimizer: dict[str, Any]  # optimizer.state_dict()
    rng: dict[str, Any]  # rng_state()
    history: list[dict[str, Any]]  # the rows of history.json so far
    best: dict[str, Any]  # {"epoch", "val_clean", "val_robust"} of the model in best.pt
    scaler: dict[str, Any]  # the fp16 GradScaler's state_dict(); {} without one

    def to_state(self) -> dict[str, Any]:
        """The plain dict :func:`save_checkpoint` writes."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], path: str | os.PathLike[str]) -> RunCheckpoint:
        """The record in what :func:`load_checkpoint` read from ``path``; a ``ValueError`` naming the file
        and the first missing or mistyped entry otherwise."""
        expected: dict[str, tuple[type, ...]] = {
            "epoch": (int,), "config": (dict,), "model": (dict,), "optimizer": (dict,), "rng": (dict,),
            "history": (list,), "best": (dict,), "scaler": (dict,),
        }  # fmt: skip
        values = {"scaler": {}, **{k: v for k, v in state.items() if k in expected}}
        problems = [f"no {k!r}" for k in expected if k not in values]
        problems += [
            f"{k!r} is a {type(values[k]).__name__}"
            for k, types in expected.items()
            if k in values and (not isinstance(values[k], types) or isinstance(values[k], bool))
        ]
        if not problems:
            problems = _deeper_problems(values)
        if problems:
            raise ValueError(
                f"{path}: not a resumable checkpoint ({'; '.join(problems)}); delete it to start the "
                "run afresh, or use another --out"
            )
        return cls(**values)


def _deeper_problems(values: dict[str, Any]) -> list[str]:
    """What is wrong inside the entries of a :class:`RunCheckpoint` whose top-level types are right."""
    problems = []
    if values["epoch"] < 0:
        problems.append(f"'epoch' is {values['epoch']}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in values["model"].items()):
        problems.append("'model' is not a state dict of tensors")
    if not {"state", "param_groups"} <= set(values["optimizer"]):
        problems.append("'optimizer' is not an optimizer state dict")
    if not {"torch", "numpy", "python"} <= set(values["rng"]):
        problems.append("'rng' lacks a torch, numpy or python state")
    if len(values["history"]) != values["epoch"] or not all(isinstance(row, dict) for row in values["history"]):
        problems.append(f"'history' does not hold one record for each of its {values['epoch']} epochs")
    if not {"epoch", "val_clean", "val_robust"} <= set(values["best"]):
        problems.append("'best' lacks epoch, val_clean or val_robust")
    return problems
