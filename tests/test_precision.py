"""int8 and fp16 files: every cell and strategy quantises, loads at every onnxruntime optimisation level, stores
its weights reduced, and is judged by the task and by drift over a long sequence; over budget, nothing is written."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import edgernn.verify.drift as drift_mod
from edgernn.cli import main
from edgernn.cli.optimize import format_precision
from edgernn.errors import ConfigError, ParityError
from edgernn.export import ExportResult, export_model
from edgernn.export.check import check_model
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.optimize.quantize import quantize
from edgernn.optimize.scan_form import rewrite
from edgernn.targets import recheck_structure
from edgernn.train.data import get_task, make_splits

CELLS = ("rnn-tanh", "rnn-relu", "lstm", "gru")
STRATEGIES = (("native", {}), ("loop", {}), ("unroll", {"seq_len": 24}), ("step", {"chunk": 2}))
TASK = get_task("sine")
RECORD = {"name": "sine", "n_train": 0, "n_val": 24, "min_len": 8, "max_len": 24, "seed": 5}


@cache
def _export(cell: str, strategy: str, target: str = "ort") -> ExportResult:
    torch.manual_seed(CELLS.index(cell))
    model = build_model(ModelConfig(cell=cell, input_size=1, hidden_size=24, num_layers=2)).eval()
    options = dict(dict(STRATEGIES)[strategy])
    return export_model(model, None, strategy=strategy, target=target, manifest_extra={"task": RECORD}, **options)


def _examples() -> list:
    return make_splits(TASK, n_train=0, n_val=24, min_len=8, max_len=24, seed=5)[1]


def _load_all_levels(data: bytes) -> None:
    levels = ort.GraphOptimizationLevel
    for level in (levels.ORT_DISABLE_ALL, levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED, levels.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


# onnxruntime's integer products: as the quantiser writes them, and as its optimiser fuses them (saved in the file)
INTEGER_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}
MATRIX = [pytest.param(c, s, to, id=f"{to}-{c}-{s}") for c in CELLS for s, _ in STRATEGIES for to in ("int8", "fp16")]


@pytest.mark.parametrize(("cell", "strategy", "to"), MATRIX)
def test_every_cell_and_strategy_quantises_and_is_judged(cell: str, strategy: str, to: str) -> None:
    res = _export(cell, strategy)
    q = quantize(res.model_bytes, to, task=TASK, examples=_examples(), long_steps=2000)
    rep = q.report
    assert rep["weights_reduced"] >= 0.9, rep
    assert rep["metric"]["drop"] <= 0.01 and rep["metric"]["examples"] == 24
    assert rep["long_drift"]["max_abs"] < (1e-2 if to == "fp16" else 5e-2)
    if strategy != "unroll":
        assert rep["long_drift"]["steps"] == 2000 and len(rep["long_drift"]["growth"]) == 10
    _load_all_levels(q.model_bytes)  # what quantize already checked in a child process, again in this one
    assert q.manifest is not None and q.manifest.precision["precision"] == to
    proto = onnx.load_from_string(q.model_bytes)
    ops = {n.op_type for n in proto.graph.node}
    if to == "int8":  # the products run as integer ops
        bodies = {n.op_type for g in proto.graph.node for a in g.attribute if a.g.ByteSize() for n in a.g.node}
        assert ops & INTEGER_OPS
        # inside the Scan bodies too (a native LSTM is a Scan for the default uint8 weights: scan_form)
        if strategy == "native" or (strategy == "loop" and cell != "lstm"):
            assert bodies & INTEGER_OPS
    # inputs and outputs stay fp32
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in proto.graph.input)


@pytest.mark.slow
def test_gru_and_rnn_ops_rewritten_as_scans_compute_what_the_ops_do() -> None:
    rng = np.random.default_rng(0)
    # edgernn's native LSTM with peepholes, both directions (tests/test_scan_form.py checks every LSTM variant)
    torch.manual_seed(3)
    config = ModelConfig(cell="lstm", input_size=1, hidden_size=24, num_layers=2, bidirectional=True, peephole=True)
    lstm = export_model(build_model(config).eval(), None, strategy="native")
    for cell, res in (("gru", _export("gru", "native")), ("rnn-relu", _export("rnn-relu", "native")), ("lstm", lstm)):
        proto = onnx.load_from_string(res.model_bytes)
        op = {"gru": "GRU", "rnn-relu": "RNN", "lstm": "LSTM"}[cell]
        assert rewrite(proto, ("GRU", "RNN", "LSTM")) == {op: 2}  # two stacked layers
        assert not {n.op_type for n in proto.graph.node} & {"GRU", "RNN", "LSTM"}
        x = rng.standard_normal((3, 17, 1)).astype(np.float32)
        feed = {"x": x, "lengths": np.array([17, 9, 1])}
        a = ort.InferenceSession(res.model_bytes).run(None, feed)[0]
        b = ort.InferenceSession(proto.SerializeToString()).run(None, feed)[0]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_over_the_metric_budget_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = _export("lstm", "native")
    src = tmp_path / "m.onnx"
    src.write_bytes(res.model_bytes)
    out = tmp_path / "q.onnx"
    monkeypatch.setattr(drift_mod, "metric_drop", lambda task, a, b: 0.25)  # a model 25% worse
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--out", str(out)])
    assert r.exit_code == ParityError.exit_code, r.output
    assert "over the budget of 1.00%; nothing was written" in r.output
    assert "(per tensor) loses 25.00%" in r.output and "(per channel) loses 25.00%" in r.output  # both were tried
    # and the two last tries: the recurrent products in fp32, then the weights alone in int8
    assert "(per tensor, recurrent products in fp32) loses 25.00%" in r.output
    assert "(weights only, per channel, products in fp32) loses 25.00%" in r.output
    assert not out.exists()


def test_int8_goes_per_channel_only_when_per_tensor_is_over_the_budget(tmp_path: Path) -> None:
    # a model where both schemes lose a little and per channel less (with the default U8U8 products; the fused
    # LSTM op's native export gains under both, so it cannot show the fallback)
    model = _export("lstm", "step").model_bytes
    judged = {"task": TASK, "examples": _examples(), "long_steps": 100}
    drops = [
        quantize(model, "int8", per_channel=pc, max_metric_drop=1.0, **judged).report["metric"]["drop"]
        for pc in (False, True)
    ]
    assert drops[1] < drops[0], drops  # the premise: per channel loses less on this model
    q = quantize(model, "int8", max_metric_drop=drops[0] + 1e-6, **judged)  # per tensor is within: kept
    assert q.report["how"]["per_channel"] is False and "per_channel_because" not in q.report["how"]
    between = (drops[0] + drops[1]) / 2
    q = quantize(model, "int8", max_metric_drop=between, **judged)
    assert q.report["how"]["per_channel"] is True and q.report["metric"]["drop"] == pytest.approx(drops[1])
    assert q.report["how"]["per_channel_because"].startswith("per tensor loses")
    assert "one scale per output channel (per tensor loses" in format_precision(q.report)
    out = tmp_path / "q.onnx"
    with pytest.raises(ParityError, match=r"\(per tensor\) loses .*; \(per channel\) loses .*nothing was written"):
        quantize(model, "int8", out, max_metric_drop=drops[1] / 2, **judged)
    assert not out.exists()
    with pytest.raises(ParityError, match="try --per-channel"):  # asked for per tensor: no second try
        quantize(model, "int8", out, per_channel=False, max_metric_drop=between, **judged)


@pytest.mark.slow
def test_an_fp16_model_outside_the_fp16_tolerance_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgernn.verify import parity

    monkeypatch.setitem(parity.TOLERANCES, "fp16", parity.Tolerance(atol=1e-9, rtol=0.0))
    out = tmp_path / "q.onnx"
    with pytest.raises(ParityError, match="fp16 model differs from the fp32 one"):
        quantize(_export("gru", "loop").model_bytes, "fp16", out, task=TASK, examples=_examples())
    assert not out.exists()


def test_int8_needs_a_judge(tmp_path: Path) -> None:
    bare = export_model(
        build_model(ModelConfig(cell="gru", input_size=1, hidden_size=4)), tmp_path / "m.onnx", strategy="native"
    )
    r = CliRunner().invoke(main, ["quantize", str(bare.path), "--to", "int8", "--out", str(tmp_path / "q.onnx")])
    assert r.exit_code == ConfigError.exit_code and "judged by the task" in r.output
    r = CliRunner().invoke(main, ["quantize", str(bare.path), "--to", "int8", "--out", str(bare.path)])
    assert r.exit_code == ConfigError.exit_code and "is the model being quantised" in r.output


def test_quantize_command_json_and_inspect(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_export("lstm", "step").model_bytes)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "500", "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["precision"] == "int8" and rep["long_drift"]["form"] == "stream" and rep["long_drift"]["steps"] == 500
    assert rep["size_ratio"] > 1.5 and rep["metric"]["name"] == "mse"
    text = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "precision: int8" in text and "one scale per tensor" in text and "task mse" in text


def test_bench_against_reports_ratios(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(_export("lstm", "native").model_bytes)
    b.write_bytes(quantize(a.read_bytes(), "int8", verify=False).model_bytes)
    args = ["bench", str(a), "--against", str(b), "--steps", "20", "--repeats", "3", "--seq-len", "16", "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ratios"]["size"] == pytest.approx(a.stat().st_size / b.stat().st_size)
    assert res["rounds"] == 3 and res["ratios"]["step_speed"] > 0 and res["drift"]["steps"] == 16


@pytest.mark.parametrize("strategy", ["step", "unroll"])
def test_int8_static_for_nnapi_is_one_partition(strategy: str) -> None:
    res = _export("lstm", strategy, target="nnapi")
    q = quantize(
        res.model_bytes, "int8-static", task=TASK, examples=_examples(), long_steps=500, target_check=recheck_structure
    )
    ops = {n.op_type for n in onnx.load_from_string(q.model_bytes).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    (nnapi,) = check_model(q.model_bytes, ["nnapi"])
    assert nnapi.passed and nnapi.partitions == 1, nnapi.summary
    assert q.manifest is not None and q.manifest.target_check["partitions"] == 1
    assert q.report["metric"]["drop"] <= 0.01


def test_compact_writing_keeps_inputs_and_outputs_and_computes_the_same() -> None:
    """Reduced files are written with short names and repeated constants once; the graph is the same graph."""
    from onnx import TensorProto, helper, numpy_helper

    from edgernn.optimize.quantize import _shrink

    a = np.arange(4, dtype=np.float32)
    nodes = [  # inputs called "0" and "1": the first short names, which the renaming must step past
        helper.make_node("Add", ["0", "a_long_generated_name"], ["sum"], name="node_with_a_long_name"),
        helper.make_node("Mul", ["sum", "1"], ["prod"]),
        helper.make_node("Add", ["prod", "the_same_values_again"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("0", "1")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(a, "a_long_generated_name"), numpy_helper.from_array(a, "the_same_values_again")],
        value_info=[helper.make_tensor_value_info("sum", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = model.SerializeToString()
    small = _shrink(onnx.load_from_string(before))
    assert [i.name for i in small.graph.input] == ["0", "1"] and [o.name for o in small.graph.output] == ["y"]
    assert len(small.graph.initializer) == 1 and not small.graph.value_info
    assert all(not n.name for n in small.graph.node)
    names = {x for n in small.graph.node for x in (*n.input, *n.output)}
    assert max(len(x) for x in names - {"0", "1", "y"}) <= 2
    onnx.checker.check_model(small, full_check=True)
    feed = {"0": np.array([1, 2, 3, 4], np.float32), "1": np.array([2, 2, 2, 2], np.float32)}
    want = ort.InferenceSession(before).run(None, feed)[0]
    got = ort.InferenceSession(small.SerializeToString()).run(None, feed)[0]
    np.testing.assert_array_equal(got, want)
    assert len(small.SerializeToString()) < len(before)


def test_onnxruntime_fusions_only_in_files_made_for_onnxruntime() -> None:
    judged = {"task": TASK, "examples": _examples(), "long_steps": 100}
    domains = {}
    for target in ("ort", "portable"):
        q = quantize(_export("gru", "step", target=target).model_bytes, "int8", **judged)
        proto = onnx.load_from_string(q.model_bytes)
        domains[target] = {(n.domain or "ai.onnx", n.op_type) for n in proto.graph.node}
        assert ("fused" in q.report["how"]) == (target == "ort")
    assert ("com.microsoft", "DynamicQuantizeMatMul") in domains["ort"]
    assert all(d == "ai.onnx" for d, _ in domains["portable"]) and ("ai.onnx", "MatMulInteger") in domains["portable"]
