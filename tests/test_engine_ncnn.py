"""The ncnn engine (Tencent, ``pip install ncnn`` + ``pip install --no-deps pnnx``): every strategy the `ncnn`
target claims converts with pnnx, loads in ncnn and matches eager torch within 1e-5 (absolute).

For rnn-tanh, LSTM, GRU (2 layers) and a bidirectional GRU where the strategy exports one:
- `unroll` (20 steps, batch 1, padding as a float mask): three padded sequences, lengths 17, 9 and 1 of 20, each
  against torch given the same lengths;
- `native` (batch 1, no lengths: the target takes none): 20 steps, and 7 steps through the same converted file;
- `step` (plain and ``--fused``): a 20-frame stream, one ncnn call per frame with the state fed back from ncnn's
  own outputs, against one torch call on the whole sequence (and its final state).
With the zoo's default ``readout="last"`` (the head reads the recurrent op's final state), `native` and the fused
step of each model (and 1-layer LSTM and bidirectional GRU) are exported through ``target="ncnn"`` itself, whose
own check runs ncnn against torch. Parity is against torch, never against onnxruntime. The passes the target
applies (``ncnn_forms.for_ncnn``) are checked to be needed (the raw file fails in ncnn) and to leave
onnxruntime's outputs as they were.

Exports are made in the forms the ncnn target claims, through targets that make the same forms today (the export
pipeline does not run the ncnn check yet): `nnapi` for unroll and the plain step (static batch 1, float mask),
`portable` at ``batch=1`` for native without lengths and the fused step; ``for_ncnn`` is applied to every file.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgernn.errors import ExportError, TargetError
from edgernn.export import ExportResult, export_model, get_strategy_class, get_target
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.rewrite import ncnn_forms
from edgernn.rewrite.travel import for_bound_shapes
from edgernn.targets import ncnn as ncnn_target
from edgernn.targets.ncnn import (
    ncnn_available,
    ncnn_report,
    ncnn_runner,
    ncnn_structure,
    pnnx_error,
    to_ncnn,
)
from edgernn.verify.parity import Runner as RunnerType
from edgernn.verify.parity import Tolerance, compare

TOL = Tolerance(atol=1e-5, rtol=0.0)  # 1e-5 absolute
T = 20  # the unroll length and the stream's length
LENGTHS = (17, 9, 1)
MODELS = {  # name -> (cell, bidirectional)
    "rnn-tanh": ("rnn-tanh", False),
    "lstm": ("lstm", False),
    "gru": ("gru", False),
    "gru-bi": ("gru", True),
}
STRATEGIES = get_target("ncnn").strategies  # every strategy the target claims is tested

needs_ncnn = pytest.mark.skipif(
    not ncnn_available(),
    reason="ncnn or pnnx is not installed: pip install 'edgernn[ncnn]' && pip install --no-deps pnnx",
)


@cache
def _model(name: str) -> RecurrentModel:
    cell, bi = MODELS[name]
    torch.manual_seed(list(MODELS).index(name))
    cfg = ModelConfig(
        cell=cell, input_size=3, hidden_size=16, num_layers=2, bidirectional=bi, readout="all", output_size=2
    )
    return build_model(cfg).eval()


@cache
def _export(name: str, strategy: str, fused: bool = False) -> ExportResult:
    """The export in the form the ncnn target claims (see the module's docstring); verify=False: this test
    compares with torch itself, below, through ncnn."""
    model = _model(name)
    if strategy == "unroll":
        return export_model(model, None, strategy="unroll", target="nnapi", verify=False, seq_len=T)
    if strategy == "step" and not fused:
        return export_model(model, None, strategy="step", target="nnapi", verify=False, chunk=1)
    options = {"lengths": False} if strategy == "native" else {"chunk": 1, "fused": True}
    return export_model(model, None, strategy=strategy, target="portable", verify=False, batch=1, **options)


@cache
def _for_ncnn(name: str, strategy: str, fused: bool = False) -> bytes:
    proto = onnx.load_from_string(_export(name, strategy, fused).model_bytes)
    return ncnn_forms.for_ncnn(proto).SerializeToString()


@cache
def _runner(name: str, strategy: str, fused: bool = False) -> RunnerType:
    return ncnn_runner(_for_ncnn(name, strategy, fused))


def _why_not(name: str, strategy: str) -> str | None:
    if MODELS[name][1] and not get_strategy_class(strategy).caps.bidirectional:
        return f"{strategy} exports no bidirectional layer (refused at export, tested in test_strategies)"
    return None


def _x(seed: int, steps: int = T) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, steps, 3)).astype(np.float32)


def _mask(length: int) -> np.ndarray:
    return (np.arange(T) < length).astype(np.float32)[None]


def _torch(name: str, x: np.ndarray, length: int | None = None) -> np.ndarray:
    with torch.no_grad():
        lt = None if length is None else torch.tensor([length])
        return _model(name)(torch.from_numpy(x), lt).numpy()


def _torch_state(name: str, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        _, st = _model(name).rnn(torch.from_numpy(x))
    return [s.numpy() for s in (st if isinstance(st, tuple) else (st,))]


def _assert_close(want: np.ndarray, got: np.ndarray, what: str) -> float:
    a, rel, ok = compare(want, got, TOL)
    assert ok, f"{what}: max abs {a:.3g} (rel {rel:.3g}) over atol {TOL.atol:g}; shapes {want.shape} {got.shape}"
    return a


# ------------------------------------------------------------------------------------------------ the target


def test_the_target_claims_what_ncnn_was_measured_to_take() -> None:
    target = get_target("ncnn")
    assert target.strategies == ("native", "unroll", "step")
    assert target.padding == "float-mask" and target.static_batch and target.batch(None) == 1
    assert target.check == "ncnn" and target.needs == "ncnn" and target.fused_step
    with pytest.raises(ExportError, match="pnnx crashes"):
        target.validate("loop", lengths=False)
    with pytest.raises(ExportError, match="sequence_lens"):
        target.validate("native", lengths=True)
    target.validate("native", lengths=False)


# ------------------------------------------------------------------------------------- parity against torch

CASES = [pytest.param(n, s, id=f"{s}-{n}") for n in MODELS for s in STRATEGIES if s != "step"]


@needs_ncnn
@pytest.mark.parametrize(("name", "strategy"), CASES)
def test_sequences_in_ncnn_match_torch(name: str, strategy: str) -> None:
    """unroll: three padded sequences through the float mask; native (no lengths): 20 steps and 7 steps."""
    why = _why_not(name, strategy)
    if why:
        pytest.skip(why)
    run = _runner(name, strategy)
    err = 0.0
    if strategy == "unroll":
        assert [i.name for i in onnx.load_from_string(_for_ncnn(name, strategy)).graph.input] == ["x", "mask"]
        x = _x(1)
        for length in LENGTHS:
            (got,) = run({"x": x, "mask": _mask(length)})
            err = max(err, _assert_close(_torch(name, x, length), got, f"unroll {name}, length {length} of {T}"))
    else:
        for steps in (T, 7):
            x = _x(steps, steps)
            (got,) = run({"x": x})
            err = max(err, _assert_close(_torch(name, x), got, f"native {name}, {steps} steps"))
    print(f"{strategy} {name}: max abs {err:.2e}")


@needs_ncnn
@pytest.mark.parametrize(
    ("name", "fused"),
    [pytest.param(n, f, id=f"{'fused-' if f else ''}{n}") for f in (False, True) for n in MODELS if not MODELS[n][1]],
)
def test_step_stream_in_ncnn_matches_torch(name: str, fused: bool) -> None:
    """20 frames, one ncnn call each, every state fed back from ncnn's outputs, against one torch call on all 20."""
    res = _export(name, "step", fused)
    run = _runner(name, "step", fused)
    outputs = [o.name for o in onnx.load_from_string(res.model_bytes).graph.output]
    x = _x(2)
    state = {
        s.input: np.zeros([1 if d == "batch" else int(d) for d in s.shape], np.float32) for s in res.manifest.states
    }
    ys = []
    for t in range(T):
        by_name = dict(zip(outputs, run({"x": x[:, t : t + 1], **state}), strict=True))
        ys.append(by_name["y"])
        state = {s.input: by_name[s.output] for s in res.manifest.states}
    err = _assert_close(_torch(name, x), np.concatenate(ys, axis=1), f"step {name}: {T} chained ncnn calls vs torch")
    for s, want in zip(res.manifest.states, _torch_state(name, x), strict=True):
        err = max(err, _assert_close(want, state[s.input], f"step {name}: final {s.output}"))
    print(f"step{' --fused' if fused else ''} {name}: max abs {err:.2e}")


def test_bidirectional_step_is_refused_at_export() -> None:
    with pytest.raises(ExportError, match="bidirectional"):
        export_model(_model("gru-bi"), None, strategy="step", target="nnapi", verify=False, chunk=1)


# ------------------------------------------------------------------------------------------------ the pass


@needs_ncnn
@pytest.mark.parametrize("name", ["rnn-tanh", "lstm"])
def test_unroll_without_the_pass_fails_in_ncnn(name: str) -> None:
    """The Gemm with a runtime addend: pnnx leaves F.linear (and the unbinds around it) unlowered."""
    report = ncnn_structure(_export(name, "unroll").model_bytes)
    assert report.passed is False
    assert "not exists or registered" in report.summary and "F.linear" in report.summary, report.summary


def test_the_pass_keeps_onnxruntimes_outputs_and_the_interface() -> None:
    raw = onnx.load_from_string(_export("lstm", "unroll").model_bytes)
    done = ncnn_forms.for_ncnn(raw)
    assert [n.op_type for n in raw.graph.node].count("Gemm") == [n.op_type for n in done.graph.node].count("Gemm")
    assert not any(n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] for n in done.graph.node)
    assert [i.name for i in raw.graph.input] == [i.name for i in done.graph.input]
    assert [o.name for o in raw.graph.output] == [o.name for o in done.graph.output]
    onnx.checker.check_model(done, full_check=True)
    feed = {"x": _x(3), "mask": _mask(9)}
    a = ort.InferenceSession(raw.SerializeToString()).run(None, feed)[0]
    b = ort.InferenceSession(done.SerializeToString()).run(None, feed)[0]
    assert np.abs(a - b).max() <= 1e-6
    assert any(n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] for n in raw.graph.node)  # untouched


