"""The recurrence in plain torch ops, in ONNX weight layout and gate order.

This is what the `loop`, `unroll` and `step` strategies trace (so the ONNX graph holds only MatMul, Add,
Sigmoid, Tanh, Relu, Mul, Where ...), and the eager body of the `native` custom op. The equations are ONNX's
(operator spec of LSTM, GRU with linear_before_reset=1, RNN), which equal torch's after the gate permutation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .cells import CellKind
from .layout import LayerWeights


def folds_recurrent_bias(kind: CellKind) -> bool:
    """LSTM and Elman RNN add the recurrent bias Rb to the input's Wb: it moves out of the loop, into the input
    projection computed once for every step. GRU's candidate gate multiplies Rb_h by r, so GRU keeps Rb inside."""
    return kind.torch_class != "GRU"


def input_bias(kind: CellKind, w: LayerWeights, d: int) -> Tensor:
    """The bias of direction ``d``'s input projection: Wb, plus Rb where it folds (``folds_recurrent_bias``)."""
    gh = w.W.shape[1]
    return w.B[d, :gh] + w.B[d, gh:] if folds_recurrent_bias(kind) else w.B[d, :gh]


def input_projection(kind: CellKind, x: Tensor, w: LayerWeights, d: int) -> Tensor:
    """x @ W^T + Wb (+ Rb where it folds) for direction ``d``: it does not depend on the state, so callers compute
    it for every step at once (one large MatMul instead of one per step) and pass slices of it to
    ``recurrent_step``, with ``recurrent_weights`` of the same ``kind``."""
    bias = input_bias(kind, w, d)
    if x.dim() == 2:  # one step (B, I): one Gemm
        return torch.addmm(bias, x, w.W[d].T)
    return x @ w.W[d].T + bias


