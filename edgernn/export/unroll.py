"""Strategy `unroll`: a fixed number of cell steps written out, no control flow and no recurrent ops.

The graph is what ``cell_ops.run_stack`` traces at the export's ``seq_len``: per layer and direction one MatMul
for the input projection of every step, then ``seq_len`` copies of the recurrent step (MatMul, Add, Sigmoid,
Tanh, Relu, Mul, Where). No ``Loop``, ``Scan``, ``If``, ``RNN``, ``LSTM`` or ``GRU`` node, which is what NPU
compilers (NNAPI, CoreML, TensorRT-style) can take whole, and what quantises through MatMul. The batch stays
dynamic; the time axis is fixed. Padded batches (``lengths``) use the same masking as every other strategy; a
shorter sequence runs padded to ``seq_len`` with its length in ``lengths``.

Export time grows with seq_len x layers x directions: torch traces every step with a symbolic batch, about
0.2-0.3 s per cell step on a shared 2-core x86 VM (a 1-layer LSTM at seq_len 64: ~15-25 s; 2 bidirectional
layers at 64: ~60-80 s). onnxscript's pattern rewriter is skipped for these graphs (``Strategy.rewrite_graph``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .cell_ops import run_stack
from .layout import LayerWeights
from .registry import Capabilities, Strategy, register_strategy


@register_strategy
class Unroll(Strategy):
    name = "unroll"
    summary = "fixed length (seq_len), plain MatMul + activations, no control flow: NPUs, NNAPI, CoreML, compilers"
    caps = Capabilities(
        dynamic_length=False,
        lengths=True,
        bidirectional=True,
        variants=frozenset({"peephole", "projection"}),
        streaming=False,
        opset_min=15,
        opset_max=25,
        default_opset=18,
    )
    rewrite_graph = False  # the graph grows with the steps; see Strategy.rewrite_graph
    option_names = frozenset({"seq_len"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seq_len = self.positive_int_option("seq_len")

    def fixed_length(self) -> int:
        return self.seq_len

    def run_stack(
        self,
        layer: Any,
        weights: list[LayerWeights],
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        lengths: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return run_stack(layer.cell_kind, weights, x, h0, c0, lengths)
