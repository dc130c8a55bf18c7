"""Target `portable`: only what the ONNX specification guarantees, for runtimes edgernn does not know.

Padded batches are masked in plain ops (several runtimes, and onnx's own reference implementation, ignore the
``sequence_lens`` input of ONNX's recurrent ops), so `native` is taken only without lengths. The check on every
export: onnx's reference implementation (``onnx.reference``), which follows the specification, computes what
onnxruntime computes.
"""

from . import Target, register_target

TARGET = register_target(
    Target(
        name="portable",
        summary="any ONNX runtime: masking in plain ops, checked against onnx's reference implementation",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        check="portable",
    )
)
