"""The pytest plugin edgernn installs (entry point ``pytest11``): run a suite's parity tests per provider.

``pytest --edgernn-provider cpu --edgernn-provider cuda`` (or ``--edgernn-provider cpu,cuda``) runs every test
that takes the ``edgernn_provider`` or ``edgernn_parity`` fixture once per provider; the default is cpu. A
provider this machine's onnxruntime lacks fails the test that asks for it, naming the providers there are:
asking for a provider is a request, not a hint.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgernn", "edgernn parity")
    group.addoption(
        "--edgernn-provider",
        action="append",
        default=None,
        metavar="NAME[,NAME]",
        help="onnxruntime provider(s) to run edgernn parity tests on (repeat or comma-separate; default cpu).",
    )


def _providers(config: pytest.Config) -> list[str]:
    given = config.getoption("edgernn_provider") or ["cpu"]
    names = [p.strip() for item in given for p in str(item).split(",") if p.strip()]
    return list(dict.fromkeys(names)) or ["cpu"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edgernn_provider" in metafunc.fixturenames:
        metafunc.parametrize("edgernn_provider", _providers(metafunc.config), scope="session")


@pytest.fixture
def edgernn_parity(edgernn_provider: str) -> Any:
    """``edgernn.testing.assert_parity`` with ``provider`` set to this run's provider."""
    from . import assert_parity

    return functools.partial(assert_parity, provider=edgernn_provider)
