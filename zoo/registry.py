"""The zoo registry: trained activation sets stored apart from backbones, versioned and checksummed.

Layout of a root (``Registry(root)``; default ``$SPARTA_ZOO``, else the user cache dir)::

    ROOT/NAME/VERSION/activation.safetensors   the tensors (no header metadata: same tensors, same bytes)
    ROOT/NAME/VERSION/card.json                what it is, where it came from, checksums (see zoo.card)
    ROOT/NAME/VERSION/README.md                a Hugging Face style model card
    ROOT/NAME/.last_version                    highest version ever issued (so removal never reuses one)
    ROOT/.locks/NAME.lock                      one lock per name, held while writing or removing
    ROOT/.tmp/                                 entries being written; renamed into place when complete

Entries bundled with the package (``zoo/bundled/NAME/VERSION/``) are listed and loadable beside the
user root, which wins where both hold the same ``NAME@VERSION``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import EllipsisType
from typing import Any

import filelock
from platformdirs import user_cache_dir
from safetensors.torch import save_file

from transfer.activation_set import ActivationSet, activation_set_from_parts, save_activation_set
from transfer.atomic import STALE_SECONDS, fsync_path, umask, write_text

from .card import (
    COMPUTED_FIELDS,
    PROVENANCE_FIELDS,
    TENSOR_FILE,
    activation_set_from_card,
    build_card,
    card_summary,
    check_card_matches,
    content_digest,
    validate_card,
)
from .errors import EntryNotFoundError, IntegrityError, ZooError
from .files import read_untrusted, read_verified, sha256_file, tensors_from_bytes, write_json
from .hf import export_hf_folder, is_hf_folder, read_hf_folder
from .names import EntryRef, derive_name, parse_ref, parse_version, validate_name
from .readme import render_readme
from .threat import normalize_norm, threat_matches

__all__ = ["Registry", "EXPORT_CARD_KEY", "default_root", "BUNDLED_ROOT"]

EXPORT_CARD_KEY = "sparta.zoo.card"
CARD_FILE = "card.json"
README_FILE = "README.md"
BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"
_LAST_VERSION = ".last_version"
_FILTERS = ("activation", "variant", "arch", "dataset")


def _toolkit_version() -> str:
    """The installed sparta-transfer version (from the package metadata, not by importing ``transfer``)."""
    try:
        return version("sparta-transfer")
    except PackageNotFoundError:
        return "0+unknown"


def default_root() -> Path:
    """``$SPARTA_ZOO`` if set, else ``<user cache dir>/sparta-transfer/zoo``."""
    env = os.environ.get("SPARTA_ZOO")
    return Path(env).expanduser() if env else Path(user_cache_dir("sparta-transfer")) / "zoo"


def default_bundled_root() -> Path | None:
    """``$SPARTA_ZOO_BUNDLED`` if set (empty: no bundled entries), else the package's ``zoo/bundled``."""
    env = os.environ.get("SPARTA_ZOO_BUNDLED")
    if env is None:
        return BUNDLED_ROOT
    return Path(env).expanduser() if env else None


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and (for a folder) anything inside it."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.rglob("*")]
    except OSError:
        return time.time()  # vanishing while looked at: someone is working on it
    return max(times)


