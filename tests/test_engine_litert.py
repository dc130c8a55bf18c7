"""The LiteRT engine (Google's TFLite, ``pip install 'edgernn[litert]'`` and ``pip install --no-deps onnx2tf``): the
`litert` target's forms (`unroll`, `step`; batch 1, padding as a float mask) convert with onnx2tf, load in LiteRT's
interpreter and match torch within 1e-5 as part of the export's own check (a padded batch through the mask; for
`step` a stream of frames with the state fed back); what it refuses is refused up front, a missing package is
exit 10 naming the extra, and a conversion that fails writes nothing (exit 9).

Conversions are slow (TensorFlow starts in a child process for each): one small model (2-layer GRU, hidden 8) per
form, made once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgernn.errors import ExportError, MissingPackageError, TargetError
from edgernn.export import ExportResult, export_model
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.targets import get_target, litert
from edgernn.targets.litert import litert_available, read_stacked_directly
from edgernn.verify.parity import TOLERANCES

TOL = TOLERANCES["fp32"]
needs_litert = pytest.mark.skipif(
    not litert_available(),
    reason="LiteRT and onnx2tf are not installed: pip install 'edgernn[litert]' && pip install --no-deps onnx2tf",
)


@cache
def _model(layers: int = 2) -> RecurrentModel:
    torch.manual_seed(3)
    return build_model(ModelConfig(cell="gru", input_size=3, hidden_size=8, num_layers=layers)).eval()


@cache
def _export(strategy: str) -> ExportResult:
    options = {"unroll": {"seq_len": 12}, "step": {"chunk": 1}}[strategy]
    return export_model(_model(), None, strategy=strategy, target="litert", **options)


def _litert_rows(result: ExportResult) -> list:
    return [c for c in result.report.comparisons if c.candidate == "litert"]


@pytest.mark.parametrize("strategy", ["native", "loop"])
def test_strategies_it_does_not_take_are_refused_up_front_with_what_works(strategy: str) -> None:
    with pytest.raises(ExportError, match=r"cannot run strategy .*use unroll .* or step"):
        export_model(_model(), None, strategy=strategy, target="litert")
    with pytest.raises(ExportError, match="cannot run `step --fused`"):
        export_model(_model(), None, strategy="step", target="litert", chunk=1, fused=True)


def test_target_takes_batch_1_and_a_float_mask() -> None:
    tgt = get_target("litert")
    assert tgt.strategies == ("unroll", "step") and tgt.static_batch and tgt.batch(None) == 1
    assert tgt.padding == "float-mask" and tgt.needs == "litert"


def test_missing_packages_exit_10_naming_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(litert, "litert_available", lambda: False)
    with pytest.raises(MissingPackageError, match=r"edgernn\[litert\]") as e:
        export_model(_model(), tmp_path / "m.onnx", strategy="step", target="litert", chunk=1)
    assert e.value.exit_code == 10 and not (tmp_path / "m.onnx").exists()


def test_a_conversion_that_fails_writes_nothing_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(litert, "litert_available", lambda: True)

    def refuses(model: object, workdir: object, **_: object) -> Path:
        raise TargetError("onnx2tf cannot convert the model (exit 1): ValueError: no conversion for op Foo")

    monkeypatch.setattr(litert, "to_tflite", refuses)
    with pytest.raises(TargetError, match="no conversion for op Foo") as e:
        export_model(_model(), tmp_path / "m.onnx", strategy="step", target="litert", chunk=1)
    assert e.value.exit_code == 9 and list(tmp_path.iterdir()) == []


def test_converter_error_names_onnx2tfs_first_error_line() -> None:
    output = (
        "I0000 00:00:1796626691.523793 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
        "\x1b[31mERROR:\x1b[0m The trace log is below.\n"
        "ERROR: onnx_op_name: /rnn/Scan\nTraceback (most recent call last):\n"
        "TypeError: 'KerasTensor' object cannot be interpreted as an integer\n"
    )
    want = "TypeError: 'KerasTensor' object cannot be interpreted as an integer (node /rnn/Scan)"
    assert litert.converter_error(output) == want
    assert litert.converter_error(output.split("Traceback")[0]) == "ERROR: The trace log is below. (node /rnn/Scan)"
    assert litert.converter_error("") == "no output"


def test_reading_a_stacked_state_where_it_is_made_computes_the_same_bit_for_bit() -> None:
    import onnxruntime as ort

    result = export_model(_model(), None, strategy="step", target="portable", chunk=1, batch=1, verify=False)
    before = onnx.load_from_string(result.model_bytes)
    after = read_stacked_directly(before)
    gathers = lambda m: [n for n in m.graph.node if n.op_type == "Gather"]  # noqa: E731
    assert len(gathers(after)) < len(gathers(before))  # torch.stack(states)[-1] is read from the top layer itself
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, 1, 3)).astype(np.float32), "h_in": rng.standard_normal((2, 1, 8))}
    feed["h_in"] = feed["h_in"].astype(np.float32)
    runs = [ort.InferenceSession(m.SerializeToString()).run(None, feed) for m in (before, after)]
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)
    fresh = onnx.load_from_string(result.model_bytes)
    assert [n.op_type for n in before.graph.node] == [n.op_type for n in fresh.graph.node]  # argument not changed


@needs_litert
def test_step_stream_with_the_state_fed_back_matches_torch_on_litert() -> None:
    result = _export("step")
    rows = _litert_rows(result)
    assert result.report.passed and rows, result.report.table()
    assert {c.output for c in rows} == {"y", "h_out"}
    assert all("chained" in c.case for c in rows)
    frames = int(rows[0].case.split("T=")[1].split()[0])
    assert frames >= 20 and all(c.max_abs <= TOL.atol for c in rows), result.report.table()


@needs_litert
def test_unroll_padded_batch_through_the_mask_matches_torch_on_litert() -> None:
    result = _export("unroll")
    rows = _litert_rows(result)
    assert result.report.passed and any("padded" in c.case for c in rows), result.report.table()
    assert [s.name for s in result.manifest.inputs] == ["x", "mask"]
    assert all(c.max_abs <= TOL.atol for c in rows), result.report.table()


def test_an_output_whose_axes_onnx2tf_moved_is_refused() -> None:
    engine = litert._Litert.__new__(litert._Litert)  # only the ONNX output shapes are read here
    engine.shapes = {"h_out": [2, 1, 8]}
    assert engine._shaped("h_out", np.zeros((1, 2, 8), np.float32)).shape == (2, 1, 8)  # size-1 axis moved only
    with pytest.raises(TargetError, match="onnx2tf moved its axes"):
        engine._shaped("h_out", np.zeros((8, 2, 1), np.float32))


def test_portable_runs_litert_on_the_forms_it_takes_and_names_it_left_out_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgernn.targets.portable import engines_for

    monkeypatch.setattr(litert, "litert_available", lambda: True)
    forms = {
        "unroll": {"seq_len": 12},
        "step": {"chunk": 1},
        "loop": {},
        "native": {},
    }
    made = {s: export_model(_model(), None, strategy=s, target="portable", verify=False, **o) for s, o in forms.items()}
    for strategy in ("unroll", "step"):
        ran, left_out = engines_for(onnx.load_from_string(made[strategy].model_bytes))
        assert "litert" in ran and "litert" not in left_out, strategy
    ran, left_out = engines_for(onnx.load_from_string(made["loop"].model_bytes))
    assert "litert" not in ran and left_out["litert"] == "onnx2tf fails on Scan"
    ran, left_out = engines_for(onnx.load_from_string(made["native"].model_bytes))
    assert "litert" not in ran and left_out["litert"] == "onnx2tf fixes the time axis of ONNX's GRU at 1"
    assert "not this form: " in made["loop"].manifest.target_check["summary"]
    assert "litert (onnx2tf fails on Scan)" in made["loop"].manifest.target_check["summary"]
    monkeypatch.setattr(litert, "litert_available", lambda: False)  # not installed: neither run nor left out
    ran, left_out = engines_for(onnx.load_from_string(made["unroll"].model_bytes))
    assert "litert" not in ran and "litert" not in left_out


@cache
def _portable_unroll() -> ExportResult:
    return export_model(_model(), None, strategy="unroll", target="portable", seq_len=12)


@needs_litert
def test_a_portable_export_is_checked_on_litert_a_padded_batch_included() -> None:
    result = _portable_unroll()
    rows = _litert_rows(result)
    assert result.report.passed and any("padded" in c.case for c in rows), result.report.table()
    assert all(c.max_abs <= TOL.atol for c in rows), result.report.table()
    assert [s.name for s in result.manifest.inputs] == ["x", "lengths"]  # the portable form itself, not litert's
    check = result.manifest.target_check
    assert "litert" in check["parity"]["candidates"] and ", litert" in check["summary"]


def test_a_portable_export_litert_disagrees_with_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgernn.errors import ParityError

    monkeypatch.setattr(litert, "litert_available", lambda: True)

    def off_by_one(model: object, converted: object = None) -> object:
        import onnxruntime as ort

        session = ort.InferenceSession(litert._bytes(model))
        names = {i.name for i in session.get_inputs()}
        return lambda feed: [o + 1.0 for o in session.run(None, {k: v for k, v in feed.items() if k in names})]

    monkeypatch.setattr(litert, "litert_runner", off_by_one)
    with pytest.raises(ParityError, match="litert") as e:
        export_model(_model(), tmp_path / "m.onnx", strategy="unroll", target="portable", seq_len=12)
    assert e.value.exit_code == 5 and list(tmp_path.iterdir()) == []


@needs_litert
@pytest.mark.slow
def test_check_target_all_includes_litert(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgernn.cli import main

    path = tmp_path / "m.onnx"
    path.write_bytes(_portable_unroll().model_bytes)
    r = CliRunner().invoke(main, ["check", str(path), "--target", "all", "--json"])
    reports = {x["target"]: x for x in json.loads(r.output)}
    assert reports["litert"]["passed"] is True, reports["litert"]
    assert reports["litert"]["parity"]["passed"] is True and reports["litert"]["parity"]["max_abs"] <= TOL.atol
    text = CliRunner().invoke(main, ["check", str(path), "--target", "all"]).output
    assert any(line.split()[:2] == ["litert", "ok"] for line in text.splitlines()), text


# onnx2tf's own fp32 output, as it writes it in a process of its own (the SavedModel and the fp16 file too)
_ONNX2TF_ITSELF = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import onnx2tf
onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2],
                keep_shape_absolutely_input_names=sys.argv[3:], copy_onnx_input_output_names_to_tflite=True,
                not_use_onnxsim=True, non_verbose=True)
"""


