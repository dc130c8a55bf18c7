"""``unroll_scans`` on hand-built Scan models: the unrolled graph must compute what onnxruntime computes on the
original (each Scan attribute it honours, nested subgraphs, outer-scope values), at several batch sizes, and hold
no Scan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgernn.errors import ExportError
from edgernn.rewrite.onnx_unroll import unroll_scans
from edgernn.verify.parity import TOLERANCES, compare

TOL = TOLERANCES["fp32"]
H = 4
FLOAT = TensorProto.FLOAT
INT64_MIN = np.iinfo(np.int64).min


def _vi(name: str, shape: Sequence[int | str | None] | int, elem: int = FLOAT) -> onnx.ValueInfoProto:
    """A tensor's value info; an int shape is a rank with unknown sizes (the checker wants a shape)."""
    return helper.make_tensor_value_info(name, elem, [None] * shape if isinstance(shape, int) else shape)


def _with_time(steps: int | str, axis: int, rank: int = 3) -> list[int | str]:
    """The shape of a (batch, H) slice with the scan axis inserted at ``axis`` (negative counts from the end)."""
    shape: list[int | str] = ["B", H]
    shape.insert(axis % rank, steps)
    return shape


def _model(graph: onnx.GraphProto, opset: int = 18) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _cell_body(
    extra_nodes: list[onnx.NodeProto] | None = None, extra_outputs: list[str] | None = None
) -> onnx.GraphProto:
    """s (B, H) and two scan slices a, b (B, H) -> s_new = tanh(s * w + a); y1 = (s_new + b) * 2; y2 = s_new - a.

    ``w`` is the outer graph's initializer, ``two`` the body's own."""
    nodes = [
        helper.make_node("Mul", ["s", "w"], ["sw"]),
        helper.make_node("Add", ["sw", "a"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["s_new"]),
        helper.make_node("Add", ["s_new", "b"], ["q"]),
        helper.make_node("Mul", ["q", "two"], ["y1"]),
        helper.make_node("Sub", ["s_new", "a"], ["y2"]),
        *(extra_nodes or []),
    ]
    return helper.make_graph(
        nodes,
        "body",
        [_vi("s", ["B", H]), _vi("a", ["B", H]), _vi("b", ["B", H])],
        [_vi(n, ["B", H]) for n in ["s_new", "y1", "y2", *(extra_outputs or [])]],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )


def _scan_model(
    steps: int | str,
    in_dirs: tuple[int, int] = (0, 0),
    in_axes: tuple[int, int] = (0, 0),
    out_dirs: tuple[int, int] = (0, 0),
    out_axes: tuple[int, int] = (0, 0),
    opset: int = 18,
) -> onnx.ModelProto:
    """One state, two scan inputs, two scan outputs; each attribute spelled out."""
    attrs: dict[str, Any] = {
        "num_scan_inputs": 2,
        "scan_input_directions": list(in_dirs),
        "scan_input_axes": list(in_axes),
        "scan_output_directions": list(out_dirs),
        "scan_output_axes": list(out_axes),
    }
    scan = helper.make_node("Scan", ["s0", "x1", "x2"], ["s_T", "Y1", "Y2"], name="scan", body=_cell_body(), **attrs)
    graph = helper.make_graph(
        [scan],
        "main",
        [_vi("s0", ["B", H]), _vi("x1", _with_time(steps, in_axes[0])), _vi("x2", _with_time(steps, in_axes[1]))],
        [_vi("s_T", ["B", H]), _vi("Y1", 3), _vi("Y2", 3)],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    return _model(graph, opset)


def _feeds(model: onnx.ModelProto, batch: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[i.name] = np.array(bool(seed % 2))
            continue
        shape = [batch if d.dim_param == "B" else steps if d.dim_param == "T" else d.dim_value for d in dims]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _op_types(graph: onnx.GraphProto) -> list[str]:
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                ops += _op_types(a.g)
            for g in a.graphs:
                ops += _op_types(g)
    return ops


def _assert_same(
    model: onnx.ModelProto, unrolled: onnx.ModelProto, steps: int, batches: tuple[int, ...] = (1, 3)
) -> None:
    assert "Scan" not in _op_types(unrolled.graph)
    for batch in batches:
        for seed in (0, 1):
            feeds = _feeds(model, batch, steps, seed)
            want, got = _run(model, feeds), _run(unrolled, feeds)
            assert [w.shape for w in want] == [g.shape for g in got]
            for i, (w, g) in enumerate(zip(want, got, strict=True)):
                a, rel, ok = compare(w, g, TOL)
                assert ok, f"output {i} at batch {batch}: max abs diff {a:.3g} (rel {rel:.3g})"


# ------------------------------------------------------------------------------------------------ attributes


ATTRS = {
    "forward": ((0, 0), (0, 0), (0, 0), (0, 0)),
    "reverse-inputs": ((1, 0), (0, 0), (0, 0), (0, 0)),
    "reverse-outputs": ((0, 0), (0, 0), (0, 1), (0, 0)),
    "reverse-both": ((0, 1), (0, 0), (1, 1), (0, 0)),
    "axes": ((1, 0), (1, 2), (0, 1), (1, 2)),
    "negative-axes": ((0, 1), (-2, -1), (1, 0), (-1, -2)),
}


@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("attrs", list(ATTRS))
def test_unrolled_scan_equals_the_scan(attrs: str, steps: int) -> None:
    in_dirs, in_axes, out_dirs, out_axes = ATTRS[attrs]
    model = _scan_model(steps, in_dirs, in_axes, out_dirs, out_axes)
    unrolled = unroll_scans(model)  # the trip count from the static shapes
    _assert_same(model, unrolled, steps)
    assert unroll_scans(model, steps).graph.node[:] == unrolled.graph.node[:]


def test_the_directions_are_visible_in_the_outputs() -> None:
    """The attribute tests can fail: reversing an input or an output changes what the model computes."""
    feeds = _feeds(_scan_model(5), 2, 5)
    forward = _run(_scan_model(5), feeds)
    for in_dirs, out_dirs in (((1, 0), (0, 0)), ((0, 0), (0, 1))):
        other = _run(_scan_model(5, in_dirs=in_dirs, out_dirs=out_dirs), feeds)
        assert any(not np.allclose(f, o) for f, o in zip(forward, other, strict=True))


def test_opset_11_unsqueezes_with_an_attribute() -> None:
    model = _scan_model(4, (0, 1), (0, 1), (1, 0), (0, 1), opset=11)
    unrolled = unroll_scans(model, 4)
    unsqueezes = [n for n in unrolled.graph.node if n.op_type == "Unsqueeze"]
    assert unsqueezes and all(len(n.input) == 1 for n in unsqueezes)
    _assert_same(model, unrolled, 4)


def test_symbolic_length_is_unrolled_at_the_given_trip_count() -> None:
    model = _scan_model("T")
    with pytest.raises(ExportError, match="not static"):
        unroll_scans(model)
    _assert_same(model, unroll_scans(model, 6), 6)


# ------------------------------------------------------------------------------------------------ states


def _states_model(direct: bool) -> onnx.ModelProto:
    """Three states: s computed, k passed through unchanged, o taken from outer scope (s0) every step; and the new
    state s again as a scan output. ``direct`` returns a body input and repeats a body output by name, which ONNX
    allows and onnxruntime 1.32's Scan returns zeros for; otherwise through Identity nodes, which it runs right."""
    body = _cell_body()
    body.input.insert(1, _vi("keep", ["B", H]))
    body.input.insert(2, _vi("other", ["B", H]))
    body.node.append(helper.make_node("Identity", ["s0"], ["outer"]))
    if not direct:
        body.node.append(helper.make_node("Identity", ["keep"], ["keep_out"]))
        body.node.append(helper.make_node("Identity", ["s_new"], ["s_copy"]))
    body.output.insert(1, _vi("keep" if direct else "keep_out", ["B", H]))
    body.output.insert(2, _vi("outer", ["B", H]))
    body.output.append(_vi("s_new" if direct else "s_copy", ["B", H]))
    scan = helper.make_node(
        "Scan", ["s0", "k0", "o0", "x1", "x2"], ["s_T", "k_T", "o_T", "Y1", "Y2", "Y3"], body=body, num_scan_inputs=2
    )
    graph = helper.make_graph(
        [scan],
        "main",
        [_vi("s0", ["B", H]), _vi("k0", ["B", H]), _vi("o0", ["B", H]), _vi("x1", [5, "B", H]), _vi("x2", [5, "B", H])],
        [_vi(n, 2) for n in ("s_T", "k_T", "o_T")] + [_vi(n, 3) for n in ("Y1", "Y2", "Y3")],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    return _model(graph)


def test_passed_through_and_outer_scope_states() -> None:
    reference = _states_model(direct=False)
    _assert_same(reference, unroll_scans(reference), 5)
    # the body's Identity nodes are not copied, except where the last step writes a final state with one
    assert [n.op_type for n in unroll_scans(reference).graph.node].count("Identity") == 2
    unrolled = unroll_scans(_states_model(direct=True))
    _assert_same(reference, unrolled, 5)  # onnxruntime on the Identity form is the reference
    # the last step writes the final states it computes itself; the one passed through is copied
    finals = [n.op_type for n in unrolled.graph.node if n.output[0] in ("s_T", "k_T", "o_T")]
    assert sorted(finals) == ["Identity", "Identity", "Tanh"]  # k_T; o_T (the body's own Identity); s_T


def test_unused_scan_outputs_are_not_built() -> None:
    model = _scan_model(3)
    trimmed = _scan_model(3)
    trimmed.graph.node[0].output[2] = ""  # Y2 not asked for (onnxruntime cannot run this form itself)
    del trimmed.graph.output[2]
    unrolled = unroll_scans(trimmed)
    assert sum(n.op_type == "Concat" for n in unrolled.graph.node) == 1
    feeds = _feeds(model, 2, 3)
    for w, g in zip(_run(model, feeds)[:2], _run(unrolled, feeds), strict=True):
        assert compare(w, g, TOL)[2]


# ------------------------------------------------------------------------------------------------ subgraphs


def test_nested_if_reads_body_and_outer_values() -> None:
    """An If inside the body whose branches read a body value (s_new, a) and an outer initializer (w): each step's
    copy must read its own step's values."""
    then = helper.make_graph([helper.make_node("Add", ["s_new", "a"], ["t"])], "then", [], [_vi("t", ["B", H])])
    other = helper.make_graph([helper.make_node("Mul", ["s_new", "w"], ["e"])], "else", [], [_vi("e", ["B", H])])
    body = _cell_body([helper.make_node("If", ["flag"], ["y3"], then_branch=then, else_branch=other)], ["y3"])
    scan = helper.make_node("Scan", ["s0", "x1", "x2"], ["s_T", "Y1", "Y2", "Y3"], body=body, num_scan_inputs=2)
    graph = helper.make_graph(
        [scan],
        "main",
        [_vi("flag", [], TensorProto.BOOL), _vi("s0", ["B", H]), _vi("x1", [4, "B", H]), _vi("x2", [4, "B", H])],
        [_vi("s_T", 2)] + [_vi(n, 3) for n in ("Y1", "Y2", "Y3")],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    model = _model(graph)
    unrolled = unroll_scans(model)
    assert _op_types(unrolled.graph).count("If") == 4
    _assert_same(model, unrolled, 4)  # seeds 0 and 1: both branches


def test_nested_scan_is_unrolled_too() -> None:
    """The outer Scan runs 3 steps over x (3, 2, B, H); its body runs an inner Scan of 2 steps over each slice,
    starting from the outer state."""
    inner_body = helper.make_graph(
        [
            helper.make_node("Add", ["u", "v"], ["uv"]),
            helper.make_node("Tanh", ["uv"], ["u_new"]),
            helper.make_node("Mul", ["u_new", "w"], ["z"]),
        ],
        "inner_body",
        [_vi("u", ["B", H]), _vi("v", ["B", H])],
        [_vi("u_new", ["B", H]), _vi("z", ["B", H])],
    )
    outer_body = helper.make_graph(
        [
            helper.make_node(
                "Scan", ["s", "xs"], ["s_new", "zs"], body=inner_body, num_scan_inputs=1, scan_input_directions=[1]
            )
        ],
        "outer_body",
        [_vi("s", ["B", H]), _vi("xs", [2, "B", H])],
        [_vi("s_new", ["B", H]), _vi("zs", [2, "B", H])],
    )
    scan = helper.make_node("Scan", ["s0", "x"], ["s_T", "Z"], body=outer_body, num_scan_inputs=1)
    graph = helper.make_graph(
        [scan],
        "main",
        [_vi("s0", ["B", H]), _vi("x", [3, 2, "B", H])],
        [_vi("s_T", 2), _vi("Z", 4)],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    model = _model(graph)
    unrolled = unroll_scans(model)  # each Scan at its own static length
    _assert_same(model, unrolled, 3)
    # a trip count is the length of the Scans whose length is unknown; a static length wins (here: 3 outer, 2 inner)
    _assert_same(model, unroll_scans(model, 5), 3)


def test_scan_inside_an_if_branch_is_unrolled_there() -> None:
    scan = helper.make_node("Scan", ["s0", "x1", "x2"], ["s_T", "Y1", "Y2"], body=_cell_body(), num_scan_inputs=2)
    then = helper.make_graph([scan], "then", [], [_vi("s_T", ["B", H])])
    other = helper.make_graph([helper.make_node("Neg", ["s0"], ["neg"])], "else", [], [_vi("neg", ["B", H])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["out"], then_branch=then, else_branch=other)],
        "main",
        [_vi("flag", [], TensorProto.BOOL), _vi("s0", ["B", H]), _vi("x1", [3, "B", H]), _vi("x2", [3, "B", H])],
        [_vi("out", ["B", H])],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    model = _model(graph)
    unrolled = unroll_scans(model)
    assert _op_types(unrolled.graph).count("If") == 1
    _assert_same(model, unrolled, 3)  # seeds 0 and 1: both branches


# ------------------------------------------------------------------------------------------------ reversals


def _flip(data: str, out: str, axis: int, start: int = -1) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    consts = [
        numpy_helper.from_array(np.array([start], np.int64), f"{out}_start"),
        numpy_helper.from_array(np.array([INT64_MIN], np.int64), f"{out}_end"),
        numpy_helper.from_array(np.array([axis], np.int64), f"{out}_axis"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{out}_step"),
    ]
    node = helper.make_node("Slice", [data, *(c.name for c in consts)], [out])
    return node, consts


def _flipped_model(
    steps: int, axis: int = 0, expose: bool = False, in_axis: int | None = None, out_start: int = -1
) -> onnx.ModelProto:
    """torch's pattern for a reverse scan: flip the input, scan forward, flip the output back (``axis`` 0, the
    scan axis; another axis is a flip that the scan does not see). ``in_axis`` spells the input flip's axis
    otherwise (-3 is axis 0 counted from the end); ``out_start`` 0 makes the output Slice keep one step only."""
    f_in, c_in = _flip("x1", "x1_flipped", axis=axis if in_axis is None else in_axis)
    f_out, c_out = _flip("Y1", "Y1_back", axis=axis - 3, start=out_start)
    scan = helper.make_node(
        "Scan", ["s0", "x1_flipped", "x2"], ["s_T", "Y1", "Y2"], body=_cell_body(), num_scan_inputs=2
    )
    outputs = ["s_T", "Y1_back", "Y2", *(["Y1"] if expose else [])]
    graph = helper.make_graph(
        [f_in, scan, f_out],
        "main",
        [_vi("s0", ["B", H]), _vi("x1", [steps, "B", H]), _vi("x2", [steps, "B", H])],
        [_vi(n, 2 if n == "s_T" else 3) for n in outputs],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w"), *c_in, *c_out],
    )
    return _model(graph)


def _slices(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Slice" for n in model.graph.node)


@pytest.mark.parametrize("steps", [1, 5])
def test_reversals_are_absorbed_into_the_directions(steps: int) -> None:
    model = _flipped_model(steps)
    unrolled = unroll_scans(model)
    _assert_same(model, unrolled, steps)
    assert _slices(unrolled) == 0  # read and stacked in reverse: no negative-step Slice left
    names = {t.name for t in unrolled.graph.initializer}
    assert not names & {"x1_flipped_start", "Y1_back_end"}  # the bounds went with the Slices


def _read_names(graph: onnx.GraphProto) -> set[str]:
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                read |= _read_names(g)
    return read


def test_absorbed_reversals_leave_no_initializer_behind() -> None:
    """Every bound, axis and step of both removed Slices goes with them: the unrolled graph reads every
    initializer it holds (onnxruntime warns about each one it does not)."""
    unrolled = unroll_scans(_flipped_model(5))
    assert _slices(unrolled) == 0
    unread = {t.name for t in unrolled.graph.initializer} - _read_names(unrolled.graph)
    assert not unread


def test_a_reversal_on_a_negative_axis_is_absorbed() -> None:
    """The input flip names the scan axis from the end (-3 of a rank-3 input): the same reversal, absorbed."""
    model = _flipped_model(5, in_axis=-3)
    unrolled = unroll_scans(model)
    _assert_same(model, unrolled, 5)
    assert _slices(unrolled) == 0


def test_a_slice_that_keeps_one_step_is_not_a_reversal() -> None:
    """starts=[0] with step -1 keeps only the first step (ONNX clamps the start to 0): not a whole reversal,
    so it stays, and the output keeps its one step."""
    model = _flipped_model(5, out_start=0)
    unrolled = unroll_scans(model)
    _assert_same(model, unrolled, 5)
    assert _slices(unrolled) == 1
    assert _run(unrolled, _feeds(model, 2, 5))[1].shape == (1, 2, H)


def test_other_or_shared_reversals_are_kept() -> None:
    other_axis = _flipped_model(5, axis=2)  # reverses the features, not the steps
    unrolled = unroll_scans(other_axis)
    _assert_same(other_axis, unrolled, 5)
    assert _slices(unrolled) == 2
    exposed = _flipped_model(5, expose=True)  # the unflipped output is a graph output too
    unrolled = unroll_scans(exposed)
    _assert_same(exposed, unrolled, 5)
    assert _slices(unrolled) == 1


# ------------------------------------------------------------------------------------------------ refusals


def test_trip_count_must_be_positive_and_yields_to_static_shapes() -> None:
    model = _scan_model(4)
    _assert_same(model, unroll_scans(model, 5), 4)  # the Scan's static length wins over the given trip count
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ExportError, match="trip_count"):
            unroll_scans(model, bad)  # type: ignore[arg-type]


def test_inconsistent_scan_attributes_are_refused() -> None:
    model = _scan_model(4)
    attr = next(a for a in model.graph.node[0].attribute if a.name == "scan_input_axes")
    attr.ints.append(0)  # three axes for two scan inputs
    with pytest.raises(ExportError, match="scan_input_axes"):
        unroll_scans(model)


def test_opset_8_scan_is_refused() -> None:
    model = _scan_model(4)
    model.opset_import[0].version = 8
    with pytest.raises(ExportError, match="opset 8"):
        unroll_scans(model)


def test_a_model_without_scan_comes_back_equal() -> None:
    graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "g", [_vi("x", ["B", H])], [_vi("y", ["B", H])])
    model = _model(graph)
    assert unroll_scans(model, 3) == model


def test_without_shape_inference_a_feature_flip_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where onnx's shape inference gives up, the rank of a Scan output comes from its body's output (plus the scan
    axis): a flip of the last axis (the features) is then told apart from the scan axis, and kept."""

    def gives_up(model: onnx.ModelProto, *a: Any, **k: Any) -> onnx.ModelProto:
        raise RuntimeError("inference gave up")

    model = _flipped_model(5, axis=2)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", gives_up)
    unrolled = unroll_scans(model, 5)
    monkeypatch.undo()
    _assert_same(model, unrolled, 5)
    assert _slices(unrolled) == 2


def test_a_scan_with_states_only_is_unrolled() -> None:
    """A Scan whose body returns only its state (no scan outputs) is a loop too."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "w"], ["sw"]), helper.make_node("Add", ["sw", "a"], ["s_new"])],
        "body",
        [_vi("s", ["B", H]), _vi("a", ["B", H])],
        [_vi("s_new", ["B", H])],
    )
    scan = helper.make_node("Scan", ["s0", "x1"], ["s_T"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [scan],
        "main",
        [_vi("s0", ["B", H]), _vi("x1", [4, "B", H])],
        [_vi("s_T", ["B", H])],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, H).astype(np.float32), "w")],
    )
    model = _model(graph)
    _assert_same(model, unroll_scans(model), 4)
