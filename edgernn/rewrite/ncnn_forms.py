"""Graph forms for ncnn: passes that make an exported ONNX model convert with pnnx and run in ncnn.

ncnn (Tencent's engine for phones and boards) does not read ONNX: pnnx converts the file to ncnn's
``.param``/``.bin``, by rewriting it into its own torch-like graph (``torch.unbind``, ``Tensor.to``, ...) and
lowering each of those to an ncnn layer. An operator pnnx rewrites but cannot lower is written into the
``.param`` under its torch name, and ncnn then refuses the whole file at load
(``layer torch.unbind not exists or registered``).

The `ncnn` target exports, at static batch 1, `native` without lengths (ONNX RNN/GRU/LSTM ops, which pnnx lowers
to ncnn's layers) and the forms NNAPI takes for `unroll` and `step` (no control flow, padding as a float ``mask``
input multiplied in: no ``Less``/``Where``/``Cast`` on lengths; the fused step keeps the recurrent ops); the
passes here change what pnnx still cannot lower in those files. Each is a pure function: it returns a new
``ModelProto`` and leaves its argument untouched; each keeps the graph's inputs and outputs, and the values
onnxruntime computes up to float rounding (an addend added after a product instead of inside the Gemm; within
1e-6, tested; the final-state slices are exact). Torch-free; onnx only.

Measured with pnnx 20261020 and ncnn 1.0.20261020 (see docs/engines/ncnn.md):

- ``gemm_addend_as_add``: `unroll` of rnn-tanh and LSTM needs it. Their recurrent product is one
  ``Gemm(h, W_hh, x_proj_t)`` whose addend ``C`` is the step's input projection, a runtime tensor; pnnx makes it
  ``F.linear`` with a runtime bias, which it cannot lower (``layer F.linear not exists or registered``). As
  ``Add(Gemm(h, W_hh), x_proj_t)`` the Gemm lowers to ncnn's InnerProduct/Gemm and the Add to a BinaryOp.
- ``final_state_from_sequence``: `native` and the fused `step` of a ``readout="last"`` model need it. pnnx lowers
  an RNN/GRU/LSTM op only together with the Squeeze or Transpose + Reshape that reads its ``Y``, and an LSTM only
  with one output or all three; the top layer's ``Y`` is unused there (its ``Y_h`` is read), so pnnx leaves the
  op bare and ncnn fails at ``load_param``. Every read ``Y_h`` is sliced out of ``Y`` instead (also a lower
  layer's: a bidirectional layer's own ``Y_h`` is a 3-D Mat in ncnn and the readout's Concat of it with a 2-D
  slice computes wrong numbers). Copies only: onnxruntime's outputs are bit for bit the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graphs import constant_value, fresh_name

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
        product = fresh_name(f"{node.output[0]}__product", taken)
        kept = [a for a in node.attribute if a.name != "beta"]
        gemm = helper.make_node("Gemm", list(node.input[:2]), [product], name=fresh_name(f"{base}_product", taken))
        gemm.attribute.extend(kept)
        nodes.append(gemm)
        addend = node.input[2]
        beta = _attr(node, "beta")
        if beta is not None and float(beta) != 1.0:
            scale = fresh_name(f"{base}_beta", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(beta, np.float32), scale))
            scaled = fresh_name(f"{addend}__beta", taken)
            nodes.append(helper.make_node("Mul", [addend, scale], [scaled], name=fresh_name(f"{base}_scale", taken)))
            addend = scaled
        nodes.append(
            helper.make_node("Add", [product, addend], list(node.output), name=fresh_name(f"{base}_add", taken))
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return out


_RECURRENT = ("RNN", "GRU", "LSTM")
_END = np.iinfo(np.int64).max


def _sorted(nodes: list[Any], known: set[str]) -> list[Any]:
    """``nodes`` in an order where each reads only ``known`` names or earlier nodes' outputs, the given order kept
    wherever it already is one (Kahn's algorithm, the earliest ready node first)."""
    import heapq

    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits = [0] * len(nodes)
    then: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            j = made.get(name)
            if name and name not in known and j is not None and j != i:
                waits[i] += 1
                then.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waits) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in then.get(i, []):
            waits[k] -= 1
            if waits[k] == 0:
                heapq.heappush(ready, k)
    order += [i for i in range(len(nodes)) if waits[i] > 0]  # a cycle: left as it was
    return [nodes[i] for i in order]


def _slice(
    graph: Any,
    nodes: list[Any],
    taken: set[str],
    base: str,
    source: str,
    axis: int,
    start: int,
    end: int,
    target: str | None = None,
) -> str:
    """Appends to ``nodes`` a ``Slice`` of ``source`` along one axis (its starts/ends/axes as new initializers of
    ``graph``); returns its output, ``target`` when given."""
    from onnx import helper, numpy_helper

    name = target or fresh_name(f"{source}__slice", taken)
    consts = []
    for what, value in (("starts", start), ("ends", end), ("axes", axis)):
        const = fresh_name(f"{base}_{what}", taken)
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), const))
        consts.append(const)
    nodes.append(helper.make_node("Slice", [source, *consts], [name], name=fresh_name(f"{base}_slice", taken)))
    return name


