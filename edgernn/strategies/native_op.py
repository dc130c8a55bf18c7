"""The `native` strategy's torch side: the recurrence as a ``torch.library.custom_op`` that torch's exporter does
not look inside, and its onnxscript translation into ONNX's RNN / LSTM / GRU operators. Imported when an export
runs (it imports torch), not when the strategy registry is read."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..model.cell_ops import run_stack
from ..model.cells import get_cell
from ..model.layout import LayerWeights

_PER_LAYER = 4  # W, R, B, P (P is an empty tensor when the layer has no peepholes)


@torch.library.custom_op("edgernn::native_recurrent", mutates_args=())
def native_recurrent(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    weights: list[Tensor],
    cell: str,
    hidden_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Eager body (used when the op is called outside export): the same recurrence in torch ops."""
    layers = _unflatten(weights)
    y, h, c = run_stack(get_cell(cell), layers, x, h0, c0 if c0.numel() else None, lengths)
    return y, h, (c if c is not None else c0.new_zeros(0))


@native_recurrent.register_fake
def _(x: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor | None, weights: list[Tensor], cell: str, hidden_size: int):  # type: ignore[no-untyped-def]
    dirs = weights[0].shape[0]
    return x.new_empty(x.shape[0], x.shape[1], dirs * h0.shape[-1]), torch.empty_like(h0), torch.empty_like(c0)


def _unflatten(weights: list[Tensor]) -> list[LayerWeights]:
    out = []
    for k in range(0, len(weights), _PER_LAYER):
        w, r, b, p = weights[k : k + _PER_LAYER]
        out.append(LayerWeights(w, r, b, p if p.numel() else None, None))
    return out


def translate(x: Any, h0: Any, c0: Any, lengths: Any, weights: list[Any], cell: str, hidden_size: int) -> Any:
    """onnxscript translation: one ONNX RNN/LSTM/GRU node per layer, time-major, outputs regrouped like torch."""
    from onnxscript import opset18 as op

    kind = get_cell(cell)
    dirs = weights[0].shape[0]
    direction = "bidirectional" if dirs == 2 else "forward"
    seq_lens = op.Cast(lengths, to=6) if lengths is not None else None  # ONNX wants int32 sequence_lens
    hs, cs = [], []
    inp = x
    for layer in range(len(weights) // _PER_LAYER):
        w, r, b, p = weights[layer * _PER_LAYER : (layer + 1) * _PER_LAYER]
        lo, hi = [layer * dirs], [(layer + 1) * dirs]
        h_init = op.Slice(h0, lo, hi, [0])
        if kind.onnx_op == "LSTM":
            c_init = op.Slice(c0, lo, hi, [0])
            peep = p if p.shape[-1] else None
            y, y_h, y_c = op.LSTM(
                inp, w, r, b, seq_lens, h_init, c_init, peep, direction=direction, hidden_size=hidden_size
            )
            cs.append(y_c)
        elif kind.onnx_op == "GRU":
            y, y_h = op.GRU(
                inp, w, r, b, seq_lens, h_init, direction=direction, hidden_size=hidden_size, linear_before_reset=1
            )
        else:
            act = "Tanh" if kind.nonlinearity == "tanh" else "Relu"
            y, y_h = op.RNN(
                inp, w, r, b, seq_lens, h_init, direction=direction, hidden_size=hidden_size, activations=[act] * dirs
            )
        hs.append(y_h)
        # Y is (T, D, B, H); torch's layout, and the next layer's input, is (T, B, D*H)
        inp = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    h_n = op.Concat(*hs, axis=0) if len(hs) > 1 else op.Identity(hs[0])
    c_n = (op.Concat(*cs, axis=0) if len(cs) > 1 else op.Identity(cs[0])) if cs else op.Identity(c0)
    return inp, h_n, c_n
