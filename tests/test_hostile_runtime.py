"""Hostile and careless inputs to the runtime's surfaces (``run``, ``parity``, ``check``, and the Python API
``Model`` / ``StreamingModel`` / ``Stream``): each gets its typed error with its documented exit code, one line, no
traceback and never exit 70, and the working folder is left exactly as it was."""

from __future__ import annotations

import errno
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

from edgernn.cli import main
from edgernn.errors import ConfigError, InputError, ModelFormatError
from edgernn.export import export_model
from edgernn.model import checkpoint
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.runtime import Model, StreamingModel

VOCAB = 10
TOKEN_STATE = "h:hN:1xbx12"


class Tokens(nn.Module):
    """int64 ids (batch, time) -> Embedding -> GRU -> logits; state (1, batch, 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6)
        self.rnn = nn.GRU(6, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_next = self.rnn(self.emb(tokens), h)
        return self.head(y), h_next


class Lookup(nn.Module):
    """int64 ids (batch, time) -> Embedding -> Linear: no state."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outs: list[str], path: Path) -> None:
    axes = {n: {0: "batch", 1: "time"} for n in ("tokens", "logits", "y")}
    axes.update({n: {1: "batch"} for n in ("h", "hN")})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            args,
            buf,  # type: ignore[arg-type]  # a file object works
            dynamo=False,
            input_names=names,
            output_names=outs,
            dynamic_axes={k: v for k, v in axes.items() if k in names + outs},
            opset_version=17,
        )
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def modules() -> tuple[Tokens, Lookup]:
    torch.manual_seed(3)
    return Tokens().eval(), Lookup().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, modules: tuple[Tokens, Lookup]) -> Path:
    d = tmp_path_factory.mktemp("hostile-runtime")
    tokens, lookup = modules
    ids = torch.zeros(1, 4, dtype=torch.int64)
    _export(tokens, (ids, torch.zeros(1, 1, 12)), ["tokens", "h"], ["logits", "hN"], d / "tokens.onnx")
    _export(lookup, (ids,), ["tokens"], ["y"], d / "lookup.onnx")
    torch.manual_seed(0)
    zoo = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=32))
    export_model(zoo, d / "native.onnx", strategy="native")
    checkpoint.save(d / "run" / "model.ckpt", zoo, {"task": "sine"})
    (d / "ext").mkdir()  # the same model with its weights as external data beside it
    onnx.save(
        onnx.load(str(d / "native.onnx")), str(d / "ext" / "m.onnx"), save_as_external_data=True, location="m.data"
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Where", ["c", "x", "n"], ["y"])]
    graph = helper.make_graph(nodes, "where", [x, c], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(d / "where.onnx"))
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(d / "where_bool.npz", x=xv, c=np.array([[True, False, True]] * 2))
    np.savez(d / "where_01.npz", x=xv, c=np.array([[1, 0, 1]] * 2))
    np.savez(d / "where_2.npz", x=xv, c=np.array([[2, 0, 1]] * 2))
    np.save(d / "neg.npy", np.array([[1, -1, 3]]))
    np.save(d / "vocab.npy", np.array([[1, VOCAB, 3]]))
    np.save(d / "ok.npy", np.array([[0, VOCAB - 1, 3]]))
    return d


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


TOKEN_STREAM = ["run", "tokens.onnx", "--stream", "--state", TOKEN_STATE]
HUGE = str(2**62)

CASES = [
    # (args, stdin, exit code, a phrase of the one-line error)
    (TOKEN_STREAM, "3\n-1\n", InputError.exit_code, "ids must be in 0..9; got -1"),
    (TOKEN_STREAM, "3\n10\n", InputError.exit_code, "ids must be in 0..9; got 10"),
    (TOKEN_STREAM, "2 -3\n", InputError.exit_code, "got -3"),
    (["run", "lookup.onnx", "--input", "neg.npy", "--output", "y.npy"], None, 7, "ids must be in 0..9; got -1"),
    (["run", "lookup.onnx", "--input", "vocab.npy", "--output", "y.npy"], None, 7, "ids must be in 0..9; got 10"),
    (["run", "lookup.onnx", "--input", "neg.npy", "--output", "-"], None, 7, "count a negative id from the end"),
    (["run", "tokens.onnx", "--state", TOKEN_STATE, "--input", "neg.npy", "--output", "y.npy"], None, 7, "got -1"),
    (["run", "tokens.onnx", "--state", TOKEN_STATE, "--input", "vocab.npy", "--output", "y.npy"], None, 7, "got 10"),
    (["run", "where.onnx", "--input", "where_2.npz", "--output", "y.npy"], None, 7, "is bool: give True/False"),
    (["check", "native.onnx", "--target", "ort", "--shape", f"x:1x{HUGE}x2"], None, 2, "at most 268,435,456"),
    (["check", "native.onnx", "--target", "ort", "--shape", "x:1x-5x2"], None, 2, "sizes >= 1"),
    (["check", "native.onnx", "--target", "ort", "--shape", f"x:{HUGE}x{HUGE}x2"], None, 2, "GiB as float32"),
]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "phrase"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)]
)
def test_hostile_runtime_cli_case(
    folder: Path, args: list[str], stdin: str | None, code: int, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    r = CliRunner().invoke(main, args, input=stdin)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln and not ln.startswith(("note: ", "edgernn: streaming"))]
    assert r.exit_code == code, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], r.stderr
    assert _snapshot(folder) == before  # nothing written, nothing replaced


