"""How much faster can int8 make one recurrent step's product on this CPU? The ceiling behind the int8 targets.

    python benchmarks/int8_ceiling.py

A recurrent step at batch 1 multiplies the state h (1 x H) by R^T (H x G*H): G = 1 for an Elman RNN, 3 for a
GRU, 4 for an LSTM. This times that product alone on one onnxruntime CPU thread, as fp32 `MatMul` and as what
`quantize_dynamic` makes of it (`DynamicQuantizeLinear` of h, `MatMulInteger`, the rescale), in interleaved
rounds. Their ratio bounds what int8 can gain per step: the rest of a step (gates, masking, the loop) does not
get faster in int8, so a whole model's speedup is at most this ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic


def product(h: int, g: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((h, g * h)).astype(np.float32) / h, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, g * h])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "p", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def identity(h: int) -> onnx.ModelProto:
    """The cost of a call that does nothing: subtracted, it leaves the product's own time."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, h])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "i", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def main() -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    print("| H | gates | empty call | fp32 MatMul | int8 (dynamic) | product alone: fp32 / int8 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for h in (128, 256):
            for g, name in ((1, "RNN"), (3, "GRU"), (4, "LSTM")):
                src, dst, idn = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx", Path(tmp) / "i.onnx"
                onnx.save(product(h, g), src)
                onnx.save(identity(h), idn)
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
                files = (("empty", idn), ("fp32", src), ("int8", dst))
                sessions = {k: ort.InferenceSession(str(p), so) for k, p in files}
                feed = {"x": np.random.default_rng(1).standard_normal((1, h)).astype(np.float32)}
                times: dict[str, list[float]] = {k: [] for k in sessions}
                for _ in range(15):  # interleaved rounds: the machine's load falls on both alike
                    for k, s in sessions.items():
                        t0 = time.perf_counter()
                        for _ in range(500):
                            s.run(None, feed)
                        times[k].append((time.perf_counter() - t0) / 500)
                c, f, q = (statistics.median(times[k]) * 1e6 for k in ("empty", "fp32", "int8"))
                print(f"| {h} | {g} ({name}) | {c:.1f} us | {f:.1f} us | {q:.1f} us | {(f - c) / (q - c):.2f}x |")


if __name__ == "__main__":
    main()
