"""Entry names, versions and references (``NAME`` or ``NAME@VERSION``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidNameError

__all__ = ["EntryRef", "validate_name", "parse_version", "parse_ref", "derive_name", "NAME_PATTERN", "LATEST"]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_NAME_LENGTH = 100
LATEST = "latest"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid entry name, else raise :class:`InvalidNameError`.

    Names are directory names inside the registry root, so anything that could step outside it
    (``/``, ``..``) or collide on case-insensitive file systems (upper case) is refused.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a zoo entry name is a string, got {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        hint = f"; did you mean {name.lower()!r}?" if NAME_PATTERN.fullmatch(name.lower()) else ""
        raise InvalidNameError(
            f"invalid zoo entry name {name!r}: a name may contain only lower-case letters a-z, digits, "
            f"'.', '_' and '-', must start with a letter or digit and be at most {MAX_NAME_LENGTH} "
            f"characters (e.g. 'digits-r18-sparta'){hint}"
        )
    return name


def parse_version(version: int | str | None) -> int | None:
    """``None``/``"latest"`` → ``None`` (the newest); ``3``/``"3"``/``"v3"`` → ``3``."""
    if version is None or version == LATEST:
        return None
    if isinstance(version, bool):
        raise InvalidNameError(f"a zoo version is a positive integer or 'latest', got {version!r}")
    if isinstance(version, int):
        number = version
    else:
        text = str(version).strip().lower().removeprefix("v")
        if not text.isdigit():
            raise InvalidNameError(f"a zoo version is a positive integer or 'latest', got {version!r}")
        number = int(text)
    if number < 1:
        raise InvalidNameError(f"zoo versions count up from 1, got {version!r}")
    return number


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"digits-r18@2"`` → ``("digits-r18", 2)``; ``"digits-r18"`` → ``("digits-r18", None)``."""
    name, sep, version = ref.partition("@")
    if sep and not version:
        raise InvalidNameError(f"{ref!r}: give a version after '@' (an integer or 'latest')")
    return validate_name(name), parse_version(version) if sep else None


def derive_name(*parts: object) -> str:
    """A valid name from free-form parts (``"digits", "resnet18", "sparta", "dw"`` →
    ``"digits-resnet18-sparta-dw"``), for imports that were not given one."""
    words = [re.sub(r"[^a-z0-9._-]+", "-", str(p).lower()).strip("-._") for p in parts if p not in (None, "")]
    name = "-".join(w for w in words if w)[:MAX_NAME_LENGTH].rstrip("-._")
    return validate_name(name or "activation")


@dataclass(frozen=True)
class EntryRef:
    """One stored entry: ``name@version`` under ``path``; ``origin`` is ``user`` or ``bundled``."""

    name: str
    version: int
    path: Path
    origin: str = "user"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def source(self) -> str:
        """The label injection reports show for this entry."""
        return f"zoo:{self}"
