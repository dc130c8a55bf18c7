"""A catalog of named built-ins, one module each in a package: the strategies (``edgernn.strategies``) and the
targets (``edgernn.targets``). Each module registers what it defines when imported; the catalog imports every
module of its package before it answers, so what is registered never depends on what was imported first.

A new built-in is one module in the package (plus its test): its name is found by reading the package's folder,
without importing it (the CLI's choices and ``--help`` stay free of torch). ``order`` only says how the known
ones are listed; a module it does not name comes after them, by name."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def module_names(package_file: str, order: Sequence[str], helpers: Collection[str] = ()) -> tuple[str, ...]:
    """The modules beside ``package_file`` (a package's ``__init__.py`` or one of its modules) that define a
    built-in: every ``*.py`` but ``__init__``, private ones (``_name``) and ``helpers``; those in ``order``
    first, in that order, then the others by name."""
    here = {p.stem for p in Path(package_file).parent.glob("*.py")}
    found = {n for n in here if not n.startswith("_") and n not in helpers}
    return tuple(n for n in order if n in found) + tuple(sorted(found - set(order)))


class Catalog(Generic[T]):
    """Named entries of one kind (``what``: "export strategy", "target"), registered by the modules of
    ``package`` (a dotted name) whose names are ``builtin``."""

    def __init__(self, what: str, package: str, builtin: Sequence[str]) -> None:
        self.what, self.package, self.builtin = what, package, tuple(builtin)
        self.entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self.entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self.entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The built-ins in their order, then any registered from elsewhere, in the order they were."""
        for name in self.builtin:  # each module registers itself on import (imports are cached: cheap after one)
            importlib.import_module(f"{self.package}.{name}")
        return [n for n in self.builtin if n in self.entries] + [n for n in self.entries if n not in self.builtin]

    def get(self, name: str) -> T:
        names = self.names()
        if name not in self.entries:
            raise ConfigError(f"unknown {self.what} {name!r}; choose one of: {', '.join(names)}")
        return self.entries[name]
