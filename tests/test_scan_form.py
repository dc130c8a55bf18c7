"""ONNX ``LSTM`` nodes rewritten as a Scan (edgernn.optimize.scan_form) compute what the op computes: onnxruntime
on the op against onnxruntime on the Scan form, for every variant the rewrite supports (both directions, a padded
batch, initial states, peepholes, any subset of the outputs), and what it does not support is refused.
The GRU and RNN rewrites are checked on edgernn's own exports in tests/test_precision.py."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgernn.errors import ModelFormatError
from edgernn.optimize.scan_form import recurrent_products, rewrite

T, BATCH, IN, H = 11, 3, 5, 7
LENGTHS = np.array([11, 6, 1], np.int32)  # a full sequence, a padded one, a single step


def _lstm_model(
    direction: str = "forward",
    *,
    lengths: bool = True,
    initial: bool = True,
    peepholes: bool = True,
    bias: bool = True,
    outputs: tuple[bool, bool, bool] = (True, True, True),
    seed: int = 0,
    **attrs: object,
) -> onnx.ModelProto:
    """One LSTM node with random initializer weights; its named inputs are graph inputs."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, IN)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, H)).astype(np.float32), "R"),
    ]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 8 * H)).astype(np.float32), "B"))
    if peepholes:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 3 * H)).astype(np.float32), "P"))
    f = TensorProto.FLOAT
    graph_inputs = [helper.make_tensor_value_info("x", f, ["T", "B", IN])]
    if lengths:
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    if initial:
        graph_inputs += [helper.make_tensor_value_info(n, f, [dirs, "B", H]) for n in ("h0", "c0")]
    names = [
        "x",
        "W",
        "R",
        "B" if bias else "",
        "lens" if lengths else "",
        "h0" if initial else "",
        "c0" if initial else "",
        "P" if peepholes else "",
    ]
    while not names[-1]:
        names.pop()
    outs = [n if want else "" for n, want in zip(("Y", "Y_h", "Y_c"), outputs, strict=True)]
    while not outs[-1]:
        outs.pop()
    node = helper.make_node("LSTM", names, outs, name="lstm", hidden_size=H, direction=direction, **attrs)
    shapes = {"Y": ["T", dirs, "B", H], "Y_h": [dirs, "B", H], "Y_c": [dirs, "B", H]}
    graph_outputs = [helper.make_tensor_value_info(n, f, shapes[n]) for n in outs if n]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feed(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = {i.name for i in model.graph.input}
    dirs = 2 if any(a.s == b"bidirectional" for a in model.graph.node[0].attribute) else 1
    feed = {"x": rng.normal(0, 1, (T, BATCH, IN)).astype(np.float32)}
    if "lens" in names:
        feed["lens"] = LENGTHS
    for n in ("h0", "c0"):
        if n in names:
            feed[n] = rng.normal(0, 1, (dirs, BATCH, H)).astype(np.float32)
    return feed


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _check_same(model: onnx.ModelProto) -> list[np.ndarray]:
    feed = _feed(model)
    want = _run(model, feed)
    scan = onnx.ModelProto()
    scan.CopyFrom(model)
    assert rewrite(scan, ("LSTM",)) == {"LSTM": 1}
    ops = {n.op_type for n in scan.graph.node}
    assert "LSTM" not in ops and "Scan" in ops
    assert {t.name for t in scan.graph.initializer}.isdisjoint({"W", "R", "B", "P"})  # stored transposed or split
    onnx.checker.check_model(scan, full_check=True)
    got = _run(scan, feed)
    assert len(got) == len(want)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape
        assert _relative_error(a, b) < 1e-6, _relative_error(a, b)
    return want


VARIANTS = list(itertools.product(("forward", "reverse", "bidirectional"), (True, False), (True, False), (True, False)))


@pytest.mark.parametrize(
    ("direction", "lengths", "initial", "peepholes"),
    VARIANTS,
    ids=[
        f"{d}-{'padded' if n else 'full'}-{'h0c0' if i else 'zeros'}-{'peep' if p else 'nopeep'}"
        for d, n, i, p in VARIANTS
    ],
)
def test_lstm_scan_computes_what_the_op_computes(direction: str, lengths: bool, initial: bool, peepholes: bool) -> None:
    want = _check_same(_lstm_model(direction, lengths=lengths, initial=initial, peepholes=peepholes))
    if lengths:  # the premise: padding shows (zeros in Y past a sequence's length, states from its last real step)
        y = want[0]
        assert not y[6:, :, 1].any() and not y[1:, :, 2].any() and y[6:, :, 0].all()


@pytest.mark.parametrize(
    "outputs", [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]
)
def test_lstm_scan_writes_the_outputs_named(outputs: tuple[bool, bool, bool]) -> None:
    _check_same(_lstm_model("bidirectional", outputs=outputs))


def test_lstm_scan_without_a_bias() -> None:
    _check_same(_lstm_model("reverse", bias=False))


def test_lstm_scan_default_activations_spelt_out() -> None:
    acts = ["Sigmoid", "Tanh", "Tanh"] * 2
    _check_same(_lstm_model("bidirectional", activations=acts, input_forget=0, layout=0))


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"clip": 3.0}, "clip and layout=1"),
        ({"layout": 1}, "clip and layout=1"),
        ({"input_forget": 1}, "input_forget=1"),
        ({"activations": ["Sigmoid", "Tanh", "Relu"]}, r"default activations \(Sigmoid, Tanh, Tanh\)"),
        ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, r"default activations \(Sigmoid, Tanh, Tanh\)"),
    ],
)
def test_lstm_scan_refuses_what_it_does_not_support(attrs: dict[str, object], message: str) -> None:
    model = _lstm_model(**attrs)
    with pytest.raises(ModelFormatError, match=message):
        rewrite(model, ("LSTM",))


