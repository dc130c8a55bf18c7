"""The MNN engine (Alibaba, ``pip install MNN``): every strategy the `mnn` target claims converts with MNN's own
converter (``edgernn.targets.mnn.to_mnn``: the wheel's compiled extension in a child process, never the
console script), loads in MNN and matches eager torch within 1e-5.

For rnn-tanh, LSTM, GRU (2 layers) and a bidirectional GRU: a padded batch (3 sequences, lengths 17, 9, 1, where
the form takes lengths; native on this target takes none and runs the batch at full length), and for `step` a
20-frame stream with the state fed back through MNN against one torch call on the whole sequence. Parity is
against torch, never against onnxruntime.

Exports are made for target `portable` (same padding form as `mnn`: masking in plain ops, native without
lengths) until the export pipeline runs the mnn check itself. The MNN behaviours the target's choices rest on
(sequence_lens computed as data, the LSTM converter's crash, no Scan) are measured here too, with their numbers,
so a test fails when MNN changes and docs/engines/mnn.md is out of date.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgernn.errors import ExportError, TargetError
from edgernn.export import ExportResult, export_model, get_strategy_class, get_target
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.targets import mnn
from edgernn.targets.mnn import (
    CONVERTER_FLAGS,
    converter_error,
    mnn_available,
    mnn_report,
    mnn_runner,
    mnn_structure,
    run_converter,
    to_mnn,
)
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
STRATEGIES = get_target("mnn").strategies  # every strategy the target claims is tested

needs_mnn = pytest.mark.skipif(not mnn_available(), reason="MNN is not installed: pip install 'edgernn[mnn]'")


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
    if target == "ort":  # native with ONNX's sequence_lens: the form the mnn target refuses
        options = {"lengths": True}
    # verify=False: this test compares with torch itself, below, through MNN
    return export_model(_model(name), None, strategy=strategy, target=target, verify=False, **options)


def _why_not(name: str, strategy: str) -> str | None:
    if MODELS[name][1] and not get_strategy_class(strategy).caps.bidirectional:
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


def _stream(name: str, fused: bool = False) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    """T one-frame feeds (zero states in the first; later states are replaced by MNN's own) and, per frame,
    torch's outputs in the step graph's output order: y at that frame from one call on the whole sequence, and
    the states after it."""
    res = _export(name, "step", fused)
    outputs = [o.name for o in onnx.load_from_string(res.model_bytes).graph.output]
    x = _x(2)
    whole = _torch(name, x)
    zeros = {s.input: np.zeros([B if d == "batch" else d for d in s.shape], np.float32) for s in res.manifest.states}
    feeds, expected = [], []
    for t in range(T):
        by_name = {"y": whole[:, t : t + 1]}
        by_name |= {s.output: v for s, v in zip(res.manifest.states, _torch_state(name, x[:, : t + 1]), strict=True)}
        feeds.append({"x": x[:, t : t + 1], **zeros})
        expected.append([by_name[o] for o in outputs])
    return feeds, expected


CASES = [pytest.param(n, s, id=f"{s}-{n}") for n in MODELS for s in STRATEGIES]


# ------------------------------------------------------------------------------------- parity against torch


@needs_mnn
@pytest.mark.parametrize(("name", "strategy"), [c for c in CASES if c.values[1] != "step"])
def test_padded_batch_in_mnn_matches_torch(name: str, strategy: str) -> None:
    why = _why_not(name, strategy)
    if why:
        pytest.skip(why)
    feed, want = _feed(name, strategy)
    if strategy != "native":  # the masking forms take the lengths; native on this target takes none
        assert "lengths" in feed
    (got,) = mnn_runner(_export(name, strategy).model_bytes)(feed)
    err = _assert_close(want, got, f"{strategy} {name} through MNN vs torch")
    print(f"{strategy} {name}: max abs {err:.2e}")


@needs_mnn
@pytest.mark.parametrize(
    ("name", "fused"),
    [(n, False) for n in MODELS if _why_not(n, "step") is None] + [("gru", True), ("lstm", True)],
)
def test_step_stream_in_mnn_matches_torch(name: str, fused: bool) -> None:
    """20 frames, one MNN call each, every state MNN's own from the call before, against torch on the whole
    sequence (``fused``: the step as ONNX's GRU/LSTM op without sequence_lens, which MNN takes)."""
    res = _export(name, "step", fused)
    feeds, expected = _stream(name, fused)
    states = [(s.input, s.output) for s in res.manifest.states]
    report = mnn_report(res.model_bytes, feeds, expected, TOL, states=states)
    assert report.passed is True, report.summary
    assert report.parity is not None and len(report.parity["cases"]) == T * (1 + len(states))
    assert "a stream of 20 calls" in report.summary
    print(f"step{' --fused' if fused else ''} {name}: max abs {report.parity['max_abs']:.2e}")


@needs_mnn
def test_one_converted_file_runs_every_batch_size() -> None:
    """MNN resizes a loaded module to each call's shapes: batch 1 and 5 through the file converted once."""
    run = mnn_runner(_export("lstm", "unroll").model_bytes)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, T, 3)).astype(np.float32)
        lengths = np.arange(T, T - batch, -1, dtype=np.int64)
        (got,) = run({"x": x, "lengths": lengths})
        _assert_close(_torch("lstm", x, lengths), got, f"unroll lstm batch {batch}")


