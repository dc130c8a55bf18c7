"""Strategy `step`: one step, or a fixed chunk of K steps, with the recurrent state as graph inputs and outputs.

For streams (audio frames, sensor samples, tokens): the caller keeps the state between calls, starting from
zeros. Each recurrent layer module contributes its whole stack's state, shaped as torch's ``hx``:

    h_in  -> h_out   (num_layers, batch, hidden_size or proj_size)
    c_in  -> c_out   (num_layers, batch, hidden_size)              LSTM only

A module holding several recurrent layer modules gets the same names suffixed with the layer's index in
``named_modules`` order: ``h_in_0``, ``h_in_1``, ... The manifest's ``states`` lists every pair with its shape,
and ``chunk`` records K. The data inputs' time axis is fixed to K; the chunk is computed like `unroll` (no
control flow). Unidirectional only: the reverse direction of a bidirectional layer needs the samples that have
not arrived yet. No ``lengths`` input: in a stream every sequence advances by the same K steps.

By default the chunk is plain MatMul + activations, which every runtime can partition (NNAPI, CoreML, NPUs).
``fused=True`` (``--fused``) emits ONNX's RNN/LSTM/GRU operators for the chunk instead, with the state as their
initial_h/initial_c inputs and Y_h/Y_c outputs: faster on onnxruntime's CPU and CUDA providers (see
docs/benchmarks.md), not partitionable by the mobile providers, and without LSTM projections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from .native import Native
from .registry import Capabilities, Strategy, layer_variants, register_strategy

if TYPE_CHECKING:
    from torch import Tensor

    from ..model.layout import LayerWeights


@register_strategy
class Step(Strategy):
    name = "step"
    summary = "one step or a chunk of K steps with explicit state inputs/outputs: live streams"
    caps = Capabilities(
        dynamic_length=False,
        lengths=False,
        bidirectional=False,
        variants=frozenset({"peephole", "projection"}),
        streaming=True,
        opset_min=14,
        opset_max=25,
        default_opset=18,
    )
    rewrite_graph = False  # the graph grows with the steps; see Strategy.rewrite_graph
    option_names = frozenset({"chunk", "fused"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.chunk = self.positive_int_option("chunk", default=1)
        self.fused = bool(self.options.get("fused", False))

    def check_layer(self, layer: Any) -> None:
        super().check_layer(layer)
        unfusable = layer_variants(layer) - Native.caps.variants
        if self.fused and unfusable:
            raise ExportError(
                f"step with fused=True emits ONNX's recurrent operators, which have no LSTM "
                f"{', '.join(sorted(unfusable))}; export this model with the default (unfused) step"
            )

    def fixed_length(self) -> int:
        return self.chunk

    def why_not_bidirectional(self) -> str:
        return (
            "the reverse direction reads the sequence from its end, so a step would need samples that have not "
            "arrived yet"
        )

    def run_stack(
        self,
        layer: Any,
        weights: list[LayerWeights],
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        lengths: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.fused:
            return Native().run_stack(layer, weights, x, h0, c0, lengths)
        from ..model.cell_ops import run_stack

        return run_stack(layer.cell_kind, weights, x, h0, c0, lengths)

    def translation_table(self) -> dict[Any, Any]:
        return Native().translation_table() if self.fused else {}
