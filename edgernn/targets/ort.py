"""Target `ort`: onnxruntime on a desktop, server or phone CPU/GPU (the default). Every strategy; padded batches as
the strategy emits them (ONNX's sequence_lens for `native`, which onnxruntime honours)."""

from . import Target, register_target

TARGET = register_target(
    Target(
        name="ort",
        summary="onnxruntime (CPU, CUDA, TensorRT): every strategy, dynamic batch",
        strategies=("native", "loop", "unroll", "step"),
        padding="sequence_lens",
        check="ort",
    )
)
