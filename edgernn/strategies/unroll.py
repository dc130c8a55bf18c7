"""Strategy `unroll`: a fixed number of cell steps written out, no control flow and no recurrent ops.

The graph is the `loop` strategy's, traced at the export's ``seq_len`` (one ``Scan`` per layer and direction, with the
cell in its body), and then written out at the ONNX level by ``edgernn.rewrite.onnx_unroll.unroll_scans``: each Scan
becomes ``seq_len`` copies of its body, the input projection of each step a ``Gather`` of the one MatMul that computes
it for every step, the outputs stacked with ``Unsqueeze`` + ``Concat``. What is left is plain tensor ops (MatMul, Gemm,
Add, Sigmoid, Tanh, Relu, Mul, Where, Slice, Gather, Concat ...): no ``Loop``, ``Scan``, ``If``, ``RNN``, ``LSTM`` or
``GRU`` node (``postprocess`` refuses to return a graph that holds one), which is what NPU compilers (NNAPI, CoreML,
TensorRT-style) can take whole, and what quantises through MatMul. The batch stays dynamic; the time axis is fixed.
Padded batches (``lengths``) use the same masking as every other strategy; a shorter sequence runs padded to ``seq_len``
with its length in ``lengths``.

The reverse direction, which torch writes as flip -> Scan -> flip, reads the steps in reverse instead: no
negative-step ``Slice`` is left (some NPU runtimes lack it).

torch's exporter traces the cell once per layer and direction, whatever ``seq_len`` is, and copying the body is
linear in seq_len: a 2-layer bidirectional LSTM exports in ~5 s at seq_len 64 and ~8 s at 500 on a shared 2-core
VM, plus the parity check, whose onnxruntime session grows with the graph (~6 s at 500). Tracing every step in
torch, as this strategy did before, took 0.2-0.3 s per cell step (~60 s at 64, ~9 min at 500).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from .loop import Loop
from .registry import Capabilities, register_strategy

if TYPE_CHECKING:
    import onnx


# what the unrolled graph must not hold: control flow, and the recurrent ops NPU runtimes cannot partition
BANNED_OPS = frozenset({"Loop", "Scan", "If", "RNN", "LSTM", "GRU"})


@register_strategy
class Unroll(Loop):
    """The loop strategy's Scans (its ``run_stack``), traced with the time axis fixed to seq_len; ``postprocess``
    writes them out."""

    name = "unroll"
    summary = "fixed length (seq_len), plain MatMul + activations, no control flow: NPUs, NNAPI, CoreML, compilers"
    caps = Capabilities(
        dynamic_length=False,
        lengths=True,
        bidirectional=True,
        variants=frozenset({"peephole", "projection"}),
        streaming=False,
    )
    option_names = frozenset({"seq_len"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seq_len = self.positive_int_option("seq_len")

    def fixed_length(self) -> int:
        return self.seq_len

    def postprocess(self, model: onnx.ModelProto) -> onnx.ModelProto:
        import onnx

        from ..rewrite.onnx_unroll import unroll_scans

        out = unroll_scans(model, self.seq_len)
        left = sorted(_op_types(out) & BANNED_OPS)
        if left:
            raise ExportError(f"the unrolled graph still holds {', '.join(left)} nodes (an edgernn bug to report)")
        try:  # strict shape inference: every unrolled step must fit its neighbours at the fixed length
            onnx.checker.check_model(out, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"the unrolled graph is invalid (an edgernn bug to report): {e}") from e
        return out


def _op_types(model: onnx.ModelProto) -> set[str]:
    import onnx

    def walk(graph: onnx.GraphProto) -> set[str]:
        ops = set()
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    ops |= walk(attr.g)
                for g in attr.graphs:
                    ops |= walk(g)
        return ops

    return walk(model.graph) | {n.op_type for f in model.functions for n in f.node}
