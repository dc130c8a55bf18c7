"""Strategy `native`: ONNX's own RNN / LSTM / GRU operators, one node per stacked layer.

The recurrence is a ``torch.library.custom_op`` that torch's exporter does not look inside; its translation
(an onnxscript function) emits the ONNX operator with the weights already in ONNX layout, ``sequence_lens``
for padded batches, and both directions in one node. Sequence length and batch stay dynamic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import Capabilities, Stack, Strategy, register_strategy

if TYPE_CHECKING:
    from torch import Tensor


@register_strategy
class Native(Strategy):
    name = "native"
    summary = "ONNX RNN/LSTM/GRU operators: fastest on onnxruntime CPU and CUDA"
    caps = Capabilities(
        dynamic_length=True,
        lengths=True,
        bidirectional=True,
        variants=frozenset({"peephole"}),
        streaming=False,
    )

    def run_stack(self, s: Stack) -> tuple[Tensor, Tensor, Tensor | None]:
        flat: list[Tensor] = []
        for w in s.weights:
            flat += [w.W, w.R, w.B, w.P if w.P is not None else w.B.new_zeros(w.B.shape[0], 0)]
        from .native_op import native_recurrent

        c_in = s.c0 if s.c0 is not None else s.h0.new_zeros(0)
        y, h, c = native_recurrent(s.x, s.h0, c_in, s.lengths, flat, s.layer.cell_kind.name, s.layer.hidden_size)
        return y, h, (c if s.c0 is not None else None)

    def translation_table(self) -> dict[Any, Any]:
        import torch

        from .native_op import translate

        return {torch.ops.edgernn.native_recurrent.default: translate}
