"""Graph hygiene: the forms that standard converters and device runtimes need from an exported file.

Each of these, left undone, makes a standard tool fail on an otherwise correct model (a quantiser, the fp16
converter, OpenVINO's ONNX reader, a mobile runtime's partitioner):

- every computation on weights is done at export: weights are stored as initializers in the layout the op that
  reads them wants (no Transpose/Slice/Reshape of a weight at run time), also inside Scan bodies;
- every ``ConstantOfShape`` states its value (and so its dtype);
- no graph output is read again inside the graph (the value is produced once and copied out with Identity);
- optionally, ``Gather`` with a constant scalar index becomes ``Slice`` + ``Squeeze`` (CoreML's MLProgram has no
  Gather; NNAPI and every other runtime take Slice and Squeeze).

``check`` lists the violations of the first three in any model; ``apply`` makes them hold. Imports onnx only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExportError
from ..graphs import all_graphs, fresh_name, subgraphs

_DEFAULT = ("", "ai.onnx")
# ops with no data input whose output is a constant by definition: never "computing on weights"
_SOURCES = frozenset({"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike"})


def _outer_reads(graph: Any) -> set[str]:
    """Names a subgraph reads that it does not define itself (its outer-scope captures)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node.input if n and n not in defined)
        for g in subgraphs(node):
            reads.update(n for n in _outer_reads(g) if n not in defined)
        defined.update(node.output)
    return reads


def check(model: Any) -> list[str]:
    """What in ``model`` breaks the rules above, one line each (empty when the graph is clean)."""
    problems: list[str] = []
    top = model.graph
    weights = {t.name for t in top.initializer}
    for graph in all_graphs(top):
        local = weights | {t.name for t in graph.initializer}
        for node in graph.node:
            data = [n for n in node.input if n]
            if node.op_type not in _SOURCES and data and all(n in local for n in data):
                problems.append(f"{node.op_type} node {node.name!r} computes on weights at run time: {data[0]!r}")
            if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
                problems.append(f"ConstantOfShape node {node.name!r} has no typed value")
            if node.op_type in ("Scan", "Loop"):
                for body in subgraphs(node):
                    computed = sorted(n for n in _outer_reads(body) if n not in weights)
                    if computed:
                        problems.append(
                            f"{node.op_type} node {node.name!r} reads tensors computed outside its body: "
                            + ", ".join(computed[:5])
                        )
    outputs = {o.name for o in top.output}
    for graph in all_graphs(top):
        for node in graph.node:
            for name in node.input:
                if name in outputs:
                    problems.append(f"graph output {name!r} is also read inside the graph (by {node.name!r})")
                    outputs.discard(name)
    return problems


def apply(model: Any, *, gather_as_slice: bool = False) -> None:
    """Make ``model`` (an onnx.ModelProto, changed in place) hold the rules above; weights must already be
    folded (``edgernn.export.graph.fold`` does it at export)."""
    for graph in all_graphs(model.graph):
        _type_constant_of_shape(graph)
        _materialise_constant_of_shape(graph, model.graph)
    _fold_on_weights(model.graph)
    _separate_outputs(model.graph)
    if gather_as_slice:
        for graph in list(all_graphs(model.graph)):
            _gather_as_slice(graph, model.graph)
    _drop_unused_initializers(model.graph)


def require_clean(model: Any) -> None:
    """ExportError listing the violations, if any: an export must never write a file that breaks them."""
    problems = check(model)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportError(
            "the exported graph breaks edgernn's graph rules (an edgernn bug to report): "
            + "; ".join(problems[:5])
            + more
        )


def _type_constant_of_shape(graph: Any) -> None:
    import onnx

    for node in graph.node:
        untyped = not any(a.name == "value" for a in node.attribute)
        if node.op_type == "ConstantOfShape" and node.domain in _DEFAULT and untyped:
            # the spec's default, written out: a float32 zero (converters that retype tensors need to see it)
            node.attribute.append(
                onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
            )