# ----------------------------------------------------------------------------------------------- the report


@needs_mnn
def test_mnn_report_passes_and_can_fail() -> None:
    """The target's check: passes against torch's outputs, fails (naming the output) on a wrong reference, and
    a stream fails when a state is not what torch's is."""
    feed, want = _feed("lstm", "unroll")
    model = _export("lstm", "unroll").model_bytes
    good = mnn_report(model, [feed], [[want]], labels=["B3 padded"])
    assert good.passed is True, good.summary
    assert good.parity is not None and good.parity["max_abs"] <= TOL.atol
    bad = mnn_report(model, [feed], [[want + 1e-3]], labels=["B3 padded"])
    assert bad.passed is False and "B3 padded output y differs" in bad.summary, bad.summary
    feeds, expected = _stream("gru")
    expected[-1][1] = expected[-1][1] + 1e-3  # the final state
    res = _export("gru", "step")
    stream = mnn_report(res.model_bytes, feeds, expected, states=[(s.input, s.output) for s in res.manifest.states])
    assert stream.passed is False and "case 19 output h_out differs" in stream.summary, stream.summary


@needs_mnn
def test_the_state_is_fed_back_from_mnn_itself() -> None:
    """Without the states fed back, every frame starts from zeros and the stream cannot match torch."""
    res = _export("gru", "step")
    feeds, expected = _stream("gru")
    report = mnn_report(res.model_bytes, feeds, expected)  # states=None: the zeros given are used each call
    assert report.passed is False and "case 1 output" in report.summary, report.summary


@needs_mnn
def test_mnn_report_names_mnns_error_and_the_node_on_a_loop_export() -> None:
    """MNN has no Scan: the report carries the converter's line and the Scan node of the file, in one line."""
    res = export_model(_model("gru"), None, strategy="loop", target="portable", verify=False)
    feed = {"x": _x(1), "lengths": LENGTHS}
    report = mnn_report(res.model_bytes, [feed], [[_torch("gru", _x(1), LENGTHS)]])
    assert report.passed is False
    assert report.summary.startswith("MNN's converter: These Op Not Support: ONNX::Scan (node '"), report.summary
    assert "Scan)" in report.summary and "\n" not in report.summary
    structure = mnn_structure(res.model_bytes)
    assert structure.passed is False and structure.summary == report.summary
    assert mnn_structure(_export("gru", "native").model_bytes).passed is True


def test_mnn_report_without_mnn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "MNN", None)  # find_spec("MNN") -> None, import MNN -> ImportError
    report = mnn_report(_export("gru", "native").model_bytes, [{}], [[]])
    assert report.passed is None and "pip install 'edgernn[mnn]'" in report.summary
    assert mnn_structure(_export("gru", "native").model_bytes).passed is None
    with pytest.raises(TargetError, match=r"pip install 'edgernn\[mnn\]'"):
        to_mnn(b"unused", "/nonexistent")


