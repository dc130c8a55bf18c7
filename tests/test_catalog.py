"""The catalog of built-ins (``edgernn.catalog``): a new strategy or target is one module in its package, found by
reading the folder; the registries list the built-ins in their order and name the choices when a name is wrong."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgernn.catalog import Catalog, module_names
from edgernn.errors import ConfigError
from edgernn.strategies import registry
from edgernn.targets import BUILTIN as TARGETS
from edgernn.targets import get_target


def test_module_names_lists_the_ordered_ones_first_then_the_new_ones_by_name(tmp_path: Path) -> None:
    for name in ("__init__", "alpha", "beta", "gamma", "_private", "helper"):
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    init = str(tmp_path / "__init__.py")
    assert module_names(init, ("gamma", "alpha", "missing"), helpers={"helper"}) == ("gamma", "alpha", "beta")
    assert module_names(init, ()) == ("alpha", "beta", "gamma", "helper")


@pytest.fixture
def widgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog[int]]:
    """A package of three widget modules, one of which the order does not name (a new one)."""
    pkg = tmp_path / "edgernn_test_widgets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from edgernn.catalog import Catalog, module_names\n"
        "CATALOG = Catalog('widget', __name__, module_names(__file__, ('second', 'first')))\n"
    )
    for i, name in enumerate(("first", "second", "third")):
        (pkg / f"{name}.py").write_text(f"from . import CATALOG\nCATALOG.register({name!r}, {i})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import edgernn_test_widgets

    yield edgernn_test_widgets.CATALOG
    for mod in [m for m in sys.modules if m.split(".")[0] == "edgernn_test_widgets"]:
        del sys.modules[mod]


def test_the_catalog_imports_every_module_before_it_answers(widgets: Catalog[int]) -> None:
    assert widgets.builtin == ("second", "first", "third")
    widgets.register("elsewhere", 9)  # registered by a user's module, before any built-in was imported
    assert widgets.get("third") == 2
    assert widgets.names() == ["second", "first", "third", "elsewhere"]


def test_a_wrong_name_is_a_config_error_naming_the_choices(widgets: Catalog[int]) -> None:
    with pytest.raises(ConfigError, match=r"unknown widget 'fourth'; choose one of: second, first, third$"):
        widgets.get("fourth")
    with pytest.raises(ValueError, match="widget 'first' is already registered"):
        widgets.register("first", 5)


def test_each_built_in_strategy_and_target_is_the_module_of_its_name() -> None:
    """What makes "one module" enough: the folder's modules are the built-ins, each registering its own name."""
    strategies_dir = Path(registry.__file__).parent
    assert registry.BUILTIN == ("native", "loop", "unroll", "step")
    assert {p.stem for p in strategies_dir.glob("*.py")} == {*registry.BUILTIN, "__init__", "registry", "native_op"}
    for name in registry.BUILTIN:
        cls = registry.get_strategy_class(name)
        assert (cls.name, cls.__module__) == (name, f"edgernn.strategies.{name}")
    assert registry.strategy_names() == list(registry.BUILTIN)
    assert TARGETS[:3] == ("ort", "nnapi", "coreml") and len(TARGETS) == 10
    for name in TARGETS:
        assert get_target(name).name == name
