"""Target `coreml`: Apple's Core ML (the MLProgram format) through onnxruntime's CoreML execution provider.

What it needs, from onnxruntime's own usability checker: every shape fixed, no control flow and no recurrent
ops, no comparison ops (Less) and no Gather (MLProgram has GatherND only), so padding is a float mask applied with
arithmetic and a constant-index Gather is written as Slice + Squeeze. The check on every export: one CoreML
MLProgram partition covering 100% of the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import Target, register_target
from .mobile import MobileProvider, mobile_report

if TYPE_CHECKING:
    from ..verify.check import TargetReport

PROVIDER = MobileProvider("CoreML MLProgram", "coreml_supported_mlprogram_ops.md", 5)

_NO_CONTROL_FLOW = "Core ML has no recurrent ops and no control flow (ONNX RNN/LSTM/GRU/Scan run on the CPU)"


@dataclass(frozen=True)
class CoremlTarget(Target):
    def structure_report(self, model: Any) -> TargetReport:
        """onnxruntime's mobile usability checker for CoreML MLProgram: one partition must cover every node."""
        return mobile_report(model, self.name, PROVIDER)


TARGET = register_target(
    CoremlTarget(
        name="coreml",
        summary="Apple Core ML (MLProgram): unroll or plain step, static batch (default 1), float-mask padding",
        strategies=("unroll", "step"),
        padding="float-mask",
        static_batch=True,
        default_batch=1,
        fused_step=False,
        gather_as_slice=True,
        check="coreml",
    ),
    why_not={"native": _NO_CONTROL_FLOW, "loop": _NO_CONTROL_FLOW},
)
