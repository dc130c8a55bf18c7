"""Edge targets: exports for NNAPI, CoreML, OpenVINO and the spec-only `portable` target, each checked by the
target's own tool on every export, and `edgernn check` / `edgernn package` on any file.

The mobile checks use onnxruntime's usability checker (one partition covering every node); OpenVINO compiles the
file and runs it in fp32; `portable` runs it in onnx's reference implementation. Padded batches are compared with
each sequence run alone in eager torch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli import main
from edgernn.errors import ConfigError, ExportError, ParityError, TargetError
from edgernn.export import ExportResult, export_model, get_target, target_names
from edgernn.export.check import check_model
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.rewrite import hygiene
from edgernn.runtime import Model
from edgernn.verify.parity import TOLERANCES, compare

TOL = TOLERANCES["fp32"]
CELLS = ("rnn-tanh", "lstm", "gru")
MOBILE = ("nnapi", "coreml")
T = 12  # the unroll length of the target exports
ROOT = Path(__file__).resolve().parents[1]


@cache
def _model(cell: str, readout: str = "last") -> RecurrentModel:
    torch.manual_seed(CELLS.index(cell) if cell in CELLS else 7)
    cfg = ModelConfig(cell=cell, input_size=3, hidden_size=8, num_layers=2, readout=readout, output_size=2)
    return build_model(cfg).eval()


@cache
def _export(cell: str, strategy: str, target: str, steps: int | None = None, batch: int | None = None) -> ExportResult:
    options = {"unroll": {"seq_len": steps or T}, "step": {"chunk": steps or 1}}.get(strategy, {})
    return export_model(_model(cell), None, strategy=strategy, target=target, batch=batch, **options)


def _alone(model: RecurrentModel, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each sequence run by itself in eager torch, cut to its own length (no padding anywhere)."""
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[b : b + 1, : lengths[b]])).numpy() for b in range(len(x))])


def _assert_close(want: np.ndarray, got: np.ndarray, what: str) -> None:
    a, rel, ok = compare(want, got, TOL)
    assert ok, f"{what}: max abs {a:.3g} (rel {rel:.3g}) over atol {TOL.atol:g}"


# ------------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_builtin_targets_whatever_was_imported_first() -> None:
    code = "import edgernn.targets.coreml\nfrom edgernn.targets import target_names\nprint(','.join(target_names()))\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ort,nnapi,coreml,openvino,portable,triton,tract,mnn,ncnn,litert"


def test_unknown_target_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="choose one of: ort, nnapi, coreml, openvino, portable"):
        get_target("tpu")


def test_a_target_is_registered_once() -> None:
    from edgernn.targets import register_target

    with pytest.raises(ValueError, match="already registered"):
        register_target(get_target("nnapi"))


@pytest.mark.parametrize("target", MOBILE)
@pytest.mark.parametrize("strategy", ["native", "loop"])
def test_mobile_targets_refuse_control_flow_naming_what_works(target: str, strategy: str) -> None:
    with pytest.raises(ExportError, match=r"no recurrent ops and no control flow.*strategies unroll, step"):
        export_model(_model("gru"), None, strategy=strategy, target=target)


@pytest.mark.parametrize("target", MOBILE)
def test_mobile_targets_refuse_the_fused_step(target: str) -> None:
    with pytest.raises(ExportError, match="cannot run `step --fused`"):
        export_model(_model("lstm"), None, strategy="step", target=target, fused=True)


@pytest.mark.parametrize("target", ["openvino", "portable"])
def test_native_with_lengths_is_refused_where_sequence_lens_is_ignored(target: str) -> None:
    with pytest.raises(ExportError, match=r"does not honour ONNX's sequence_lens.*loop or unroll"):
        export_model(_model("lstm"), None, strategy="native", target=target, lengths=True)
    # by default native is exported there without lengths, and says so in its inputs
    res = _export("lstm", "native", target)
    assert [s.role for s in res.manifest.inputs] == ["data"]


