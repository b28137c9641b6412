"""The zoo registry: trained activation sets stored apart from backbones, versioned and checksummed.

Layout of a root (``Registry(root)``; default ``$SPARTA_ZOO``, else the user cache dir)::

    ROOT/NAME/VERSION/activation.safetensors   the tensors (no header metadata: same tensors, same bytes)
    ROOT/NAME/VERSION/card.json                what it is, where it came from, checksums (see zoo.card)
    ROOT/NAME/VERSION/README.md                a Hugging Face style model card
    ROOT/NAME/.last_version                    highest version ever issued (so removal never reuses one)
    ROOT/.locks/NAME.lock                      one lock per name, held while writing or removing
    ROOT/.tmp/                                 entries being written; renamed into place when complete

(the writing itself is ``zoo.store``; reading an import source ``zoo.imports``; the defaults ``zoo.roots``).
Entries bundled with the package (``zoo/bundled/NAME/VERSION/``) are listed and loadable beside the
user root, which wins where both hold the same ``NAME@VERSION``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import EllipsisType
from typing import Any

from transfer.activation_set import ActivationSet, save_activation_set

from .card import (
    CARD_FILE,
    activation_set_from_card,
    build_card,
    card_summary,
    content_digest,
    export_header,
    validate_card,
)
from .errors import EntryNotFoundError, IntegrityError, ZooError
from .files import read_json_file, read_verified, tensors_from_bytes
from .hf import write_hf_folder
from .imports import read_import_source
from .names import EntryRef, parse_ref, parse_version, validate_name
from .roots import default_bundled_root, default_root
from .store import last_issued, name_lock, record_last_issued, staging_area, write_entry
from .threat import normalize_norm, threat_matches

__all__ = ["Registry"]

_FILTERS = ("activation", "variant", "arch", "dataset")


def _toolkit_version() -> str:
    """The installed sparta-transfer version (from the package metadata, not by importing ``transfer``)."""
    try:
        return version("sparta-transfer")
    except PackageNotFoundError:
        return "0+unknown"


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

    @staticmethod
    def _has_card(folder: Path) -> bool:
        """A version folder holding a ``card.json`` of any kind (a special file or a link is refused when
        it is read, so that ``list`` names it instead of passing over it)."""
        return os.path.lexists(folder / CARD_FILE)

    def versions(self, name: str) -> dict[int, EntryRef]:
        """Every stored version of ``name``, bundled and user; the user root's win on equal numbers."""
        validate_name(name)
        refs = {
            v: EntryRef(name, v, p, "bundled")
            for v, p in self._version_dirs(self.bundled_root, name).items()
            if self._has_card(p)
        }
        refs.update(
            {
                v: EntryRef(name, v, p, "user")
                for v, p in self._version_dirs(self.root, name).items()
                if self._has_card(p)
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
            card = read_json_file(path)
        except (OSError, ZooError) as exc:
            raise ZooError(f"unreadable card ({exc}); remove the entry {ref} and store it again") from None
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
            raise ZooError(
                f"eps filters by the threat model's radius, in (0, 1] pixel units (8/255 = 0.0314); got {eps!r}"
            )
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
                if all(str(card.get(k) or "").lower() == str(v).lower() for k, v in wanted.items()) and threat_matches(
                    summary["threat_model"], eps=eps, norm=norm
                ):
                    out.append({**summary, "origin": ref.origin, "path": str(ref.path)})
        return out

    # ---- writing ----------------------------------------------------------------------------------

    def _next_version(self, name: str) -> int:
        existing = set(self._version_dirs(self.root, name)) | set(self._version_dirs(self.bundled_root, name))
        return max(existing | {last_issued(self.root, name)}) + 1

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
            recorded = read_json_file(old)["content_sha256"]
        except (OSError, ValueError, TypeError, KeyError):
            recorded = None  # nothing readable left to compare with
        if recorded is not None and recorded != content_digest(activation_set.tensors):
            raise IntegrityError(
                f"{base}@{wanted}: the activation set given for the repair is not the one its card describes; "
                "store it as a new version with save() instead"
            )
        return self._store(base, activation_set, dict(card or {}), created=None, version=wanted)

    def _store(
        self,
        name: str,
        aset: ActivationSet,
        overrides: dict[str, Any],
        created: str | None,
        version: int | None = None,
    ) -> EntryRef:
        """Write an entry: the next version of ``name``, or ``version`` in place of what is there."""
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in aset.tensors.items()}
        with name_lock(self.root, name, self.lock_timeout):
            replacing = version is not None
            version = version if version is not None else self._next_version(name)

            def make_card(sha256: str) -> dict[str, Any]:
                return build_card(
                    aset,
                    name=name,
                    version=version,
                    sha256=sha256,
                    toolkit_version=_toolkit_version(),
                    overrides=overrides,
                    created=created,
                )

            dest = write_entry(self.root, name, version, tensors, make_card, replacing=replacing)
        return EntryRef(name, version, dest, "user")

    def remove(self, name: str, version: int | str | None = None) -> list[EntryRef]:
        """Delete ``name@version`` from the user root, or every version of ``name`` when no version is
        given (a bare name). Version numbers are never reused afterwards. Bundled entries are read-only."""
        base, wanted = self._split(name, version)
        if wanted is None and "@" in name:  # "NAME@latest": the newest one, not all
            wanted = self.resolve(base).version
        self._check_removable(name, base, wanted)
        with name_lock(self.root, base, self.lock_timeout):
            user = self._version_dirs(self.root, base)
            targets = sorted(user) if wanted is None else [wanted] if wanted in user else []
            if not targets:  # removed by another process meanwhile
                raise EntryNotFoundError(f"no zoo entry {name!r} in {self.root}")
            record_last_issued(self.root, base, max(targets))
            removed = []
            for v in targets:
                trash = Path(tempfile.mkdtemp(dir=staging_area(self.root, base), prefix=f"{base}@{v}.removed."))
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
        if format not in ("safetensors", "hf"):
            raise ZooError(f"unknown export format {format!r}; use safetensors (one file) or hf (a Hub folder)")
        ref = self.resolve(name, version)
        card = self._read_card(ref)
        aset = self.load(ref.name, ref.version)
        if format == "hf":
            return write_hf_folder(path, aset, card, overwrite=overwrite)
        out = Path(path).expanduser()
        if out.is_dir():
            out = out / f"{ref.name}-v{ref.version}.safetensors"
        elif str(path).endswith(("/", os.sep)):
            raise ZooError(f"{path}: directory {out} does not exist; create it first, or give a file path")
        elif not out.parent.is_dir():
            raise ZooError(f"{path}: directory {out.parent} does not exist; create it first (export makes no folders)")
        if out.exists() and not overwrite:
            raise ZooError(f"{out} exists; choose another path or overwrite it (overwrite=True, CLI --force)")
        return save_activation_set(aset, out, extra=export_header(card))

    def import_file(
        self, path: str | os.PathLike[str], name: str | None = None, *, card: dict[str, Any] | None = None
    ) -> EntryRef:
        """Store the activation set in ``path`` as the next version of ``name`` and return where it went.

        ``path`` is a file written by :meth:`export` (its card comes along: provenance, metrics, creation
        time, ``derived_from``; its tensors are checked against the card), a plain activation-set file
        such as a training run's ``activation.safetensors`` (the card is derived from its ``meta``), a
        run directory holding one, or a folder written by ``export(..., format="hf")`` (its files checked
        against its ``config.json`` first). Only regular safetensors files are read (``zoo.imports``):
        pickles, links and special files are refused, and so is a folder whose ``config.json`` cannot
        be read. ``name`` defaults to the exported card's name, else ``DATASET-ARCH-ACTIVATION-VARIANT``.
        """
        source = read_import_source(path)
        overrides = {**source.overrides, **(card or {})}
        target = validate_name(name) if name is not None else source.default_name
        return self._store(target, source.aset, overrides, created=source.created)
