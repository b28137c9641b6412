"""Plugins: datasets and models from outside the package, without editing it.

Two ways in, both only *import* code that registers things in the registries it imports:

- **Entry points** of installed packages, in the groups :data:`DATASETS_GROUP` (``sparta.datasets``) and
  :data:`MODELS_GROUP` (``sparta.models``). Each entry point names a module or a callable; loading it
  imports the module, and a callable is then called with no arguments. The registries' lookup functions
  (``transfer.engine.data``'s ``dataset_info``/``create_dataset``/``list_datasets``,
  ``create_backbone``/``check_arch``) load their group on first use, once per process, so local,
  process-pool and Ray workers all see the same names without being told.
- **User modules**, named on the command line (``sparta train|eval --plugin MODULE``) or by a study
  (``plugins = [...]``): :func:`load_plugins` imports them (a dotted module name, or the path of a
  ``.py`` file), after both entry-point groups.

A plugin registers datasets with ``transfer.engine.data.register_dataset`` (a ``DatasetSource``
subclass, which may declare its ``threat_model``) and models with ``transfer.register_backbone`` (a
factory ``(num_classes, in_chans, input_size, **kwargs) -> nn.Module``) or timm's ``register_model``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

__all__ = ["DATASETS_GROUP", "MODELS_GROUP", "PluginError", "failure_note", "load_entry_points", "load_plugins"]

DATASETS_GROUP = "sparta.datasets"
MODELS_GROUP = "sparta.models"

_loaded_groups: set[str] = set()
_failures: dict[str, list[str]] = {}  # group → "name (reason)" of each entry point that failed to load
_file_modules: dict[Path, ModuleType] = {}  # .py plugins by resolved path: each is executed once


class PluginError(ValueError):
    """A plugin module named by the user could not be imported; the message says which and why."""


def load_entry_points(group: str) -> None:
    """Load every entry point of ``group`` once per process. One that fails is reported with a
    ``RuntimeWarning`` and in :func:`failure_note`, and does not stop the others."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)  # first: a plugin that looks a name up while it loads does not recurse
    seen: set[str] = set()
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.value in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.value)
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as exc:  # a broken plugin must not take every other name down with it
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            _failures.setdefault(group, []).append(f"{ep.name} = {ep.value} ({type(exc).__name__}: {reason})")
            warnings.warn(f"sparta plugin {ep.name!r} ({group}) failed to load: {reason}", RuntimeWarning, stacklevel=2)


def failure_note(group: str) -> str:
    """``""``, or a sentence naming the entry points of ``group`` that failed to load, for an
    unknown-name error (the name may have been theirs)."""
    failed = _failures.get(group)
    return f" (plugins that failed to load: {'; '.join(failed)})" if failed else ""


def load_plugins(modules: Iterable[str] = ()) -> list[ModuleType]:
    """Load both entry-point groups, then import each of ``modules`` — a dotted module name importable
    from ``sys.path``/``PYTHONPATH``, or the path of a ``.py`` file — and return the modules.

    Idempotent: a module already imported (by name, or a file by its resolved path) is not executed
    again, so its registrations are not repeated. A module that cannot be imported is a
    :class:`PluginError` (a ``ValueError``) naming it and the reason."""
    load_entry_points(DATASETS_GROUP)
    load_entry_points(MODELS_GROUP)
    if isinstance(modules, str):
        raise TypeError("load_plugins takes a list of module names or .py paths, not one string")
    return [_import_plugin(str(m)) for m in modules]


def _import_plugin(spec: str) -> ModuleType:
    if not spec.strip():
        raise PluginError("a plugin is a module name or the path of a .py file, got an empty string")
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return _import_file(Path(spec).expanduser())
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name and spec.startswith(exc.name):
            raise PluginError(
                f"plugin module {spec!r} not found; put the folder that holds it on PYTHONPATH "
                "(e.g. PYTHONPATH=. sparta train ...) or give the path of its .py file"
            ) from None
        raise PluginError(f"plugin module {spec!r} could not be imported: {exc}") from exc


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    if resolved in _file_modules:
        return _file_modules[resolved]
    if not resolved.is_file():
        raise PluginError(f"plugin file {path} does not exist")
    name = f"sparta_plugin_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"  # stable
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"plugin file {path} failed while loading: {type(exc).__name__}: {exc}") from exc
    _file_modules[resolved] = module
    return module
