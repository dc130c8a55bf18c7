"""Weight-only int8 (edgernn.optimize.weight_only), the last try of ``quantize --to int8``: every weight matrix is
stored as int8 with one scale per output channel, rounded to the nearest step, and the graph computes exactly what
the fp32 graph computes with those rounded weights; nothing that is not a weight changes."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from edgernn.export import export_model
from edgernn.graphs import all_graphs
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.optimize.weight_only import QMAX, quantize_weights

STRATEGIES = (("native", {}), ("loop", {}), ("unroll", {"seq_len": 12}), ("step", {"chunk": 2}))
MODELS = {
    "lstm": {"cell": "lstm"},
    "gru-bidirectional": {"cell": "gru", "bidirectional": True},
    "rnn-tanh": {"cell": "rnn-tanh"},
    "lstm-peephole-projection": {"cell": "lstm", "peephole": True, "proj_size": 6},
}
CASES = [
    pytest.param(m, s, id=f"{m}-{s}")
    for m in MODELS
    for s, _ in STRATEGIES
    # export refuses these (no ONNX LSTM op has a projection; a streaming step cannot look ahead)
    if (m, s) not in (("lstm-peephole-projection", "native"), ("gru-bidirectional", "step"))
]


@cache
def _fp32(name: str, strategy: str) -> bytes:
    torch.manual_seed(3)
    config = ModelConfig(input_size=5, hidden_size=10, num_layers=2, output_size=3, **MODELS[name])
    model = build_model(config).eval()
    return export_model(model, None, strategy=strategy, **dict(STRATEGIES)[strategy]).model_bytes


def _feed(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 if d == "batch" else 7 for d in i.shape]
        if "int" in i.type:
            feed[i.name] = np.full(shape, 7 if i.name == "lengths" else 0, np.int64)
        else:
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _run(model: bytes | onnx.ModelProto) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return s.run(None, _feed(s))


def _dequantised(q: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int | None]]:
    """The fp32 weight each ``Mul(Cast(int8), scale)`` of ``q`` makes, computed here in numpy from its int8 values
    and scales, and the axis its scales run along (None: one scale)."""
    out = {}
    inits = {t.name: numpy_helper.to_array(t) for g in all_graphs(q.graph) for t in g.initializer}  # outer scopes too
    for g in all_graphs(q.graph):
        casts = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Cast" and n.input[0] in inits}
        for n in g.node:
            if n.op_type != "Mul" or n.input[0] not in casts:
                continue
            values, scale = inits[casts[n.input[0]]], inits[n.input[1]]
            assert values.dtype == np.int8 and np.abs(values).max() <= QMAX and scale.dtype == np.float32
            assert scale.ndim == values.ndim and sum(d > 1 for d in scale.shape) <= 1
            axis = next((i for i, d in enumerate(scale.shape) if d > 1), None)
            out[n.output[0]] = (values.astype(np.float32) * scale, axis)
    return out


@pytest.mark.parametrize(("name", "strategy"), CASES)
def test_weights_round_to_int8_per_output_channel_and_the_graph_computes_with_them(name: str, strategy: str) -> None:
    src = _fp32(name, strategy)
    fp32 = onnx.load_from_string(src)
    q = onnx.load_from_string(src)
    count = quantize_weights(q)
    onnx.checker.check_model(q, full_check=True)
    restored = _dequantised(q)
    made = {k: v for k, (v, _) in restored.items()}
    assert count == len(made) >= 3  # the recurrent weights of two layers at least, and the head
    originals = {t.name: numpy_helper.to_array(t) for g in all_graphs(fp32.graph) for t in g.initializer}
    for weight, value in made.items():
        w = originals[weight]
        assert value.shape == w.shape
        # each element within half a step of its own channel's scale: the channel is the weight's output axis
        axis = _expected_axis(fp32, weight, w.ndim)
        assert restored[weight][1] == axis, weight
        peak = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True)
        assert np.all(np.abs(value - w) <= peak / QMAX / 2 + 1e-7), weight
        assert np.abs(value - w).max() > 0  # really rounded
    # the graph with the int8 weights computes what the fp32 graph computes with the rounded weights put in
    reference = onnx.load_from_string(src)
    for g in all_graphs(reference.graph):
        for t in g.initializer:
            if t.name in made:
                t.CopyFrom(numpy_helper.from_array(made[t.name], t.name))
    for a, b in zip(_run(q), _run(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
    # and stays near the fp32 graph (a step of 1/127 of each channel's largest weight)
    for a, b in zip(_run(q), _run(fp32), strict=True):
        assert 0 < np.abs(a - b).max() < 0.05
    # nothing but the weights changed: every other fp32 initializer is still there, unchanged
    kept = {t.name: numpy_helper.to_array(t) for g in all_graphs(q.graph) for t in g.initializer}
    for n, v in originals.items():
        if n not in made:
            np.testing.assert_array_equal(kept[n], v)


def _expected_axis(model: onnx.ModelProto, name: str, ndim: int) -> int:
    """The output-channel axis of weight ``name`` as its consumers in the fp32 graph read it."""
    axes = set()
    for g in all_graphs(model.graph):
        for n in g.node:
            for slot, x in enumerate(n.input):
                if x != name:
                    continue
                if n.op_type == "MatMul" and slot == 1:
                    axes.add(ndim - 1)
                elif n.op_type == "Gemm" and slot == 1:
                    axes.add(0 if any(a.name == "transB" and a.i for a in n.attribute) else 1)
                elif n.op_type in ("LSTM", "GRU", "RNN") and slot in (1, 2):
                    axes.add(1)
                else:
                    axes.add(-1)
    assert len(axes) == 1 and -1 not in axes, (name, axes)
    return axes.pop()


def _tiny(initializers: list[onnx.TensorProto], nodes: list[onnx.NodeProto], opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in nodes[-1:]],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_gemm_scales_follow_trans_b_and_a_zero_channel_stays_zero() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7  # [N=3, K=4], read transposed
    w[1] = 0.0
    m = _tiny([numpy_helper.from_array(w, "w")], [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)])
    assert quantize_weights(m) == 1
    scale = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name.startswith("w_scale"))
    assert scale.shape == (3, 1)
    np.testing.assert_allclose(scale[:, 0], [np.abs(w[0]).max() / QMAX, 1.0, np.abs(w[2]).max() / QMAX], rtol=1e-6)
    x = np.ones((2, 4), np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.all(y[:, 1] == 0)
    np.testing.assert_allclose(y, x @ w.T, atol=np.abs(w).max() / QMAX * 4)


def test_a_tensor_used_as_anything_but_a_weight_is_left_alone() -> None:
    w = np.full((4, 4), 0.3, np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "w"], ["y"])]
    m = _tiny([numpy_helper.from_array(w, "w")], nodes)
    assert quantize_weights(m) == 0
    assert [t.name for t in m.graph.initializer] == ["w"] and len(m.graph.node) == 2


def test_an_initializer_that_is_also_an_input_is_left_alone() -> None:
    """A default value the caller may feed instead (initializers listed as inputs): it must stay a graph input."""
    w = np.full((4, 4), 0.3, np.float32)
    m = _tiny([numpy_helper.from_array(w, "w")], [helper.make_node("MatMul", ["x", "w"], ["y"])])
    m.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4]))
    assert quantize_weights(m) == 0
    assert [t.data_type for t in m.graph.initializer] == [onnx.TensorProto.FLOAT] and len(m.graph.node) == 1
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x, other = np.ones((2, 4), np.float32), np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(s.run(None, {"x": x, "w": other})[0], x)  # still the caller's to replace


def test_a_tensor_read_as_two_kinds_of_weight_gets_one_scale() -> None:
    w = np.array([[1.0, 0.01, 2.0, 0.5], [0.5, -2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 0.0], [3.0, 0.0, 0.1, 0.2]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gemm", ["h", "w"], ["y"], transB=1)]
    m = _tiny([numpy_helper.from_array(w, "w")], nodes)
    assert quantize_weights(m) == 1
    scale = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name.startswith("w_scale"))
    assert scale.shape == (1, 1) and scale[0, 0] == pytest.approx(3.0 / QMAX)


def test_onnxruntime_computes_the_rounded_weights_in_fp32_at_every_level() -> None:
    """The restored weights fold into constants; no level turns them into an integer product (as it does for a
    DequantizeLinear feeding a MatMul: MatMulNBits)."""
    src = _fp32("lstm", "loop")
    q = onnx.load_from_string(src)
    quantize_weights(q)
    restored = {k: v for k, (v, _) in _dequantised(q).items()}
    reference = onnx.load_from_string(src)
    for t in reference.graph.initializer:
        if t.name in restored:
            t.CopyFrom(numpy_helper.from_array(restored[t.name], t.name))
    levels = ort.GraphOptimizationLevel
    outs = []
    for level in (levels.ORT_DISABLE_ALL, levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED, levels.ORT_ENABLE_ALL):
        for model in (q, reference):
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            outs.append(s.run(None, _feed(s))[0])
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=0, atol=2e-6)


def _ops(model: bytes) -> set[str]:
    return {n.op_type for g in all_graphs(onnx.load_from_string(model).graph) for n in g.node}


def test_int8_for_a_target_whose_engine_cannot_run_int8_products_is_the_weights_alone() -> None:
    """quantize's ``target_int8`` (the registry's ``int8_products_refused``): a file whose target's engine cannot
    run int8 products gets the weights-only file without being asked, and its report says why; a file for an
    engine that can gets int8 products; --per-tensor for such a target is refused before any work."""
    from edgernn.errors import ConfigError
    from edgernn.optimize.quantize import quantize

    fp32 = _fp32("lstm", "step")  # an export for target ort
    why = "this engine has no DynamicQuantizeLinear"

    def refused(target: str | None) -> str | None:
        return why if target == "ort" else None

    reduced = quantize(fp32, "int8", verify=False, timing=False, target_int8=refused)
    assert not _ops(reduced.model_bytes) & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert reduced.report["how"]["weight_only"] is True
    assert reduced.report["how"]["weight_only_because"] == f"target ort: {why}"
    products = quantize(fp32, "int8", verify=False, timing=False, target_int8=lambda target: None)
    assert _ops(products.model_bytes) & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul"}  # onnxruntime's fusion
    assert not products.report["how"].get("weight_only")
    with pytest.raises(ConfigError, match="drop --per-tensor"):
        quantize(fp32, "int8", verify=False, timing=False, target_int8=refused, per_channel=False)
    fp16 = quantize(fp32, "fp16", verify=False, timing=False, target_int8=refused)  # fp16 is not int8's business
    assert "weight_only" not in fp16.report["how"]


def test_the_targets_whose_engines_cannot_run_int8_products_say_why() -> None:
    """Measured in the engine matrix (docs/targets.md): MNN computes NaN from a zero state, ncnn and LiteRT have
    no such layer, so `portable` (all of them) takes the weights alone; onnxruntime, OpenVINO and tract run them."""
    from edgernn.targets import int8_products_refused, target_names

    refused = {t for t in target_names() if int8_products_refused(t)}
    assert refused == {"mnn", "ncnn", "litert", "portable"}
    assert "NaN" in int8_products_refused("mnn") and "Select TensorFlow" in int8_products_refused("litert")
    assert int8_products_refused(None) is None and int8_products_refused("no-such-target") is None


def test_a_weight_one_body_alone_reads_is_made_inside_that_body() -> None:
    """A loop export's recurrent weights (each read by one Scan body) are made inside their body from the int8
    values outside (OpenVINO refuses a Scan body that reads a weight computed outside it); a weight the main graph
    reads is made there. The checker passes, and every weight is made exactly once."""
    model = onnx.load_from_string(_fp32("lstm", "loop"))
    count = quantize_weights(model)
    onnx.checker.check_model(model, full_check=True)
    bodies = [g for g in all_graphs(model.graph) if g is not model.graph]
    made_in = {
        id(g): {n.output[0] for n in g.node if n.op_type == "Mul" and n.input[0].endswith("_fp32")} for g in bodies
    }
    outside = {n.output[0] for n in model.graph.node if n.op_type == "Mul" and n.input[0].endswith("_fp32")}
    assert bodies and all(made_in.values()), "a Scan body makes none of its recurrent weights"
    for body in bodies:
        read = {n.input[1] for n in body.node if n.op_type in ("MatMul", "Gemm")}
        assert made_in[id(body)] <= read
    read_outside = {i for n in model.graph.node for i in n.input}
    assert outside and outside <= read_outside  # the head and the input projections: read by the main graph
    assert count == len(outside) + sum(len(m) for m in made_in.values())
