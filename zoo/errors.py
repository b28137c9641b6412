"""The zoo's error types. All are ``ValueError`` subclasses, so the ``sparta`` CLI reports them as
one clean line."""

from __future__ import annotations

__all__ = ["ZooError", "IntegrityError", "EntryNotFoundError", "InvalidNameError"]


class ZooError(ValueError):
    """Something about a zoo entry, name or file is wrong; the message says what to do."""


class IntegrityError(ZooError):
    """A stored file does not match the checksum its card recorded (truncated, corrupted or edited)."""


class EntryNotFoundError(ZooError, LookupError):
    """No entry (or no such version of one) in the registry."""


class InvalidNameError(ZooError):
    """An entry name or version outside what the zoo accepts."""
