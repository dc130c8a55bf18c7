"""The tract engine (Sonos, ``pip install tract``): every strategy the `tract` target claims loads in tract at
concrete input shapes, as written after ``edgernn.rewrite.travel.for_bound_shapes``, and matches eager torch.

For rnn-tanh, LSTM, GRU (2 layers) and a bidirectional GRU: a padded batch (3 sequences, lengths 17, 9, 1, where
the form takes lengths; native on this target takes none and runs the batch at full length), and for `step` a
20-frame stream with the state fed back through tract against one torch call on the whole sequence. Parity is
against torch, never against onnxruntime. The passes themselves are checked to leave onnxruntime's outputs
bit for bit and the inputs' dynamic axes as they were.

Exports are made for target `portable` (same padding form as `tract`: masking in plain ops, native without
lengths) until the export pipeline runs the tract check itself; the test applies the passes the tract target
applies at export and nothing else.
"""

from __future__ import annotations

import sys
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgernn.errors import ExportError
from edgernn.export import ExportResult, export_model, get_strategy_class, get_target
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.rewrite import travel
from edgernn.targets.tract import tract_available, tract_error, tract_report, tract_runner, tract_structure
from edgernn.verify.parity import TOLERANCES, compare

TOL = TOLERANCES["fp32"]
B, T = 3, 20  # the padded batch and the stream's length
LENGTHS = np.array([17, 9, 1], dtype=np.int64)
MODELS = {  # name -> (cell, bidirectional)
    "rnn-tanh": ("rnn-tanh", False),
    "lstm": ("lstm", False),
    "gru": ("gru", False),
    "gru-bi": ("gru", True),
}
STRATEGIES = get_target("tract").strategies  # every strategy the target claims is tested

needs_tract = pytest.mark.skipif(not tract_available(), reason="tract is not installed: pip install 'edgernn[tract]'")


@cache
def _model(name: str) -> RecurrentModel:
    cell, bi = MODELS[name]
    torch.manual_seed(list(MODELS).index(name))
    cfg = ModelConfig(
        cell=cell, input_size=3, hidden_size=16, num_layers=2, bidirectional=bi, readout="all", output_size=2
    )
    return build_model(cfg).eval()


@cache
def _export(name: str, strategy: str, fused: bool = False, target: str = "portable") -> ExportResult:
    options = {"unroll": {"seq_len": T}, "step": {"chunk": 1, "fused": fused}}.get(strategy, {})
    # verify=False: this test compares with torch itself, below, through tract
    return export_model(_model(name), None, strategy=strategy, target=target, verify=False, **options)


@cache
def _raw(name: str, strategy: str) -> onnx.ModelProto:
    """The masking form without the bound-shape passes (portable and tract exports have them applied): openvino's
    target emits the same graph and leaves the symbolic shapes as torch's exporter wrote them."""
    return onnx.load_from_string(_export(name, strategy, target="openvino").model_bytes)


@cache
def _travelled(name: str, strategy: str, fused: bool = False) -> bytes:
    proto = onnx.load_from_string(_export(name, strategy, fused).model_bytes)
    return travel.for_bound_shapes(proto).SerializeToString()


def _why_not(name: str, strategy: str) -> str | None:
    caps = get_strategy_class(strategy).caps
    if MODELS[name][1] and not caps.bidirectional:
        return f"{strategy} exports no bidirectional layer (refused at export, tested in test_strategies)"
    return None


def _x(seed: int, steps: int = T) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, steps, 3)).astype(np.float32)


