"""Property tests: whatever a caller or a file hands them, the runtime's input checks and the manifest reader
either accept it (and then hold to their contract) or raise their typed error, never anything else."""

from __future__ import annotations

import contextlib
import functools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgernn.errors import ConfigError, InputError, ModelFormatError
from edgernn.manifest import Manifest, TensorSpec
from edgernn.runtime import Model, StreamingModel
from edgernn.runtime.layout import parse_layout
from edgernn.runtime.states import parse_state
from edgernn.runtime.validate import check_feed

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.one_of(st.integers(1, 4), st.sampled_from(["batch", "time"]))
specs = st.lists(
    st.builds(
        TensorSpec,
        name=st.sampled_from(["x", "y", "lengths", "mask"]),
        dtype=st.sampled_from(["float32", "float16", "int64", "int32"]),
        shape=st.lists(dims, min_size=1, max_size=3),
        role=st.sampled_from(["data", "lengths", "mask", "state"]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda s: s.name,
)
values = st.one_of(
    st.builds(
        lambda shape, kind, fill: np.full(shape, fill).astype(kind),
        st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
        st.sampled_from(["float32", "float64", "int64", "int8", "bool", "complex64"]),
        st.sampled_from([0, 1, 2, -1, 0.5, float("nan"), float("inf")]),
    ),
    st.lists(st.floats(allow_nan=True), max_size=5),
    st.text(max_size=5),
    st.none(),
)


@SETTINGS
@given(specs=specs, feed=st.dictionaries(st.sampled_from(["x", "y", "lengths", "mask", "other"]), values, max_size=4))
def test_check_feed_accepts_or_raises_input_error(specs: list[TensorSpec], feed: dict[str, object]) -> None:
    try:
        out = check_feed(specs, feed)
    except (InputError, ModelFormatError):  # bad data, or a model whose specs cannot describe data
        return
    except ValueError as e:  # numpy refusing to cast: still must not escape as anything but InputError
        raise AssertionError(f"check_feed let a ValueError escape: {e}") from e
    by_name = {s.name: s for s in specs}
    for name, arr in out.items():
        spec = by_name[name]
        assert arr.dtype == np.dtype(spec.dtype)
        assert arr.ndim == len(spec.shape) and 0 not in arr.shape
        for want, got in zip(spec.shape, arr.shape, strict=True):
            assert not isinstance(want, int) or want == got
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(value=json_values)
def test_the_manifest_reader_takes_any_json(value: object) -> None:
    with contextlib.suppress(ModelFormatError):  # a manifest, or the typed error: nothing else may come out
        Manifest.from_json(json.dumps(value))


@SETTINGS
@given(
    inputs=st.lists(
        st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=4), "dtype": st.text(max_size=8), "shape": json_values}
        ),
        max_size=2,
    )
)
def test_the_manifest_reader_checks_tensor_entries(inputs: list[dict[str, object]]) -> None:
    doc = {
        "strategy": "native",
        "cell": "gru",
        "num_layers": 1,
        "hidden_size": 4,
        "bidirectional": False,
        "opset": 18,
        "inputs": inputs,
        "outputs": [],
    }
    try:
        m = Manifest.from_json(json.dumps(doc))
    except ModelFormatError:
        return
    for spec in m.inputs:  # accepted: a dtype edgernn knows, a shape of sizes and axis names
        assert spec.dtype in ("float32", "float16", "int64", "int32", "bool")
        assert all((isinstance(d, int) and d >= 0) or (isinstance(d, str) and d) for d in spec.shape)


@SETTINGS
@given(text=st.text(max_size=12), rank=st.integers(1, 4))
def test_layouts_parse_or_raise_config_error(text: str, rank: int) -> None:
    try:
        axes = parse_layout(text, rank)
    except ConfigError:
        return
    assert axes.rank == rank
    assert axes.batch is None or 0 <= axes.batch < rank
    assert axes.time is None or 0 <= axes.time < rank


