"""Weight-only int8: every weight matrix stored as int8 with one scale per output channel, turned back into fp32 in
the graph (``Mul(Cast(int8), scale)``), and every product computed in fp32.

The last try of ``quantize --to int8`` when onnxruntime's dynamic quantiser is over the task's budget under each of
its schemes. Dynamic int8 rounds the activations too, once per call and, inside a recurrence, once per step, and
carries that rounding into every later step; here only the weights are rounded, symmetrically (zero point 0, so a
zero weight stays exactly zero), with a scale per output row. The file is about as small as an all-int8 one (the
weights are most of it); the arithmetic, and so the speed, is fp32's. No integer product is computed, so no CPU's
integer kernels (VNNI or not, ARM64 or x86) change the numbers: the file computes the same on every CPU.

Why ``Cast`` and ``Mul`` and not ``DequantizeLinear``: onnxruntime (1.32, at its default optimisation level) fuses a
``DequantizeLinear`` of a constant feeding a ``MatMul`` into its ``MatMulNBits``, which by default rounds the
activations to int8 as well (its accuracy level 4): measured on an LSTM loop export, its outputs moved by 1e-4
from what the rounded weights compute. ``Cast`` and ``Mul`` of constants are folded by onnxruntime's constant
folding when the session is made, into exactly the rounded fp32 weights: the products are fp32, at fp32's speed.

A weight is an fp32 initializer of rank >= 2 (not also a graph input) that every node using it (in the main graph or
in a Scan, Loop or If body) takes as a weight: ``MatMul``'s second input, ``Gemm``'s B, the W and R of
``LSTM``/``GRU``/``RNN``. Anything else (biases, embedding tables read by ``Gather``, shapes) stays as it is.
A weight that one Scan/Loop/If body alone reads is made inside that body, from the int8 values outside: OpenVINO's
ONNX frontend refuses a Scan whose body reads a value computed outside it (an initializer it takes), and
onnxruntime folds the body's ``Cast`` and ``Mul`` just the same (measured: the same outputs at every level, the
same speed). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..graphs import fresh_name, subgraphs

QMAX = 127  # symmetric int8: -127..127, so the scale is the same both ways and -128 is never used
_RECURRENT = ("LSTM", "GRU", "RNN")


def _weight_axis(node: Any, slot: int) -> int | None:
    """The output-channel axis of input ``slot`` of ``node`` when that input is a weight, else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul" and slot == 1:
        return -1  # [..., K, N]: one scale per output column
    if node.op_type == "Gemm" and slot == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type in _RECURRENT and slot in (1, 2):
        return 1  # W [directions, gates x hidden, input], R [directions, gates x hidden, hidden]
    return None


def _uses(graph: Any) -> Iterator[tuple[str, int | None]]:
    """(name, weight axis or None) for every input of every node in ``graph`` and its subgraphs."""
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                yield name, _weight_axis(node, slot)
        for sub in subgraphs(node):
            yield from _uses(sub)


def quantize_weights(model: Any) -> int:
    """Store ``model``'s weights (an onnx.ModelProto, changed in place) as int8, each with its scale per output
    channel and the ``Cast`` and ``Mul`` that make the fp32 weight again; returns how many."""
    return _quantize_graph(model.graph)


def _quantize_graph(graph: Any) -> int:
    import onnx
    from onnx import helper, numpy_helper

    axes: dict[str, set[int | None]] = {}
    for name, axis in _uses(graph):
        axes.setdefault(name, set()).add(axis)
    count = 0
    kept: list[Any] = []
    restore: list[Any] = []
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in node.output}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    fed = {v.name for v in graph.input}  # an initializer also listed as an input is a default the caller may replace
    for init in graph.initializer:
        seen = axes.get(init.name, set())
        weight = init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2 and seen and None not in seen
        if not weight or init.name in fed:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init)
        axis = next(iter(seen)) % w.ndim if len(seen) == 1 else None  # read two ways: one scale
        q, scale = _symmetric(w, axis)
        values, scales, wide = (fresh_name(f"{init.name}_{s}", taken) for s in ("int8", "scale", "fp32"))
        kept += [numpy_helper.from_array(q, values), numpy_helper.from_array(scale, scales)]
        made = [
            helper.make_node("Cast", [values], [wide], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [wide, scales], [init.name]),
        ]
        home = _home(graph, init.name)
        if home is None:
            restore.extend(made)
        else:  # made in the one body that reads it: engines (OpenVINO) look for a body's weights there
            nodes = [*made, *home.node]
            del home.node[:]
            home.node.extend(nodes)
        count += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if restore:  # first, so every node (and every body reading it from outside) finds the weight made
        nodes = [*restore, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    for node in graph.node:
        for sub in subgraphs(node):
            count += _quantize_graph(sub)
    return count


def _home(graph: Any, name: str) -> Any:
    """The one subgraph of ``graph``'s nodes that alone reads ``name`` (at any depth), or None when a node
    of ``graph`` itself reads it, or more than one subgraph does."""
    homes = []
    for node in graph.node:
        if name in node.input:
            return None
        homes += [sub for sub in subgraphs(node) if any(n == name for n, _ in _uses(sub))]
    return homes[0] if len(homes) == 1 else None


def _symmetric(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``w`` rounded to int8 with zero point 0: (the int8 values, the fp32 scale of each entry along ``axis``, shaped
    to broadcast against ``w``; one scale for the whole tensor where ``axis`` is None)."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    peak = np.abs(w).max(axis=others, keepdims=True).astype(np.float32)
    scale = np.where(peak > 0, peak / QMAX, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale
