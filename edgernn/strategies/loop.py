"""Strategy `loop`: an ONNX `Scan` per layer and direction around the cell, written in plain torch ops.

The cell is ``cell_ops.recurrent_step``; torch's scan higher-order operator carries it over time, and torch's
exporter turns each scan into an ONNX ``Scan`` whose trip count is the input's (dynamic) time axis. The input
projection x W^T of every step is one MatMul before the Scan, so the body holds only the recurrent part. Every
cell variant exports (peepholes, projection): the body is the same torch code the `unroll` and `step`
strategies trace.

Padded batches: a mask (T, B, 1) = t < lengths is scanned with the inputs; a padded step keeps the state and
outputs zero. The reverse direction scans the flipped inputs and mask (t = T-1 down to 0) and flips its outputs
back: for a sequence of length L the padded steps T-1..L come first and leave the state at h0, so the valid
steps L-1..0 run exactly as they would for the sequence alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import Capabilities, Stack, Strategy, register_strategy

if TYPE_CHECKING:
    from torch import Tensor

    from ..model.cells import CellKind
    from ..model.layout import LayerWeights


def _scan_direction(
    kind: CellKind,
    w: LayerWeights,
    d: int,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One direction of one layer as one Scan: x (T, B, I) -> y (T, B, P), h_T, c_T."""
    from torch._higher_order_ops.scan import scan_op

    from ..model.cell_ops import input_projection, keep, recurrent_step, recurrent_weights, zero_padding

    # torch's public ``scan`` compiles the body with dynamo, whose caches outlive the export: later scans in the
    # process recompile, duck-size weight dimensions against the batch and specialise the batch to a constant.
    # The operator itself (``scan_op``) is traced by the exporter directly. The weights go in as explicit
    # additional inputs, sliced here in the outer graph: a weight the body captured would be lifted as a
    # constant, which the scan tracer cannot copy.
    has_c = c0 is not None
    RT, rb, P, WrT = recurrent_weights(kind, w, d)
    extra = [t for t in (RT, rb, P, WrT) if t is not None]
    n_carry = 2 if has_c else 1
    n_xs = 1 if mask is None else 2

    def body(*args: Tensor) -> list[Tensor]:
        carry, xs, ws = args[:n_carry], args[n_carry : n_carry + n_xs], iter(args[n_carry + n_xs :])
        RT_ = next(ws)
        rb_ = next(ws) if rb is not None else None
        P_ = next(ws) if P is not None else None
        WrT_ = next(ws) if WrT is not None else None
        h = carry[0]
        c = carry[1] if has_c else None
        h_new, c_new = recurrent_step(kind, xs[0], h, c, RT_, rb_, P_, WrT_)
        if mask is not None:
            valid = xs[1]
            h_out = keep(valid, h_new, h)
            c_out = keep(valid, c_new, c) if c is not None and c_new is not None else None
            y = zero_padding(valid, h_new)
        else:
            h_out, c_out = h_new, c_new
            y = h_new.clone()  # scan forbids an output aliasing the carry
        return [h_out, c_out, y] if c_out is not None else [h_out, y]

    xs = [input_projection(kind, x, w, d)] + ([] if mask is None else [mask])
    if d:  # the reverse direction scans the flipped sequence and flips its outputs back
        xs = [t.flip(0) for t in xs]
    init = [h0, c0] if c0 is not None else [h0]
    out = scan_op(body, init, xs, additional_inputs=tuple(extra))
    y = out[n_carry]
    if d:
        y = y.flip(0)
    return y, out[0], (out[1] if has_c else None)


def scan_stack(
    kind: CellKind,
    weights: list[LayerWeights],
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Time-major x (T, B, I) through every layer and direction, one Scan each; T stays symbolic."""
    from ..model.cell_ops import over_stack, step_mask

    mask = None if lengths is None else step_mask(lengths, x.shape[0], x.device)

    def direction(
        w: LayerWeights, d: int, inp: Tensor, h: Tensor, c: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return _scan_direction(kind, w, d, inp, h, c, mask)

    return over_stack(weights, x, h0, c0, direction)


@register_strategy
class Loop(Strategy):
    name = "loop"
    summary = "ONNX Scan around the cell: dynamic length, every cell variant, runtimes without fused RNN ops"
    caps = Capabilities(
        dynamic_length=True,
        lengths=True,
        bidirectional=True,
        variants=frozenset({"peephole", "projection"}),
        streaming=False,
    )

    def run_stack(self, s: Stack) -> tuple[Tensor, Tensor, Tensor | None]:
        return scan_stack(*s.cell_args())
