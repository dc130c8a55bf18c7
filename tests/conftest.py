import os

import numpy as np
import pytest

# the CLI's progress lines go to stderr, which CliRunner's `output` mixes in: left off for the suite
# (EDGERNN_PROGRESS=0, as a user may set it); tests/test_progress.py turns them back on
os.environ.setdefault("EDGERNN_PROGRESS", "0")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def cuda_status() -> tuple[bool, str]:
    """Whether onnxruntime can run on CUDA here, and why not: the build must have the CUDA provider *and* a
    session must start on it (onnxruntime-gpu without a GPU or its libraries has the first, not the second)."""
    import onnx
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDAExecutionProvider (CPU-only build)"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    except Exception as e:
        return False, f"the CUDA provider is in this build but cannot start (no GPU or CUDA libraries): {e}"
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return False, "the CUDA provider is in this build but onnxruntime fell back to CPU (no GPU or CUDA libraries)"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The quick run, `pytest -m "not slow"`: every test once, at its first parameter set (a parametrised matrix
    keeps its first case), plus what is marked slow by hand left out; the full run (the README's test command,
    what CI runs) runs everything."""
    seen: set[str] = set()
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None:
            continue
        key = f"{item.path}::{item.originalname}"  # type: ignore[attr-defined]
        if key in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(key)