def _litert_form(strategy: str) -> onnx.ModelProto:
    """The ONNX file the litert target converts for ``strategy`` (a stacked state read where it is made)."""
    return read_stacked_directly(onnx.load_from_string(_export(strategy).model_bytes))


@needs_litert
@pytest.mark.parametrize("strategy", ["step", "unroll"])
def test_the_converted_file_is_byte_for_byte_the_fp32_file_onnx2tf_writes(
    strategy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setattr(litert, "_CONVERTED", {})
    model = _litert_form(strategy)
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    inputs = [v.name for v in model.graph.input]
    done = subprocess.run(
        [sys.executable, "-c", _ONNX2TF_ITSELF, str(src), str(tmp_path / "out"), *inputs],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    made = litert.to_tflite(model, tmp_path / "ours")
    assert made.read_bytes() == (tmp_path / "out" / litert.TFLITE).read_bytes()


@needs_litert
def test_one_child_converts_model_after_model_and_one_that_fails_or_hangs_is_ended(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os
    import signal
    import threading

    monkeypatch.setattr(litert, "_CONVERTED", {})
    converter = litert._CONVERTER
    step, unroll = _litert_form("step"), _litert_form("unroll")
    first = litert.to_tflite(step, tmp_path / "a").read_bytes()
    child = converter.proc
    assert child is not None and child.poll() is None
    litert.to_tflite(unroll, tmp_path / "b")
    assert converter.proc is child  # the same child, TensorFlow imported once

    scan = export_model(_model(), None, strategy="loop", target="ort", verify=False).model_bytes
    with pytest.raises(TargetError, match=r"onnx2tf cannot convert the model \(raised\): .*KerasTensor"):
        litert.to_tflite(scan, tmp_path / "c")
    assert converter.proc is None and child.poll() is not None  # a failed conversion ends the child
    assert not (tmp_path / "c" / "model.tflite").exists()

    monkeypatch.setattr(litert, "_CONVERTED", {})
    with pytest.raises(TargetError, match=r"did not finish converting the model in 0.5 s"):
        litert.to_tflite(step, tmp_path / "d", timeout=0.5)  # TensorFlow's import alone takes longer
    assert converter.proc is None

    litert.to_tflite(unroll, tmp_path / "e")  # a new child; killed from outside while it waits for the next
    os.kill(converter.proc.pid, signal.SIGKILL)
    monkeypatch.setattr(litert, "_CONVERTED", {})
    assert litert.to_tflite(step, tmp_path / "f").read_bytes() == first  # a new one again, the same file

    monkeypatch.setattr(litert, "_CONVERTED", {})
    killer = threading.Timer(1.0, lambda: converter.proc.kill())
    converter.close()
    killer.start()
    with pytest.raises(TargetError, match=r"onnx2tf cannot convert the model \(crashed \(signal 9\)\)"):
        litert.to_tflite(step, tmp_path / "g")  # killed while it imports TensorFlow
    killer.join()
    assert converter.proc is None
