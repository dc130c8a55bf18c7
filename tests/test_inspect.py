"""`edgernn inspect`, reproducible files, and the opset range each strategy declares."""

import json
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli.main import main
from edgernn.errors import ExportError, ModelFormatError
from edgernn.export import export_model, get_strategy_class, strategy_names
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.verify.inspect import inspect_model


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(cell="lstm", input_size=3, hidden_size=6, num_layers=2))


def test_inspect_human_and_json(tmp_path: Path) -> None:
    export_model(_model(), tmp_path / "m.onnx", strategy="native")
    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "native export of lstm" in r.output and "LSTM x2" in r.output and "parity: PASS" in r.output
    assert "(batch, time, 3)" in r.output
    r = runner.invoke(main, ["inspect", str(tmp_path / "m.onnx"), "--json"])
    info = json.loads(r.output)
    assert info["ops"]["LSTM"] == 2 and info["opsets"]["ai.onnx"] == 18
    assert info["inputs"][0]["dynamic_axes"] == [0, 1] and info["inputs"][0]["shape"][2] == 3
    assert info["file_size"] == (tmp_path / "m.onnx").stat().st_size
    assert info["manifest"]["strategy"] == "native" and info["parity"]["passed"] is True


def test_inspect_foreign_and_broken_files(tmp_path: Path) -> None:
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])],
    )
    onnx.save(onnx.helper.make_model(g), tmp_path / "plain.onnx")
    info = inspect_model(tmp_path / "plain.onnx")
    assert info["manifest"] is None and info["ops"] == {"Relu": 1}
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError):
        inspect_model(tmp_path / "junk.onnx")
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.onnx")])
    assert r.exit_code == ModelFormatError.exit_code and r.output.startswith("error: no model file")


@pytest.mark.slow
def test_same_checkpoint_same_bytes_and_hash_tracks_weights(tmp_path: Path) -> None:
    a = export_model(_model(0), tmp_path / "a.onnx", strategy="native")
    b = export_model(_model(0), tmp_path / "b.onnx", strategy="native")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert a.manifest.weights_sha256 == b.manifest.weights_sha256
    changed = _model(0)
    with torch.no_grad():
        changed.head.bias[0] += 1e-3
    c = export_model(changed, None, strategy="native")
    assert c.manifest.weights_sha256 != a.manifest.weights_sha256
    # options that do not touch the weights leave the hash alone
    d = export_model(_model(0), None, opset=20, strategy="native")
    assert d.manifest.weights_sha256 == a.manifest.weights_sha256


@pytest.mark.slow
@pytest.mark.parametrize("strategy", strategy_names())
def test_opset_range_ends(strategy: str) -> None:
    caps = get_strategy_class(strategy).caps
    opts = {"chunk": 2} if caps.streaming else ({} if caps.dynamic_length else {"seq_len": 4})
    model = _model()
    for opset in (caps.opset_min, caps.opset_max):
        r = export_model(model, None, strategy=strategy, opset=opset, **opts)
        assert r.manifest.opset == opset and r.report is not None and r.report.passed
        proto = onnx.load_from_string(r.model_bytes)
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    with pytest.raises(ExportError, match="opset"):
        export_model(model, None, strategy=strategy, opset=caps.opset_min - 1, **opts)


OLD_SELECTION = {  # what strategy auto recorded before spreads and load were kept
    "chosen": "native",
    "profile_shape": [1, 100],
    "provider": "cpu",
    "threads": 1,
    "median_us": {"native": 68.2, "loop": 95570.4},
    "refused": {},
    "why": "fastest of the correct strategies at batch 1 x time 100 on cpu",
}


def _with_selection(path: Path, selection: dict) -> None:
    import dataclasses

    from edgernn.manifest import read_manifest, write_manifest

    proto = onnx.load(path)
    manifest = read_manifest({p.key: p.value for p in proto.metadata_props})
    write_manifest(proto, dataclasses.replace(manifest, selection=selection))
    onnx.save(proto, path)


def test_a_manifest_from_before_spreads_loads_and_says_so(tmp_path: Path) -> None:
    from edgernn.manifest import Manifest

    export_model(_model(), tmp_path / "m.onnx", strategy="native")
    _with_selection(tmp_path / "m.onnx", OLD_SELECTION)
    info = inspect_model(tmp_path / "m.onnx")
    assert Manifest.from_json(json.dumps(info["manifest"])).selection == OLD_SELECTION  # round trip, as written
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "strategy chosen by auto: native (native 68.2 us, loop 95570.4 us per call at batch 1 x time 100" in r.output
    assert "no spread or load was recorded (a file from an older edgernn)" in r.output
    assert "timings belong to the machine and moment they were taken" in r.output


def test_a_manifest_with_spreads_round_trips_and_shows_them(tmp_path: Path) -> None:
    from edgernn.manifest import Manifest

    selection = {
        **OLD_SELECTION,
        "spread_us": {
            "native": {"median": 68.2, "low": 60.1, "high": 90.5, "rounds": 5},
            "loop": {"median": 95570.4, "low": 3000.0, "high": 194314.0, "rounds": 5},
        },
        "rounds": 5,
        "calls_per_round": 5,
        "measured": {"load_1m": 37.2, "load_5m": 30.0, "load_15m": 20.0, "cpus": 16, "at": "2026-12-07T06:00:00Z",
                     "note": "timings belong to the machine and moment they were taken, not to the file"},
    }  # fmt: skip
    export_model(_model(), tmp_path / "m.onnx", strategy="native")
    _with_selection(tmp_path / "m.onnx", selection)
    info = inspect_model(tmp_path / "m.onnx")
    assert info["manifest"]["selection"] == selection
    assert Manifest.from_json(json.dumps(info["manifest"])).selection == selection
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "native 68.2 us (60.1-90.5), loop 95570.4 us (3000-194314) per call" in r.output
    assert "the fastest-slowest of 5 interleaved rounds; measured: load 37.2 on 16 CPUs at 2026-12-07T06:00:00Z" in (
        r.output
    )
    assert "not to the file" in r.output and "no spread or load was recorded" not in r.output
