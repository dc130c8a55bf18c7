"""Target `nnapi`: Android's Neural Networks API through onnxruntime's NNAPI execution provider.

What it needs, from onnxruntime's own usability checker: every shape fixed (a symbolic dim keeps a node on the
CPU), no control flow and no recurrent ops (Scan, LSTM ... are not NNAPI ops), no comparison or select ops
(Less, Where), so padding is a float mask applied with arithmetic. The check on every export: the checker must
put the whole graph in one NNAPI partition (100% of the nodes).
"""

from . import Target, register_target

_NO_CONTROL_FLOW = "NNAPI has no recurrent ops and no control flow (ONNX RNN/LSTM/GRU/Scan run on the CPU)"

TARGET = register_target(
    Target(
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
