"""Graph forms that travel: passes that make an exported ONNX model load in engines that bind concrete shapes.

onnxruntime reads the shapes a file declares as hints; some engines read them as facts. tract (Sonos' engine)
loads an ONNX file as an "inference model": every shape written in the file (inputs, ``value_info``, outputs,
and the inputs of Scan/Loop bodies) becomes a fact, and a dim named ``time`` becomes the symbol ``time``. Its
user then sets the real input shapes (``set_input_fact(0, "3,20,3,f32")``) and tract unifies every fact with
them; a symbol stated in the file can never equal a number, so the load fails
(``Impossible to unify Sym(time) with Val(20)``).

The passes here remove those statements and nothing else: no node, initializer, input or input shape changes,
so onnxruntime computes the same outputs bit for bit and the inputs keep their dynamic axes (``batch``,
``time``), which is what a tract user binds. Each is a pure function: it returns a new ``ModelProto`` and leaves
its argument untouched. Torch-free; onnx only.

Measured on tract 0.23.9 with edgernn's exports (see docs/engines/tract.md):

- ``drop_symbolic_value_info``: every strategy needs it (native, unroll, step: the top graph's ``value_info``;
  loop: also the Scan bodies' own ``value_info``);
- ``unname_subgraph_dims``: loop needs it (the Scan body's inputs carry a fresh symbol, ``s2`` or ``unk__1``).

Writing the outer names into the body (``s2`` -> ``batch``) does not help: inside the body ``batch`` is a symbol
again, and tract refuses ``Impossible to unify Sym(batch) with Val(3)``. Graph outputs may keep their named dims:
tract 0.23 loads files whose outputs say ``batch``/``time`` (checked by ``tests/test_engine_tract.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..graphs import all_graphs, fresh_name

if TYPE_CHECKING:
    from onnx import ModelProto


def _copy(model: ModelProto) -> ModelProto:
    from onnx import ModelProto

    out = ModelProto()
    out.CopyFrom(model)
    return out


def _symbolic(value: Any) -> bool:
    """A value_info whose type states a named (symbolic) dim, in a tensor or in a sequence/optional of one."""
    t = value.type
    while True:
        if t.HasField("tensor_type"):
            return t.tensor_type.HasField("shape") and any(d.HasField("dim_param") for d in t.tensor_type.shape.dim)
        if t.HasField("sequence_type"):
            t = t.sequence_type.elem_type
        elif t.HasField("optional_type"):
            t = t.optional_type.elem_type
        else:
            return False


def _unname(value: Any) -> int:
    """Clear the names of ``value``'s symbolic dims (they stay dims of unknown size); the count cleared."""
    t = value.type
    while not t.HasField("tensor_type"):
        if t.HasField("sequence_type"):
            t = t.sequence_type.elem_type
        elif t.HasField("optional_type"):
            t = t.optional_type.elem_type
        else:
            return 0
    cleared = 0
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_param"):
            d.ClearField("dim_param")
            cleared += 1
    return cleared


def drop_symbolic_value_info(model: ModelProto) -> ModelProto:
    """``model`` without the ``value_info`` entries (of the top graph and of every Scan/Loop/If body) that name a
    symbolic dim.

    Needed by tract (any engine that turns the file's shapes into facts and unifies them with the concrete input
    shapes its user sets): torch's exporter writes an intermediate's shape as ``[time, batch, 3]``, and tract
    refuses ``Impossible to unify Sym(time) with Val(20)`` at the first such node (a Transpose in native/loop/
    unroll files, a Squeeze in step files); inside a Scan body the same holds for ``[batch, 48]``. The entries
    are optional in ONNX (shape inference hints), and an entry with only fixed dims is kept.
    """
    out = _copy(model)
    for graph in all_graphs(out.graph):
        kept = [v for v in graph.value_info if not _symbolic(v)]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)
    return out


