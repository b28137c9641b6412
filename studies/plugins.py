"""A study's ``plugins = ["mymodule", "path/to/file.py", …]``: modules of the user's that register datasets and
models (``transfer.plugins``), imported wherever the study needs their names.

- **Where the spec is read** (:func:`check_plugins`, before the sources and targets are checked): so that
  ``sparta study plan`` knows the plugins' dataset and model names. A module that cannot be imported is a
  problem of the spec, ``plugins[i]: …``, naming the module and why.
- **In every job's process** (:func:`load_job_plugins`, called by ``studies.jobs.execute_job`` before the
  job function): a process-pool worker is a fresh interpreter that never imported the user's module, and a
  Ray worker may run on another machine. Each :class:`~studies.jobs.Job` carries the list
  (:func:`job_plugins`: a ``.py`` file as an absolute path, so that a worker with another working directory
  finds it). ``transfer.load_plugins`` is idempotent, so a worker imports each module once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec_check import Checker

__all__ = ["check_plugins", "is_plugin_file", "job_plugins", "load_job_plugins"]


def is_plugin_file(plugin: str) -> bool:
    """Whether a plugin is named by its file (``x.py``, or a path) rather than as a module."""
    return plugin.endswith(".py") or "/" in plugin or "\\" in plugin


def check_plugins(c: Checker, raw: Any) -> list[str]:
    """``plugins``: a list of non-empty strings, each imported now (``transfer.load_plugins``); every module
    that cannot be imported is a problem naming it. Returns the list as given."""
    from transfer.plugins import load_plugins

    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
        c.add("plugins", f'expected a list of module names or .py files (e.g. plugins = ["my_plugins"]), got {raw!r}')
        return []
    if len(set(raw)) != len(raw):
        c.add("plugins", f"lists a module twice: {raw}")
    for i, plugin in enumerate(raw):
        try:
            load_plugins([plugin])
        except ValueError as exc:  # transfer.plugins.PluginError: which module, and why
            c.add(f"plugins[{i}]", str(exc))
    return list(raw)


def job_plugins(plugins: list[str]) -> tuple[str, ...]:
    """The plugins as a job records them: module names as they are, ``.py`` files as absolute paths."""
    return tuple(str(Path(p).expanduser().resolve()) if is_plugin_file(p) else p for p in plugins)


def load_job_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    """Import a job's plugins in this process; one that fails is a ``PluginError`` naming the study key."""
    from transfer.plugins import PluginError, load_plugins

    try:
        load_plugins(list(plugins))
    except PluginError as exc:
        raise PluginError(
            f"the study key plugins = {list(plugins)}: not loadable in the process that runs this job: {exc}"
        ) from None