# -- the Python API -------------------------------------------------------------------------------------------------


def test_model_names_what_it_takes(folder: Path) -> None:
    for bad in (np.zeros(10), 123, None, [str(folder / "lookup.onnx")]):
        with pytest.raises(ConfigError, match=r"path of an \.onnx file .* or the file's bytes"):
            Model(bad)  # type: ignore[arg-type]
    assert Model(bytearray((folder / "lookup.onnx").read_bytes())).index_limits == {"tokens": VOCAB}


@pytest.mark.parametrize("ids", [[[-1]], [[1, -VOCAB]], [[VOCAB]], [[0, 2**40]]], ids=["-1", "-vocab", "vocab", "big"])
def test_model_run_refuses_ids_outside_the_vocabulary(folder: Path, ids: list[list[int]]) -> None:
    with pytest.raises(InputError, match=r"ids must be in 0\.\.9"):
        Model(folder / "lookup.onnx").run(np.array(ids))


def test_ids_inside_the_vocabulary_compute_what_torch_computes(folder: Path, modules: tuple[Tokens, Lookup]) -> None:
    tokens, lookup = modules
    ids = np.array([[0, VOCAB - 1, 3, 7]])
    with torch.no_grad():
        want = lookup(torch.from_numpy(ids)).numpy()
        want_seq, _ = tokens(torch.from_numpy(ids), torch.zeros(1, 1, 12))
    np.testing.assert_allclose(Model(folder / "lookup.onnx").run(ids), want, atol=1e-5, rtol=1e-5)
    sm = StreamingModel(folder / "tokens.onnx", states=[TOKEN_STATE])
    s = sm.stream()
    got = np.concatenate([s.step(int(i)) for i in ids[0]])  # one id per step: (1, outputs) each
    np.testing.assert_allclose(got, want_seq.numpy()[0], atol=1e-5, rtol=1e-5)


def test_stream_refuses_ids_outside_the_vocabulary_and_keeps_its_state(folder: Path) -> None:
    sm = StreamingModel(folder / "tokens.onnx", states=[TOKEN_STATE])
    s = sm.stream()
    s.step(3)
    before = s.state
    for bad in (-1, VOCAB, np.array([2, -5]), np.array([VOCAB + 1, 0])):
        with pytest.raises(InputError, match=r"ids must be in 0\.\.9"):
            s.step(bad)
    np.testing.assert_array_equal(s.state["h"], before["h"])  # a refused id does not advance the stream
    with pytest.raises(InputError, match="got -2"):
        sm.step_many([sm.stream(), sm.stream()], [1, -2])
    with pytest.raises(InputError, match="got 10"):
        sm.run_sequence(np.array([[1, 10]]))


