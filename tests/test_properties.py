"""Property tests: whatever a caller or a file hands them, the runtime's input checks, the manifest reader and the
readers of training data (.npz and CSV folders) either accept it (and then hold to their contract) or raise their
typed error, never anything else."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
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
@example(  # a left-out lengths input that is not (batch,): once filled as (batch,) anyway
    specs=[
        TensorSpec(name="x", dtype="float32", shape=[1, 1], role="lengths"),
        TensorSpec(name="y", dtype="float32", shape=["time"], role="data"),
    ],
    feed={"y": np.array(0.0, dtype=np.float32)},
)
@example(  # a left-out lengths input of a fixed size other than the batch
    specs=[
        TensorSpec(name="lengths", dtype="int64", shape=[2], role="lengths"),
        TensorSpec(name="x", dtype="float32", shape=["batch", "time", 1], role="data"),
    ],
    feed={"x": np.zeros((1, 3, 1), dtype=np.float32)},
)
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


# --- the readers of the user's training data ------------------------------------------------------------------


def _holds_to_its_contract(d: Any) -> None:
    """What a Dataset promises the training loop: finite float32 (T, F) sequences of 1..MAX_STEPS steps with the
    input size, labels that are class indices below the class count, finite regression targets."""
    from edgernn.train.dataset import MAX_STEPS

    assert d.examples and d.head in ("regression", "classification") and d.readout in ("last", "all")
    for e in d.examples:
        assert e.x.dtype == np.float32 and e.x.ndim == 2 and 1 <= e.x.shape[0] <= MAX_STEPS
        assert e.x.shape[1] == d.input_size and np.isfinite(e.x).all()
        if d.readout == "all":
            assert e.y.shape[0] == e.x.shape[0]
        if d.head == "classification":
            assert e.y.dtype == np.int64 and ((e.y >= 0) & (e.y < d.output_size)).all() and d.output_size >= 2
        else:
            assert e.y.dtype == np.float32 and np.isfinite(e.y).all() and e.y.shape[-1] == d.output_size


def _load_or_refuse(path: Any, **options: Any) -> None:
    from edgernn.train.dataset import load_dataset

    try:
        d = load_dataset(path, **options)
    except InputError:
        return
    _holds_to_its_contract(d)


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.standard_normal((3, 4, 2)).astype(np.float32), lengths=np.array([4, 2, 1]), y=np.arange(3))
    return buf.getvalue()


npz_bytes = st.one_of(
    st.binary(max_size=400),  # anything at all
    st.builds(lambda n: _valid_npz()[:n], st.integers(0, len(_valid_npz()))),  # truncated
    st.builds(  # damaged: bytes of a valid archive overwritten
        lambda edits: bytes(dict(edits).get(i, b) for i, b in enumerate(_valid_npz())),
        st.lists(st.tuples(st.integers(0, len(_valid_npz()) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    ),
)


@SETTINGS
@given(data=npz_bytes)
def test_the_npz_reader_takes_any_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        path.write_bytes(data)
        _load_or_refuse(path)


arrays = st.builds(
    lambda shape, kind, fill: np.full(shape, fill).astype(kind),  # a cast may wrap or make NaN: more to refuse
    st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "bool", "complex64", "U3"]),
    st.sampled_from([0, 1, 2, 3, -1, 0.5, 1e30, float("nan"), float("inf")]),
)


@SETTINGS
@given(
    x=arrays,
    lengths=st.one_of(st.none(), arrays),
    y=arrays,
    head=st.sampled_from([None, "regression", "classification"]),
    readout=st.sampled_from([None, "last", "all"]),
    classes=st.sampled_from([None, 2, 5]),
)
def test_the_npz_reader_takes_any_arrays(
    x: np.ndarray, lengths: np.ndarray | None, y: np.ndarray, head: str | None, readout: str | None, classes: int | None
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, x=x, y=y, **({} if lengths is None else {"lengths": lengths}))
        _load_or_refuse(path, head=head, readout=readout, classes=classes)


cells = st.one_of(
    st.sampled_from(["0", "1", "-2.5", "3e-4", "nan", "inf", "1_000", "\u0661", " 7 ", "", "x", "1e999", "\x00"]),
    st.just("9" * 140_000),  # over the csv module's field limit
    st.text(max_size=6),
)


@SETTINGS
@given(
    rows=st.lists(st.lists(cells, min_size=1, max_size=4), max_size=6),
    text=st.one_of(st.none(), st.text(max_size=60)),
    head=st.sampled_from([None, "classification"]),
    readout=st.sampled_from([None, "last"]),
)
def test_the_csv_reader_takes_any_text(
    rows: list[list[str]], text: str | None, head: str | None, readout: str | None
) -> None:
    """A folder of a well-formed file and one of generated rows (or arbitrary text) after a header naming the
    target: a dataset that holds to its contract, or InputError."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "a.csv").write_text("f,y\n0.5,1\n1.5,0\n")
        body = text if text is not None else "\n".join(",".join(r) for r in rows)
        (folder / "b.csv").write_text("f,y\n" + body, encoding="utf-8", errors="surrogatepass")
        _load_or_refuse(folder, target_columns=["y"], head=head, readout=readout)