def test_the_pass_scales_the_addend_by_beta() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, k]) for n, k in (("a", 3), ("c", 2))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    done = ncnn_forms.gemm_addend_as_add(model)
    assert [n.op_type for n in done.graph.node] == ["Gemm", "Mul", "Add"]
    feed = {"a": np.array([[1.0, -2.0, 3.0]], np.float32), "c": np.array([[0.25, -1.5]], np.float32)}
    want = 0.5 * feed["a"] @ w.T + 2.0 * feed["c"]
    (got,) = ort.InferenceSession(done.SerializeToString()).run(None, feed)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------------------- readout "last", through the target

LAST = {  # id -> (cell, bidirectional, layers)
    "rnn-tanh": ("rnn-tanh", False, 2),
    "lstm": ("lstm", False, 2),
    "gru": ("gru", False, 2),
    "gru-bi": ("gru", True, 2),
    "lstm-1layer": ("lstm", False, 1),
    "gru-bi-1layer": ("gru", True, 1),
}


@cache
def _last(name: str) -> RecurrentModel:
    """The zoo's default readout: the top layer's final state (Y_h of the recurrent op), then the head."""
    cell, bi, layers = LAST[name]
    torch.manual_seed(10 + list(LAST).index(name))
    cfg = ModelConfig(cell=cell, input_size=3, hidden_size=16, num_layers=layers, bidirectional=bi)
    assert cfg.readout == "last"
    return build_model(cfg).eval()


