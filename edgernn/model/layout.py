"""torch -> ONNX weight layout, in one place.

ONNX's recurrent ops (and every edgernn strategy, which all compute in this layout) take per layer:

    W (D, G*H, I)   input weights,      gate blocks in ONNX order
    R (D, G*H, P)   recurrent weights,  gate blocks in ONNX order (P = proj_size or H)
    B (D, 2*G*H)    [W biases ; R biases]
    Pp (D, 3*H)     LSTM peepholes p_i, p_o, p_f (ONNX order), when the layer has them
    Wr (D, P, H)    LSTM projection (not an ONNX op input; used by the loop/unroll/step strategies)

with D directions (forward, then reverse) and G gates. Gate orders: torch LSTM i,f,g,o -> ONNX i,o,f,c;
torch GRU r,z,n -> ONNX z,r,h (with linear_before_reset=1); RNN has one gate (see ``edgernn.model.cells``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerWeights:
    W: Tensor
    R: Tensor
    B: Tensor
    P: Tensor | None  # peepholes (i, o, f), LSTM only
    Wr: Tensor | None  # projection, LSTM only


def onnx_weights(layer: torch.nn.Module, *, detach: bool = True) -> list[LayerWeights]:
    """The weights of an edgernn recurrent layer in ONNX layout, one entry per stacked layer.

    Detached copies for export; ``detach=False`` keeps them in the autograd graph, for the eager forward of
    variants torch has no fused kernel for (peepholes), which must train.
    """
    kind = layer.cell_kind  # type: ignore[attr-defined]
    perm = torch.as_tensor(kind.gate_permutation(layer.hidden_size))  # type: ignore[attr-defined]
    out = []
    for k in range(layer.num_layers):  # type: ignore[attr-defined]
        ws, rs, bs, ps, wrs = [], [], [], [], []
        for d in range(layer.num_directions):  # type: ignore[attr-defined]
            w = {n: t.detach() if detach else t for n, t in layer.layer_weights(k, d).items()}  # type: ignore[attr-defined]
            ws.append(w["w_ih"][perm])
            rs.append(w["w_hh"][perm])
            bs.append(torch.cat([w["b_ih"][perm], w["b_hh"][perm]]))
            if "p_i" in w:
                ps.append(torch.cat([w["p_i"], w["p_o"], w["p_f"]]))
            if "w_hr" in w:
                wrs.append(w["w_hr"])
        out.append(
            LayerWeights(
                W=torch.stack(ws).contiguous(),
                R=torch.stack(rs).contiguous(),
                B=torch.stack(bs).contiguous(),
                P=torch.stack(ps).contiguous() if ps else None,
                Wr=torch.stack(wrs).contiguous() if wrs else None,
            )
        )
    return out
