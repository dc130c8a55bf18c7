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
from edgernn.model import checkpoint
from edgernn.model.zoo import ModelConfig, build_model


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
    export_model(model, d / "nolen.onnx", strategy="loop", lengths=False)
    export_model(model, d / "step.onnx", strategy="step")
    arrays = {
        "x4": np.zeros((2, 20, 4), np.float32),
        "xi": np.zeros((2, 20, 2), np.int64),
        "xnan": np.full((2, 20, 2), np.nan, np.float32),
        "xinf": np.full((2, 20, 2), np.inf, np.float32),
        "x1d": np.zeros((20,), np.float32),
        "lf": np.array([1.5, 2.0]),
        "l0": np.array([0, 3]),
        "lneg": np.array([-1, 3]),
        "l3": np.array([3, 3, 3]),
    }
    for name, a in arrays.items():
        np.save(d / f"{name}.npy", a)
    np.savez(d / "nox.npz", z=np.zeros(3))
    (d / "x.txt").write_text("1,2\n")
    (d / "bad.onnx").write_bytes(b"\x08\x01garbage" * 10)
    (d / "ragged.csv").write_text("1,2\n3\n")
    (d / "words.csv").write_text("a,b\nc,d\n")
    (d / "hist").mkdir()
    (d / "hist" / "history.json").write_text("[1, 2]")
    (d / "zero.ckpt").write_bytes(b"")
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000, 1), }"
    hdr += " " * (64 - (len(hdr) + 11) % 64) + "\n"
    (d / "forged.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + bytes(16))
    bad_ckpts = {
        "list": ["a", "list"],
        "strver": {"format": "edgernn-checkpoint", "format_version": "1", "config": {}, "state_dict": {}},
        "cfglist": {"format": "edgernn-checkpoint", "format_version": 1, "config": ["x"], "state_dict": {}},
        "cfgstr": {"format": "edgernn-checkpoint", "format_version": 1, "config": "lstm", "state_dict": {}},
        "cfgtype": {
            "format": "edgernn-checkpoint",
            "format_version": 1,
            "config": {"hidden_size": "32"},
            "state_dict": {},
        },
    }
    for name, payload in bad_ckpts.items():
        torch.save(payload, d / f"{name}.ckpt")
    (d / "mypkg").mkdir()
    (d / "mypkg" / "__init__.py").write_text("")
    (d / "mypkg" / "nets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def raises():\n    raise RuntimeError('factory failed')\n"
        "notcallable = 3\n"
        "def triple():\n    return nn.GRU(3, 4, batch_first=True), (torch.zeros(2, 5, 3),), 'extra'\n"
        "def ok():\n    return nn.GRU(3, 4, batch_first=True)\n"
    )
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
    # files that are not what they claim
    (["run", "missing.onnx", "--input", "x.npy", "--output", "y.npy"], 6, "no model file at"),
    (["run", "bad.onnx", "--input", "x.npy", "--output", "y.npy"], 6, "onnxruntime cannot load this model"),
    (["run", "native.onnx", "--input", "missing.npy", "--output", "y.npy"], 7, "no input file at"),
    (["run", "native.onnx", "--input", "obj.npz", "--output", "y.npy"], 7, "Object arrays cannot be loaded"),
    (["run", "native.onnx", "--input", "garbage.csv", "--output", "y.npy"], 7, "is not text"),
    (["run", "native.onnx", "--input", "forged.npy", "--output", "y.npy"], 7, "truncated or forged"),
    (["run", "native.onnx", "--input", "ragged.csv", "--output", "y.npy"], 7, "1 columns, but the first row has 2"),
    (["run", "native.onnx", "--input", "words.csv", "--output", "y.npy"], 7, "not a row of numbers"),
    (["run", "native.onnx", "--input", "x.txt", "--output", "y.npy"], 2, "unknown format .txt"),
    (["run", "native.onnx", "--input", "x.npy", "--output", "y.txt"], 2, "unknown format .txt"),
    (["inspect", "missing.onnx"], 6, "no model file at"),
    (["inspect", "bad.onnx"], 6, "is not a readable ONNX model"),
    (["check", "bad.onnx"], 6, "onnxruntime cannot load this model"),
    (["package", "x.txt"], 2, "the ORT converter takes a .onnx file"),
    (["package", "bad.onnx"], 9, "ORT converter failed"),
    (["quantize", "bad.onnx", "--to", "fp16", "--out", "q.onnx"], 6, "onnxruntime cannot load this model"),
    (["parity", "run", "bad.onnx"], 6, "is not a readable ONNX model"),
    (["bench", "native.onnx", "--against", "missing.onnx"], 6, "no model file at"),
    # inputs of the wrong kind
    (["run", "native.onnx", "--input", "nox.npz", "--output", "y.npy"], 7, "unknown input(s) z"),
    (["run", "native.onnx", "--input", "x1d.npy", "--output", "y.npy"], 7, "must have 3 dimensions"),
    (["run", "native.onnx", "--input", "x4.npy", "--output", "y.npy"], 7, "axis 2 must be 2"),
    (["run", "native.onnx", "--input", "xi.npy", "--output", "y.npy"], 7, "must be floating point"),
    (["run", "native.onnx", "--input", "xnan.npy", "--output", "y.npy"], 7, "non-finite value(s)"),
    (["run", "native.onnx", "--input", "xinf.npy", "--output", "y.npy"], 7, "non-finite value(s)"),
    (["run", "native.onnx", "--input", "x.npy", "--lengths", "lf.npy", "--output", "y.npy"], 7, "must be integer"),
    (["run", "native.onnx", "--input", "x.npy", "--lengths", "l0.npy", "--output", "y.npy"], 7, "in 1..20"),
    (["run", "native.onnx", "--input", "x.npy", "--lengths", "lneg.npy", "--output", "y.npy"], 7, "in 1..20"),
    (["run", "native.onnx", "--input", "x.npy", "--lengths", "l3.npy", "--output", "y.npy"], 7, "batch size differs"),
    (["run", "nolen.onnx", "--input", "x.npy", "--lengths", "l3.npy", "--output", "y.npy"], 6, "has no lengths input"),
    # options that do not go together, or make no sense
    (["run", "native.onnx", "--stream", "--input", "x.npy"], 2, "--stream reads stdin"),
    (["run", "native.onnx", "--input", "x.npy", "--output", "y.npy", "--binary"], 2, "--binary goes with --stream"),
    (["run", "native.onnx", "--input", "x.npy", "--output", "y.npy", "--provider", "cuda"], 8, "is not available"),
    (
        ["run", "native.onnx", "--input", "x.npy", "--output", "y.npy", "--provider-option", "id"],
        2,
        "must be KEY=VALUE",
    ),
    (["run", "native.onnx", "--random", "--input", "x.npy", "--output", "y.npy"], 2, "give --input or --random"),
    (["run", "native.onnx", "--input", "x.npy"], 2, "give --input FILE (or --random) and --output FILE"),
    (["run", "native.onnx", "--stream"], 2, "--stream needs a stateful model"),
    (["run", "step.onnx", "--input", "x.npy", "--output", "y.npy", "--state", "a:b:c"], 2, "must be sizes joined by x"),
    (["export", "run", "--out", "m.onnx", "--opset", "99"], 4, "supports opset 15-25"),
    (["export", "run", "--out", "m.onnx", "--strategy", "step", "--chunk", "0"], 2, "--chunk must be an integer >= 1"),
    (
        ["export", "run", "--out", "m.onnx", "--strategy", "unroll", "--seq-len", "-1"],
        2,
        "--seq-len must be an integer",
    ),
    (["export", "run", "--out", "m.onnx", "--strategy", "native", "--fused"], 2, "does not take --fused"),
    (["export", "run", "--out", "m.onnx", "--strategy", "loop", "--target", "nnapi"], 9, "cannot run strategy 'loop'"),
    (
        ["export", "run", "--out", "m.onnx", "--strategy", "step", "--target", "nnapi", "--batch", "0"],
        2,
        "batch must be",
    ),
    (["export", "run", "--out", "m.onnx", "--ort-format", "--precision", "int8"], 2, "--ort-format packages an fp32"),
    (["check", "native.onnx", "--shape", "x:0x2"], 2, "sizes >= 1"),
    (["check", "native.onnx", "--shape", "nope:1x2x2"], 2, "--shape names unknown input(s) nope"),
    (["quantize", "native.onnx", "--to", "int8", "--out", "q.onnx", "--max-metric-drop", "-1"], 2, "relative change"),
    (["quantize", "native.onnx", "--to", "int8", "--out", "q.onnx", "--data", "missing.npz"], 7, "no data file at"),
    (["train", "--task", "imagenet", "--out", "r"], 2, "unknown task 'imagenet'"),
    (["train", "--min-len", "50", "--max-len", "10", "--out", "r"], 2, "need 1 <= min_len <= max_len"),
    (["train", "--epochs", "0", "--out", "r"], 2, "epochs and batch_size must be at least 1"),
    (["train", "--dropout", "1.5", "--out", "r"], 2, "dropout must be in [0, 1)"),
    (["train", "--cell", "gru", "--proj-size", "4", "--out", "r"], 2, "proj_size needs cell 'lstm'"),
    (["train", "--cell", "gru", "--peephole", "--out", "r"], 2, "peephole needs cell 'lstm'"),
    (["train", "--init", "zeros", "--out", "r"], 2, "unknown init 'zeros'"),
    (["train", "--hidden", "0", "--out", "r"], 2, "hidden_size must be at least 1"),
    (["train", "--l1", "inf", "--out", "r"], 2, "l1 must be a finite number"),
    (["train", "--weight-decay", "nan", "--out", "r"], 2, "weight_decay must be a finite number"),
    (["plot", "hist"], 2, "is not an edgernn training history"),
    (["plot", "missing"], 2, "no training history at"),
    # checkpoints that are not checkpoints
    (["export", "missing", "--out", "m.onnx"], 3, "no checkpoint at"),
    (["export", "zero.ckpt", "--out", "m.onnx"], 3, "is empty (0 bytes)"),
    (["export", "list.ckpt", "--out", "m.onnx"], 3, "is not an edgernn checkpoint"),
    (["export", "strver.ckpt", "--out", "m.onnx"], 3, "format_version of '1'"),
    (["export", "cfglist.ckpt", "--out", "m.onnx"], 3, "config or meta that is not a mapping"),
    (["export", "cfgstr.ckpt", "--out", "m.onnx"], 3, "config or meta that is not a mapping"),
    (["export", "cfgtype.ckpt", "--out", "m.onnx"], 3, "hidden_size must be int"),
    (["parity", "missing", "native.onnx"], 3, "no checkpoint at"),
    # a user's module that misbehaves
    (["export", "--module", "mypkg.nets:raises", "--input", "x:2x5x3", "--out", "m.onnx"], 2, "raised RuntimeError"),
    (["export", "--module", "mypkg.nets:notcallable", "--input", "x:2x5x3", "--out", "m.onnx"], 2, "not a function"),
    (["export", "--module", "mypkg.nets:triple", "--out", "m.onnx"], 2, "returned a tuple of 3"),
    (["export", "--module", "mypkg.nets:nothere", "--input", "x:2x5x3", "--out", "m.onnx"], 2, "cannot load"),
    (["export", "--module", "mypkg.nets:ok", "--input", "x:2x-5x3", "--out", "m.onnx"], 2, "sizes >= 1"),
    (["export", "--module", "mypkg.nets:ok", "--input", "x:2x5x7", "--out", "m.onnx"], 4, "forward failed"),
    (["export", "--module", "mypkg.nets:ok", "--input", "x:2x5x3:int64", "--out", "m.onnx"], 4, "forward failed"),
    (["export", "--module", "mypkg.nets:ok", "--out", "m.onnx"], 2, "give the module's inputs"),
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
    lines = [ln for ln in r.stderr.strip().splitlines() if ln and not ln.startswith(("note: ", "edgernn: streaming"))]
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


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 80


def test_a_stray_temporary_file_of_a_killed_run_is_cleaned_up(tmp_path: Path) -> None:
    import os

    from edgernn.files import write_atomic

    stale = tmp_path / ".y.npy.edgernn-999999999-abc.tmp"  # a pid no process has
    live = tmp_path / f".y.npy.edgernn-{os.getpid()}-abc.tmp"  # a write under way in this process
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    write_atomic(tmp_path / "y.npy", b"whole")
    assert (tmp_path / "y.npy").read_bytes() == b"whole"
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "y.npy"])


