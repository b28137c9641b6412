"""Where a registry lives when none is given: ``$SPARTA_ZOO`` and ``$SPARTA_ZOO_BUNDLED``, read by the
project's one rule for its environment variables (``transfer.environment.env_setting``): unset means
the default, set means the value, set but empty is an error naming the variable (so ``SPARTA_ZOO=$DIR``
with ``DIR`` unset never writes into the user's real zoo). "No bundled entries" is the explicit value
``SPARTA_ZOO_BUNDLED=none``.
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir

from transfer.environment import env_setting

__all__ = ["BUNDLED_ROOT", "NO_BUNDLED", "default_bundled_root", "default_root"]

BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"
NO_BUNDLED = "none"  # SPARTA_ZOO_BUNDLED=none: list and load no bundled entries


def default_root() -> Path:
    """``$SPARTA_ZOO`` if set, else ``<user cache dir>/sparta-transfer/zoo``."""
    value = env_setting("SPARTA_ZOO")
    return Path(value).expanduser() if value is not None else Path(user_cache_dir("sparta-transfer")) / "zoo"


def default_bundled_root() -> Path | None:
    """``$SPARTA_ZOO_BUNDLED`` if set (``none``: no bundled entries), else the package's ``zoo/bundled``."""
    value = env_setting("SPARTA_ZOO_BUNDLED")
    if value is None:
        return BUNDLED_ROOT
    return None if value.strip().lower() == NO_BUNDLED else Path(value).expanduser()
