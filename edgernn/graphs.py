"""Walking an ONNX graph and the subgraphs inside its nodes (Scan and Loop bodies, If branches), and reading its
constants. Torch-free; onnx only where a tensor is turned into an array."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def subgraphs(node: Any) -> Iterator[Any]:
    """The graphs held by ``node``'s attributes."""
    for attr in node.attribute:
        if attr.g.ByteSize():
            yield attr.g
        yield from attr.graphs


def all_graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph below it, at any depth."""
    yield graph
    for node in graph.node:
        for g in subgraphs(node):
            yield from all_graphs(g)


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken`` (which it joins)."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def constant_value(name: str, initializers: Mapping[str, Any], producer: Mapping[str, Any]) -> np.ndarray | None:
    """The value of tensor ``name`` when it is an initializer or a (default-domain) ``Constant`` node's output
    (``value`` or ``value_ints``), else None. ``producer`` maps output names to the nodes that make them."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name == "value_ints":
                return np.array(list(a.ints), np.int64)
    return None