def recurrent_weights(
    kind: CellKind, w: LayerWeights, d: int
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """What ``recurrent_step`` needs of direction ``d``, taken out once per sequence rather than per step (an
    unrolled trace pays for every op): R transposed, the R bias (None where ``input_projection`` holds it),
    peepholes, projection transposed."""
    return (
        w.R[d].T,
        None if folds_recurrent_bias(kind) else w.B[d, w.R.shape[1] :],
        w.P[d] if w.P is not None else None,
        w.Wr[d].T if w.Wr is not None else None,
    )


def _gates(t: Tensor, n: int, hs: int) -> list[Tensor]:
    # slices, not torch.split: ONNX's Split changed at opset 18 and onnx's version converter cannot take it back
    # to the lower opsets the strategies support
    return [t[:, g * hs : (g + 1) * hs] for g in range(n)]


def recurrent_step(
    kind: CellKind,
    xw: Tensor,
    h: Tensor,
    c: Tensor | None,
    RT: Tensor,
    rb: Tensor | None,
    P: Tensor | None = None,
    WrT: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One step from the input projection ``xw`` (B, G*H): h (B, P), c (B, H) -> h, c.

    RT (P, G*H) is R transposed and rb (G*H,) its bias (None for the cells whose ``input_projection`` holds it),
    P (3*H,) the peepholes in ONNX order p_i, p_o, p_f, WrT (H, P) the projection transposed (see
    ``recurrent_weights``). Written for few ONNX nodes: a loop or unrolled graph pays onnxruntime's dispatch cost
    for every node at every step (just under 1 us each on one core), often more than the arithmetic.
    """
    gh = RT.shape[1]
    if kind.torch_class == "GRU":
        if rb is None:
            raise ValueError("a GRU step needs its recurrent bias: r scales R_h h + Rb_h")
        hs = gh // 3
        hr = torch.addmm(rb, h, RT)  # h R^T + Rb as one op (ONNX Gemm)
        zr = torch.sigmoid(xw[:, : 2 * hs] + hr[:, : 2 * hs])  # z and r squashed together
        z, r = zr[:, :hs], zr[:, hs:]
        n = torch.tanh(xw[:, 2 * hs :] + r * hr[:, 2 * hs :])  # linear_before_reset: r scales (R_h h + Rb_h)
        return n + z * (h - n), None  # (1 - z) n + z h
    # LSTM, RNN: with both biases in the input projection, x W^T + Wb + Rb + h R^T is one Gemm
    pre = torch.addmm(xw, h, RT) if rb is None else xw + torch.addmm(rb, h, RT)
    if kind.torch_class == "RNN":
        return (torch.tanh(pre) if kind.nonlinearity == "tanh" else torch.relu(pre)), None
    if c is None:
        raise ValueError("an LSTM step needs the cell state c")
    hs = gh // 4
    if P is None:  # i, o, f are contiguous (ONNX order i o f c): one Sigmoid
        ifo = torch.sigmoid(pre[:, : 3 * hs])
        s_i, s_o, s_f = ifo[:, :hs], ifo[:, hs : 2 * hs], ifo[:, 2 * hs :]
        c_new = s_f * c + s_i * torch.tanh(pre[:, 3 * hs :])
        h_new = s_o * torch.tanh(c_new)
    else:
        a_i, a_o, a_f, a_c = _gates(pre, 4, hs)
        p_i, p_o, p_f = P[:hs], P[hs : 2 * hs], P[2 * hs :]
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
        c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_c)
        a_o = a_o + p_o * c_new  # the output gate's peephole sees the new cell state
        h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
    if WrT is not None:
        h_new = h_new @ WrT
    return h_new, c_new


def lone_step(
    kind: CellKind, x: Tensor, h: Tensor, c: Tensor | None, w: LayerWeights, d: int
) -> tuple[Tensor, Tensor | None]:
    """One step of direction ``d`` that shares no input projection with other steps (a streaming chunk of 1),
    in the fewest Gemms the cell allows. An LSTM or Elman RNN reads h only through h R^T, so its whole
    pre-activation is one Gemm over the joined input, [x, h] @ [W, R]^T + Wb + Rb: ``recurrent_step`` takes
    [x, h] in place of h, [W, R]^T as its R^T and the summed biases as its input projection. One Gemm is cheaper
    than two (one dispatch, no accumulator copy, one longer inner product). A GRU's r scales R_h h on its own, so
    it keeps ``cell_step``'s two."""
    if not folds_recurrent_bias(kind):
        return cell_step(kind, x, h, c, w, d)
    _, _, P, WrT = recurrent_weights(kind, w, d)
    WRT = torch.cat([w.W[d], w.R[d]], dim=1).T
    return recurrent_step(kind, input_bias(kind, w, d), torch.cat([x, h], dim=1), c, WRT, None, P, WrT)


def cell_step(
    kind: CellKind, x: Tensor, h: Tensor, c: Tensor | None, w: LayerWeights, d: int
) -> tuple[Tensor, Tensor | None]:
    """One step of direction ``d``: x (B, I), h (B, P), c (B, H) -> h, c."""
    return recurrent_step(kind, input_projection(kind, x, w, d), h, c, *recurrent_weights(kind, w, d))


Direction = Callable[[LayerWeights, int, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None]]


def step_mask(lengths: Tensor, steps: int, device: torch.device) -> Tensor:
    """(T, B, 1): step t of sequence b is real, not padding.

    ``lengths`` is either one integer per sequence (B,), giving booleans t < lengths[b] (ONNX ``Less``), or a
    float mask (B, T) of ones and zeros made on the host, for targets whose runtimes have no comparison or
    select ops (NNAPI, CoreML): it is only transposed, and applied with arithmetic (see ``keep``).
    """
    if lengths.is_floating_point():
        if lengths.dim() != 2:
            raise ValueError(f"a step mask must be (batch, time); got shape {tuple(lengths.shape)}")
        return lengths.transpose(0, 1).unsqueeze(-1)
    t_idx = torch.arange(steps, device=device, dtype=lengths.dtype)
    return (t_idx.unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)


def keep(valid: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the step is real, ``old`` where it is padding. A float mask of ones and zeros selects
    exactly (1*new + 0*old is new, bit for bit) with Mul/Sub/Add, which every runtime can run."""
    if valid.dtype == torch.bool:
        return torch.where(valid, new, old)
    return valid * new + (1.0 - valid) * old


def zero_padding(valid: Tensor, new: Tensor) -> Tensor:
    """``new`` where the step is real, zero where it is padding."""
    if valid.dtype == torch.bool:
        return torch.where(valid, new, 0.0)
    return valid * new


def over_stack(
    weights: list[LayerWeights], x: Tensor, h0: Tensor, c0: Tensor | None, direction: Direction
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every layer and direction in torch's order: ``direction(w, d, input, h0, c0) -> (y, h_T, c_T)`` runs one
    of them over time-major input; the directions' outputs are concatenated as the next layer's input."""
    dirs = weights[0].W.shape[0]
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    inp = x
    for layer, w in enumerate(weights):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            y, h, c = direction(w, d, inp, h0[k], c0[k] if c0 is not None else None)
            outs.append(y)
            hs.append(h)
            if c is not None:
                cs.append(c)
        inp = torch.cat(outs, dim=-1) if dirs > 1 else outs[0]
    return inp, torch.stack(hs), torch.stack(cs) if cs else None


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
    valid: list[Tensor] | None = None
    if lengths is not None:
        mask = step_mask(lengths, steps, x.device)
        valid = [mask[t] for t in range(steps)]  # once for all layers: an unrolled trace pays for every op

    def direction(
        w: LayerWeights, d: int, inp: Tensor, h: Tensor, c: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        ys: list[Tensor] = [h] * steps
        if steps > 1:
            xw = input_projection(kind, inp, w, d)
            rw = recurrent_weights(kind, w, d)
        for t in range(steps - 1, -1, -1) if d else range(steps):
            if steps > 1:
                h_new, c_new = recurrent_step(kind, xw[t], h, c, *rw)
            else:  # the only step taken by Squeeze (a view), not Gather (a copy)
                h_new, c_new = lone_step(kind, inp.squeeze(0), h, c, w, d)
            if valid is None:
                h, c = h_new, c_new
                ys[t] = h_new
            else:
                v = valid[t]
                h = keep(v, h_new, h)
                if c is not None and c_new is not None:
                    c = keep(v, c_new, c)
                ys[t] = zero_padding(v, h_new)
        return (torch.stack(ys) if steps else inp.new_zeros(0, inp.shape[1], h.shape[-1])), h, c

    return over_stack(weights, x, h0, c0, direction)