def _raw_last(name: str, strategy: str) -> onnx.ModelProto:
    """The export in the form the ncnn target makes, before its graph pass (``for_ncnn``)."""
    options = {"lengths": False} if strategy == "native" else {"chunk": 1, "fused": True}
    # openvino's target: the masking form with no engine pass (portable's form has the final-state pass already)
    res = export_model(_last(name), None, strategy=strategy, target="openvino", verify=False, batch=1, **options)
    return for_bound_shapes(onnx.load_from_string(res.model_bytes))  # what NcnnTarget.graph_form does first


LAST_CASES = [pytest.param(n, "native", id=f"native-{n}") for n in LAST] + [
    pytest.param(n, "step-fused", id=f"step-fused-{n}") for n in LAST if not LAST[n][1]
]


@needs_ncnn
@pytest.mark.parametrize(("name", "strategy"), LAST_CASES)
def test_readout_last_exports_for_ncnn_and_matches_torch(name: str, strategy: str) -> None:
    """The export's own check: pnnx converts, ncnn loads, and ncnn's outputs on the parity cases match torch."""
    options = {"fused": True} if strategy == "step-fused" else {}
    res = export_model(_last(name), None, strategy=strategy.split("-")[0], target="ncnn", **options)
    ours = [c for c in res.report.comparisons if c.candidate == "ncnn"]
    assert res.report.passed is True and ours, res.report.summary
    err = max(c.max_abs for c in ours)
    assert err <= TOL.atol
    print(f"{strategy} {name} (readout last): ncnn max abs {err:.2e} over {len(ours)} comparisons")


