"""Target `portable`: only what the ONNX specification guarantees, for runtimes edgernn does not know.

Padded batches are masked in plain ops (several runtimes, and onnx's own reference implementation, ignore the
``sequence_lens`` input of ONNX's recurrent ops), so `native` is taken only without lengths. The check on every
export: onnx's reference implementation (``onnx.reference``), which follows the specification, computes what
onnxruntime computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    import numpy as np

    from ...verify.check import TargetReport
    from ...verify.parity import Runner


def reference_runner(model: Any) -> Runner:
    """onnx's reference implementation (``onnx.reference.ReferenceEvaluator``), which follows the spec."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from ...verify.check import first_line

    try:
        evaluator = ReferenceEvaluator(model)
    except Exception as e:
        raise TargetError(f"onnx's reference implementation cannot load this model: {first_line(e)}") from None
    wanted = set(evaluator.input_names)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in evaluator.run(None, {k: v for k, v in feed.items() if k in wanted})]

    return run


@dataclass(frozen=True)
class PortableTarget(Target):
    def structure_report(self, model: Any) -> TargetReport:
        """onnx's checker, in full (strict shape inference included)."""
        import onnx

        from ...verify.check import TargetReport, as_proto, first_line

        try:
            onnx.checker.check_model(as_proto(model), full_check=True)
        except Exception as e:
            return TargetReport(self.name, False, f"onnx checker (full): {first_line(e)}")
        return TargetReport(self.name, True, "onnx checker (full) and strict shape inference pass")

    def runners(self, model: Any) -> dict[str, Runner]:
        """onnx's reference implementation, which follows the specification."""
        from ...verify.check import as_proto

        return {"onnx.reference": reference_runner(as_proto(model))}


TARGET = register_target(
    PortableTarget(
        name="portable",
        summary="any ONNX runtime: masking in plain ops, checked against onnx's reference implementation",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        check="portable",
    )
)
