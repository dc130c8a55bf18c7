"""Hostile and careless inputs: each gets its proper typed error as one line with its documented exit code, no
traceback, and the working folder is left exactly as it was (nothing half-written, nothing replaced)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli import main
from edgernn.errors import ConfigError, InputError, ModelFormatError
from edgernn.export import export_model
from edgernn.manifest import MANIFEST_KEY, Manifest
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.train import checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=6))
    checkpoint.save(d / "run" / "model.ckpt", model, {"task": "sine"})
    export_model(model, d / "native.onnx", strategy="native")
    export_model(model, d / "fused.onnx", strategy="step", fused=True)
    export_model(model, d / "unroll.onnx", strategy="unroll", seq_len=20)
    nan_model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=6))
    with torch.no_grad():
        nan_model.head.bias.fill_(float("nan"))
    export_model(nan_model, d / "nan.onnx", strategy="native", verify=False)
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((2, 20, 2)).astype(np.float32))
    np.save(d / "x0.npy", np.zeros((0, 20, 2), np.float32))
    np.save(d / "t0.npy", np.zeros((2, 0, 2), np.float32))
    np.save(d / "long.npy", np.array([25, 3]))
    np.save(d / "huge.npy", np.array([10**9, 3]))
    np.savez(d / "obj.npz", x=np.array([object()], dtype=object))
    (d / "garbage.csv").write_bytes(b"\xff\xfe\x00binary\x81\x82")
    (d / "empty.onnx").write_bytes(b"")
    return d


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


CASES = [
    # (args, exit code, a phrase of the one-line error)
    (
        ["run", "native.onnx", "--input", "x0.npy", "--output", "y.npy"],
        InputError.exit_code,
        "is empty; give at least one sequence",
    ),
    (["run", "native.onnx", "--input", "t0.npy", "--output", "y.npy"], InputError.exit_code, "give at least one step"),
    (["run", "fused.onnx", "--input", "x0.npy", "--output", "y.npy"], InputError.exit_code, "batch 0"),
    (
        ["run", "unroll.onnx", "--input", "x.npy", "--lengths", "long.npy", "--output", "y.npy"],
        InputError.exit_code,
        "every length must be in 1..20",
    ),
    (
        ["run", "unroll.onnx", "--input", "x.npy", "--lengths", "huge.npy", "--output", "y.npy"],
        InputError.exit_code,
        "every length must be in 1..20",
    ),
    (["run", "nan.onnx", "--input", "x.npy", "--output", "y.npy"], ModelFormatError.exit_code, "non-finite values"),
    (
        ["run", "native.onnx", "--input", "x.npy", "--output", "x.npy"],
        ConfigError.exit_code,
        "is an input of this command",
    ),
    (
        ["run", "native.onnx", "--input", "x.npy", "--output", "native.onnx"],
        ConfigError.exit_code,
        "is an input of this command",
    ),
    (
        ["run", "native.onnx", "--input", "x.npy", "--output", "y.npy", "--threads", "10000"],
        ConfigError.exit_code,
        "more than this machine can use",
    ),
    (["inspect", "empty.onnx"], ModelFormatError.exit_code, "is empty (0 bytes)"),
    (
        ["export", "run/model.ckpt", "--out", "run/model.ckpt"],
        ConfigError.exit_code,
        "is the checkpoint being exported",
    ),
    (["train", "--layers", "10000", "--out", "big"], ConfigError.exit_code, "over edgernn's bound of 64"),
    (["train", "--hidden", "60000", "--layers", "8", "--out", "big"], ConfigError.exit_code, "GiB of fp32 weights"),
    (["train", "--lr", "inf", "--out", "nanrun"], ConfigError.exit_code, "lr must be a finite number"),
    (["train", "--clip", "nan", "--out", "nanrun"], ConfigError.exit_code, "clip must be a finite number"),
    (["train", "--n-train", "0", "--out", "empty"], ConfigError.exit_code, "n_train and n_val must be at least 1"),
    (
        ["quantize", "native.onnx", "--to", "fp16", "--out", "native.onnx"],
        ConfigError.exit_code,
        "is the model being quantised",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "phrase"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)]
)
def test_hostile_cli_case(
    folder: Path, args: list[str], code: int, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    r = CliRunner().invoke(main, args)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert r.exit_code == code, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], r.stderr
    assert _snapshot(folder) == before  # nothing written, nothing replaced


@pytest.mark.parametrize(
    "text",
    ["[]", "null", "3", '{"format_version": "1"}', "not json"],
    ids=["list", "null", "number", "string-version", "garbage"],
)
def test_a_malformed_manifest_is_a_model_format_error(text: str) -> None:
    with pytest.raises(ModelFormatError):
        Manifest.from_json(text)


@pytest.mark.parametrize(
    ("field", "value"), [("dtype", "float64"), ("dtype", "complex128"), ("shape", [-1, "b"]), ("shape", "x")]
)
def test_a_manifest_with_impossible_tensors_is_refused(folder: Path, field: str, value: object) -> None:
    proto = onnx.load(str(folder / "native.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == MANIFEST_KEY)
    d = json.loads(entry.value)
    d["inputs"][0][field] = value
    with pytest.raises(ModelFormatError):
        Manifest.from_json(json.dumps(d))


def test_an_internal_error_is_one_line_and_debug_shows_it(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgernn.verify.inspect as inspect_mod

    def broken(path: object) -> object:
        raise ZeroDivisionError("an edgernn bug")

    monkeypatch.setattr(inspect_mod, "inspect_model", broken)
    r = CliRunner().invoke(main, ["inspect", str(folder / "native.onnx")])
    assert r.exit_code == 70
    assert r.stderr.strip() == (
        "edgernn: internal error: ZeroDivisionError: an edgernn bug; rerun with --debug for the traceback "
        "(and report it)"
    )
    r = CliRunner().invoke(main, ["--debug", "inspect", str(folder / "native.onnx")])
    assert isinstance(r.exception, ZeroDivisionError)
    monkeypatch.delenv("EDGERNN_DEBUG", raising=False)


def test_an_unwritable_place_is_one_line_naming_the_path(folder: Path, tmp_path: Path) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): a read-only folder cannot be made here")
        r = CliRunner().invoke(
            main,
            ["run", str(folder / "native.onnx"), "--input", str(folder / "x.npy"), "--output", str(locked / "y.npy")],
        )
        assert r.exit_code == 1 and r.stderr.startswith("error: ") and str(locked) in r.stderr
    finally:
        locked.chmod(0o700)


def test_external_data_outside_the_model_folder_is_never_read(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from edgernn.runtime import Model

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "models").mkdir()
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    with pytest.raises(ModelFormatError):
        Model(path)
    r = CliRunner().invoke(main, ["run", str(path), "--random", "--output", "-"])
    assert r.exit_code == ModelFormatError.exit_code and r.stderr.startswith("error: ")
