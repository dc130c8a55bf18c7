"""Direct tests of ``edgernn.optimize.quantize``'s small decisions, written for the mutants a sampled mutation run
of the module left alive (docs/mutation.md): each pins one decision the slower end-to-end tests pass through
without telling its branches apart."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgernn.errors import ConfigError, ParityError, TargetError
from edgernn.optimize import quantize as q


def test_where_the_golden_file_of_a_reduced_model_goes(tmp_path: Path) -> None:
    out, task, examples, manifest = tmp_path / "m.int8.onnx", object(), [object()], object()

    def where(golden, out=out, task=task, examples=examples, manifest=manifest, verify=True):  # type: ignore[no-untyped-def]
        return q._golden_target(golden, out, task, examples, manifest, verify)

    assert where(False) is None and where(None) is None
    assert where(True) == tmp_path / "m.int8.golden.npz"  # beside the model
    assert where(tmp_path / "elsewhere.npz") == tmp_path / "elsewhere.npz"  # where it was asked for
    assert where(str(tmp_path / "g.npz")) == tmp_path / "g.npz"
    with pytest.raises(ConfigError, match="give the model a path"):
        where(True, out=None)
    with pytest.raises(ConfigError, match="drop --no-verify"):
        where(True, verify=False)
    for missing in ({"task": None}, {"examples": None}, {"manifest": None}):
        with pytest.raises(ConfigError, match="records the task it is judged by"):
            where(tmp_path / "g.npz", **missing)


def _plain_graph(features: int = 3) -> bytes:
    """A graph another tool wrote: no manifest, no state; ``x`` (batch, time, features) -> Relu -> ``y``."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", features])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_calibration_feeds_of_a_file_without_manifest_are_the_sequences_themselves() -> None:
    """A file with no manifest (no states) is calibrated on whole sequences, one feed each, batch 1."""
    seqs = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    feeds = q.calibration_feeds(_plain_graph(), None, {"x": seqs}, None)
    assert [sorted(f) for f in feeds] == [["x"], ["x"]]
    for feed, seq in zip(feeds, seqs, strict=True):
        np.testing.assert_array_equal(feed["x"], seq[None])
    with pytest.raises(ConfigError, match="no array 'x'"):
        q.calibration_feeds(_plain_graph(), None, {"frames": seqs}, None)


def test_the_task_metric_is_judged_only_when_both_models_give_a_finite_one() -> None:
    accuracy, mse = SimpleNamespace(metric="accuracy"), SimpleNamespace(metric="mse")
    for fp32, low in ((0.9, math.nan), (math.nan, 0.9), (math.inf, 0.9), (math.nan, math.nan)):
        with pytest.raises(ParityError, match="not a finite number"):
            q._metric_verdict(accuracy, fp32, low, 8, 0.01, "int8")
    got = q._metric_verdict(accuracy, 0.9, 0.9, 8, 0.01, "int8")
    assert got == {"name": "accuracy", "fp32": 0.9, "reduced": 0.9, "drop": 0.0, "budget": 0.01, "examples": 8}
    with pytest.raises(q._OverBudget, match=r"loses 2\.22% of the task's accuracy"):
        q._metric_verdict(accuracy, 0.9, 0.88, 8, 0.01, "int8")
    assert q._metric_verdict(mse, 0.5, 0.504, 8, 0.01, "int8")["drop"] == pytest.approx(0.008)  # mse: higher is worse
    assert q._metric_verdict(mse, 0.5, 0.45, 8, 0.01, "int8")["drop"] == pytest.approx(-0.1)


def test_the_speed_of_a_reduced_file_is_timed_at_its_own_length_and_batch() -> None:
    def manifest(**kw: object) -> SimpleNamespace:
        return SimpleNamespace(**{"seq_len": None, "chunk": None, "states": [], "batch": None, **kw})

    assert q._timed_shape(None) == (100, 1)
    assert q._timed_shape(manifest()) == (100, 1)  # dynamic length: 100 steps
    assert q._timed_shape(manifest(seq_len=12, batch=4)) == (12, 4)  # unroll at 12, fixed batch 4
    assert q._timed_shape(manifest(chunk=8, states=["h"])) == (96, 1)  # whole chunks of a stream: 12 x 8
    assert q._timed_shape(manifest(chunk=128, states=["h"])) == (128, 1)  # at least one chunk
    assert q._timed_shape(manifest(chunk=8)) == (100, 1)  # no states: the chunk says nothing


def test_drift_on_the_users_data_is_the_largest_difference_over_the_largest_output() -> None:
    """Two files that differ by a known amount: y = x and y = 1.1 x on x = [1, -2] give a difference of 0.2 over
    a largest output of 2: 10%."""
    from onnx import TensorProto, helper, numpy_helper

    from edgernn.runtime.providers import make_session

    def scaled(k: float) -> bytes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
        k_ = numpy_helper.from_array(np.array(k, np.float32), "k")
        graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x], [y], [k_])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()

    a, _ = make_session(scaled(1.0), "cpu", threads=1)
    b, _ = make_session(scaled(1.1), "cpu", threads=1)
    got = q._data_drift(a, b, lambda run: run, {"x": np.array([1.0, -2.0], np.float32)})
    assert got["scale"] == 2.0
    assert got["max_abs"] == pytest.approx(0.2, rel=1e-6) and got["relative"] == pytest.approx(0.1, rel=1e-6)


def test_the_storage_report_compares_sizes_and_counts_reduced_weights() -> None:
    """A file with a 4x8 float weight, and one storing it as int8 (plus a scalar scale, not a weight): the sizes'
    ratio is fp32 bytes over reduced bytes, and every weight element is stored reduced; an fp16 file of it holds
    no fp16 weight, so none is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(weight: np.ndarray, extra: list[onnx.TensorProto]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(weight, "w"), *extra]
        graph = helper.make_graph(nodes, "g", [x], [y], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    fp32 = model(np.ones((4, 8), np.float32), [])
    int8 = model(np.ones((4, 8), np.int8), [numpy_helper.from_array(np.array(0.1, np.float32), "scale")])
    reduced = int8.SerializeToString()
    got = q._storage(fp32, reduced, "int8")
    size = len(fp32.SerializeToString())
    assert got == {"fp32_bytes": size, "bytes": len(reduced), "size_ratio": size / len(reduced), "weights_reduced": 1.0}
    assert got["size_ratio"] > 1  # 128 bytes of weights became 32
    assert q._storage(fp32, reduced, "fp16")["weights_reduced"] == 0.0


def test_a_reduced_file_onnxruntime_cannot_load_is_refused_naming_its_error() -> None:
    """The child process's last line of error (onnxruntime's own message), not a line of its traceback."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    with pytest.raises(TargetError, match="cannot load or run the reduced model at every optimisation level") as e:
        q._loads_at_every_level(bad)
    said = str(e.value).split("level: ", 1)[1]
    assert "NoSuchOp" in said and not said.lstrip().startswith("File "), said
    q._loads_at_every_level(_plain_graph())  # and a file it can run passes