def test_openvino_and_onnx_reference_really_ignore_sequence_lens() -> None:
    """Why the refusal above exists: the same padded batch through an `ort` native export is wrong there."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from edgernn.targets.openvino import openvino_runner
    from edgernn.targets.portable import reference_runner

    res = _export("lstm", "native", "ort")
    x = np.random.default_rng(1).standard_normal((3, T, 3)).astype(np.float32)
    lengths = np.array([T, T - 5, 1])
    want = _alone(_model("lstm"), x, lengths)
    feed = {"x": x, "lengths": lengths}
    _assert_close(want, ort.InferenceSession(res.model_bytes).run(None, feed)[0], "onnxruntime honours it")
    for run in (openvino_runner(res.model_bytes), reference_runner(onnx.load_from_string(res.model_bytes))):
        a, _, ok = compare(want, run(feed)[0], TOL)
        assert not ok and a > 1e-3


def test_static_batch_needs_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="batch must be an integer >= 1"):
        export_model(_model("gru"), None, strategy="step", target="nnapi", batch=0)


# ----------------------------------------------------------------------------------- NNAPI and CoreML


MOBILE_CASES = [
    pytest.param(c, t, s, k, id=f"{t}-{c}-{s}{k or ''}")
    for c in CELLS
    for t in MOBILE
    for s, k in (("step", 1), ("step", 4), ("unroll", None))
]


@pytest.mark.parametrize(("cell", "target", "strategy", "steps"), MOBILE_CASES)
def test_mobile_exports_are_one_partition_covering_every_node(
    cell: str, target: str, strategy: str, steps: int | None
) -> None:
    res = _export(cell, strategy, target, steps)
    check = res.manifest.target_check
    assert check["passed"] is True and check["partitions"] == 1, check["summary"]
    assert check["supported_nodes"] == check["nodes"] > 0 and check["coverage"] == 1.0
    assert res.manifest.batch == 1 and res.manifest.target == target
    # every input and state has fixed dims: a symbolic one would keep nodes off the device
    proto = onnx.load_from_string(res.model_bytes)
    for vi in proto.graph.input:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    # and onnxruntime's checker, asked again on the written bytes, agrees
    (again,) = check_model(res.model_bytes, [target])
    assert again.passed and again.partitions == 1


@pytest.mark.parametrize("target", MOBILE)
@pytest.mark.parametrize("cell", CELLS)
def test_mobile_unroll_padded_sequence_equals_it_run_alone(cell: str, target: str) -> None:
    res = _export(cell, "unroll", target)
    mask = res.manifest.input("mask")
    assert mask is not None and mask.dtype == "float32" and mask.shape == [1, T]
    m = Model(res.model_bytes)
    rng = np.random.default_rng(5)
    for length in (T, 7, 1):
        x = rng.standard_normal((1, T, 3)).astype(np.float32)
        lengths = np.array([length])
        _assert_close(_alone(_model(cell), x, lengths), m.run(x, lengths), f"{cell} {target} length {length}")


@pytest.mark.parametrize("target", MOBILE)
def test_mobile_static_batch_of_three_pads_each_row_alone(target: str) -> None:
    res = _export("lstm", "unroll", target, batch=3)
    assert res.manifest.target_check["partitions"] == 1
    x = np.random.default_rng(2).standard_normal((3, T, 3)).astype(np.float32)
    lengths = np.array([T, T - 5, 1])
    _assert_close(_alone(_model("lstm"), x, lengths), Model(res.model_bytes).run(x, lengths), "batch 3")


def test_a_graph_coreml_cannot_take_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hygiene, "_gather_as_slice", lambda graph, top: None)  # leave CoreML a Gather
    out = tmp_path / "m.onnx"
    with pytest.raises(TargetError, match=r"refuses.*CoreML MLProgram does not support Gather"):
        export_model(_model("gru"), out, strategy="step", target="coreml")
    assert not out.exists()


def test_the_runtime_makes_the_mask_and_checks_it(tmp_path: Path) -> None:
    from edgernn.errors import InputError

    m = Model(_export("gru", "unroll", "nnapi").model_bytes)
    x = np.zeros((1, T, 3), np.float32)
    with pytest.raises(InputError, match=r"every length must be in 1..12"):
        m.run(x, np.array([13]))
    with pytest.raises(InputError, match="must be a padding mask"):
        m.run_feed({"x": x, "mask": np.array([[0.0, 1.0] * (T // 2)], np.float32)})
    full = m.run(x)  # no lengths: every step is real
    _assert_close(full, m.run_feed({"x": x, "mask": np.ones((1, T), np.float32)})["y"], "mask of ones")


# --------------------------------------------------------------------------------------------- OpenVINO


OPENVINO_CASES = [pytest.param(c, s, id=f"{c}-{s}") for c in CELLS for s in ("native", "loop", "unroll", "step")]


@pytest.mark.parametrize(("cell", "strategy"), OPENVINO_CASES)
def test_openvino_exports_compile_and_match_torch_on_a_padded_batch(cell: str, strategy: str) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from edgernn.targets.openvino import openvino_runner

    res = _export(cell, strategy, "openvino")
    parity = res.manifest.target_check["parity"]
    assert parity["passed"] and parity["candidates"] == ["openvino:cpu"], parity
    run = openvino_runner(res.model_bytes)
    x = np.random.default_rng(3).standard_normal((3, T, 3)).astype(np.float32)
    model = _model(cell)
    if strategy == "step":  # chained calls from zero states, the stream's last output against the whole sequence
        state = {
            s.input: np.zeros([3 if d == "batch" else d for d in s.shape], np.float32) for s in res.manifest.states
        }
        for t in range(T):
            outs = dict(zip([o.name for o in res.manifest.outputs], run({"x": x[:, t : t + 1], **state}), strict=True))
            state = {s.input: outs[s.output] for s in res.manifest.states}
        with torch.no_grad():
            _assert_close(model(torch.from_numpy(x)).numpy(), outs["y"], f"openvino {cell} step")
        return
    if strategy == "native":  # exported without lengths there: one length per call
        _assert_close(_alone(model, x, np.full(3, T)), run({"x": x})[0], f"openvino {cell} native")
        return
    lengths = np.array([T, T - 5, 1])
    _assert_close(_alone(model, x, lengths), run({"x": x, "lengths": lengths})[0], f"openvino {cell} {strategy}")


def test_openvino_feeds_an_input_that_carries_several_names() -> None:
    """An fp16 file's input also names the Cast it feeds; OpenVINO may call it by that other name, and the runner
    dropped the input from the feed (OpenVINO then returned an empty batch, shape (0, 1))."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from edgernn.optimize.quantize import quantize
    from edgernn.targets.openvino import openvino_runner

    res = export_model(_model("gru"), None, strategy="native", target="openvino", verify=False)
    fp16 = quantize(res.model_bytes, "fp16", verify=False, timing=False).model_bytes
    x = np.random.default_rng(3).standard_normal((3, T, 3)).astype(np.float32)
    want = ort.InferenceSession(fp16).run(None, {"x": x})[0]
    got = openvino_runner(fp16)({"x": x})[0]
    assert got.shape == want.shape and want.shape[0] == 3
    assert compare(want, got, TOLERANCES["fp16"])[2], (want, got)