@SETTINGS
@given(text=st.text(max_size=24))
def test_state_specs_parse_or_raise_config_error(text: str) -> None:
    try:
        pair = parse_state(text)
    except ConfigError:
        return
    assert pair.input and pair.output and all(d >= 1 for d in pair.shape)


def test_a_mask_input_of_the_wrong_rank_is_a_model_format_error() -> None:
    """Found by the property above: a model declaring a one-axis padding mask."""
    spec = TensorSpec(name="lengths", dtype="float32", shape=[1], role="mask")
    with pytest.raises(ModelFormatError, match="two axes"):
        check_feed([spec], {"lengths": np.array(0.0, np.float32)})


# -- token ids and states through the runtime's Python API -----------------------------------------------------------

VOCAB = 7


@functools.cache
def _token_models() -> tuple[bytes, bytes, np.ndarray]:
    """Two models over one Embedding table (VOCAB x 3, an initializer read by a Gather, as torch exports
    nn.Embedding): ``ids (batch, time) -> rows`` and a stateful ``ids (batch,), h (batch, 3) -> tanh(row + h)``."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((VOCAB, 3)).astype(np.float32)
    init = numpy_helper.from_array(table, "table")
    opset = [helper.make_opsetid("", 17)]
    lookup = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 3])],
        [init],
    )
    step = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"]),
            helper.make_node("Add", ["e", "h"], ["s"]),
            helper.make_node("Tanh", ["s"], ["hN"]),
            helper.make_node("Identity", ["hN"], ["y"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("hN", TensorProto.FLOAT, ["batch", 3]),
        ],
        [init],
    )
    return (
        helper.make_model(lookup, opset_imports=opset).SerializeToString(),
        helper.make_model(step, opset_imports=opset).SerializeToString(),
        table,
    )


@functools.cache
def _lookup_model() -> Model:
    return Model(_token_models()[0])


@functools.cache
def _step_model() -> StreamingModel:
    return StreamingModel(_token_models()[1], states=["h:hN:bx3"], layout="b")


int64s = st.one_of(st.integers(-3, VOCAB + 2), st.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max))


@SETTINGS
@given(ids=hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=4), elements=int64s))
def test_token_ids_are_accepted_iff_inside_the_vocabulary(ids: np.ndarray) -> None:
    """Any int64 ids against a model with an Embedding: run iff every id is in 0..VOCAB-1 (torch's Embedding
    agrees: it raises on the others, where ONNX's Gather would count a negative id from the end), and then
    computes what torch's embedding computes; else the typed error."""
    import torch

    inside = bool(((ids >= 0) & (ids < VOCAB)).all())
    try:
        got = _lookup_model().run(ids)
    except InputError:
        assert not inside
        with pytest.raises(IndexError):  # torch refuses them too
            torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(_token_models()[2]))
        return
    assert inside
    want = torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(_token_models()[2])).numpy()
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(token=int64s)
def test_a_stream_steps_a_token_iff_it_is_inside_the_vocabulary(token: int) -> None:
    s = _step_model().stream()
    try:
        y = s.step(token)
    except InputError:
        assert not 0 <= token < VOCAB
        assert s.steps == 0 and not s.state["h"].any()
        return
    assert 0 <= token < VOCAB
    np.testing.assert_allclose(y, np.tanh(_token_models()[2][token]), rtol=1e-6)


@SETTINGS
@given(values=hnp.arrays(np.float64, (1, 3), elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_set_state_accepts_values_finite_after_the_cast(values: np.ndarray) -> None:
    """Any float64 state: taken iff finite once cast to the state's float32 (1e39 is finite as float64, inf as
    float32), and then held exactly as cast; else the typed error and the state left as it was."""
    s = _step_model().stream()
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(np.float32)
    try:
        s.set_state({"h": values})
    except InputError:
        assert not np.isfinite(cast).all()
        assert not s.state["h"].any()
        return
    assert np.isfinite(cast).all()
    np.testing.assert_array_equal(s.state["h"], cast)
    assert np.isfinite(s.step(0)).all()
