"""The files of a run directory (``docs/architecture.md``, "Run directories"): who may write them, when,
and what a failed write leaves.

- One writer at a time: :func:`run_lock` holds ``OUT/.run.lock`` (an OS file lock, released when the
  process ends, however it ends) for the whole of ``train()``, and records its holder (pid, host, start)
  in ``OUT/.run.holder.json``. A second ``train()`` into a busy directory fails at once with
  :class:`RunBusyError`, naming the holder.
- Every file is written atomically (``transfer.atomic``), through :func:`writing`: a write that fails
  (a full disk, a file-size limit) is a :class:`RunWriteError` naming the file, and the file it would
  have replaced is left as it was.
- The files always describe one state. After each epoch (:func:`save_epoch`): ``checkpoint.pt`` (a
  :class:`~.checkpoint.RunCheckpoint`), ``config.json`` when the checkpoint's config differs from it,
  ``best.pt`` when robust validation improved (Rice et al.), ``history.json``; and the results of a
  finished run this one extends are removed, since they describe a model that is gone. At the end
  (:func:`write_results`): ``per_image.safetensors``, ``activation.safetensors``, ``config.json`` when it
  differs (a finished run evaluated again under other ``eval_*`` settings), then ``metrics.json``, whose
  presence marks the run finished. So ``config.json`` is written once per change of the config the
  directory's state comes from, and a resumed run that changes ``lr`` or ``epochs`` and fails before its
  first new epoch leaves the old config beside the old checkpoint and results.
- A resume first repairs what a failed write after ``checkpoint.pt`` left behind (:func:`repair_epoch_files`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm

from ..activation_set import save_activation_set
from ..atomic import read_json, write_json
from ..inject import extract
from .checkpoint import RunCheckpoint, load_checkpoint, save_checkpoint
from .per_image import PER_IMAGE_FILE, PerImage, save_per_image

__all__ = [
    "LOCK_FILE", "HOLDER_FILE", "RESULT_FILES", "RunBusyError", "RunWriteError", "RunLog", "run_lock", "writing",
    "write_config", "save_epoch", "repair_epoch_files", "write_results", "kept_checkpoint", "INIT_FILE",
    "write_init_report",
]  # fmt: skip

LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.holder.json"
INIT_FILE = "init_from.json"  # a run started from init_from: what was loaded and re-initialised (written once)
# the files of a finished run, in the order write_results writes them (metrics.json last)
RESULT_FILES = (PER_IMAGE_FILE, "activation.safetensors", "metrics.json")

T = TypeVar("T")


class RunBusyError(ValueError):
    """Another ``train()`` holds the run directory's lock."""


class RunWriteError(OSError):
    """A file of the run directory could not be written (disk full, file-size limit, …); the file it
    would have replaced is intact."""


def writing(path: Path, write: Callable[[], T]) -> T:
    """``write()``, with any failure to write ``path`` turned into a :class:`RunWriteError` naming it.

    torch.save reports a full disk as a ``RuntimeError`` (``[enforce fail at inline_container.cc]``),
    safetensors as a ``SafetensorError``, JSON writes as an ``OSError``."""
    try:
        return write()
    except (OSError, RuntimeError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunWriteError(f"could not write {path} ({reason})") from exc


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s run lock inside the block (``out`` must exist), its holder recorded beside it."""
    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusyError(
            f"{out} is in use by another training run ({_holder(out)}); wait for it to finish, or give "
            "this run another --out"
        ) from None
    holder = out / HOLDER_FILE
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        writing(
            holder, lambda: write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        )
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder(out: Path) -> str:
    """Who holds ``out``'s lock, as its holder file says (it may not be written yet)."""
    try:
        record = read_json(out / HOLDER_FILE)
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"lock {out / LOCK_FILE}"


def write_config(out: Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` unless it already holds ``config``."""
    path = out / "config.json"
    with contextlib.suppress(OSError, ValueError):
        if read_json(path) == config:
            return
    writing(path, lambda: write_json(path, config))


def write_init_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``init_from.json`` (``transfer.init_weights.InitReport.to_dict()``) at the start of a new run."""
    path = out / INIT_FILE
    writing(path, lambda: write_json(path, report))


def save_epoch(out: Path, checkpoint: RunCheckpoint, improved: bool) -> None:
    """Record a finished epoch: ``checkpoint.pt``, ``config.json`` (when it changed), no stale results,
    ``best.pt`` (this epoch's model and validation record) when ``improved``, then ``history.json``."""
    path = out / "checkpoint.pt"
    writing(path, lambda: save_checkpoint(path, checkpoint.to_state()))
    write_config(out, checkpoint.config)
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    if improved:
        _save_best(out, checkpoint)
    writing(out / "history.json", lambda: write_json(out / "history.json", checkpoint.history))


def _save_best(out: Path, checkpoint: RunCheckpoint) -> None:
    path = out / "best.pt"
    writing(path, lambda: save_checkpoint(path, {"model": checkpoint.model, **checkpoint.best}))


def repair_epoch_files(out: Path, checkpoint: RunCheckpoint) -> None:
    """Before resuming from ``checkpoint``: ``history.json`` as it records, and ``best.pt`` from its model
    when its epoch was the best but the write of ``best.pt`` failed (``best.pt`` holds an older epoch)."""
    if checkpoint.best["epoch"] == checkpoint.epoch:
        best = out / "best.pt"
        try:
            best_epoch = load_checkpoint(best).get("epoch")
        except (FileNotFoundError, ValueError):
            best_epoch = None
        if best_epoch != checkpoint.epoch:
            _save_best(out, checkpoint)
    writing(out / "history.json", lambda: write_json(out / "history.json", checkpoint.history))


def write_results(
    out: Path,
    model: nn.Module,
    config: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, Any],
    correct: PerImage,
) -> None:
    """A finished run's results: which test images the last model got right under each metric
    (``per_image.safetensors``), the trained activation with ``meta`` (``activation.safetensors``),
    ``config.json`` (when it changed), then ``metrics.json``; an earlier ``metrics.json`` is removed first."""
    per_image, activation, final = (out / name for name in RESULT_FILES)
    trained = extract(model, meta=meta)
    final.unlink(missing_ok=True)
    writing(per_image, lambda: save_per_image(per_image, correct))
    writing(activation, lambda: save_activation_set(trained, activation))
    write_config(out, config)
    writing(final, lambda: write_json(final, metrics))


def kept_checkpoint(out: Path) -> str:
    """What a stopped run leaves to resume from, as its ``checkpoint.pt`` says, for its error message."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return "no epoch had finished, so there is no checkpoint yet"
    try:
        return f"checkpoint.pt of epoch {load_checkpoint(path)['epoch']} is intact in {out}"
    except (ValueError, KeyError):
        return f"{path} is as it was before this write"


class RunLog:
    """Appends time-stamped lines to a run's ``train.log``; ``echo`` also shows them on stderr."""

    def __init__(self, path: Path, echo: bool = False) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, message: str, echo: bool = True) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(f"{stamp}  {line}\n" for line in message.splitlines() or [""])

        def append() -> None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)

        writing(self.path, append)
        if self.echo and echo:
            tqdm.write(message, file=sys.stderr)
