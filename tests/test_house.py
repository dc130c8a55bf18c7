"""The house has no circles and no upward imports: every import in ``edgernn/`` (those inside functions included)
goes from a room to itself or to a room of a lower tier, in the order ``edgernn.rooms`` writes down.

``EDGERNN_HOUSE_ROOT=/path/to/checkout pytest tests/test_house.py`` reads another tree's ``edgernn/`` (an older
commit, a branch) against this order."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgernn.rooms import ROOMS, TIER, may_import

ROOT = Path(os.environ.get("EDGERNN_HOUSE_ROOT") or Path(__file__).resolve().parents[1])
PACKAGE = ROOT / "edgernn"


def _module_name(path: Path) -> tuple[str, bool]:
    """The dotted name of a module file, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every edgernn module ``path`` imports, anywhere in the file, with its line: absolute, and relative resolved
    against the module's package (``from . import x`` names ``package.x``, which may be a module or a name)."""
    module, is_package = _module_name(path)
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module is None:  # from . import a, b: each is a module or a name of the package
                    for alias in node.names:
                        yield ".".join([*base, alias.name]), node.lineno
                    continue
                yield ".".join([*base, node.module]), node.lineno
            elif node.module:
                yield node.module, node.lineno


def _room(module: str, subpackages: set[str]) -> str | None:
    """The room of a dotted name: ``edgernn.<room>...`` for a subpackage, base for the top-level modules, the
    CLI's for ``__main__``; None outside edgernn."""
    parts = module.split(".")
    if parts[0] != "edgernn":
        return None
    if len(parts) > 1 and parts[1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in subpackages else "base"


def _edges() -> list[tuple[str, str, str]]:
    """(importer room, imported room, "file:line imports module") for every import between two rooms."""
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _room(_module_name(path)[0], subpackages)
        for name, line in _imports(path):
            there = _room(name, subpackages)
            if here is not None and there is not None and there != here:
                edges.append((here, there, f"{path.relative_to(ROOT)}:{line} imports {name}"))
    return edges


def _circles(edges: list[tuple[str, str, str]]) -> list[list[str]]:
    """The rooms that reach each other through imports (strongly connected groups of more than one room)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reached = {room: reach(room) for room in graph}
    groups = {frozenset(r for r in graph if r in reached[room] and room in reached[r]) for room in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_the_order_names_every_room_once() -> None:
    named = [room for tier in ROOMS for room in tier]
    assert len(named) == len(set(named)), f"a room is named twice in edgernn.rooms: {named}"
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert PACKAGE.is_dir() and subpackages, f"no edgernn package under {ROOT}"
    missing = [p for p in subpackages if p not in TIER]
    assert not missing, f"room(s) {missing} have no place in edgernn.rooms.ROOMS: put each in a tier"


def test_no_circle_between_rooms() -> None:
    circles = _circles(_edges())
    assert not circles, "rooms that import each other (each needs the other): " + "; ".join(
        " <-> ".join(c) for c in circles
    )


def test_no_room_imports_a_higher_one_or_one_of_its_own_tier() -> None:
    wrong = [f"{a} -> {b}: {where}" for a, b, where in _edges() if a in TIER and b in TIER and not may_import(a, b)]
    assert not wrong, f"{len(wrong)} import(s) against the order of edgernn.rooms:\n" + "\n".join(wrong)


def test_the_reader_sees_imports_inside_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test itself: a lazy upward import, and a relative one, are found."""
    pkg = tmp_path / "edgernn"
    for room in ("verify", "export"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "verify" / "late.py").write_text("def f():\n    from ..export import core\n    return core\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    assert [(a, b) for a, b, _ in _edges()] == [("verify", "export")]
    assert not may_import("verify", "export") and may_import("export", "verify")
