"""Walking an ONNX graph and the subgraphs inside its nodes (Scan and Loop bodies, If branches). Torch-free,
and onnx-free: it reads the protobuf objects it is handed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


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