def unname_subgraph_dims(model: ModelProto) -> ModelProto:
    """``model`` with the symbolic dims of every subgraph's (Scan/Loop body, If branch) inputs and outputs left
    unnamed: same rank, same fixed dims, unknown size where a name was.

    Needed by tract for the ``loop`` strategy: torch's exporter declares a Scan body's batch axis with a fresh
    symbol (``s2``, ``unk__1``) that no outer name binds, and tract refuses
    ``Impossible to unify Sym(s2) with Val(3)`` at the Scan node once the outer batch is 3. Renaming it to the
    outer ``batch`` fails the same way (``Sym(batch)`` against ``Val(3)``), so the dims are left unnamed and
    tract infers them from the Scan's inputs. The top graph's inputs and outputs are not touched: they carry
    the model's dynamic axes.
    """
    out = _copy(model)
    for graph in all_graphs(out.graph):
        if graph is out.graph:
            continue
        for value in (*graph.input, *graph.output):
            _unname(value)
    return out


def for_bound_shapes(model: ModelProto) -> ModelProto:
    """Every pass above, in order: the form edgernn writes for targets whose engine binds concrete shapes
    (tract) and for ``portable``. Idempotent."""
    return unname_subgraph_dims(drop_symbolic_value_info(model))


def fp32_fills(model: ModelProto) -> ModelProto:
    """``model`` with every ``ConstantOfShape`` whose fill ``value`` is fp16 or bf16 (an fp16 file's zero state)
    written as an fp32 fill and a ``Cast`` to the value's own type: the same tensor, bit for bit (fp32 holds
    every fp16 and bf16 value exactly). Returns ``model`` itself when there is none.

    Needed by MNN: its converter (3.6.1) reads the fill's bytes as an fp32 whatever the type, so an fp16 zero
    becomes two bytes of zero and two bytes of whatever lies beyond them, which may differ on each conversion
    (docs/engines/mnn.md: a GRU unroll file's outputs were off by up to 4e23 on most conversions)."""
    from onnx import TensorProto, helper, numpy_helper

    def odd(node: Any) -> bool:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return (
            node.op_type == "ConstantOfShape"
            and node.domain in ("", "ai.onnx")
            and value is not None
            and value.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16)
        )

    if not any(odd(n) for g in all_graphs(model.graph) for n in g.node):
        return model
    out = _copy(model)
    taken = {o for g in all_graphs(out.graph) for n in g.node for o in (*n.input, *n.output)}
    taken |= {v.name for g in all_graphs(out.graph) for v in (*g.input, *g.output, *g.initializer)}
    names = {n.name for g in all_graphs(out.graph) for n in g.node}
    for graph in all_graphs(out.graph):
        nodes = []
        for node in graph.node:
            if not odd(node):
                nodes.append(node)
                continue
            value = next(a.t for a in node.attribute if a.name == "value")
            fill = numpy_helper.from_array(numpy_helper.to_array(value).astype("float32"), value.name)
            wide = fresh_name(f"{node.output[0]}_fp32", taken)
            cast = fresh_name(f"{node.name}_cast", names) if node.name else ""
            nodes.append(helper.make_node("ConstantOfShape", list(node.input), [wide], node.name, value=fill))
            nodes.append(helper.make_node("Cast", [wide], list(node.output), cast, to=value.data_type))
        del graph.node[:]
        graph.node.extend(nodes)
    return out


def bound_shape_problems(model: ModelProto) -> list[str]:
    """What in ``model`` stops an engine that binds concrete shapes from loading it, one line each (empty when
    ``for_bound_shapes`` has nothing to do)."""
    problems: list[str] = []
    for graph in all_graphs(model.graph):
        where = "the top graph" if graph is model.graph else f"subgraph {graph.name!r}"
        named = [v.name for v in graph.value_info if _symbolic(v)]
        if named:
            problems.append(
                f"{where} states symbolic shapes in value_info for {len(named)} tensor(s), e.g. {named[0]!r}"
            )
        if graph is not model.graph:
            io = [v.name for v in (*graph.input, *graph.output) if _symbolic(v)]
            if io:
                problems.append(f"{where} names symbolic dims on its inputs/outputs, e.g. {io[0]!r}")
    return problems
