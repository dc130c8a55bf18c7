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
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .cell_ops import run_stack
from .layout import LayerWeights
from .registry import Capabilities, Strategy, register_strategy


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
    option_names = frozenset({"chunk"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.chunk = self.positive_int_option("chunk", default=1)

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
        return run_stack(layer.cell_kind, weights, x, h0, c0, lengths)