def _torch(name: str, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        lt = None if lengths is None else torch.from_numpy(lengths)
        return _model(name)(torch.from_numpy(x), lt).numpy()


def _torch_state(name: str, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        _, st = _model(name).rnn(torch.from_numpy(x))
    return [s.numpy() for s in (st if isinstance(st, tuple) else (st,))]


def _assert_close(want: np.ndarray, got: np.ndarray, what: str) -> float:
    a, rel, ok = compare(want, got, TOL)
    assert ok, f"{what}: max abs {a:.3g} (rel {rel:.3g}) over atol {TOL.atol:g}"
    return a


def _feed(name: str, strategy: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The padded batch in the form the export takes, and torch's outputs on it."""
    x = _x(1)
    if "lengths" in [s.name for s in _export(name, strategy).manifest.inputs]:
        return {"x": x, "lengths": LENGTHS}, _torch(name, x, LENGTHS)
    return {"x": x}, _torch(name, x)


def _step_feed(name: str, x: np.ndarray, fill: float = 0.0) -> dict[str, np.ndarray]:
    """One step's feed: frame(s) ``x`` and every state input filled with ``fill``."""
    states = _export(name, "step").manifest.states
    return {"x": x} | {s.input: np.full([B if d == "batch" else d for d in s.shape], fill, np.float32) for s in states}


CASES = [pytest.param(n, s, id=f"{s}-{n}") for n in MODELS for s in STRATEGIES]


# ------------------------------------------------------------------------------------- parity against torch


@needs_tract
@pytest.mark.parametrize(("name", "strategy"), [c for c in CASES if c.values[1] != "step"])
def test_padded_batch_in_tract_matches_torch(name: str, strategy: str) -> None:
    why = _why_not(name, strategy)
    if why:
        pytest.skip(why)
    feed, want = _feed(name, strategy)
    if strategy != "native":  # the masking forms take the lengths; native on this target takes none
        assert "lengths" in feed
    (got,) = tract_runner(_travelled(name, strategy))(feed)
    err = _assert_close(want, got, f"{strategy} {name} through tract vs torch")
    print(f"{strategy} {name}: max abs {err:.2e}")


@needs_tract
@pytest.mark.parametrize(
    ("name", "fused"), [(n, False) for n in MODELS if _why_not(n, "step") is None] + [("gru", True)]
)
def test_step_stream_in_tract_matches_torch(name: str, fused: bool) -> None:
    """20 frames, one call each, every state fed back through tract, against one torch call on all 20 (`fused`:
    the step as ONNX's GRU op, without sequence_lens, which tract takes)."""
    res = _export(name, "step", fused)
    run = tract_runner(_travelled(name, "step", fused))
    outputs = [o.name for o in onnx.load_from_string(res.model_bytes).graph.output]
    x = _x(2)
    state = {k: v for k, v in _step_feed(name, x[:, :1]).items() if k != "x"}
    ys = []
    for t in range(T):
        by_name = dict(zip(outputs, run({"x": x[:, t : t + 1], **state}), strict=True))
        ys.append(by_name["y"])
        state = {s.input: by_name[s.output] for s in res.manifest.states}
    err = _assert_close(_torch(name, x), np.concatenate(ys, axis=1), f"step {name}: 20 chained tract calls vs torch")
    for s, want in zip(res.manifest.states, _torch_state(name, x), strict=True):
        err = max(err, _assert_close(want, state[s.input], f"step {name}: final {s.output}"))
    print(f"step{' --fused' if fused else ''} {name}: max abs {err:.2e}")


@needs_tract
def test_tract_report_passes_and_can_fail() -> None:
    """The target's check: passes against torch's outputs, fails (naming the output) on a wrong reference."""
    feed, want = _feed("lstm", "loop")
    model = _travelled("lstm", "loop")
    good = tract_report(model, [feed], [[want]], labels=["B3 padded"])
    assert good.passed is True, good.summary
    assert good.parity is not None and good.parity["max_abs"] <= TOL.atol
    bad = tract_report(model, [feed], [[want + 1e-3]], labels=["B3 padded"])
    assert bad.passed is False and "B3 padded output 0 differs" in bad.summary


@needs_tract
def test_tract_report_names_tracts_error_and_node_on_a_file_it_refuses() -> None:
    """The loop export as torch writes it (no passes): tract's root cause and the node, in one line."""
    feed, want = _feed("gru", "loop")
    report = tract_report(_raw("gru", "loop"), [feed], [[want]])
    assert report.passed is False
    assert "Impossible to unify Sym(" in report.summary and "node #" in report.summary, report.summary
    assert "Stack backtrace" not in report.summary and "\n" not in report.summary


def test_tract_report_without_tract_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tract", None)  # import tract -> ImportError
    report = tract_report(b"unused", [{}], [[]])
    assert report.passed is None and "pip install 'edgernn[tract]'" in report.summary


def test_tract_error_keeps_the_root_cause_and_the_node() -> None:
    one = 'Translating node #15 "node_GRU_18" GRU ToTypedTranslator\n\nCaused by:\n'
    one += "    Non constant seq_len is not supported"
    assert tract_error(RuntimeError(one)) == 'Non constant seq_len is not supported (at node #15 "node_GRU_18" GRU)'
    assert tract_error(RuntimeError("just one line")) == "just one line"
    text = (
        'Failed analyse for node #37 "node_scan__1" Scan\n\nCaused by:\n    0: Infering facts\n'
        "    1: Unifying shapes s2,16 and 3,16\n    2: Impossible to unify Sym(s2) with Val(3).\n\n"
        "Stack backtrace:\n    0: <anyhow::Error>::msg\n"
    )
    assert (
        tract_error(RuntimeError(text)) == 'Impossible to unify Sym(s2) with Val(3). (at node #37 "node_scan__1" Scan)'
    )


# ------------------------------------------------------------------------------------------ the passes


@needs_tract
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_refused_by_tract_without_the_passes(strategy: str) -> None:
    """Why the passes exist (tract 0.23): each raw export fails to load at concrete shapes. If tract learns to
    take these files, this test says so and the passes can be reconsidered."""
    feed = _step_feed("gru", _x(0)[:, :1]) if strategy == "step" else _feed("gru", strategy)[0]
    report = tract_report(_raw("gru", strategy), [feed], [[]])
    assert report.passed is False and "Impossible to unify Sym(" in report.summary, report.summary


@pytest.mark.parametrize(("name", "strategy"), CASES)
def test_passes_keep_onnxruntime_outputs_and_the_dynamic_inputs(name: str, strategy: str) -> None:
    why = _why_not(name, strategy)
    if why:
        pytest.skip(why)
    raw = _raw(name, strategy)
    moved = onnx.load_from_string(_travelled(name, strategy))
    assert travel.bound_shape_problems(raw), "the raw export should state symbolic shapes tract cannot bind"
    assert travel.bound_shape_problems(moved) == []
    assert travel.bound_shape_problems(travel.for_bound_shapes(moved)) == []  # idempotent
    assert raw.graph.input == moved.graph.input and raw.graph.output == moved.graph.output
    assert raw.graph.initializer == moved.graph.initializer
    assert [n.op_type for n in raw.graph.node] == [n.op_type for n in moved.graph.node]
    axes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in moved.graph.input}
    assert axes["x"][0] == "batch" and (strategy in ("unroll", "step") or axes["x"][1] == "time")
    onnx.checker.check_model(moved, full_check=True)
    res = _export(name, strategy)
    feed = _step_feed(name, _x(3)[:, :1], 0.1) if strategy == "step" else _feed(name, strategy)[0]
    before = ort.InferenceSession(res.model_bytes, providers=["CPUExecutionProvider"]).run(None, feed)
    after = ort.InferenceSession(moved.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)


def test_passes_leave_their_argument_untouched() -> None:
    raw = _raw("lstm", "loop")
    copy = onnx.ModelProto()
    copy.CopyFrom(raw)
    travel.for_bound_shapes(raw)
    assert raw == copy


# ------------------------------------------------------------------------------------ the target as data


def test_tract_target_masks_padding_and_refuses_native_with_lengths() -> None:
    target = get_target("tract")
    assert target.strategies == ("native", "loop", "unroll", "step")
    assert target.padding == "masking" and target.check == "tract" and target.needs == "tract"
    assert target.bound_shapes and not target.static_batch
    with pytest.raises(ExportError, match="does not honour ONNX's sequence_lens"):
        target.validate("native", lengths=True)
    target.validate("native", lengths=False)


@needs_tract
def test_tract_structure_loads_the_travelled_file_and_names_the_node_of_a_refused_one() -> None:
    good = tract_structure(_travelled("gru", "loop"))
    assert good.passed is True and "x 2,5,3,f32" in good.summary, good.summary
    bad = tract_structure(_raw("gru", "loop"))
    assert bad.passed is False and "Impossible to unify Sym(" in bad.summary and "node #" in bad.summary


@needs_tract
def test_native_with_a_runtime_sequence_lens_is_refused_by_tract() -> None:
    """Why the tract target masks padding in plain ops: tract refuses ONNX's GRU with a runtime sequence_lens."""
    res = export_model(_model("gru"), None, strategy="native", target="ort", lengths=True, verify=False)
    report = tract_structure(travel.for_bound_shapes(onnx.load_from_string(res.model_bytes)))
    assert report.passed is False and "Non constant seq_len is not supported" in report.summary, report.summary


def _one_node(
    node: onnx.NodeProto,
    x: list[int | str],
    y: list[int | str],
    elem: int,
    inits: list[onnx.TensorProto],
    opsets: dict[str, int],
) -> bytes:
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", elem, x)],
        [onnx.helper.make_tensor_value_info("y", elem, y)],
        inits,
    )
    ops = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    return onnx.helper.make_model(graph, opset_imports=ops).SerializeToString()


@needs_tract
def test_tract_limits_recorded_in_docs_still_hold() -> None:
    """docs/engines/tract.md's reproductions (tract 0.23): if one starts to load, the doc and the target's
    choices are out of date."""
    from onnx import TensorProto, helper, numpy_helper

    f16 = np.float16
    gemm = _one_node(
        helper.make_node("Gemm", ["x", "W", "B"], ["y"]),
        [2, 3],
        [2, 4],
        TensorProto.FLOAT16,
        [numpy_helper.from_array(np.ones((3, 4), f16), "W"), numpy_helper.from_array(np.zeros(4, f16), "B")],
        {"": 17},
    )
    contrib = _one_node(
        helper.make_node("DynamicQuantizeMatMul", ["x", "W", "S"], ["y"], domain="com.microsoft"),
        [2, 3],
        [2, 4],
        TensorProto.FLOAT,
        [numpy_helper.from_array(np.ones((3, 4), np.int8), "W"), numpy_helper.from_array(np.ones(1, np.float32), "S")],
        {"": 17, "com.microsoft": 1},
    )
    expected = {"expected 2,4,F16 got 2,4,F32": gemm, "Unimplemented(DynamicQuantizeMatMul)": contrib}
    for message, model in expected.items():
        report = tract_structure(model)
        assert report.passed is False and message in report.summary, report.summary


@needs_tract
@pytest.mark.parametrize("strategy", ["native", "loop"])
def test_an_int8_file_of_a_tract_export_loads_in_tract_and_stays_near_torch(strategy: str) -> None:
    """onnxruntime's quantiser writes symbolic dims (``unk__1``) into the graph's value_info, which tract refuses
    against a bound size ("Impossible to unify Sym(unk__1) with Val(2)" at the Scan); `edgernn quantize` puts the
    reduced file back in the tract target's form (``reduced_form``), and tract then runs it within quantize's own
    drift bound of torch (5% of the largest output) on a padded batch."""
    from edgernn.optimize.quantize import DEFAULT_MAX_DRIFT, quantize
    from edgernn.rewrite.travel import bound_shape_problems
    from edgernn.targets import reduced_form

    made = _export("gru", strategy, target="tract")
    raw = quantize(made.model_bytes, "int8", verify=False, timing=False).model_bytes
    assert bound_shape_problems(onnx.load_from_string(raw))  # what tract refused before
    reduced = quantize(made.model_bytes, "int8", verify=False, timing=False, target_form=reduced_form).model_bytes
    assert bound_shape_problems(onnx.load_from_string(reduced)) == []
    feed, want = _feed("gru", strategy)
    if strategy == "native":  # the tract target's native export takes no lengths: every sequence is whole
        x = feed["x"]
        feed, want = {"x": x}, _torch("gru", x)
    (got,) = tract_runner(reduced)(feed)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= DEFAULT_MAX_DRIFT * np.abs(want).max()
    assert reduced_form("ort", made.model_bytes) is made.model_bytes  # other targets' files are left as they are
