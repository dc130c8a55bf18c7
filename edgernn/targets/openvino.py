"""Target `openvino`: Intel's OpenVINO runtime, which reads ONNX files itself (``pip install openvino``).

OpenVINO ignores ONNX's ``sequence_lens`` (silently: a padded batch through `native` computes the padding as
data), so padded batches are masked in plain ops and `native` is taken only without a lengths input. Its CPU
plugin computes in bf16 on CPUs that have it unless told otherwise, so parity runs with the f32 precision hint.
The check on every export: the model compiles in OpenVINO and matches torch at the usual shapes, a padded batch
included.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    import numpy as np

    from ..verify.check import TargetReport
    from ..verify.parity import Runner


def openvino_runner(model: bytes, *, threads: int = 1) -> Runner:
    """OpenVINO's CPU plugin on the model, in fp32 (INFERENCE_PRECISION_HINT f32); a parity runner."""
    import numpy as np

    try:
        import openvino as ov
    except ImportError:
        raise TargetError(
            "the openvino target is checked with OpenVINO itself, which is not installed: "
            "pip install 'edgernn[openvino]'"
        ) from None
    core = ov.Core()
    try:
        compiled = core.compile_model(
            core.read_model(io.BytesIO(model).getvalue()),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)},
        )
    except RuntimeError as e:
        raise TargetError(f"OpenVINO cannot compile this model: {_ov_message(e)}") from None
    names = [o.get_any_name() for o in compiled.outputs]
    # every name of each input: a tensor can carry several (an fp16 file's input also names the Cast it feeds), and
    # get_any_name() may return another one than the graph input's, which dropped that input from the feed
    wanted = {n for i in compiled.inputs for n in i.get_names()}

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = compiled({k: v for k, v in feed.items() if k in wanted})
        return [np.asarray(result[n]) for n in names]

    return run


def _ov_message(e: BaseException) -> str:
    """OpenVINO's errors are pages of C++ locations; keep the lines that say what is wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return " ".join(lines)[:400] or type(e).__name__


@dataclass(frozen=True)
class OpenvinoTarget(Target):
    def structure_report(self, model: Any) -> TargetReport:
        """OpenVINO has no verdict on the graph apart from compiling it, which ``runners`` does."""
        from ..verify.check import TargetReport

        return TargetReport(self.name, True, "OpenVINO compiles the model (fp32 precision hint)")

    def runners(self, model: Any) -> dict[str, Runner]:
        """OpenVINO's CPU plugin, compiled with the fp32 precision hint."""
        from ..verify.check import as_bytes

        return {"openvino:cpu": openvino_runner(as_bytes(model))}


TARGET = register_target(
    OpenvinoTarget(
        name="openvino",
        summary="Intel OpenVINO: every strategy (native only without lengths), compiled and checked in fp32",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        precision_hint="f32",
        check="openvino",
        needs="openvino",
    )
)