def test_lstm_scan_refuses_weights_that_are_not_initializers() -> None:
    model = _lstm_model(peepholes=True)
    p = next(t for t in model.graph.initializer if t.name == "P")
    model.graph.initializer.remove(p)
    model.graph.input.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, [1, 3 * H]))
    with pytest.raises(ModelFormatError, match="must be initializers"):
        rewrite(model, ("LSTM",))


def test_lstm_left_alone_unless_asked() -> None:
    model = _lstm_model()
    assert rewrite(model) == {} and [n.op_type for n in model.graph.node] == ["LSTM"]  # default ops: GRU, RNN


def _gru_model(linear_before_reset: int) -> onnx.ModelProto:
    """One bidirectional GRU node with random initializer weights."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 3 * H, IN)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 3 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 6 * H)).astype(np.float32), "B"),
    ]
    node = helper.make_node(
        "GRU", ["x", "W", "R", "B"], ["Y"], name="gru", hidden_size=H, direction="bidirectional",
        linear_before_reset=linear_before_reset,
    )  # fmt: skip
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", f, ["T", "B", IN])],
        [helper.make_tensor_value_info("Y", f, ["T", 2, "B", H])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("make", "per_direction"),
    [
        (lambda: _lstm_model("bidirectional"), 1),
        (lambda: _gru_model(1), 1),
        (lambda: _gru_model(0), 2),  # h R and (r h) R_h: both carry the state into the product
    ],
    ids=["lstm", "gru-linear-before-reset", "gru-reset-first"],
)
def test_recurrent_products_are_the_state_times_r_in_each_body(make: object, per_direction: int) -> None:
    """What a quantiser may leave in fp32: every MatMul in the rewritten bodies that takes the carried state (or
    the reset state r h) times a slice of R, and no input projection (those are outside the Scan)."""
    model = make()  # type: ignore[operator]
    assert recurrent_products(model) == []  # before the rewrite: none
    op = model.graph.node[0].op_type
    assert rewrite(model, (op,)) == {op: 1}
    names = recurrent_products(model)
    assert len(names) == 2 * per_direction and len(set(names)) == len(names)
    outer = {t.name: t for t in model.graph.initializer}
    found = []
    for scan in (n for n in model.graph.node if n.op_type == "Scan"):
        body = next(a.g for a in scan.attribute if a.name == "body")
        state = body.input[0].name
        by_out = {o: n for n in body.node for o in n.output}
        for n in body.node:
            if n.op_type != "MatMul":
                continue
            assert n.name in names  # every product in a body is a recurrent one
            # h itself, or r * h
            assert n.input[0] == state or (by_out[n.input[0]].op_type == "Mul" and state in by_out[n.input[0]].input)
            assert outer[n.input[1]].dims[0] == H  # R transposed (H, G*H) or its h-gate block
            found.append(n.name)
    assert sorted(found) == sorted(names)
    assert not {n.name for n in model.graph.node} & set(names)  # the input projections are not listed