@pytest.mark.parametrize("value", [1e39, -1e39, np.nan, np.inf])
def test_set_state_checks_the_state_after_the_cast(folder: Path, value: float) -> None:
    sm = StreamingModel(folder / "tokens.onnx", states=[TOKEN_STATE])
    s = sm.stream()
    with pytest.raises(InputError, match="not finite as float32"):
        s.set_state({"h": np.full((1, 1, 12), value)})
    assert not s.state["h"].any()  # left as it was (zeros)
    s.set_state({"h": np.full((1, 1, 12), 3e38)})  # large, and finite as float32
    assert np.isfinite(s.step(1)).all()


def test_a_group_is_bounded_before_allocating(folder: Path) -> None:
    sm = StreamingModel(folder / "tokens.onnx", states=[TOKEN_STATE])
    with pytest.raises(ConfigError, match=r"1,000,000,000 streams would need 89\.4 GiB"):
        sm.group(10**9)
    with pytest.raises(ConfigError, match="at most 65,536 members"):
        sm.group(65537)
    assert sm.group(4).step(np.zeros((4, 1), np.int64)).shape[0] == 4


def test_bool_inputs_take_bools_and_zero_one(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Model(folder / "where.onnx")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = np.where([[True, False, True]] * 2, x, -x)
    for c in (np.array([[True, False, True]] * 2), np.array([[1, 0, 1]] * 2)):
        np.testing.assert_array_equal(m.run_feed({"x": x, "c": c})["y"], want)
    for bad in (np.array([[2, 0, 1]] * 2), np.array([[0.5, 0, 1]] * 2)):
        with pytest.raises(InputError, match="is bool"):
            m.run_feed({"x": x, "c": bad})
    monkeypatch.chdir(folder)
    for name in ("where_bool.npz", "where_01.npz"):
        r = CliRunner().invoke(main, ["run", "where.onnx", "--input", name, "--output", "-"])
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(np.loadtxt(io.StringIO(r.stdout), delimiter=","), want)
        r = CliRunner().invoke(main, ["parity", "where.onnx", "where.onnx", "--inputs", name])
        assert r.exit_code == 0 and "parity PASS" in r.stdout, r.output


def test_check_model_shapes_are_bounded(folder: Path) -> None:
    from edgernn.export.check import check_model

    for shape in ([1, -5, 2], [1, 2**62, 2]):
        with pytest.raises(ConfigError, match="--shape x"):
            check_model(folder / "native.onnx", ["ort"], shapes={"x": shape})


def test_parity_loads_external_data_beside_the_model(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # elsewhere: the external data is found beside the model, not in the working folder
    ext, native = str(folder / "ext" / "m.onnx"), str(folder / "native.onnx")
    for args in ([ext, native], [native, ext], [str(folder / "run" / "model.ckpt"), ext, "--localize"]):
        r = CliRunner().invoke(main, ["parity", *args])
        assert r.exit_code == 0 and "parity PASS" in r.stdout, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_file_over_protobufs_limit_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:  # sparse: 2.2 GB on paper, no disk used
        f.truncate(2_200_000_000)
    monkeypatch.chdir(tmp_path)
    for args in (["run", "huge.onnx", "--random", "--output", "y.npy"], ["parity", "huge.onnx", "huge.onnx"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == ModelFormatError.exit_code, r.output
        assert (
            r.stderr.startswith("error: ") and "over protobuf's 2 GiB limit" in r.stderr and "external data" in r.stderr
        )
    with pytest.raises(ModelFormatError, match="2 GiB limit"):
        Model(huge)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.onnx"]


def test_a_read_only_output_folder_is_named(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mkstemp in a folder the user cannot write names the temporary file; the error names the folder."""
    import tempfile

    out = tmp_path / "locked"
    out.mkdir()

    def denied(*args: object, dir: object = None, **kwargs: object) -> tuple[int, str]:  # noqa: A002
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/.y.npy.edgernn-1-abc.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    r = CliRunner().invoke(main, ["run", str(folder / "native.onnx"), "--random", "--output", str(out / "y.npy")])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == f"error: {out}: Permission denied (cannot write y.npy in this folder)"
    assert list(out.iterdir()) == []
