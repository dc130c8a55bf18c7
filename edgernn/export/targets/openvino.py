"""Target `openvino`: Intel's OpenVINO runtime, which reads ONNX files itself (``pip install openvino``).

OpenVINO ignores ONNX's ``sequence_lens`` (silently: a padded batch through `native` computes the padding as
data), so padded batches are masked in plain ops and `native` is taken only without a lengths input. Its CPU
plugin computes in bf16 on CPUs that have it unless told otherwise, so parity runs with the f32 precision hint.
The check on every export: the model compiles in OpenVINO and matches torch at the usual shapes, a padded batch
included.
"""

from . import Target, register_target

TARGET = register_target(
    Target(
        name="openvino",
        summary="Intel OpenVINO: every strategy (native only without lengths), compiled and checked in fp32",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        precision_hint="f32",
        check="openvino",
        needs="openvino",
    )
)
