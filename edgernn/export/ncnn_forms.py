"""Graph forms for ncnn: passes that make an exported ONNX model convert with pnnx and run in ncnn.

ncnn (Tencent's engine for phones and boards) does not read ONNX: pnnx converts the file to ncnn's
``.param``/``.bin``, by rewriting it into its own torch-like graph (``torch.unbind``, ``Tensor.to``, ...) and
lowering each of those to an ncnn layer. An operator pnnx rewrites but cannot lower is written into the
``.param`` under its torch name, and ncnn then refuses the whole file at load
(``layer torch.unbind not exists or registered``).

The `ncnn` target exports the forms NNAPI takes (static batch 1, no recurrent ops, no control flow, padding as a
float ``mask`` input multiplied in: no ``Less``/``Where``/``Cast`` on lengths); the passes here change what pnnx
still cannot lower in those files. Each is a pure function: it returns a new ``ModelProto`` and leaves its
argument untouched; each keeps the graph's inputs and outputs, and the values onnxruntime computes up to float
rounding (an addend added after a product instead of inside the Gemm; within 1e-6, tested). Torch-free; onnx
only.

Measured with pnnx 20261020 and ncnn 1.0.20261020 (see docs/engines/ncnn.md):

- ``gemm_addend_as_add``: `unroll` of rnn-tanh and LSTM needs it. Their recurrent product is one
  ``Gemm(h, W_hh, x_proj_t)`` whose addend ``C`` is the step's input projection, a runtime tensor; pnnx makes it
  ``F.linear`` with a runtime bias, which it cannot lower (``layer F.linear not exists or registered``). As
  ``Add(Gemm(h, W_hh), x_proj_t)`` the Gemm lowers to ncnn's InnerProduct/Gemm and the Add to a BinaryOp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graphs import constant_value

if TYPE_CHECKING:
    from onnx import ModelProto

_DEFAULT = ("", "ai.onnx")


def _copy(model: ModelProto) -> ModelProto:
    from onnx import ModelProto

    out = ModelProto()
    out.CopyFrom(model)
    return out


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _names(graph: Any) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def gemm_addend_as_add(model: ModelProto) -> ModelProto:
    """Each top-graph ``Gemm(A, B, C)`` whose addend ``C`` is computed at run time (not an initializer or a
    Constant) rewritten as ``Add(Gemm(A, B), C)``, with ``C`` scaled by a ``Mul`` first when ``beta`` is not 1.
    ``alpha``/``transA``/``transB`` stay on the Gemm. Why: pnnx turns a Gemm with a runtime addend into
    ``F.linear`` with a runtime bias, which it cannot lower to ncnn (see the module's docstring)."""
    from onnx import helper, numpy_helper

    out = _copy(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    taken = _names(graph)
    nodes = []
    for node in graph.node:
        if (
            node.op_type != "Gemm"
            or node.domain not in _DEFAULT
            or len(node.input) < 3
            or not node.input[2]
            or constant_value(node.input[2], inits, producer) is not None
        ):
            nodes.append(node)
            continue
        base = node.name or "gemm"
        product = _fresh(f"{node.output[0]}__product", taken)
        kept = [a for a in node.attribute if a.name != "beta"]
        gemm = helper.make_node("Gemm", list(node.input[:2]), [product], name=_fresh(f"{base}_product", taken))
        gemm.attribute.extend(kept)
        nodes.append(gemm)
        addend = node.input[2]
        beta = _attr(node, "beta")
        if beta is not None and float(beta) != 1.0:
            scale = _fresh(f"{base}_beta", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(beta, np.float32), scale))
            scaled = _fresh(f"{addend}__beta", taken)
            nodes.append(helper.make_node("Mul", [addend, scale], [scaled], name=_fresh(f"{base}_scale", taken)))
            addend = scaled
        nodes.append(helper.make_node("Add", [product, addend], list(node.output), name=_fresh(f"{base}_add", taken)))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def for_ncnn(model: ModelProto) -> ModelProto:
    """Every pass the `ncnn` target applies at export, in order (today ``gemm_addend_as_add``); a new model."""
    return gemm_addend_as_add(model)