def test_converter_error_keeps_mnns_line_and_names_the_node() -> None:
    model = _export("gru", "native", target="ort").model_bytes  # a GRU node with sequence_lens
    gru = next(n.name for n in onnx.load_from_string(model).graph.node if n.op_type == "GRU")
    out = "Start to Optimize the MNN Net...\nDon't support sequence_lens input, all batch have seq_length\n"
    assert (
        converter_error(out, model)
        == f"Don't support sequence_lens input, all batch have seq_length (node {gru!r} GRU)"
    )
    out = "Convert Onnx's Op val_18 , type = GRU, failed, may be some node is not const\n"
    assert converter_error(out) == f"{out.strip()} (node 'val_18' GRU)"
    assert converter_error("[03:56:23] :220: These Op Not Support: ONNX::Scan \n") == "These Op Not Support: ONNX::Scan"
    ok = "Load activations error for val_16\nThe model has subgraphs, please use MNN::Express::Module to run it\n"
    assert converter_error(ok) is None  # what MNN prints on files it converts and runs right


# ------------------------------------------------------------------------ what the converter may not do here


def test_the_converter_child_is_stopped_before_any_network_or_process() -> None:
    """The converter runs under an audit hook: a socket or a process started in the child ends it (exit 70),
    so MNN's usage logger (``MNN.tools.utils.log``: pip install, then an HTTPS request) could not run."""
    for attempt in ("import socket; socket.socket()", "import os; os.system('true')"):
        p = subprocess.run([sys.executable, "-c", mnn._GUARD + attempt], capture_output=True, text=True, timeout=60)
        assert p.returncode == 70 and "stopped" in p.stderr, (attempt, p.returncode, p.stderr)


@needs_mnn
def test_checking_imports_neither_mnn_tools_nor_the_logging_sdk(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from edgernn.targets.mnn import mnn_structure\n"
        f"r = mnn_structure(open({str(tmp_path / 'm.onnx')!r}, 'rb').read())\n"
        "print(r.passed, sorted(m for m in sys.modules if m.startswith('MNN.tools') or 'aliyun' in m))\n"
    )
    (tmp_path / "m.onnx").write_bytes(_export("gru", "native").model_bytes)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "True []"
    assert "The device supports" not in p.stdout  # MNN's import banner is captured, not printed


# ------------------------------------------------------------------- the MNN behaviours the target rests on


def _killed_by_a_signal(returncode: int) -> bool:
    """How the converter's crash on an LSTM's While lowering ends: it corrupts memory, and what stops it differs
    from run to run: SIGSEGV (-11) mostly, SIGBUS (-7) where the stray address is mapped but not backed, SIGABRT (-6)
    where glibc's allocator finds its heap corrupted ("free(): corrupted unsorted chunks")."""
    return returncode < 0


@needs_mnn
@pytest.mark.parametrize("name", ["rnn-tanh", "lstm", "gru"])
def test_mnn_computes_the_padding_of_a_runtime_sequence_lens_as_data(name: str, tmp_path: Path) -> None:
    """Why the mnn target never relies on ONNX's sequence_lens (native with lengths is refused; padding is
    masked in plain ops). to_mnn refuses the file; MNN's converter itself, run without judging, either warns and
    writes a file that computes every sequence at full length (steps before each length right, padded steps
    wrong), or (GRU with MNN's RNN kernels) writes nothing. If MNN starts honouring sequence_lens, this fails."""
    model = _export(name, "native", target="ort").model_bytes
    with pytest.raises(TargetError, match="sequence_lens"):
        to_mnn(model, tmp_path / "judged")
    x = _x(1)
    want = _torch(name, x, LENGTHS)
    valid = np.arange(T)[None, :] < LENGTHS[:, None]  # (batch, time): the steps inside each sequence
    errors = {}
    for label, flags in (("MNN RNN kernels", CONVERTER_FLAGS), ("MNN While lowering", ())):
        done = run_converter(model, tmp_path / label.replace(" ", "-"), flags)
        if name == "lstm" and not flags:
            # the While lowering's crash, tested below
            assert _killed_by_a_signal(done.returncode) and done.path is None
            continue
        if done.path is None:
            assert name == "gru" and flags and "Don't support sequence_lens" in done.output, done.output
            continue
        (got,) = mnn_runner(model, done.path)({"x": x, "lengths": LENGTHS})
        inside = float(np.abs(got - want)[valid].max())
        padded = float(np.abs(got - want)[~valid].max())
        assert inside <= TOL.atol, f"{label}: steps inside the lengths differ by {inside:.3g}"
        assert padded > 0.05, f"{label}: MNN now computes the padded steps right (max abs {padded:.3g})"
        errors[label] = padded
        if name != "gru":
            assert "not support sequence_lens" in done.output
    print(f"{name}: padded steps off by " + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))
    assert errors, "MNN converted no file with sequence_lens"