def test_binary_garbage_on_a_text_stream_is_one_error(folder: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(folder / "step.onnx"), "--stream"], input=b"\xff\xfe\x00\n")
    assert r.exit_code == InputError.exit_code and r.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A 64 KiB filesystem: an export or a training run that does not fit fails with the path and the reason,
    and leaves no file behind."""
    import shutil
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to make a small filesystem")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root or CAP_SYS_ADMIN): {p.stderr.strip()[:100]}")
    try:
        model = build_model(ModelConfig(cell="lstm", input_size=8, hidden_size=64, num_layers=2))
        ckpt = checkpoint.save(tmp_path / "big" / "model.ckpt", model)
        r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(disk / "m.onnx")])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().startswith("error: ") and "No space left on device" in r.stderr
        assert str(disk) in r.stderr and list(disk.iterdir()) == []
        args = ["train", "--hidden", "64", "--epochs", "1", "--n-train", "32", "--out", str(disk / "run")]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "No space left on device" in r.stderr
        assert not (disk / "run" / "model.ckpt").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_values_beyond_the_input_dtype_are_refused(folder: Path) -> None:
    from edgernn.runtime import Model

    with pytest.raises(InputError, match="beyond the range of float32"):
        Model(folder / "native.onnx").run(np.full((1, 3, 2), 1e39))


@pytest.mark.slow
def test_a_diverged_run_keeps_the_checkpoint_that_was_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgernn.train.loop as loop

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--epochs", "1", "--n-train", "32", "--hidden", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    before = _snapshot(out)
    real = loop.fit

    def diverging(*args: object, **kwargs: object) -> object:
        model, hist = real(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model, hist

    monkeypatch.setattr(loop, "fit", diverging)
    r = CliRunner().invoke(main, ["train", "--epochs", "1", "--n-train", "32", "--hidden", "4", "--out", str(out)])
    assert r.exit_code == ConfigError.exit_code and "training diverged" in r.stderr and "was kept" in r.stderr
    assert _snapshot(out) == before