@pytest.mark.slow
def test_an_openvino_mismatch_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    import edgernn.targets.openvino as check_mod

    real = check_mod.openvino_runner

    def off_by_a_little(model: bytes, **kw: object) -> object:
        run = real(model)
        return lambda feed: [o + 1e-3 for o in run(feed)]

    monkeypatch.setattr(check_mod, "openvino_runner", off_by_a_little)
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="openvino:cpu"):
        export_model(_model("gru"), out, strategy="loop", target="openvino")
    assert not out.exists()


@pytest.mark.slow
def test_portable_exports_match_onnx_reference() -> None:
    res = _export("gru", "loop", "portable")
    parity = res.manifest.target_check["parity"]
    engines = {"openvino:cpu": "openvino", "tract": "tract"}  # MNN has no Scan: not run on a loop file
    want = {"onnx.reference"} | {name for name, mod in engines.items() if importlib.util.find_spec(mod) is not None}
    assert parity["passed"] and set(parity["candidates"]) == want
    assert "B=3 T=17 padded" in parity["cases"]


# ----------------------------------------------------------------------------------------- graph hygiene


HYGIENE = [
    pytest.param(c, s, t, id=f"{t}-{c}-{s}")
    for c in ("rnn-tanh", "rnn-relu", "lstm", "gru")
    for t in ("ort", "nnapi", "coreml", "openvino", "portable")
    for s in ("native", "loop", "unroll", "step")
    if s in get_target(t).strategies
]