@needs_ncnn
@pytest.mark.parametrize("name", ["lstm", "gru", "gru-bi"])
def test_readout_last_without_the_pass_fails_in_ncnn(name: str) -> None:
    """pnnx leaves the op whose Y is unused (and an LSTM with two of its three outputs) unlowered."""
    report = ncnn_structure(_raw_last(name, "native").SerializeToString())
    assert report.passed is False and "load_param" in report.summary and "failed" in report.summary, report.summary


@needs_ncnn
def test_a_lower_bidirectional_layers_own_y_h_gives_wrong_numbers_in_ncnn() -> None:
    """Why the pass takes every read Y_h from Y, not only the top layer's: with the lower layer's Y_h read from
    the op (as exported), ncnn loads the file but the readout's Concat joins that 3-D Mat with the 2-D slices."""
    done = ncnn_forms.final_state_from_sequence(_raw_last("gru-bi", "native"))
    lower = next(n for n in done.graph.node if n.op_type == "GRU")
    made = next(n for n in done.graph.node if n.op_type == "Concat" and n.name.startswith(f"{lower.name}_Y_h"))
    lower.output.append(made.output[0])  # the op's own Y_h again, in place of the slices' Concat
    done.graph.node.remove(made)
    model = done.SerializeToString()
    x = _x(6)
    with torch.no_grad():
        want = _last("gru-bi")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort.InferenceSession(model).run(None, {"x": x})[0], want, atol=1e-5)
    (got,) = ncnn_runner(model)({"x": x})
    assert np.abs(got.reshape(want.shape) - want).max() > 1e-3