def final_state_from_sequence(model: ModelProto) -> ModelProto:
    """Each top-graph RNN/GRU/LSTM (no ``sequence_lens``, ``layout`` 0) whose final state ``Y_h`` is read, and whose
    output sequence ``Y`` is unused or read only by a ``Transpose(0, 2, 1, 3)`` + ``Reshape(0, 0, -1)`` (the form
    a stacked layer's ``Y`` has; added when ``Y`` is unused) or by a ``Squeeze`` of axis 1 (a fused step's
    form): ``Y_h`` sliced out of that, under its own name: the last
    step for a forward layer, the first for a reverse one, and for a bidirectional one the forward half of the
    last step concatenated (axis 0) with the backward half of the first. The op then outputs ``Y`` alone, or,
    for an LSTM whose ``Y_c`` is used, ``Y``, an unused ``Y_h`` and ``Y_c``. The slices copy values: onnxruntime
    computes the same numbers bit for bit.

    Why: pnnx lowers an ONNX recurrent op to ncnn's RNN/GRU/LSTM layer only by matching it together with the
    consumer of its ``Y`` (``Squeeze`` of axis 1, or ``Transpose`` + ``Reshape`` to ``(0, 0, -1)``), and for an
    LSTM only with one output or all three. A ``readout="last"`` model reads the top layer's ``Y_h`` and leaves
    its ``Y`` unused (and a lower LSTM layer outputs ``Y`` and ``Y_h`` only), so no pattern matches: pnnx writes
    the op into the ``.param`` as a bare ``GRU``/``LSTM``/``RNN`` with its weights as ``MemoryData`` inputs and
    no parameters, and ncnn fails to load it (``layer load_param 8 GRU_4 failed``). A ``Y_h`` that is read while
    ``Y`` already has that Transpose + Reshape (a lower layer's, which the readout concatenates with the top one's)
    is sliced from it too: ncnn's RNN/GRU/LSTM layer gives ``Y_h`` as a 3-D Mat (batch axis kept) but pnnx's slices
    of the sequence are 2-D, and for a bidirectional model their Concat computes wrong numbers (0.14 off)."""
    from onnx import helper, numpy_helper

    out = _copy(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def used(name: str) -> bool:
        return bool(name) and (name in readers or name in outputs)

    def sequence_of(y: str) -> str | None:
        """The output of the Transpose(0, 2, 1, 3) + Reshape(0, 0, -1), or of the Squeeze of axis 1 (a fused
        step's one-direction form), that is ``y``'s only reader, if it is."""
        first = readers.get(y, [])
        if y in outputs or len(first) != 1:
            return None
        if first[0].op_type == "Squeeze" and first[0].output[0] not in outputs:
            axes = _attr(first[0], "axes")
            if axes is None and len(first[0].input) > 1:
                value = constant_value(first[0].input[1], inits, producer)
                axes = None if value is None else value.tolist()
            return first[0].output[0] if axes in ([1], [-3]) else None
        if first[0].op_type != "Transpose" or _attr(first[0], "perm") != [0, 2, 1, 3]:
            return None
        second = readers.get(first[0].output[0], [])
        if first[0].output[0] in outputs or len(second) != 1 or second[0].op_type != "Reshape":
            return None
        shape = constant_value(second[0].input[1], inits, producer)
        return second[0].output[0] if shape is not None and shape.tolist() == [0, 0, -1] else None

    taken = _names(graph)
    nodes: list[Any] = []
    shape_name: str | None = None
    changed = False
    for node in graph.node:
        nodes.append(node)
        outs = list(node.output) + [""] * (3 - len(node.output))
        direction = _attr(node, "direction")
        direction = direction.decode() if isinstance(direction, bytes) else (direction or "forward")
        if (
            node.op_type not in _RECURRENT
            or node.domain not in _DEFAULT
            or (len(node.input) > 4 and node.input[4])
            or (_attr(node, "layout") or 0) != 0
            or direction not in ("forward", "reverse", "bidirectional")
            or not used(outs[1])
        ):
            continue
        base = node.name or node.op_type.lower()
        y = outs[0] or fresh_name(f"{base}_Y", taken)
        if used(y):
            sequence = sequence_of(y)
            if sequence is None:
                continue
        else:
            if shape_name is None:
                shape_name = fresh_name("ncnn_sequence_shape", taken)
                graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape_name))
            moved = fresh_name(f"{y}__moved", taken)
            sequence = fresh_name(f"{y}__sequence", taken)
            nodes.append(
                helper.make_node(
                    "Transpose", [y], [moved], name=fresh_name(f"{base}_Y_moved", taken), perm=[0, 2, 1, 3]
                )
            )
            nodes.append(
                helper.make_node("Reshape", [moved, shape_name], [sequence], name=fresh_name(f"{base}_Y_seq", taken))
            )
        changed = True
        hidden = int(_attr(node, "hidden_size"))
        final = outs[1]

        def cut(source: str, axis: int, start: int, end: int, target: str | None = None, at: str = base) -> str:
            return _slice(graph, nodes, taken, at, source, axis, start, end, target)

        if direction == "bidirectional":
            forward = cut(cut(sequence, 0, -1, _END), 2, 0, hidden)
            backward = cut(cut(sequence, 0, 0, 1), 2, hidden, 2 * hidden)
            nodes.append(
                helper.make_node("Concat", [forward, backward], [final], name=fresh_name(f"{base}_Y_h", taken), axis=0)
            )
        elif direction == "forward":
            cut(sequence, 0, -1, _END, final)
        else:
            cut(sequence, 0, 0, 1, final)
        keep_c = node.op_type == "LSTM" and used(outs[2])
        del node.output[:]
        node.output.extend([y, fresh_name(f"{final}__unused", taken), outs[2]] if keep_c else [y])
    if not changed:
        return out
    # the slices of a sequence made below the op (the Reshape that feeds the next layer) move down to after it
    nodes = _sorted(nodes, {v.name for v in (*graph.input, *graph.initializer)})
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def for_ncnn(model: ModelProto) -> ModelProto:
    """Every pass the `ncnn` target applies at export, in order (``final_state_from_sequence``, then
    ``gemm_addend_as_add``); a new model."""
    return gemm_addend_as_add(final_state_from_sequence(model))