def _lstm_node_file(outputs: tuple[str, ...]) -> bytes:
    """One ONNX LSTM node (hidden 4, input 3, dynamic time and batch), naming ``outputs`` of Y, Y_h, Y_c."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((1, 16, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R"),
        numpy_helper.from_array(np.zeros((1, 32), np.float32), "B"),
    ]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], list(outputs), hidden_size=4)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["time", "batch", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["time", 1, "batch", 4])
    model = helper.make_model(
        helper.make_graph([node], "lstm", [x], [y], weights), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@needs_mnn
def test_mnns_lstm_while_lowering_crashes_the_converter_unless_all_outputs_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/engines/mnn.md's reproduction: one ONNX LSTM node naming only Y (as torch's exporter writes it)
    crashes MNN's converter (killed by a signal, nothing written) unless --useOriginRNNImpl; all three outputs named, it
    converts. If MNN fixes it, this fails and the flag can be reconsidered."""
    crash = run_converter(_lstm_node_file(("Y",)), tmp_path / "y", ())
    assert _killed_by_a_signal(crash.returncode) and crash.path is None, (crash.returncode, crash.output[-300:])
    assert "Use While to compute LSTM" in crash.output
    assert run_converter(_lstm_node_file(("Y", "Y_h", "Y_c")), tmp_path / "all", ()).path is not None
    assert run_converter(_lstm_node_file(("Y",)), tmp_path / "flag", CONVERTER_FLAGS).path is not None
    monkeypatch.setattr(mnn, "CONVERTER_FLAGS", ())  # to_mnn as it would be without the flag
    with pytest.raises(TargetError, match=r"MNN's converter crashed \(signal \d+\) without writing a file"):
        to_mnn(_lstm_node_file(("Y",)), tmp_path / "judged")


# ------------------------------------------------------------------------------------ the target as data


def test_mnn_target_masks_padding_and_refuses_loop_and_native_with_lengths() -> None:
    target = get_target("mnn")
    assert target.strategies == ("native", "unroll", "step")
    assert target.padding == "masking" and target.check == "mnn" and target.needs == "mnn"
    assert target.fused_step and not target.static_batch
    with pytest.raises(ExportError, match="does not honour ONNX's sequence_lens"):
        target.validate("native", lengths=True)
    target.validate("native", lengths=False)
    with pytest.raises(ExportError, match=r"no ONNX Scan .*Use one of the strategies native, unroll, step"):
        target.validate("loop", lengths=True)


