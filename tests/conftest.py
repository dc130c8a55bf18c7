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


# The suite runs in worker processes (pytest-xdist: `-n auto --dist loadgroup` in pyproject.toml, one worker per
# core up to MAX_WORKERS). A worker takes a whole group at once: by default a group is one module, so its cached
# exports, sessions and module fixtures are made once, not once per worker. Modules that share something outside
# the process share a group and so run one after another: the local Ray clusters and servers (each takes both
# cores while it starts, and their overload and fault tests judge queues that another cluster would skew), and the
# emulated arm64 device (one root under ~/.cache/edgernn, built by whichever test needs it first). A test may name
# its own group (`pytest.mark.xdist_group`), e.g. one per engine of the engine matrix.
MAX_WORKERS = 4
SHARED_GROUPS = {
    "servers": {
        "test_batch_ray",
        "test_hostile_serve",
        "test_serve_ray",
        "test_serve_faults",
        "test_scale_out_docs",
        "test_serve_triton",
        "test_triton_server",
    },
    "arm64": {"test_arm64", "test_int8_arm64", "test_int8_device"},
}


# groups that take minutes, longest first (measured in a full run on 2 cores): a worker starts on them, so the run
# does not end with one worker on a long group while the others are idle
LONGEST_FIRST = (
    "servers",
    "test_readme",
    "engine-matrix-litert-gru",
    "engine-matrix-portable-gru",
    "arm64",
    "test_targets",
    "test_strategies",
    "test_engine_litert",
)


def group_of(module: str) -> str:
    """The xdist group of a test module's tests that name none: its shared group, or the module itself."""
    return next((g for g, modules in SHARED_GROUPS.items() if module in modules), module)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group_of(item.path.stem)))
    if hasattr(config, "workerinput"):  # a worker's collection: the groups in the order they are handed out

        def rank(item: pytest.Item) -> int:
            group = item.get_closest_marker("xdist_group").args[0]  # type: ignore[union-attr]
            return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

        items.sort(key=rank)  # stable: a group's tests keep their order
    _mark_quick_run(items)


def _mark_quick_run(items: list[pytest.Item]) -> None:
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
