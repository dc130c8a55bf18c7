"""Target `portable`: only what the ONNX specification guarantees, for runtimes edgernn does not know.

Padded batches are masked in plain ops (several runtimes, and onnx's own reference implementation, ignore the
``sequence_lens`` input of ONNX's recurrent ops), so `native` is taken only without lengths. The file is written in
the form engines that bind concrete shapes load (``edgernn.rewrite.travel``). The check on every export: onnx's
reference implementation (``onnx.reference``), which follows the specification, and every edge engine installed
here that takes the graph's form (OpenVINO, tract, MNN, LiteRT) compute what torch computes. An engine is left out
only for a graph form its own target refuses (MNN: no Scan; LiteRT: no Scan and no ONNX recurrent op, so `unroll`
and plain `step` only); the check's summary names the engines that ran and those left out, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    import numpy as np

    from ..verify.check import TargetReport
    from ..verify.parity import Runner


def reference_runner(model: Any) -> Runner:
    """onnx's reference implementation (``onnx.reference.ReferenceEvaluator``), which follows the spec."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from ..verify.check import first_line

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
    def graph_form(self, proto: Any) -> Any:
        """The bound-shape form (tract), and bidirectional final states read from the output sequence (MNN)."""
        from ..rewrite.ncnn_forms import final_state_from_sequence

        return final_state_from_sequence(super().graph_form(proto))

    def reduced_graph_form(self, proto: Any) -> Any:
        """The bound-shape form (tract), and an fp16 zero state filled in fp32 and cast (MNN:
        ``edgernn.rewrite.travel.fp32_fills``)."""
        from ..rewrite.travel import fp32_fills

        return fp32_fills(super().reduced_graph_form(proto))

    def structure_report(self, model: Any) -> TargetReport:
        """onnx's checker, in full (strict shape inference included)."""
        import onnx

        from ..verify.check import TargetReport, as_proto, first_line

        try:
            onnx.checker.check_model(as_proto(model), full_check=True)
        except Exception as e:
            return TargetReport(self.name, False, f"onnx checker (full): {first_line(e)}")
        ran, left_out = engines_for(model)
        engines = "; engines: onnx.reference" + "".join(f", {n}" for n in ran)
        if left_out:
            engines += "; not this form: " + ", ".join(f"{n} ({why})" for n, why in left_out.items())
        return TargetReport(self.name, True, "onnx checker (full) and strict shape inference pass" + engines)

    def runners(self, model: Any) -> dict[str, Runner]:
        """onnx's reference implementation, which follows the specification, and every other engine installed
        here that takes the graph's form (``engine_runners``): portable means the file runs on each of them."""
        from ..verify.check import as_proto

        return {"onnx.reference": reference_runner(as_proto(model)), **engine_runners(model)}


# engines the portable check runs where installed: (runner name, module that must be importable)
ENGINES = (("openvino:cpu", "openvino"), ("tract", "tract"), ("mnn", "MNN"), ("litert", "onnx2tf"))
RECURRENT_OPS = ("RNN", "LSTM", "GRU")


def engines_for(model: Any) -> tuple[list[str], dict[str, str]]:
    """The edge engines installed here that the portable check runs on ``model``, and those installed but left
    out for this graph's form, with the reason (their own target refuses that form): MNN has no Scan (`loop`);
    onnx2tf fails on Scan and fixes a recurrent op's dynamic time axis at 1, so LiteRT is run on `unroll` and the
    plain `step` only; ncnn has no batch axis and no comparison or select layer, so it takes none of portable's
    forms (its own target's form: batch 1, a float mask). Engines that are not installed are in neither."""
    import importlib.util

    from ..verify.check import as_proto
    from .litert import litert_available

    ops = {n.op_type for n in as_proto(model).graph.node}
    scan = bool(ops & {"Scan", "Loop"})
    recurrent = sorted(ops & set(RECURRENT_OPS))
    refuses = {
        "mnn": "MNN's converter has no Scan" if scan else None,
        "litert": (
            "onnx2tf fails on Scan"
            if scan
            else f"onnx2tf fixes the time axis of ONNX's {'/'.join(recurrent)} at 1"
            if recurrent
            else None
        ),
    }
    installed = [
        name
        for name, module in ENGINES
        if (litert_available() if name == "litert" else importlib.util.find_spec(module) is not None)
    ]
    if all(importlib.util.find_spec(m) is not None for m in ("ncnn", "pnnx")):
        installed.append("ncnn")
        refuses["ncnn"] = "no batch axis, and pnnx cannot lower Less/Where: the ncnn target's own form only"
    ran = [n for n in installed if refuses.get(n) is None]
    return ran, {n: str(refuses[n]) for n in installed if refuses.get(n) is not None}


def engine_runners(model: Any) -> dict[str, Runner]:
    """A parity runner for each edge engine installed here whose target takes this graph's form
    (``engines_for``): OpenVINO and tract (every strategy), MNN (not `loop`), LiteRT (`unroll` and plain `step`,
    the portable file itself converted by the litert target's onnx2tf child process). An engine that is not
    installed is left out (the export's report names the runners that ran); one that is installed and refuses
    the file raises TargetError."""
    from ..verify.check import as_bytes

    ran, _ = engines_for(model)
    out: dict[str, Runner] = {}
    if "openvino:cpu" in ran:
        from .openvino import openvino_runner

        out["openvino:cpu"] = openvino_runner(as_bytes(model))
    if "tract" in ran:
        from .tract import tract_runner

        out["tract"] = tract_runner(model)
    if "mnn" in ran:
        from .mnn import mnn_runner

        out["mnn"] = mnn_runner(as_bytes(model))
    if "litert" in ran:
        from .litert import litert_runner

        out["litert"] = litert_runner(as_bytes(model))
    return out


TARGET = register_target(
    PortableTarget(
        name="portable",
        summary="any ONNX runtime: masking in plain ops, checked on onnx.reference and every engine installed",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        check="portable",
        bound_shapes=True,
        int8_products="not every engine runs them (MNN returns NaN from a zero state, ncnn has no such layer, LiteRT "
        "needs Select TensorFlow ops)",
    )
)