@cache
def _wide(cell: str, strategy: str, target: str) -> ExportResult:
    """A model wider than onnxscript's default folding limit (8192 elements), unverified: graph form only."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, input_size=3, hidden_size=48, num_layers=2)).eval()
    options = {"unroll": {"seq_len": 6}, "step": {"chunk": 2}}.get(strategy, {})
    return export_model(model, None, strategy=strategy, target=target, verify=False, **options)


@pytest.mark.parametrize(("cell", "strategy", "target"), HYGIENE)
def test_every_export_is_clean_for_converters(cell: str, strategy: str, target: str, tmp_path: Path) -> None:
    res = _wide(cell, strategy, target)
    proto = onnx.load_from_string(res.model_bytes)
    assert hygiene.check(proto) == []
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    if target == "ort":  # onnxruntime's dynamic quantiser takes every strategy's file
        from onnxruntime.quantization import quantize_dynamic

        src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
        src.write_bytes(res.model_bytes)
        quantize_dynamic(src, dst)
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])


def _tiny(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_hygiene_check_finds_each_violation() -> None:
    w = onnx.numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    nodes = [
        onnx.helper.make_node("Transpose", ["w"], ["wt"], name="t"),
        onnx.helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
        onnx.helper.make_node("Shape", ["x"], ["s"], name="shp"),
        onnx.helper.make_node("ConstantOfShape", ["s"], ["z"], name="zeros"),
        onnx.helper.make_node("Add", ["y", "z"], ["out"], name="add"),
        onnx.helper.make_node("Relu", ["y"], ["r"], name="relu"),
    ]
    problems = hygiene.check(_tiny(nodes, [w, shape], ["y", "out", "r"]))
    joined = "\n".join(problems)
    assert "Transpose node 't' computes on weights" in joined
    assert "ConstantOfShape node 'zeros' has no typed value" in joined
    assert "graph output 'y' is also read inside the graph" in joined
    model = _tiny(nodes, [w, shape], ["y", "out", "r"])
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    hygiene.apply(model)  # folds the Transpose, types the ConstantOfShape, copies y out through an Identity
    assert hygiene.check(model) == []
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hygiene_rewrites_scalar_gathers_as_slices() -> None:
    idx = onnx.numpy_helper.from_array(np.array(-1, np.int64), "i")
    nodes = [onnx.helper.make_node("Gather", ["x", "i"], ["y"], axis=0, name="g")]
    model = _tiny(nodes, [idx], ["y"])
    hygiene.apply(model, gather_as_slice=True)
    assert [n.op_type for n in model.graph.node] == ["Slice", "Squeeze"]
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], x[-1])


def test_hygiene_check_flags_a_scan_reading_a_computed_outer_tensor() -> None:
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["s", "outer"], ["s2"]), onnx.helper.make_node("Identity", ["s2"], ["o"])],
        "body",
        [onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2])],
        [
            onnx.helper.make_tensor_value_info("s2", onnx.TensorProto.FLOAT, [2]),
            onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [2]),
        ],
    )
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["outer0"], name="r"),
        onnx.helper.make_node("ReduceSum", ["outer0"], ["outer"], keepdims=0, name="sum"),
        onnx.helper.make_node("Scan", ["x"], ["final"], body=body, num_scan_inputs=0, name="scan"),
    ]
    assert any(
        "reads tensors computed outside its body: outer" in p for p in hygiene.check(_tiny(nodes, [], ["final"]))
    )


# ------------------------------------------------------------------------------------ check and package


def test_check_json_reports_partitions_and_reasons_for_any_file(tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    path.write_bytes(_export("gru", "loop", "ort").model_bytes)
    r = CliRunner().invoke(main, ["check", str(path), "--target", "nnapi", "--target", "portable", "--json"])
    assert r.exit_code == TargetError.exit_code, r.output
    nnapi, portable = json.loads(r.output)
    assert nnapi["passed"] is False and nnapi["partitions"] >= 1 and nnapi["coverage"] < 0.5
    reasons = {u["op"]: u["reasons"] for u in nnapi["unsupported"]}
    assert "NNAPI does not support Scan" in reasons["Scan"]
    assert any("has no fixed shape" in r for r in reasons["Transpose"])
    if importlib.util.find_spec("tract") is None:
        assert portable["passed"] is True and portable["parity"]["passed"] is True
    else:  # portable means every engine installed: tract refuses the symbolic shapes an `ort` export states
        assert portable["passed"] is False and "Impossible to unify Sym(" in portable["summary"]

    good = tmp_path / "step.onnx"
    good.write_bytes(_export("gru", "step", "nnapi").model_bytes)
    r = CliRunner().invoke(main, ["check", str(good), "--json"])  # default: the target it was made for
    assert r.exit_code == 0, r.output
    (only,) = json.loads(r.output)
    assert only["target"] == "nnapi" and only["partitions"] == 1 and only["coverage"] == 1.0


def test_check_takes_a_model_edgernn_did_not_export(tmp_path: Path) -> None:
    """A hand-built GRU graph with symbolic dims: shapes come from --shape; OpenVINO is compared with ORT."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    rng = np.random.default_rng(0)
    h = 4
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((1, 3 * h, 3)).astype(np.float32), "W"),
        onnx.numpy_helper.from_array(rng.standard_normal((1, 3 * h, h)).astype(np.float32), "R"),
    ]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("GRU", ["x", "W", "R"], ["", "h"], hidden_size=h)],
        "gru",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["seq", "n", 3])],
        [onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [1, "n", h])],
        inits,
    )
    path = tmp_path / "theirs.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)]), path)
    reports = check_model(path, ["openvino", "nnapi"], shapes={"x": [9, 2, 3]})
    ov, nnapi = reports
    assert ov.passed and ov.parity["cases"] == ["B=2 T=9"]
    assert nnapi.passed is False and any(u["op"] == "GRU" for u in nnapi.unsupported)
    r = CliRunner().invoke(main, ["check", str(path), "--target", "openvino", "--shape", "x:9x2"])
    assert r.exit_code == ConfigError.exit_code and "2 dims given, the input has 3" in r.output