class Registry:
    """A zoo of trained activation sets under ``root``, plus the read-only entries in ``bundled_root``
    (default :func:`default_bundled_root`; ``None`` for none). Several processes may use one root at
    once: writes are atomic and serialised per name by a lock file, waited on for at most
    ``lock_timeout`` seconds."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        bundled_root: str | os.PathLike[str] | None | EllipsisType = ...,
        lock_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        if bundled_root is ...:
            bundled_root = default_bundled_root()
        self.bundled_root = Path(bundled_root) if bundled_root is not None else None
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Registry(root={str(self.root)!r}, bundled_root={str(self.bundled_root)!r})"

    # ---- resolution -------------------------------------------------------------------------------

    @staticmethod
    def _split(name: str, version: int | str | None) -> tuple[str, int | None]:
        """``("x@2", None)`` and ``("x", 2)`` both → ``("x", 2)``."""
        if not isinstance(name, str):
            raise ZooError(f"a zoo entry name is a string, got {type(name).__name__}")
        base, ref_version = parse_ref(name)
        wanted = parse_version(version)
        if ref_version is not None and wanted is not None and ref_version != wanted:
            raise ZooError(f"{name!r} names version {ref_version} but version={version!r} was given")
        return base, ref_version if ref_version is not None else wanted

    @staticmethod
    def _version_dirs(base: Path | None, name: str) -> dict[int, Path]:
        folder = base / name if base is not None else None
        if folder is None or not folder.is_dir():
            return {}
        return {int(p.name): p for p in folder.iterdir() if p.name.isdigit() and p.is_dir()}

    def versions(self, name: str) -> dict[int, EntryRef]:
        """Every stored version of ``name``, bundled and user; the user root's win on equal numbers."""
        validate_name(name)
        refs = {
            v: EntryRef(name, v, p, "bundled")
            for v, p in self._version_dirs(self.bundled_root, name).items()
            if (p / CARD_FILE).is_file()
        }
        refs.update(
            {
                v: EntryRef(name, v, p, "user")
                for v, p in self._version_dirs(self.root, name).items()
                if (p / CARD_FILE).is_file()
            }
        )
        return dict(sorted(refs.items()))

    def names(self) -> list[str]:
        """Names with at least one stored version, sorted."""
        found: set[str] = set()
        for base in (self.bundled_root, self.root):
            if base is not None and base.is_dir():
                found.update(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        valid = []
        for n in sorted(found):
            try:
                if self.versions(n):
                    valid.append(n)
            except ZooError:
                continue
        return valid

    def resolve(self, name: str, version: int | str | None = None) -> EntryRef:
        """The entry ``name@version``; ``None``/``"latest"`` (or a bare name) means the newest."""
        name, wanted = self._split(name, version)
        refs = self.versions(name)
        if not refs:
            known = self.names()
            close = [n for n in known if name in n or n in name]
            hint = f"; similar names: {', '.join(close)}" if close else f"; stored names: {', '.join(known) or 'none'}"
            raise EntryNotFoundError(f"no zoo entry named {name!r} in {self.root}{hint} (see `sparta zoo list`)")
        if wanted is None:
            return refs[max(refs)]
        if wanted not in refs:
            raise EntryNotFoundError(
                f"zoo entry {name!r} has no version {wanted}; stored versions: {', '.join(map(str, refs))}"
            )
        return refs[wanted]

    def _read_card(self, ref: EntryRef) -> dict[str, Any]:
        path = ref.path / CARD_FILE
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ZooError(f"{path}: unreadable card ({exc}); remove the entry and store it again") from exc
        card = validate_card(card, str(path))
        if (card["name"], card["version"]) != (ref.name, ref.version):
            raise ZooError(f"{path}: the card describes {card['name']}@{card['version']} but sits at {ref}")
        return card

    # ---- reading ----------------------------------------------------------------------------------

    def info(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """The card of ``name@version`` (newest by default)."""
        return self._read_card(self.resolve(name, version))

    def load(self, name: str, version: int | str | None = None) -> ActivationSet:
        """The stored activation set, its tensor file checked against the card's sha256 before it is
        parsed. ``source`` is set to ``zoo:NAME@VERSION`` so injection reports name the entry."""
        ref = self.resolve(name, version)
        card = self._read_card(ref)
        path = ref.path / card["file"]
        data = read_verified(path, card["sha256"])
        return activation_set_from_card(card, tensors_from_bytes(data, str(path)), source=ref.source)

    def list(
        self,
        *,
        activation: str | None = None,
        variant: str | None = None,
        arch: str | None = None,
        dataset: str | None = None,
        eps: float | None = None,
        norm: str | None = None,
        name: str | None = None,
        latest_only: bool = False,
        on_broken: Callable[[EntryRef, ZooError], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Card summaries (``zoo.card.card_summary`` plus ``origin`` and ``path``) of every stored version,
        keeping those whose fields equal the filters given (case-insensitive). ``eps``/``norm`` filter by
        the threat model (``zoo.threat``: ε to 0.1 %, so ``0.0314`` finds 8/255; an entry whose threat
        model is unknown never matches them). An entry whose card cannot be read is skipped and handed to
        ``on_broken(ref, error)`` (default: a ``UserWarning``)."""
        wanted = {k: v for k, v in zip(_FILTERS, (activation, variant, arch, dataset), strict=True) if v is not None}
        if eps is not None and (not isinstance(eps, int | float) or isinstance(eps, bool) or not 0 < eps <= 1):
            raise ZooError(f"eps filters by the threat model's radius, in (0, 1] pixel units (8/255 = 0.0314); "
                           f"got {eps!r}")
        if norm is not None:
            try:
                normalize_norm(norm)
            except ValueError as exc:
                raise ZooError(str(exc)) from None
        out = []
        for entry_name in [validate_name(name)] if name is not None else self.names():
            refs = list(self.versions(entry_name).values())
            for ref in refs[-1:] if latest_only else refs:
                try:
                    card = self._read_card(ref)
                except ZooError as exc:
                    if on_broken is None:
                        warnings.warn(f"skipping {ref}: {exc}", stacklevel=2)
                    else:
                        on_broken(ref, exc)
                    continue
                summary = card_summary(card)
                if all(str(card.get(k) or "").lower() == str(v).lower() for k, v in wanted.items()) and \
                        threat_matches(summary["threat_model"], eps=eps, norm=norm):
                    out.append({**summary, "origin": ref.origin, "path": str(ref.path)})
        return out

    # ---- writing ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(lock_dir / f"{name}.lock"), timeout=self.lock_timeout)
        try:
            with lock:
                yield
        except filelock.Timeout as exc:
            raise ZooError(
                f"another process has held the lock {lock.lock_file} for over {self.lock_timeout:g} s; "
                "wait for it, or delete the lock file if no sparta process is running"
            ) from exc

    def _tmp_dir(self, name: str) -> Path:
        """``ROOT/.tmp``, cleared of what killed writers left there: every staging folder of ``name``
        (whose lock the caller holds, so none of them is live) and those of other names that are
        :data:`~transfer.atomic.STALE_SECONDS` old and whose name is not locked."""
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_SECONDS
        for leftover in tmp.iterdir():
            owner = leftover.name.partition("@")[0]
            if owner == name or (_newest_mtime(leftover) < cutoff and not self._is_locked(owner)):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        return tmp

    def _is_locked(self, name: str) -> bool:
        lock = filelock.FileLock(str(self.root / ".locks" / f"{name}.lock"), timeout=0)
        try:
            with lock:
                return False
        except (filelock.Timeout, OSError):
            return True

    def _last_issued(self, name: str) -> int:
        marker = self.root / name / _LAST_VERSION
        try:
            return int(marker.read_text().strip())
        except (OSError, ValueError):
            return 0

    def _next_version(self, name: str) -> int:
        existing = set(self._version_dirs(self.root, name)) | set(self._version_dirs(self.bundled_root, name))
        return max(existing | {self._last_issued(name)}) + 1

    def save(self, name: str, activation_set: ActivationSet, card: dict[str, Any] | None = None) -> EntryRef:
        """Store ``activation_set`` as the next version of ``name`` and return where it went.

        ``card`` holds extra card fields merged over those derived from the set's ``meta`` (``arch``,
        ``dataset``, ``recipe``, ``metrics``, …), e.g. ``{"description": "...", "tags": ["cifar"]}``.
        """
        validate_name(name)
        if not isinstance(activation_set, ActivationSet):
            raise ZooError(f"save takes an ActivationSet (see transfer.extract), got {type(activation_set).__name__}")
        activation_set.validate()
        return self._store(name, activation_set, dict(card or {}), created=None)

    def repair(
        self, name: str, version: int | str, activation_set: ActivationSet, card: dict[str, Any] | None = None
    ) -> EntryRef:
        """Write ``name@version`` of the user root afresh from a trusted copy of its activation set (such
        as the ``activation.safetensors`` of the run that made it), replacing whatever is there: a
        corrupt, truncated or hand-edited entry becomes whole again under the same reference.

        Where the old card can still be read, the set must be the one it describes (``content_sha256``),
        so a repair never swaps an entry's tensors for other ones."""
        base, wanted = self._split(name, version)
        if wanted is None:
            raise ZooError(f"repair needs the version to rewrite, e.g. {base}@1")
        activation_set.validate()
        old = self.root / base / str(wanted) / CARD_FILE
        try:
            recorded = json.loads(old.read_text(encoding="utf-8"))["content_sha256"]
        except (OSError, ValueError, TypeError, KeyError):
            recorded = None  # nothing readable left to compare with
        if recorded is not None and recorded != content_digest(activation_set.tensors):
            raise IntegrityError(
                f"{base}@{wanted}: the activation set given for the repair is not the one its card describes; "
                "store it as a new version with save() instead"
            )
        return self._store(base, activation_set, dict(card or {}), created=None, version=wanted)

    def _store(
        self, name: str, aset: ActivationSet, overrides: dict[str, Any], created: str | None,
        version: int | None = None,
    ) -> EntryRef:
        """Write an entry: the next version of ``name``, or ``version`` in place of what is there."""
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in aset.tensors.items()}
        with self._locked(name):
            replacing = version is not None
            version = version if version is not None else self._next_version(name)
            staging = Path(tempfile.mkdtemp(dir=self._tmp_dir(name), prefix=f"{name}@{version}."))
            try:
                save_file(tensors, str(staging / TENSOR_FILE))
                card = build_card(
                    aset,
                    name=name,
                    version=version,
                    sha256=sha256_file(staging / TENSOR_FILE),
                    toolkit_version=_toolkit_version(),
                    overrides=overrides,
                    created=created,
                )
                write_json(staging / CARD_FILE, card)
                (staging / README_FILE).write_text(render_readme(card), encoding="utf-8")
                mask = umask()  # modes as mkdir and open() give them: safetensors writes 0600, mkdtemp 0700
                for path in (staging / TENSOR_FILE, staging / CARD_FILE, staging / README_FILE):
                    path.chmod(0o666 & ~mask)
                    fsync_path(path)  # on the disk before the rename makes the entry visible
                staging.chmod(0o777 & ~mask)
                fsync_path(staging)
                dest = self.root / name / str(version)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if replacing and dest.exists():  # the broken entry goes to .tmp, then away
                    os.rename(dest, Path(tempfile.mkdtemp(dir=self.root / ".tmp", prefix=f"{name}@{version}.")) / "old")
                os.rename(staging, dest)
                fsync_path(dest.parent)
                if replacing:
                    self._tmp_dir(name)  # removes the replaced entry (its name's lock is ours)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return EntryRef(name, version, dest, "user")

    def remove(self, name: str, version: int | str | None = None) -> list[EntryRef]:
        """Delete ``name@version`` from the user root, or every version of ``name`` when no version is
        given (a bare name). Version numbers are never reused afterwards. Bundled entries are read-only."""
        base, wanted = self._split(name, version)
        if wanted is None and "@" in name:  # "NAME@latest": the newest one, not all
            wanted = self.resolve(base).version
        self._check_removable(name, base, wanted)
        with self._locked(base):
            user = self._version_dirs(self.root, base)
            targets = sorted(user) if wanted is None else [wanted] if wanted in user else []
            if not targets:  # removed by another process meanwhile
                raise EntryNotFoundError(f"no zoo entry {name!r} in {self.root}")
            write_text(self.root / base / _LAST_VERSION, f"{max(max(targets), self._last_issued(base))}\n")
            removed = []
            for v in targets:
                trash = Path(tempfile.mkdtemp(dir=self._tmp_dir(base), prefix=f"{base}@{v}.removed."))
                os.rename(user[v], trash / "entry")
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(EntryRef(base, v, user[v], "user"))
        return removed

    def _check_removable(self, name: str, base: str, wanted: int | None) -> None:
        user = self._version_dirs(self.root, base)
        if (wanted is None and user) or wanted in user:
            return
        bundled = self._version_dirs(self.bundled_root, base)
        if (wanted is None and bundled) or wanted in bundled:
            raise ZooError(f"{name!r} is bundled with the package and read-only; it cannot be removed")
        self.resolve(base, wanted)  # raises the not-found error listing the stored versions
        raise EntryNotFoundError(f"no zoo entry {name!r} in {self.root}")

    # ---- exchange ---------------------------------------------------------------------------------

    def export(
        self,
        name: str,
        path: str | os.PathLike[str],
        version: int | str | None = None,
        *,
        overwrite: bool = False,
        format: str = "safetensors",
    ) -> Path:
        """Write ``name@version`` as ONE self-describing ``.safetensors`` file: the activation-set header
        of ``transfer.save_activation_set`` plus the card as JSON under ``sparta.zoo.card``. A directory
        ``path`` gets ``NAME-vVERSION.safetensors`` inside it. As with ``cp``, no directory is created:
        a ``path`` ending in ``/`` must be an existing directory, and a file's folder must exist.

        ``format="hf"`` writes the folder ``path`` for the Hugging Face Hub instead (``zoo.hf``: that
        file as ``activation.safetensors``, ``README.md``, ``config.json``) and returns the folder."""
        if format == "hf":
            return export_hf_folder(self, name, path, version, overwrite=overwrite)
        if format != "safetensors":
            raise ZooError(f"unknown export format {format!r}; use safetensors (one file) or hf (a Hub folder)")
        ref = self.resolve(name, version)
        card = self._read_card(ref)
        aset = self.load(ref.name, ref.version)
        out = Path(path).expanduser()
        if out.is_dir():
            out = out / f"{ref.name}-v{ref.version}.safetensors"
        elif str(path).endswith(("/", os.sep)):
            raise ZooError(f"{path}: directory {out} does not exist; create it first, or give a file path")
        elif not out.parent.is_dir():
            raise ZooError(f"{path}: directory {out.parent} does not exist; create it first (export makes no folders)")
        if out.exists() and not overwrite:
            raise ZooError(f"{out} exists; choose another path or overwrite it (overwrite=True, CLI --force)")
        return save_activation_set(aset, out, extra={EXPORT_CARD_KEY: json.dumps(card, sort_keys=True)})

    def import_file(
        self, path: str | os.PathLike[str], name: str | None = None, *, card: dict[str, Any] | None = None
    ) -> EntryRef:
        """Store the activation set in ``path`` as the next version of ``name`` and return where it went.

        ``path`` is a file written by :meth:`export` (its card comes along: provenance, metrics, creation
        time, ``derived_from``; its tensors are checked against the card), a plain activation-set file
        such as a training run's ``activation.safetensors`` (the card is derived from its ``meta``), a
        run directory holding one, or a folder written by ``export(..., format="hf")`` (its files checked
        against its ``config.json`` first, ``zoo.hf``). Only safetensors are read; pickles are refused.
        ``name`` defaults to the exported card's name, else ``DATASET-ARCH-ACTIVATION-VARIANT``.
        """
        src = Path(path).expanduser()
        if is_hf_folder(src):
            src, _ = read_hf_folder(src)
        elif src.is_dir():
            if not (src / TENSOR_FILE).is_file():
                raise FileNotFoundError(f"{src} is a directory without an {TENSOR_FILE}; give the file itself")
            src = src / TENSOR_FILE
        tensors, header = read_untrusted(src)
        aset = activation_set_from_parts(tensors, header, origin=str(src))
        overrides: dict[str, Any] = {}
        created = None
        if EXPORT_CARD_KEY in header:
            try:
                embedded = json.loads(header[EXPORT_CARD_KEY])
            except json.JSONDecodeError as exc:
                raise ZooError(f"{src}: the embedded zoo card is not valid JSON ({exc})") from exc
            embedded = validate_card(embedded, f"{src} (embedded card)")
            check_card_matches(embedded, aset, str(src))
            aset.meta, aset.source = dict(embedded["meta"]), ""
            # provenance travels in the card's meta; the rest (derived_from, license, tags, ...) as fields
            overrides = {k: v for k, v in embedded.items() if k not in COMPUTED_FIELDS and k not in PROVENANCE_FIELDS}
            created = embedded["created"]
            default = embedded["name"]
        else:
            meta = aset.meta
            default = derive_name(meta.get("dataset"), meta.get("arch"), aset.activation, aset.config.get("variant"))
        overrides.update(card or {})
        target = validate_name(name) if name is not None else default
        return self._store(target, aset, overrides, created=created)
