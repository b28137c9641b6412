"""One name → class registry, the shape of timm's ``create_act``: a ``register`` decorator, a sorted
``names(pattern)`` listing, and a lookup whose error lists what exists. Activations, datasets, attacks,
training recipes and study executors each keep one."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["NameRegistry"]

T = TypeVar("T")


class NameRegistry(Generic[T]):
    """Entries of one ``kind`` ("activation", "attack", …) by name; ``aliases`` map other names to them.

    Every registered class learns its name as the class attribute ``registry_name`` (the one name for
    it across registries; not ``name``, which on an ``nn.Module`` reads like a module path)."""

    def __init__(self, kind: str, aliases: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.aliases = dict(aliases or {})
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: set the class's ``registry_name`` to ``name`` and add the class."""

        def wrap(cls: type) -> type:
            cls.registry_name = name  # type: ignore[attr-defined]
            self.add(name, cls)  # type: ignore[arg-type]
            return cls

        return wrap

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> T:
        """The entry for ``name`` (case-insensitive, aliases resolved); an unknown name is a ValueError
        that lists every registered name."""
        key = self.aliases.get(name.lower(), name.lower())
        if key not in self._entries:
            aliases = f" (aliases: {', '.join(f'{a}→{b}' for a, b in self.aliases.items())})" if self.aliases else ""
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}{aliases}")
        return self._entries[key]