def test_export_ort_format_writes_a_checked_package(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = export_model(_model("gru"), out, strategy="step", target="nnapi", ort_format=True)
    assert res.package is not None and res.package.parity["passed"] and res.package.parity["max_abs"] == 0.0
    assert (tmp_path / "m.ort").is_file() and (tmp_path / "m.required_operators.config").is_file()
    assert any("Gemm" in line or "MatMul" in line for line in res.package.operators)
    x = np.random.default_rng(0).standard_normal((1, 1, 3)).astype(np.float32)
    state = {s.input: np.zeros([1 if d == "batch" else d for d in s.shape], np.float32) for s in res.manifest.states}
    a = ort.InferenceSession(str(out)).run(None, {"x": x, **state})
    b = ort.InferenceSession(str(tmp_path / "m.ort")).run(None, {"x": x, **state})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_package_command_and_a_file_it_cannot_convert(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_export("gru", "loop", "ort").model_bytes)
    r = CliRunner().invoke(main, ["package", str(path), "--out", str(tmp_path / "pkg"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["parity"]["passed"] and Path(info["ort_path"]).is_file()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = CliRunner().invoke(main, ["package", str(bad), "--out", str(tmp_path / "pkg2")])
    assert r.exit_code != 0 and "error:" in r.output
    assert not (tmp_path / "pkg2").exists() or not any((tmp_path / "pkg2").iterdir())


def test_targets_command_lists_the_registry() -> None:
    r = CliRunner().invoke(main, ["targets", "--json"])
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert sorted(info) == sorted(target_names())
    assert info["nnapi"]["static_batch"] is True and info["nnapi"]["padding"] == "float-mask"
    assert info["openvino"]["precision_hint"] == "f32"


# ------------------------------------------------------------------------------ the runtime on target files


def test_streams_over_a_static_batch_step_export_match_torch() -> None:
    from edgernn.runtime import StreamingModel

    res = _export("lstm", "step", "nnapi")
    sm = StreamingModel(res.model_bytes)
    a, b = sm.stream(), sm.stream()
    x = np.random.default_rng(4).standard_normal((2, 9, 3)).astype(np.float32)
    for t in range(9):  # batch fixed to 1: two streams are served one call each, the results as batched
        ya, yb = sm.step_many([a, b], [x[0, t], x[1, t]])
    with torch.no_grad():
        want = _model("lstm")(torch.from_numpy(x)).numpy()
    _assert_close(want[0], ya, "stream a")
    _assert_close(want[1], yb, "stream b")


def test_run_command_makes_the_mask_from_lengths(tmp_path: Path) -> None:
    res = _export("gru", "unroll", "coreml")
    model = tmp_path / "m.onnx"
    model.write_bytes(res.model_bytes)
    x = np.random.default_rng(8).standard_normal((1, T, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", np.array([4]))
    args = ["run", str(model), "--input", str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "l.npy")]
    r = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "y.npy")])
    assert r.exit_code == 0, r.output
    _assert_close(_alone(_model("gru"), x, np.array([4])), np.load(tmp_path / "y.npy"), "edgernn run --lengths")