@pytest.mark.parametrize("cell", ["rnn-tanh", "lstm", "gru"])
def test_bidirectional_last_step_readout_runs_on_mnn(cell: str) -> None:
    """MNN 3.6 returns a wrong reverse-direction Y_h (a bidirectional GRU's last-step readout was off by 0.25);
    the mnn target reads the final states from the output sequence instead, and the export's own check on MNN
    passes against torch. The pass leaves onnxruntime's outputs as they were."""
    import onnxruntime as ort

    from edgernn.rewrite.ncnn_forms import final_state_from_sequence

    torch.manual_seed(7)
    cfg = ModelConfig(cell=cell, input_size=3, hidden_size=8, num_layers=2, bidirectional=True)
    model = build_model(cfg).eval()
    result = export_model(model, None, strategy="native", target="mnn")
    assert result.report.passed and "mnn" in {c.candidate for c in result.report.comparisons}
    assert result.report.max_abs <= 1e-5
    plain = export_model(model, None, strategy="native", target="ort", lengths=False, verify=False).model_bytes
    moved = final_state_from_sequence(onnx.load_from_string(plain)).SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 13, 3)).astype(np.float32)
    a = ort.InferenceSession(plain, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    b = ort.InferenceSession(moved, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
    # the final states are now read from the sequences (the pass changed the graph)
    assert (
        len(onnx.load_from_string(moved).graph.node)
        > len(onnx.load_from_string(plain).graph.node)
        > [n.op_type for n in onnx.load_from_string(plain).graph.node].count("Gather")
    )


# ------------------------------------------------------------------------------------- fp16 files: the zero state


def _fill_file(dtype: type) -> bytes:
    """x (batch, 8) + Cast(ConstantOfShape(Shape(x), value=1.5 in ``dtype``)) to fp32: y = x + 1.5."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "ConstantOfShape", ["s"], ["z"], "fill", value=numpy_helper.from_array(np.full(1, 1.5, dtype))
        ),
        helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "zf"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "fill", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def test_fp32_fills_computes_the_same_tensor_with_an_fp32_fill() -> None:
    """The pass the mnn (and portable) target writes its fp16 files in: an fp16 fill becomes an fp32 fill and a
    Cast to fp16, onnxruntime's outputs bit for bit the same; an fp32 fill and a file without fills are left as
    they are (the same object back)."""
    import onnxruntime as ort

    from edgernn.rewrite.travel import fp32_fills

    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    before = onnx.load_from_string(_fill_file(np.float16))
    after = fp32_fills(before)
    fills = [n for n in after.graph.node if n.op_type == "ConstantOfShape"]
    assert len(fills) == 1 and fills[0].attribute[0].t.data_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in after.graph.node] == ["Shape", "ConstantOfShape", "Cast", "Cast", "Add"]
    assert before.graph.node[1].attribute[0].t.data_type == onnx.TensorProto.FLOAT16  # its argument untouched
    onnx.checker.check_model(after, full_check=True)
    runs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (before, after)
    ]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[1], x + 1.5)
    assert fp32_fills(after) is after
    kept = onnx.load_from_string(_fill_file(np.float32))
    assert fp32_fills(kept) is kept


@needs_mnn
def test_mnns_converter_reads_an_fp16_fill_as_fp32(tmp_path: Path) -> None:
    """docs/engines/mnn.md: MNN's converter reads a ConstantOfShape's fp16 fill value as the first bytes of an
    fp32, so a fill of 1.5 is not 1.5 in MNN (here: the two bytes past it make a number near 0; in a larger file
    they were other bytes on each conversion). Written with ``fp32_fills``, MNN fills 1.5 exactly. If MNN
    starts reading the fill right, the first half fails and the pass can go."""
    from edgernn.rewrite.travel import fp32_fills

    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    model = _fill_file(np.float16)
    (got,) = mnn_runner(model)({"x": x})
    assert not np.allclose(got, x + 1.5, atol=0.1), "MNN now fills fp16 values right"
    (got,) = mnn_runner(fp32_fills(onnx.load_from_string(model)))({"x": x})
    assert np.array_equal(got, x + 1.5)


@needs_mnn
def test_an_fp16_unroll_file_for_mnn_matches_torch_on_every_load() -> None:
    """An unroll export for the mnn target (its zero state a ConstantOfShape), made fp16 by `edgernn quantize`:
    the file holds no fp16 fill, and MNN, converting and loading it three times, matches torch on the padded
    batch within fp16's tolerance each time. Before the mnn target wrote the fp32 fill, MNN's state started at
    whatever bytes lay past the fill and most loads returned numbers up to 1e38."""
    from edgernn.graphs import all_graphs
    from edgernn.optimize.quantize import quantize
    from edgernn.targets import reduced_form
    from edgernn.verify.parity import tolerance

    result = export_model(_model("gru"), None, strategy="unroll", target="mnn", seq_len=T)
    reduced = quantize(result.model_bytes, "fp16", verify=False, timing=False, target_form=reduced_form).model_bytes
    proto = onnx.load_from_string(reduced)
    fills = [
        n.attribute[0].t.data_type for g in all_graphs(proto.graph) for n in g.node if n.op_type == "ConstantOfShape"
    ]
    assert fills and set(fills) == {onnx.TensorProto.FLOAT}
    feed, want = _feed("gru", "unroll")
    for load in range(3):
        (got,) = mnn_runner(reduced)(feed)
        a, rel, ok = compare(want, got, tolerance("fp16"))
        assert ok, f"load {load + 1}: fp16 unroll on MNN vs torch: max abs {a:.3g} (rel {rel:.3g})"


# ------------------------------------------------------------------------------------- int8 files: the zero state


@needs_mnn
def test_int8_for_mnn_is_the_weights_alone_and_streams_from_a_zero_state() -> None:
    """Why `quantize --to int8` for the mnn target stores the weights alone (the target's ``int8_products``): the
    int8-products file (DynamicQuantizeLinear and MatMulInteger, as for onnxruntime) returns NaN from MNN on the
    first frame of a stream, whose state is all zeros (MNN divides by the zero range of an all-zero tensor; the
    specification's onnxruntime returns 0). The file `quantize` writes for mnn streams 20 frames from that state
    on MNN, its own states fed back, within int8's drift budget of torch on the whole sequence. If MNN starts
    computing the products from zero, the first half fails and the target can take them."""
    from edgernn.optimize.quantize import DEFAULT_MAX_DRIFT, quantize
    from edgernn.targets import int8_products_refused, reduced_form
    from edgernn.verify.parity import Tolerance

    result = export_model(_model("gru"), None, strategy="step", target="mnn", chunk=1)
    feeds, expected = _stream("gru")
    states = [(s.input, s.output) for s in result.manifest.states]
    products = quantize(result.model_bytes, "int8", verify=False, timing=False, target_form=reduced_form)
    assert "MatMulInteger" in {n.op_type for n in onnx.load_from_string(products.model_bytes).graph.node}
    (first, *_) = mnn_runner(products.model_bytes)(feeds[0])
    assert np.isnan(first).all(), "MNN now computes int8 products from a zero state"

    made = quantize(
        result.model_bytes,
        "int8",
        verify=False,
        timing=False,
        target_form=reduced_form,
        target_int8=int8_products_refused,
    )
    assert made.report["how"]["weight_only"] is True
    assert "NaN" in made.report["how"]["weight_only_because"]
    budget = DEFAULT_MAX_DRIFT * max(float(np.abs(e).max()) for frame in expected for e in frame)
    report = mnn_report(made.model_bytes, feeds, expected, Tolerance(atol=budget, rtol=0.0), states=states)
    assert report.passed is True, report.summary
    print(
        f"int8 weights alone on MNN, 20 frames from zero: max abs {report.parity['max_abs']:.3g} (budget {budget:.3g})"
    )


@needs_mnn
def test_quantize_cli_writes_the_weights_alone_for_mnn_and_says_why(tmp_path: Path) -> None:
    """`edgernn quantize --to int8` on an export for mnn: the weights-only file, the reason in its report and
    printed; `--per-tensor` (int8 products' scale) is refused with exit 2 and nothing is written."""
    from click.testing import CliRunner

    from edgernn.cli import main

    src, out = tmp_path / "step.onnx", tmp_path / "step.int8.onnx"
    export_model(_model("gru"), src, strategy="step", target="mnn", chunk=1)
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--no-verify", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "only the" in r.output and "returns NaN for an all-zero tensor" in r.output
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Cast" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    out.unlink()
    r = CliRunner().invoke(
        main, ["quantize", str(src), "--to", "int8", "--no-verify", "--per-tensor", "--out", str(out)]
    )
    assert r.exit_code == 2 and "drop --per-tensor" in r.output and not out.exists(), r.output
