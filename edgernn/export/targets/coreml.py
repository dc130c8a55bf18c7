"""Target `coreml`: Apple's Core ML (the MLProgram format) through onnxruntime's CoreML execution provider.

What it needs, from onnxruntime's own usability checker: every shape fixed, no control flow and no recurrent
ops, no comparison ops (Less) and no Gather (MLProgram has GatherND only), so padding is a float mask applied with
arithmetic and a constant-index Gather is written as Slice + Squeeze. The check on every export: one CoreML
MLProgram partition covering 100% of the nodes.
"""

from . import Target, register_target

_NO_CONTROL_FLOW = "Core ML has no recurrent ops and no control flow (ONNX RNN/LSTM/GRU/Scan run on the CPU)"

TARGET = register_target(
    Target(
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
