"""Streams held to exact references where a wrong line in edgernn/runtime/stream.py would go unnoticed otherwise:
each case below was written for a change to the module that the other stream tests let through (see
docs/mutation.md). The models are small graphs whose outputs are known by hand (running sums of the frames), so
the references are exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgernn.errors import InputError, ModelFormatError
from edgernn.manifest import MANIFEST_KEY, Manifest, StateSpec, TensorSpec
from edgernn.runtime.stream import StreamingModel

OPSET = 17
FEAT = 4


def summing_model_with_a_total(features: int = FEAT) -> bytes:
    """A stream that sums its frames, s_out = s_in + x[:, 0] and y = s_out (batch, features), with a second output
    ``total``, the sum of every value of the state: a scalar, so it has no batch axis to split by stream."""
    F = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["x", "axis1"], ["x0"]),
            helper.make_node("Add", ["s_in", "x0"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y"]),
            helper.make_node("ReduceSum", ["s_out"], ["total"], keepdims=0),
        ],
        "summing_with_total",
        [
            helper.make_tensor_value_info("x", F, ["batch", 1, features]),
            helper.make_tensor_value_info("s_in", F, ["batch", features]),
        ],
        [
            helper.make_tensor_value_info("y", F, ["batch", features]),
            helper.make_tensor_value_info("total", F, []),
            helper.make_tensor_value_info("s_out", F, ["batch", features]),
        ],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m = Manifest(
        strategy="step",
        cell=None,
        num_layers=1,
        hidden_size=features,
        bidirectional=False,
        opset=OPSET,
        inputs=[
            TensorSpec("x", "float32", ["batch", 1, features]),
            TensorSpec("s_in", "float32", ["batch", features], role="state"),
        ],
        outputs=[
            TensorSpec("y", "float32", ["batch", features]),
            TensorSpec("total", "float32", []),
            TensorSpec("s_out", "float32", ["batch", features], role="state"),
        ],
        states=[StateSpec("s_in", "s_out", ["batch", features])],
        chunk=1,
    )
    helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def frames(n: int, seed: int) -> np.ndarray:
    # whole numbers: every running sum is exact in float32
    return np.random.default_rng(seed).integers(-8, 9, (n, FEAT)).astype(np.float32)


def test_an_output_without_a_batch_axis_is_refused_by_batched_calls_before_any_state_moves() -> None:
    """A scalar output cannot be split by stream: step_many, step_many_all and group refuse the model (exit 4's
    ModelFormatError, naming the output) before running, and each stream alone still sums its own frames."""
    sm = StreamingModel(summing_model_with_a_total())
    assert [o.name for o in sm.outputs] == ["y", "total"]
    xa, xb = frames(3, seed=1), frames(3, seed=2)
    a, b = sm.stream(), sm.stream()
    np.testing.assert_array_equal(a.step(xa[0]), xa[0])  # (features,): the batch axis dropped
    np.testing.assert_array_equal(b.step(xb[0]), xb[0])
    with pytest.raises(ModelFormatError, match="cannot split output 'total' by stream"):
        sm.step_many([a, b], [xa[1], xb[1]])
    with pytest.raises(ModelFormatError, match="cannot split output 'total' by stream"):
        sm.step_many_all([a, b], [xa[1], xb[1]])
    with pytest.raises(ModelFormatError, match="cannot split output 'total' by stream"):
        sm.group(2)
    assert a.steps == b.steps == 1  # nothing ran
    np.testing.assert_array_equal(a.state["s_in"], xa[:1].sum(0)[None])
    np.testing.assert_array_equal(b.state["s_in"], xb[:1].sum(0)[None])
    for t in (1, 2):  # each alone: the running sums and their totals, exactly
        out = a.step_all(xa[t])
        np.testing.assert_array_equal(out["y"], xa[: t + 1].sum(0))
        assert out["total"] == xa[: t + 1].sum()
        np.testing.assert_array_equal(b.step(xb[t]), xb[: t + 1].sum(0))


def test_step_all_carries_the_state_from_call_to_call_and_mixes_with_step() -> None:
    """Every output of every step, through step_all alone (first the plain run, then the bound buffers whose
    state inputs and outputs swap each call) and then alternating with step: the running sums, exactly."""
    sm = StreamingModel(summing_model_with_a_total())
    x = frames(9, seed=3)
    s = sm.stream()
    for t in range(5):
        out = s.step_all(x[t])
        np.testing.assert_array_equal(out["y"], x[: t + 1].sum(0))
        assert out["total"] == x[: t + 1].sum()
        np.testing.assert_array_equal(s.state["s_in"], x[: t + 1].sum(0)[None])
    for t in range(5, 9):
        got = s.step(x[t]) if t % 2 else s.step_all(x[t])["y"]
        np.testing.assert_array_equal(got, x[: t + 1].sum(0))
    assert s.steps == 9


def summing_token_model(chunk: int = 3) -> bytes:
    """A token stream in chunks of ``chunk`` ids, x (batch, chunk) int64 with no feature axis (layout 'bt'):
    s_out = s_in + the sum of the chunk's ids, y = s_out (batch, 1), a last-step readout."""
    F = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=F),
            helper.make_node("ReduceSum", ["xf", "axis1"], ["xs"], keepdims=1),
            helper.make_node("Add", ["s_in", "xs"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y"]),
        ],
        "summing_tokens",
        [
            helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", chunk]),
            helper.make_tensor_value_info("s_in", F, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", F, ["batch", 1]), helper.make_tensor_value_info("s_out", F, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m = Manifest(
        strategy="step",
        cell=None,
        num_layers=1,
        hidden_size=1,
        bidirectional=False,
        opset=OPSET,
        inputs=[
            TensorSpec("x", "int64", ["batch", chunk]),
            TensorSpec("s_in", "float32", ["batch", 1], role="state"),
        ],
        outputs=[
            TensorSpec("y", "float32", ["batch", 1]),
            TensorSpec("s_out", "float32", ["batch", 1], role="state"),
        ],
        states=[StateSpec("s_in", "s_out", ["batch", 1])],
        chunk=chunk,
    )
    helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_token_stream_in_fixed_chunks_has_no_feature_size() -> None:
    """x (batch, 3) with layout 'bt': its last axis is time, so a frame is one id and the model has no feature
    size (what `edgernn run` shows and checks stdin's frames against); chunks of 3 ids give the running sums."""
    sm = StreamingModel(summing_token_model(3), layout="bt")
    assert sm.chunk == 3 and sm.axes.time == 1
    assert sm.features is None
    ids = np.random.default_rng(4).integers(0, 50, 12)
    s = sm.stream()
    got = [s.step(ids[i : i + 3]) for i in range(0, 12, 3)]
    np.testing.assert_array_equal(np.concatenate(got), np.cumsum(ids.reshape(4, 3).sum(1)))


def test_set_state_counts_the_values_that_are_not_finite_and_changes_nothing() -> None:
    """set_state refuses a state with NaN, inf or a float64 beyond float32's range, saying how many values are
    bad (counted after the cast to float32), and the stream goes on from the state it had."""
    sm = StreamingModel(summing_model_with_a_total())
    x = frames(2, seed=5)
    s = sm.stream()
    s.step(x[0])
    with pytest.raises(InputError, match=r"state 's_in' has 3 value\(s\) that are not finite as float32"):
        s.set_state({"s_in": np.array([[np.nan, 1.0, np.inf, 1e39]])})
    with pytest.raises(InputError, match=r"state 's_in' has 1 value\(s\) that are not finite as float32"):
        s.set_state({"s_in": np.array([[0.0, -np.inf, 2.0, 3.0]], np.float32)})
    np.testing.assert_array_equal(s.step(x[1]), x.sum(0))
    s.set_state({"s_in": np.array([[1.0, 2.0, 3.0, 4.0]])})
    np.testing.assert_array_equal(s.step(x[0]), x[0] + [1, 2, 3, 4])


def test_a_manifest_whose_data_input_has_another_rank_than_the_graph_is_refused_at_load() -> None:
    """A manifest that gives the data input fewer dimensions than its graph (and names no batch or time axis) is a
    file whose manifest does not describe it: refused when the stream model is made (ModelFormatError, exit 6),
    not a bare ValueError from a later step."""
    good = onnx.load_from_string(summing_model_with_a_total())
    props = {p.key: p.value for p in good.metadata_props}
    bad = onnx.load_from_string(summing_model_with_a_total())
    text = props[MANIFEST_KEY].replace('"shape":["batch",1,4]', '"shape":[1,4]', 1)
    assert text != props[MANIFEST_KEY]
    helper.set_model_props(bad, {MANIFEST_KEY: text})
    with pytest.raises(ModelFormatError, match=r"2 dimensions .* the graph has 3"):
        StreamingModel(bad.SerializeToString())
    StreamingModel(good.SerializeToString())  # the same graph with its own manifest loads


def test_a_group_just_over_its_state_bound_is_refused_before_any_allocation() -> None:
    """The group's state buffers are bounded at 4 GiB: 65,536 members (the most a group takes) of 8,193 float32
    state values need 2 x 65,536 x 8,193 x 4 bytes, just over it, and are refused with the estimate named."""
    from edgernn.errors import ConfigError
    from edgernn.runtime.stream import StreamGroup

    sm = StreamingModel(summing_model_with_a_total(features=8193))
    need = 2 * 65536 * 8193 * 4
    assert StreamGroup.MAX_STATE_BYTES == 4 << 30 < need
    with pytest.raises(ConfigError, match=r"would need 4\.0 GiB of state buffers.*65,536 members and 4\.0 GiB"):
        StreamGroup(sm, 65536)


def test_edgernn_run_streams_a_token_model_in_fixed_chunks_one_id_a_line() -> None:
    """`edgernn run --stream` on a token model in chunks of 3 with no feature axis: each stdin line is one id, three
    lines make a chunk, and each chunk's line is the running sum; a line with two ids is refused, naming it."""
    import io

    from edgernn.runtime.io import run_stream

    sm = StreamingModel(summing_token_model(3), layout="bt")
    ids = np.random.default_rng(9).integers(0, 50, 7)
    out = io.StringIO()
    notes = io.StringIO()
    assert run_stream(sm, io.StringIO("".join(f"{i}\n" for i in ids)), out, notes=notes) == 7
    got = [float(line) for line in out.getvalue().split()]
    assert got == np.cumsum(ids[:6].reshape(2, 3).sum(1)).astype(float).tolist()
    assert "1 frame(s) into a chunk of 3" in notes.getvalue()
    with pytest.raises(InputError, match="stdin line 2: 2 values"):
        run_stream(sm, io.StringIO("1\n2 3\n4\n"), io.StringIO())