@pytest.mark.parametrize(("name", "strategy"), [("gru-bi", "native"), ("lstm", "native"), ("lstm", "step")])
def test_final_state_pass_keeps_onnxruntimes_outputs_bit_for_bit(name: str, strategy: str) -> None:
    raw = _raw_last(name, strategy)
    done = ncnn_forms.final_state_from_sequence(raw)
    onnx.checker.check_model(done, full_check=True)
    assert [i.name for i in raw.graph.input] == [i.name for i in done.graph.input]
    assert [o.name for o in raw.graph.output] == [o.name for o in done.graph.output]
    recurrent = [n for n in done.graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
    readers = {i for n in done.graph.node for i in n.input} | {o.name for o in done.graph.output}
    for node in recurrent:  # Y is read; Y_h never is (it comes from Y); an LSTM outputs Y alone or all three
        assert node.output[0] in readers and (len(node.output) < 2 or node.output[1] not in readers)
        assert len(node.output) in (1, 3)
    feed = {
        i.name: np.random.default_rng(7)
        .standard_normal([d.dim_value or T for d in i.type.tensor_type.shape.dim])
        .astype(np.float32)
        for i in raw.graph.input
    }
    want = ort.InferenceSession(raw.SerializeToString()).run(None, feed)
    got = ort.InferenceSession(done.SerializeToString()).run(None, feed)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(n.op_type in ("GRU", "LSTM") and len(n.output) > 1 and n.output[1] for n in raw.graph.node)  # untouched


# ------------------------------------------------------------------------------------ the check and its errors


@needs_ncnn
def test_ncnn_report_passes_and_can_fail() -> None:
    x = _x(4)
    feeds = [{"x": x, "mask": _mask(n)} for n in LENGTHS]
    want = [[_torch("gru", x, n)] for n in LENGTHS]
    model = _for_ncnn("gru", "unroll")
    good = ncnn_report(model, feeds, want, labels=[f"length {n}" for n in LENGTHS])
    assert good.passed is True, good.summary
    assert good.parity is not None and good.parity["max_abs"] <= TOL.atol
    bad = ncnn_report(model, feeds, [[w[0] + 2e-5] for w in want], labels=[f"length {n}" for n in LENGTHS])
    assert bad.passed is False and "length 17 output 0 (y) differs" in bad.summary, bad.summary


@needs_ncnn
def test_ncnn_report_streams_with_the_state_fed_back() -> None:
    res = _export("lstm", "step")
    x = _x(5)
    want = _torch("lstm", x)
    zeros = {s.input: np.zeros((2, 1, 16), np.float32) for s in res.manifest.states}
    feeds = [{"x": x[:, t : t + 1], **zeros} for t in range(T)]  # states after the first frame come from ncnn
    states = {s.input: s.output for s in res.manifest.states}
    report = ncnn_report(_for_ncnn("lstm", "step"), feeds, [[want[:, t : t + 1]] for t in range(T)], states=states)
    assert report.passed is True and f"a stream of {T} frames" in report.summary, report.summary
    # the same frames without feeding the state back: every frame starts from zeros, which torch does not
    cut = ncnn_report(_for_ncnn("lstm", "step"), feeds, [[want[:, t : t + 1]] for t in range(T)])
    assert cut.passed is False and "case 1 output 0 (y) differs" in cut.summary, cut.summary


@needs_ncnn
def test_ncnn_report_names_pnnxs_crash_and_the_node_on_a_scan() -> None:
    loop = export_model(_model("gru"), None, strategy="loop", target="portable", verify=False, batch=1)
    report = ncnn_report(loop.model_bytes, [{}], [[]])
    assert report.passed is False
    assert "pnnx crashed (SIGSEGV)" in report.summary and "op Scan" in report.summary, report.summary
    assert "\n" not in report.summary


@needs_ncnn
def test_a_lengths_mask_in_comparisons_is_named() -> None:
    """The masking form (Less/Where on lengths) converts, but ncnn has no layer for pnnx's torch.lt."""
    masked = export_model(
        _model("rnn-tanh"), None, strategy="unroll", target="portable", verify=False, batch=1, seq_len=T
    )
    report = ncnn_structure(masked.model_bytes)
    assert report.passed is False and "layer torch.lt not exists or registered" in report.summary, report.summary


@needs_ncnn
def test_to_ncnn_writes_the_param_and_bin_only(tmp_path: Path) -> None:
    param, weights = to_ncnn(_for_ncnn("gru", "step"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.ncnn.bin", "model.ncnn.param"]
    assert Path(param).read_text(encoding="utf-8").split()[0] == "7767517"  # ncnn's .param magic
    assert os.path.getsize(weights) >= 4 * sum(p.numel() for p in _model("gru").parameters())  # fp32 weights


def test_without_ncnn_the_report_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ncnn_target, "pnnx_path", lambda: None)
    report = ncnn_report(b"unused", [{}], [[]])
    assert report.passed is None and "pip install 'edgernn[ncnn]'" in report.summary
    assert "--no-deps pnnx" in report.summary
    with pytest.raises(TargetError, match="not installed"):
        to_ncnn(b"unused", "/nonexistent")


def test_pnnx_error_keeps_the_first_error_line_and_the_node() -> None:
    out = (
        "fold_constants ...                \x1b[0;93m2026-12-07 04:06:06.075946511 [W:onnxruntime:pnnx, "
        "cpuid_info.cc:105 LogEarlyWarning] Unknown CPU vendor. cpuinfo_vendor value: 0\x1b[m\n"
        'ort CreateSession failed This is an invalid model. In Node, ("node_scan__1", Scan, "", -1) : bad\n'
        "name: node_addmm OpType: Gemm\n"
    )
    got = pnnx_error(out)
    assert got.startswith("ort CreateSession failed This is an invalid model.") and "Unknown CPU" not in got
    assert got.endswith("(node node_scan__1, op Scan)")
    shape = "ort CreateSession failed Node (Reshape_3) Op (Reshape) [ShapeInferenceError] Invalid Target shape"
    assert pnnx_error(shape).endswith("(node Reshape_3, op Reshape)")
    assert pnnx_error("############# pass_level1 onnx\nfold_constants ...\n") == "stopped in fold_constants"
