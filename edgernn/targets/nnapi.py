"""Target `nnapi`: Android's Neural Networks API through onnxruntime's NNAPI execution provider.

What it needs, from onnxruntime's own usability checker: every shape fixed (a symbolic dim keeps a node on the
CPU), no control flow and no recurrent ops (Scan, LSTM ... are not NNAPI ops), no comparison or select ops
(Less, Where), so padding is a float mask applied with arithmetic. The check on every export: the checker must
put the whole graph in one NNAPI partition (100% of the nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import Target, register_target
from .mobile import MobileProvider, mobile_report

if TYPE_CHECKING:
    from ..verify.check import TargetReport

PROVIDER = MobileProvider("NNAPI", "nnapi_supported_ops.md", 999)

_NO_CONTROL_FLOW = "NNAPI has no recurrent ops and no control flow (ONNX RNN/LSTM/GRU/Scan run on the CPU)"


@dataclass(frozen=True)
class NnapiTarget(Target):
    def structure_report(self, model: Any) -> TargetReport:
        """onnxruntime's mobile usability checker for NNAPI: one partition must cover every node."""
        return mobile_report(model, self.name, PROVIDER)


TARGET = register_target(
    NnapiTarget(
        name="nnapi",
        summary="Android NNAPI: unroll or plain step, static batch (default 1), padding as a float mask",
        strategies=("unroll", "step"),
        padding="float-mask",
        static_batch=True,
        default_batch=1,
        fused_step=False,
        check="nnapi",
    ),
    why_not={"native": _NO_CONTROL_FLOW, "loop": _NO_CONTROL_FLOW},
)
