"""The house has no circles and no upward imports: every import in ``edgernn/`` (those inside functions included)
goes from a room to itself or to a room of a lower tier, in the order ``edgernn.rooms`` writes down; and no
function is longer than ``MAX_FUNCTION_LINES`` (split a longer one into named stages). ``pytest -s`` prints each
room's share of the code lines.

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


# ------------------------------------------------------------------------------------------ the size of the rooms

MAX_FUNCTION_LINES = 120  # from `def` to the function's last line, decorators not counted
# functions over the bound that a change under way splits: "path:qualname"
LONG_ALLOWED: set[str] = set()


def _functions(path: Path) -> Iterator[tuple[str, int, int]]:
    """(qualname, first line, lines) of every function and method in ``path``, nested ones included: the
    qualname as Python writes it (``Class.method``, ``outer.<locals>.inner``), the lines counted from ``def``
    (not its decorators) to the function's last line."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                assert child.end_lineno is not None
                yield name, child.lineno, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")


def _long_functions() -> dict[str, str]:
    """ "path:qualname" -> "path:qualname (N lines, from line L)" for every function over the bound."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for qualname, line, lines in _functions(path):
            if lines > MAX_FUNCTION_LINES:
                key = f"{path.relative_to(ROOT).as_posix()}:{qualname}"
                out[key] = f"{key} ({lines} lines, from line {line})"
    return out


def test_no_function_is_longer_than_the_bound() -> None:
    long = [said for key, said in _long_functions().items() if key not in LONG_ALLOWED]
    assert not long, (
        f"{len(long)} function(s) over {MAX_FUNCTION_LINES} lines; split each into named stages:\n" + "\n".join(long)
    )


def test_the_allowed_long_functions_are_still_long() -> None:
    """An allowed function that has been split leaves the allow-list, so that it cannot grow back unseen."""
    stale = sorted(LONG_ALLOWED - set(_long_functions()))
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines (or gone): remove from LONG_ALLOWED: {stale}"


def test_the_function_length_counts_from_def_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test itself: a method and a nested function of 121 lines are found, by name; 120 lines, decorators
    not counted, are not."""
    pkg = tmp_path / "edgernn"
    pkg.mkdir()
    body, nested = "    x = 1\n", "        x = 1\n"
    (pkg / "long.py").write_text(
        "@decorator\n@another\ndef fits():\n" + body * 119  # def + 119 = 120 lines
        + "class K:\n    def method(self):\n" + nested * 120  # def + 120 = 121 lines
        + "def outer():\n    def inner():\n" + nested * 120 + "    return inner\n"
    )  # fmt: skip
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    assert list(_long_functions().values()) == [
        "edgernn/long.py:K.method (121 lines, from line 124)",
        "edgernn/long.py:outer (123 lines, from line 245)",
        "edgernn/long.py:outer.<locals>.inner (121 lines, from line 246)",
    ]


def _code_lines(path: Path) -> int:
    """Lines of ``path`` that are neither blank nor only a comment."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()[:1] not in ("", "#"))


MAX_ROOM_SHARE = 0.15  # of the package's code lines: a room larger than this is split by what a reader looks for


def _room_lines() -> dict[str, int]:
    """Code lines per room of the package under ``PACKAGE``."""
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    lines: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(_module_name(path)[0], subpackages)
        assert room is not None, f"{path} is in no room"
        lines[room] = lines.get(room, 0) + _code_lines(path)
    return lines


def _over_share(lines: dict[str, int]) -> list[str]:
    total = sum(lines.values())
    return [f"{room} {100 * n / total:.1f}%" for room, n in sorted(lines.items()) if n > MAX_ROOM_SHARE * total]


def test_no_room_holds_more_than_its_share_of_the_code() -> None:
    """Each room's code lines and share of the package's, printed for the notes (``pytest -s``); none over
    ``MAX_ROOM_SHARE``."""
    lines = _room_lines()
    total = sum(lines.values())
    unnamed = sorted(set(lines) - set(TIER))
    assert total and not unnamed, f"code in room(s) {unnamed} that edgernn.rooms does not name"
    print(f"\ncode lines (neither blank nor only a comment) per room of {PACKAGE}:")
    for tier, rooms in enumerate(ROOMS):
        for room in rooms:
            n = lines.get(room, 0)
            print(f"  tier {tier}  {room:<10} {n:>7,}  {100 * n / total:5.1f}%")
    print(f"  {'all':<18} {total:>7,}  100.0%")
    over = _over_share(lines)
    assert not over, (
        f"room(s) over {MAX_ROOM_SHARE:.0%} of the code lines; split each by what a reader looks for: {over}"
    )


def test_the_share_counts_code_lines_per_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test itself: comments and blank lines do not count, top-level modules are base's, and a room of 16
    code lines in 100 is over the bound while 15 in 100 is not."""
    pkg = tmp_path / "edgernn"
    sizes = {"verify": 16, "export": 15, "train": 15, "serve": 15, "model": 15, "cli": 15}
    for room, n in sizes.items():
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("x = 1\n" * n + "# a comment\n\n   \n")
    (pkg / "__init__.py").write_text("y = 2\n" * 9)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    assert _room_lines() == {**sizes, "base": 9}
    assert _over_share(_room_lines()) == ["verify 16.0%"]
