"""The recurrence in plain torch ops, in ONNX weight layout and gate order.

This is what the `loop`, `unroll` and `step` strategies trace (so the ONNX graph holds only MatMul, Add,
Sigmoid, Tanh, Relu, Mul, Where ...), and the eager body of the `native` custom op. The equations are ONNX's
(operator spec of LSTM, GRU with linear_before_reset=1, RNN), which equal torch's after the gate permutation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import CellKind
from .layout import LayerWeights


def cell_step(
    kind: CellKind, x: Tensor, h: Tensor, c: Tensor | None, w: LayerWeights, d: int
) -> tuple[Tensor, Tensor | None]:
    """One step of direction ``d``: x (B, I), h (B, P), c (B, H) -> h, c."""
    W, R, B = w.W[d], w.R[d], w.B[d]
    gh = W.shape[0]
    wb, rb = B[:gh], B[gh:]
    if kind.torch_class == "RNN":
        pre = x @ W.T + h @ R.T + wb + rb
        return (torch.tanh(pre) if kind.nonlinearity == "tanh" else torch.relu(pre)), None
    if kind.torch_class == "GRU":
        hs = gh // 3
        xw = x @ W.T + wb
        hr = h @ R.T + rb
        z = torch.sigmoid(xw[:, :hs] + hr[:, :hs])
        r = torch.sigmoid(xw[:, hs : 2 * hs] + hr[:, hs : 2 * hs])
        n = torch.tanh(xw[:, 2 * hs :] + r * hr[:, 2 * hs :])
        return (1 - z) * n + z * h, None
    if c is None:
        raise ValueError("an LSTM step needs the cell state c")
    hs = gh // 4
    g = x @ W.T + h @ R.T + wb + rb
    a_i, a_o, a_f, a_c = g[:, :hs], g[:, hs : 2 * hs], g[:, 2 * hs : 3 * hs], g[:, 3 * hs :]
    if w.P is not None:
        p = w.P[d]
        a_i = a_i + p[:hs] * c
        a_f = a_f + p[2 * hs :] * c
    c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_c)
    if w.P is not None:
        a_o = a_o + w.P[d][hs : 2 * hs] * c_new
    h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
    if w.Wr is not None:
        h_new = h_new @ w.Wr[d].T
    return h_new, c_new


def run_stack(
    kind: CellKind,
    weights: list[LayerWeights],
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Time-major x (T, B, I) through every layer and direction, with a Python loop over a fixed T.

    Steps at t >= lengths[b] keep the state and output zero, as ONNX's ops do with sequence_lens.
    """
    steps = x.shape[0]
    dirs = weights[0].W.shape[0]
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    inp = x
    for layer, w in enumerate(weights):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            h = h0[k]
            c = c0[k] if c0 is not None else None
            ys: list[Tensor] = [h] * steps
            order = range(steps - 1, -1, -1) if d else range(steps)
            for t in order:
                h_new, c_new = cell_step(kind, inp[t], h, c, w, d)
                if lengths is None:
                    h, c = h_new, c_new
                    ys[t] = h_new
                else:
                    valid = (lengths > t).unsqueeze(-1)
                    h = torch.where(valid, h_new, h)
                    if c is not None and c_new is not None:
                        c = torch.where(valid, c_new, c)
                    ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys) if steps else inp.new_zeros(0, inp.shape[1], h.shape[-1]))
            hs.append(h)
            if c is not None:
                cs.append(c)
        inp = torch.cat(outs, dim=-1) if dirs > 1 else outs[0]
    return inp, torch.stack(hs), torch.stack(cs) if cs else None
