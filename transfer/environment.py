"""The one rule for the project's environment variables (``SPARTA_ZOO``, ``SPARTA_ZOO_BUNDLED``,
``SPARTA_DATA_DIR``, …): **unset means the default; set means the value given; set but empty is an
error** that names the variable.

Why not read an empty value as "unset": ``SPARTA_ZOO=$ZOO_DIR`` with ``ZOO_DIR`` unset in a job script
would then quietly write into the user's real zoo. An empty value is almost always such an accident, so
it stops the command (``sparta`` prints the message and exits 2) instead of guessing.
"""

from __future__ import annotations

import os

__all__ = ["EmptySettingError", "env_setting"]


class EmptySettingError(ValueError):
    """An environment variable of the project is set to the empty string."""


def env_setting(name: str) -> str | None:
    """The value of environment variable ``name``; ``None`` when it is unset; an :class:`EmptySettingError`
    when it is set to an empty (or all-blank) string."""
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip():
        raise EmptySettingError(
            f"environment variable {name} is set but empty; unset it (`unset {name}`) to use the default, "
            "or give it a value"
        )
    return value
