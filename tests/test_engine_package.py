"""`edgernn package --target T`: an export in an engine's own format (MNN's .mnn, ncnn's .param/.bin, LiteRT's
.tflite), run by the
engine on the written files and compared with the .onnx before anything is written; and `edgernn check` telling a
missing engine (exit 10) from a refusal (exit 9)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgernn.export.package as package_mod
from edgernn.cli import main
from edgernn.export import export_model
from edgernn.model.zoo import ModelConfig, build_model


def _step(tmp_path: Path, target: str) -> Path:
    torch.manual_seed(1)
    model = build_model(ModelConfig(cell="gru", input_size=3, hidden_size=8, num_layers=2)).eval()
    path = tmp_path / f"{target}.onnx"
    export_model(model, path, strategy="step", target=target)
    return path


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.skipif(not _has("MNN"), reason="MNN is not installed (pip install 'edgernn[mnn]')")
def test_package_mnn_writes_the_mnn_file_checked_on_mnn(tmp_path: Path) -> None:
    src, out = _step(tmp_path, "mnn"), tmp_path / "pkg"
    r = CliRunner().invoke(main, ["package", str(src), "--target", "mnn", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{") :])
    mnn = out / "mnn.mnn"
    assert rep["files"] == [str(mnn)] and mnn.stat().st_size == rep["sizes"]["mnn.mnn"] > 1000
    assert rep["parity"]["passed"] is True and rep["parity"]["candidates"] == ["mnn"]
    assert rep["parity"]["max_abs"] <= rep["parity"]["atol"]


@pytest.mark.skipif(not _has("ncnn", "pnnx"), reason="ncnn/pnnx are not installed (docs/engines/ncnn.md)")
def test_package_ncnn_writes_param_and_bin_checked_on_ncnn(tmp_path: Path) -> None:
    import ncnn

    src, out = _step(tmp_path, "ncnn"), tmp_path / "pkg"
    r = CliRunner().invoke(main, ["package", str(src), "--target", "ncnn", "--out", str(out)])
    assert r.exit_code == 0, r.output
    param, weights = out / "ncnn.ncnn.param", out / "ncnn.ncnn.bin"
    assert param.read_text().startswith("7767517") and weights.stat().st_size > 1000
    assert "ncnn on these files matches onnxruntime" in r.output
    net = ncnn.Net()  # the written files load in ncnn as they are
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0


@pytest.mark.skipif(
    not _has("onnx2tf", "tensorflow", "ai_edge_litert"),
    reason="LiteRT/onnx2tf are not installed (docs/engines/litert.md)",
)
def test_package_litert_writes_the_tflite_checked_on_litert(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    src, out = _step(tmp_path, "litert"), tmp_path / "pkg"
    r = CliRunner().invoke(main, ["package", str(src), "--target", "litert", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{") :])
    tflite = out / "litert.tflite"
    assert rep["files"] == [str(tflite)] and tflite.stat().st_size == rep["sizes"]["litert.tflite"] > 1000
    assert rep["parity"]["passed"] is True and rep["parity"]["candidates"] == ["litert"]
    assert rep["parity"]["max_abs"] <= rep["parity"]["atol"]
    runner = Interpreter(model_path=str(tflite)).get_signature_runner()  # the written file loads as it is
    assert set(runner.get_input_details()) == {"x", "h_in"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["litert.onnx", "pkg"]  # nothing beside the .onnx


def test_package_litert_without_its_packages_exits_10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgernn.targets import litert

    src = tmp_path / "m.onnx"
    export_model(
        build_model(ModelConfig(cell="gru", input_size=3, hidden_size=8, num_layers=1)).eval(),
        src,
        strategy="step",
        target="portable",
        verify=False,
    )
    monkeypatch.setattr(litert, "litert_available", lambda: False)
    r = CliRunner().invoke(main, ["package", str(src), "--target", "litert", "--out", str(tmp_path / "pkg")])
    assert r.exit_code == 10 and "edgernn[litert]" in r.output, r.output
    assert not (tmp_path / "pkg").exists()


@pytest.mark.skipif(not _has("MNN"), reason="MNN is not installed (pip install 'edgernn[mnn]')")
def test_package_that_does_not_match_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgernn.export.check import compare_with_onnxruntime

    src, out = _step(tmp_path, "mnn"), tmp_path / "pkg"

    def off_by_one(model: bytes, runners: dict) -> object:  # the engine's answers shifted: must be refused
        shifted = {k: (lambda feed, run=run: [np.asarray(y) + 1 for y in run(feed)]) for k, run in runners.items()}
        return compare_with_onnxruntime(model, shifted)

    monkeypatch.setattr(package_mod, "compare_with_onnxruntime", off_by_one)
    r = CliRunner().invoke(main, ["package", str(src), "--target", "mnn", "--out", str(out)])
    assert r.exit_code == 9 and "do not compute what the .onnx computes" in r.output, r.output
    assert not (out / "mnn.mnn").exists()


def test_package_for_an_engine_that_reads_onnx_says_so(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"unused")
    r = CliRunner().invoke(main, ["package", str(src), "--target", "tract"])
    assert r.exit_code == 2  # not a choice: tract reads the .onnx itself
    from edgernn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"runs the \.onnx file itself"):
        package_mod.package_for(src, "openvino")


def test_check_a_named_target_whose_engine_is_missing_exits_10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=3, hidden_size=8, num_layers=1)).eval()
    src = tmp_path / "m.onnx"
    export_model(model, src, strategy="loop", target="portable", verify=False)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    r = CliRunner().invoke(main, ["check", str(src), "--target", "openvino"])
    assert r.exit_code == 10 and "not installed" in r.output, r.output