def _materialise_constant_of_shape(graph: Any, top: Any) -> None:
    """A ConstantOfShape whose shape is constant (a static-batch export's zero state) becomes an initializer:
    NNAPI and CoreML have no such op, and the tensor is as small as the state."""
    from onnx import numpy_helper

    keep = []
    for node in graph.node:
        shape = _constant_value(graph, top, node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None:
            keep.append(node)
            continue
        fill = next(numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value")
        graph.initializer.append(
            numpy_helper.from_array(np.full(tuple(int(d) for d in shape), fill.reshape(-1)[0]), node.output[0])
        )
    del graph.node[:]
    graph.node.extend(keep)


def _fold_on_weights(graph: Any) -> None:
    """Evaluate, once, every top-level node that reads only initializers (left by the steps above: a layer's
    slice of a materialised zero state), with onnx's reference implementation; its outputs become initializers."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    values = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        data = [n for n in node.input if n]
        if node.op_type in _SOURCES or not data or any(n not in values for n in data) or any(subgraphs(node)):
            keep.append(node)
            continue
        feeds = {n: numpy_helper.to_array(values[n]) for n in data}
        results = ReferenceEvaluator(node).run(None, feeds)
        for name, value in zip(node.output, results, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            values[name] = tensor
    del graph.node[:]
    graph.node.extend(keep)


def _drop_unused_initializers(top: Any) -> None:
    """Initializers no node reads any more (the folded inputs, the indices of rewritten Gathers)."""
    read: set[str] = {o.name for o in top.output}
    for g in all_graphs(top):
        for node in g.node:
            read.update(node.input)
        read.update(o.name for o in g.output)
    for g in all_graphs(top):
        kept = [t for t in g.initializer if t.name in read]
        if len(kept) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(kept)


def _all_names(graph: Any) -> set[str]:
    names: set[str] = set()
    for g in all_graphs(graph):
        names.update(i.name for i in g.input)
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    return names


def _separate_outputs(graph: Any) -> None:
    """A graph output that nodes also read is produced under another name and copied out by an Identity."""
    import onnx

    read: set[str] = set()
    for g in all_graphs(graph):
        for node in g.node:
            read.update(node.input)
    inputs = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    shared = [o.name for o in graph.output if o.name in read and o.name not in inputs]
    if not shared:
        return
    taken = _all_names(graph)
    for name in shared:
        inner = fresh_name(f"{name}__value", taken)
        for g in all_graphs(graph):
            for node in g.node:
                node.input[:] = [inner if n == name else n for n in node.input]
                node.output[:] = [inner if n == name else n for n in node.output]
        for vi in graph.value_info:
            if vi.name == name:
                vi.name = inner
        graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=fresh_name(f"{name}_out", taken)))


def _constant_value(graph: Any, top: Any, name: str) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer (of this graph or the top one) or a Constant node's."""
    from onnx import numpy_helper

    for g in (graph, top):
        for t in g.initializer:
            if t.name == name:
                return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_int":
                    return np.array(a.i, dtype=np.int64)
            return None
    return None


def _gather_as_slice(graph: Any, top: Any) -> None:
    """Gather(data, constant scalar i, axis) -> Squeeze(Slice(data, [i], [i+1], [axis]), [axis])."""
    from onnx import helper, numpy_helper

    taken = _all_names(top)
    new_nodes = []
    consts: dict[tuple[int, ...], str] = {}

    def const(values: tuple[int, ...]) -> str:
        if values not in consts:
            name = fresh_name("gather_slice_" + "_".join(str(v).replace("-", "m") for v in values), taken)
            graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
            consts[values] = name
        return consts[values]

    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in _DEFAULT:
            new_nodes.append(node)
            continue
        idx = _constant_value(graph, top, node.input[1])
        if idx is None or idx.ndim != 0:
            new_nodes.append(node)
            continue
        i = int(idx)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        end = i + 1 if i != -1 else np.iinfo(np.int64).max
        sliced = fresh_name(f"{node.output[0]}__slice", taken)
        new_nodes.append(
            helper.make_node(
                "Slice",
                [node.input[0], const((i,)), const((int(end),)), const((axis,))],
                [sliced],
                name=fresh_name(f"{node.name or 'gather'}_slice", taken),
            )
        )
        new_nodes.append(
            helper.make_node(
                "Squeeze", [sliced, const((axis,))], list(node.output), name=node.name or fresh_name("sq", taken)
            )
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
