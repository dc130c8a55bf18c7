"""The ONNX side of an export: what is done to the graph torch's exporter returns, before parity is checked.

Folding without the pattern rewriter, stripping what makes files differ between runs, opset conversion, checks
that dynamic axes stayed dynamic, and the manifest's entry in ``metadata_props``. Imports onnx, not torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ExportError
from ..manifest import TensorSpec

_NO_LIMIT = 1 << 62


def fold(model: Any) -> None:
    """What torch's ``optimize=True`` does (onnxscript's optimizer) without its pattern rewriter, whose matching
    grows quadratically with graph size: an unrolled graph of a few thousand nodes took minutes in it. Constant
    folding (the weight transposes and gate slices), dead-node removal, constants lifted to initializers,
    duplicate initializers and common subexpressions merged. Run on every export, after torch's own optimizer
    where the strategy uses it."""
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants_ir

    passes.InlinePass()(model)
    for _ in range(2):
        # no size limits: onnxscript's defaults (8192 input elements) leave the transposes of larger weights to
        # run on every call, where quantisers, fp16 converters and OpenVINO's Scan import cannot follow them
        fold_constants_ir(model, onnx_shape_inference=True, input_size_limit=_NO_LIMIT, output_size_limit=_NO_LIMIT)
        cancel_squeeze_pairs(model)
        passes.RemoveUnusedNodesPass()(model)
    for p in (
        passes.RemoveUnusedFunctionsPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.OutputFixPass(),
        passes.NameFixPass(),
    ):
        p(model)


def cancel_squeeze_pairs(model: Any) -> None:
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x: their readers read x instead (the pair
    is left to dead-node removal). Views that cancel in torch (a one-step layer's time axis taken out, put back
    by the stack of its outputs, taken out again by the next layer) are ops in the graph, each a dispatch on every
    call. Only axes given as constant inputs (opset 13 on) are compared; a pair that makes a graph output stays."""
    import numpy as np
    import onnx_ir as ir

    def axes(node: Any) -> list[int] | None:
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
            return None
        return [int(a) for a in np.asarray(node.inputs[1].const_value.numpy()).reshape(-1)]

    undo = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type not in undo or node.domain not in ("", "ai.onnx"):
            continue
        src = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if src is None or src.op_type != undo[node.op_type] or src.domain not in ("", "ai.onnx"):
            continue
        mine, theirs = axes(node), axes(src)
        out = node.outputs[0]
        if mine is None or mine != theirs or out.is_graph_output() or src.inputs[0].graph is not out.graph:
            continue
        out.replace_all_uses_with(src.inputs[0])


def normalise(proto: Any) -> None:
    """Drop what makes files differ between runs or leak local paths: doc strings, node stack traces."""
    import onnx

    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
                for g in attr.graphs:
                    clean(g)

    clean(proto.graph)
    for f in proto.functions:
        for node in f.node:
            node.doc_string = ""
            del node.metadata_props[:]
    proto.doc_string = ""
    del proto.metadata_props[:]


def default_opset(proto: Any) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def set_opset(proto: Any, opset: int) -> Any:
    from onnx import version_converter

    if default_opset(proto) == opset:
        return proto
    try:
        return version_converter.convert_version(proto, opset)
    except Exception as e:  # the converter raises bare RuntimeErrors
        raise ExportError(f"cannot convert the exported graph to opset {opset}: {e}") from None


def validate_graph(proto: Any) -> None:
    """onnx's full checker and strict shape inference: what standard tools assume of a file before they read it."""
    import onnx

    if proto.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF:  # beyond 2 GiB the checker wants a path
        return
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph is not valid ONNX (an edgernn bug to report): {e}") from e


def check_dynamic_axes(proto: Any, specs: Sequence[TensorSpec]) -> None:
    """Every axis we named dynamic must still be dynamic in the graph. torch's exporter can specialise an axis
    to the example's size without an error (pytorch#191855; state left by an earlier export in the process can
    do it too); the parity check at other shapes would catch it, this says which axis and why."""
    graph = {i.name: i for i in proto.graph.input}
    for s in specs:
        vi = graph.get(s.name)
        if vi is None:
            raise ExportError(
                f"the exported graph lost its input {s.name!r} (torch's exporter dropped an unused input?)"
            )
        dims = vi.type.tensor_type.shape.dim
        for axis, (want, got) in enumerate(zip(s.shape, dims, strict=False)):
            if isinstance(want, str) and not got.dim_param:
                raise ExportError(
                    f"torch's exporter fixed the {want!r} axis ({axis}) of input {s.name!r} to {got.dim_value}; the "
                    "exported model would reject other sizes. If other exports ran earlier in this process, export "
                    "in a fresh process; otherwise this is an edgernn bug to report"
                )


def output_spec(proto: Any, name: str) -> TensorSpec:
    import onnx

    vi = next((o for o in proto.graph.output if o.name == name), None)
    if vi is None:
        raise ExportError(f"the exported graph has no output named {name!r}")
    tt = vi.type.tensor_type
    dims: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
    return TensorSpec(name, str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims)
