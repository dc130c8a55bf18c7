"""Streams of stateful models with more than a frame and a state: constant inputs (a VAD's sample rate), data
inputs without a batch axis ((T, F) frames), and integer token streams (Embedding + GRU), each checked against
the torch module it was exported from, run over the whole sequence with its state carried."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from onnx import TensorProto, helper
from torch import nn

from edgernn.cli.runtime import run
from edgernn.errors import ConfigError, InputError
from edgernn.runtime.stream import StreamingModel, parse_constant

ATOL = 1e-5
VAD_FRAME, VAD_HIDDEN = 576, 128
VAD_STATES = ["state:stateN:2xbx128"]


def export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> bytes:
    """The module as ONNX bytes through torch's TorchScript exporter (plain ops, named dynamic axes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            args,
            buf,  # type: ignore[arg-type]  # torch's stub names paths only; a file object works
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
        )
    return buf.getvalue()


class Vad(nn.Module):
    """A Silero-VAD-shaped model: one frame of samples per call (no time axis), a (2, batch, 128) state and an
    int64 scalar sample rate that scales the input and picks the output branch, so a wrong rate changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(VAD_FRAME, 32)
        self.cell1 = nn.GRUCell(32, VAD_HIDDEN)
        self.cell2 = nn.GRUCell(VAD_HIDDEN, VAD_HIDDEN)
        self.out = nn.Linear(VAD_HIDDEN, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rate = sr.to(torch.float32) / 16000.0
        h1 = self.cell1(torch.tanh(self.inp(x * rate)), state[0])
        h2 = self.cell2(h1, state[1])
        logit = self.out(h2)
        y = torch.where(sr == 16000, torch.sigmoid(logit), torch.sigmoid(-logit))
        return y, torch.stack([h1, h2])


class TimeFeatures(nn.Module):
    """Data (T, F) with no batch axis, state (1, 1, H): a GRU over the time axis and a linear head."""

    def __init__(self, features: int = 5, hidden: int = 16, out: int = 3) -> None:
        super().__init__()
        self.rnn = nn.GRU(features, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_next = self.rnn(x.unsqueeze(1), h)
        return self.head(y.squeeze(1)), h_next


class Tokens(nn.Module):
    """int64 token ids (batch, time) -> Embedding -> GRU -> logits (batch, time, vocab); state (1, batch, H)."""

    def __init__(self, vocab: int = 11, dim: int = 6, hidden: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_next = self.rnn(self.emb(tokens), h)
        return self.head(y), h_next


@pytest.fixture(scope="module")
def vad() -> tuple[Vad, bytes]:
    torch.manual_seed(0)
    m = Vad().eval()
    onnx_bytes = export(
        m,
        (torch.zeros(1, VAD_FRAME), torch.zeros(2, 1, VAD_HIDDEN), torch.tensor(16000)),
        ["input", "state", "sr"],
        ["output", "stateN"],
        {"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"}, "stateN": {1: "batch"}},
    )
    return m, onnx_bytes


@pytest.fixture(scope="module")
def time_features() -> tuple[TimeFeatures, bytes]:
    torch.manual_seed(1)
    m = TimeFeatures().eval()
    onnx_bytes = export(
        m, (torch.zeros(4, 5), torch.zeros(1, 1, 16)), ["x", "h"], ["y", "hN"], {"x": {0: "T"}, "y": {0: "T"}}
    )
    return m, onnx_bytes


@pytest.fixture(scope="module")
def tokens() -> tuple[Tokens, bytes]:
    torch.manual_seed(2)
    m = Tokens().eval()
    onnx_bytes = export(
        m,
        (torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 1, 12)),
        ["tokens", "h"],
        ["logits", "hN"],
        {"tokens": {0: "batch", 1: "time"}, "h": {1: "batch"}, "logits": {0: "batch", 1: "time"}, "hN": {1: "batch"}},
    )
    return m, onnx_bytes


def vad_reference(m: Vad, x: np.ndarray, sr: int) -> np.ndarray:
    """The torch module frame by frame over x (T, 576), its state carried: (T, 1)."""
    state = torch.zeros(2, 1, VAD_HIDDEN)
    ys = []
    with torch.no_grad():
        for frame in torch.from_numpy(x):
            y, state = m(frame[None], state, torch.tensor(sr))
            ys.append(y[0].numpy())
    return np.stack(ys)


def vad_frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, VAD_FRAME)).astype(np.float32)


# -- constants -----------------------------------------------------------------------------------------------------


def test_vad_streams_with_its_sample_rate_as_a_constant(vad: tuple[Vad, bytes]) -> None:
    m, onnx_bytes = vad
    x = vad_frames(12, seed=0)
    ref = vad_reference(m, x, 16000)
    sm = StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000})
    assert sm.data.name == "input" and sm.features == VAD_FRAME
    assert sm.constants["sr"].dtype == np.int64 and sm.constants["sr"].shape == () and sm.constants["sr"] == 16000
    s = sm.stream()
    got = np.stack([s.step(f) for f in x])  # first call a plain run, then the bound (IOBinding) path
    assert got.shape == (12, 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    seq = sm.run_sequence(x[:, None])  # a model without a time axis takes a leading one
    np.testing.assert_allclose(seq["output"][:, 0], ref, rtol=0, atol=ATOL)

    # the constant matters: another rate gives other numbers, the torch module's at that rate
    ref_8k = vad_reference(m, x, 8000)
    assert np.abs(ref_8k - ref).max() > 1e-2
    s8 = StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 8000}).stream()
    np.testing.assert_allclose(np.stack([s8.step(f) for f in x]), ref_8k, rtol=0, atol=ATOL)
    # a whole-number float, a one-element list and a numpy scalar are the same constant
    for value in (16000.0, [16000], np.int32(16000)):
        assert StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": value}).constants["sr"] == 16000


def test_vad_batched_step_many_feeds_the_constant(vad: tuple[Vad, bytes]) -> None:
    m, onnx_bytes = vad
    sm = StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000})
    inputs = [vad_frames(6, seed=10 + i) for i in range(3)]
    streams = [sm.stream() for _ in inputs]
    got: list[list[np.ndarray]] = [[] for _ in inputs]
    for t in range(6):
        ys = sm.step_many(streams, [x[t] for x in inputs])
        for i, y in enumerate(ys):
            got[i].append(y)
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(np.stack(got[i]), vad_reference(m, x, 16000), rtol=0, atol=ATOL)
    # batched and single calls share the streams' state: one more frame each by step() continues them
    extra = vad_frames(1, seed=99)[0]
    for i, x in enumerate(inputs):
        want = vad_reference(m, np.concatenate([x, extra[None]]), 16000)[-1]
        np.testing.assert_allclose(streams[i].step(extra), want, rtol=0, atol=ATOL)


def test_missing_and_unknown_constants_say_what_to_pass(vad: tuple[Vad, bytes]) -> None:
    _, onnx_bytes = vad
    with pytest.raises(ConfigError) as e:
        StreamingModel(onnx_bytes, states=VAD_STATES)
    msg = str(e.value)
    assert "'sr'" in msg and "int64" in msg and "constants={'sr': ...}" in msg and "--const sr=VALUE" in msg
    assert "'input'" in msg  # which input it took as the data
    with pytest.raises(ConfigError) as e:
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000, "rate": 8000})
    assert "constant 'rate' is not an input of this model; its inputs: input, state, sr" in str(e.value)
    with pytest.raises(ConfigError, match="'state' is a state input"):
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000, "state": 0})


def test_constant_values_are_checked_against_the_input(vad: tuple[Vad, bytes]) -> None:
    _, onnx_bytes = vad
    with pytest.raises(InputError, match=r"constant 'sr' is int64: whole numbers only \(edgernn does not round\)"):
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000.5})
    with pytest.raises(InputError, match=r"constant 'sr' must have shape \(\); got \(2,\)"):
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": [16000, 8000]})
    with pytest.raises(InputError, match="outside int64's range"):
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 2**70})
    with pytest.raises(InputError, match="must be numbers"):
        StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": "16k"})


def gain_model(features: int = 4, gain_shape: list[int | str] | None = None) -> bytes:
    """h_next = tanh(x * gain + 0.5 * h), y = 2 * h_next: x (batch, F), state h (batch, F), gain a constant of
    shape (F,) by default."""
    shape: list[int | str] = gain_shape or [features]
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["xg"]),
        helper.make_node("Mul", ["h", "half"], ["hh"]),
        helper.make_node("Add", ["xg", "hh"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["hN"]),
        helper.make_node("Mul", ["hN", "two"], ["y"]),
    ]
    inits = [helper.make_tensor("half", f, [], [0.5]), helper.make_tensor("two", f, [], [2.0])]
    graph = helper.make_graph(
        nodes,
        "gain",
        [
            helper.make_tensor_value_info("x", f, ["batch", features]),
            helper.make_tensor_value_info("h", f, ["batch", features]),
            helper.make_tensor_value_info("gain", f, shape),
        ],
        [
            helper.make_tensor_value_info("y", f, ["batch", features]),
            helper.make_tensor_value_info("hN", f, ["batch", features]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gain_reference(x: np.ndarray, gain: np.ndarray) -> np.ndarray:
    h = np.zeros(x.shape[1], np.float32)
    ys = []
    for frame in x:
        h = np.tanh(frame * gain + 0.5 * h)
        ys.append(2 * h)
    return np.stack(ys)


def test_one_dimensional_constant_and_batch_axis_constants_refused() -> None:
    x = np.random.default_rng(3).standard_normal((7, 4)).astype(np.float32)
    gain = np.array([0.5, 1.0, 2.0, -1.0], np.float32)
    sm = StreamingModel(gain_model(), states=["h:hN:bx4"], constants={"gain": [0.5, 1, 2, -1]})
    assert sm.constants["gain"].dtype == np.float32
    s = sm.stream()
    np.testing.assert_allclose(np.stack([s.step(f) for f in x]), gain_reference(x, gain), rtol=0, atol=ATOL)
    a, b = sm.stream(), sm.stream()
    both = [sm.step_many([a, b], [f, -f]) for f in x]
    np.testing.assert_allclose(np.stack([p[0] for p in both]), gain_reference(x, gain), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.stack([p[1] for p in both]), gain_reference(-x, gain), rtol=0, atol=ATOL)
    with pytest.raises(InputError, match=r"constant 'gain' must have shape \(4\); got \(3,\)"):
        StreamingModel(gain_model(), states=["h:hN:bx4"], constants={"gain": [1, 2, 3]})
    # a constant with a batch axis would be one value for every stream of a batched call: refused, not tiled
    with pytest.raises(ConfigError, match=r"'gain' \(batch, 4\) has a batch axis \(0, 'batch'\)"):
        StreamingModel(gain_model(gain_shape=["batch", 4]), states=["h:hN:bx4"], constants={"gain": [[1, 2, 3, 4]]})


def test_parse_constant() -> None:
    assert parse_constant("sr=16000") == ("sr", 16000)
    assert parse_constant(" temp = 0.5 ") == ("temp", 0.5)
    assert parse_constant("gain=0.5,1,2") == ("gain", [0.5, 1, 2])
    for bad, what in (("sr", "NAME=VALUE"), ("=3", "NAME=VALUE"), ("sr=", "NAME=VALUE"), ("sr=16k", "'16k'")):
        with pytest.raises(ConfigError, match=what):
            parse_constant(bad)


# -- the CLI -------------------------------------------------------------------------------------------------------


def invoke(args: list[object], stdin: str | bytes | None = None) -> Result:
    result = CliRunner().invoke(run, [str(a) for a in args], input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_streams_the_vad_with_const(vad: tuple[Vad, bytes], tmp_path: Path) -> None:
    m, onnx_bytes = vad
    path = tmp_path / "vad.onnx"
    path.write_bytes(onnx_bytes)
    x = vad_frames(5, seed=4)
    frames_file = tmp_path / "frames.txt"
    frames_file.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in x) + "\n")
    base = [path, "--stream", "--state", VAD_STATES[0]]
    r = invoke([*base, "--const", "sr=16000"], stdin=frames_file.read_text())
    assert r.exit_code == 0, r.output
    got = np.array([[float(v) for v in ln.split(",")] for ln in r.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, vad_reference(m, x, 16000), rtol=0, atol=ATOL)
    assert "576 features per frame, sr=16000" in r.stderr

    r = invoke([*base, "--const", "sr=8000", "--binary"], stdin=x.astype("<f4").tobytes())
    assert r.exit_code == 0, r.output
    got = np.frombuffer(r.stdout_bytes, dtype="<f4").reshape(5, 1)
    np.testing.assert_allclose(got, vad_reference(m, x, 8000), rtol=0, atol=ATOL)

    r = invoke(base, stdin=frames_file.read_text())
    assert r.exit_code == 2 and "--const sr=VALUE" in r.stderr
    r = invoke([*base, "--const", "sr=fast"], stdin="")
    assert r.exit_code == 2 and "'fast' is not a number" in r.stderr
    r = invoke([*base, "--const", "sr=16000", "--const", "sr=8000"], stdin="")
    assert r.exit_code == 2 and "names an input twice" in r.stderr
    r = invoke([*base, "--const", "sr=16000.5"], stdin="")
    assert r.exit_code == 7 and "whole numbers only" in r.stderr
    np.save(tmp_path / "x.npy", x)
    r = invoke([path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--const", "sr=16000"])
    assert r.exit_code == 2 and "--const goes with --stream" in r.stderr


# -- data inputs without a batch axis ------------------------------------------------------------------------------


def test_time_features_model_takes_single_frames_and_chunks(time_features: tuple[TimeFeatures, bytes]) -> None:
    m, onnx_bytes = time_features
    x = np.random.default_rng(5).standard_normal((13, 5)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x), torch.zeros(1, 1, 16))[0].numpy()
    sm = StreamingModel(onnx_bytes, states=["h:hN:1x1x16"])
    assert sm.axes.batch is None and sm.axes.time == 0 and sm.chunk is None and sm.features == 5
    s = sm.stream()
    got = [s.step(f) for f in x[:6]]  # one frame (F,) at a time: it becomes (1, F)
    assert got[0].shape == (1, 3)
    got += [s.step(x[6:10]), s.step(x[10]), s.step(x[11:])]  # chunks of any length, and a frame between them
    np.testing.assert_allclose(np.concatenate(got), ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(sm.run_sequence(x)["y"], ref, rtol=0, atol=ATOL)
    with pytest.raises(InputError) as e:
        s.step(np.zeros(6, np.float32))
    assert (
        "expects 5 features; got 6 (shape (6,)); a stream takes one frame, shape (5,), or a chunk, shape (steps, 5)"
        in str(e.value)
    )
    with pytest.raises(InputError) as e:
        s.step(np.zeros((1, 2, 5), np.float32))
    assert "must be one frame, shape (5,), or a chunk, shape (steps, 5); got shape (1, 2, 5)" in str(e.value)


def test_batch_features_frame_errors_show_the_expected_frame(vad: tuple[Vad, bytes]) -> None:
    _, onnx_bytes = vad
    s = StreamingModel(onnx_bytes, states=VAD_STATES, constants={"sr": 16000}).stream()
    with pytest.raises(InputError) as e:
        s.step(np.zeros(575, np.float32))
    assert "expects 576 features; got 575 (shape (575,)); a stream takes one frame, shape (576,)" in str(e.value)
    with pytest.raises(InputError) as e:
        s.step(np.zeros((2, 3, 576), np.float32))
    assert "must be one frame, shape (576,); got shape (2, 3, 576)" in str(e.value)
    assert s.steps == 0


# -- integer token streams -----------------------------------------------------------------------------------------


def token_reference(m: Tokens, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.from_numpy(ids)[None], torch.zeros(1, 1, 12))[0][0].numpy()


def test_token_stream_steps_ids_and_chunks(tokens: tuple[Tokens, bytes]) -> None:
    m, onnx_bytes = tokens
    ids = np.random.default_rng(6).integers(0, 11, 20).astype(np.int64)
    ref = token_reference(m, ids)
    sm = StreamingModel(onnx_bytes, states=["h:hN:1xbx12"])
    assert sm.dtype == np.int64 and sm.features is None
    s = sm.stream()
    got = [s.step(int(ids[0])), s.step(ids[1])]  # a Python int, a numpy scalar: one token, output (1, vocab)
    assert got[0].shape == (1, 11)
    got += [s.step(t) for t in ids[2:8]]
    got += [s.step(ids[8:13]), s.step(ids[13:14].astype(np.int32)), s.step(ids[14:].tolist())]  # chunks (K,)
    np.testing.assert_allclose(np.concatenate(got), ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(sm.run_sequence(ids[None])["logits"][0], ref, rtol=0, atol=ATOL)


def test_token_streams_batched(tokens: tuple[Tokens, bytes]) -> None:
    m, onnx_bytes = tokens
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 11, 12).astype(np.int64) for _ in range(4)]
    sm = StreamingModel(onnx_bytes, states=["h:hN:1xbx12"])
    streams = [sm.stream() for _ in seqs]
    outs: list[list[np.ndarray]] = [[] for _ in seqs]
    for t in range(8):  # one token per stream per call
        for i, y in enumerate(sm.step_many(streams, [int(q[t]) for q in seqs])):
            outs[i].append(y)
    for i, y in enumerate(sm.step_many(streams, [q[8:] for q in seqs])):  # then a chunk of 4 per stream
        outs[i].append(y)
    for q, got in zip(seqs, outs, strict=True):
        np.testing.assert_allclose(np.concatenate(got), token_reference(m, q), rtol=0, atol=ATOL)


def test_float_frames_to_a_token_input_are_refused(tokens: tuple[Tokens, bytes]) -> None:
    _, onnx_bytes = tokens
    sm = StreamingModel(onnx_bytes, states=["h:hN:1xbx12"])
    s = sm.stream()
    for bad in (np.array(3.0), np.array([1.0, 2.0], np.float32), 2.7):
        with pytest.raises(InputError) as e:
            s.step(bad)
        assert "input 'tokens' takes integers (int64, e.g. token ids); got float" in str(e.value)
        assert "does not round" in str(e.value)
    with pytest.raises(InputError, match="takes integers"):
        sm.step_many([s, sm.stream()], [1.0, 2.0])
    with pytest.raises(InputError, match="takes integers"):
        sm.run_sequence(np.zeros((1, 3), np.float32))
    with pytest.raises(InputError) as e:
        s.step(np.zeros((1, 2, 3), np.int64))
    want = "one frame, shape () (a scalar, e.g. one token id), or a chunk, shape (steps,); got shape (1, 2, 3)"
    assert f"a frame for 'tokens' (batch, time) must be {want}" in str(e.value)
    assert s.steps == 0
    # nothing ran: the stream is still at its initial state
    assert not s.state["h"].any()


def test_cli_streams_token_ids_from_text(tokens: tuple[Tokens, bytes], tmp_path: Path) -> None:
    m, onnx_bytes = tokens
    path = tmp_path / "tokens.onnx"
    path.write_bytes(onnx_bytes)
    ids = np.random.default_rng(8).integers(0, 11, 9).astype(np.int64)
    base = [path, "--stream", "--state", "h:hN:1xbx12"]
    r = invoke(base, stdin="".join(f"{t}\n" for t in ids))
    assert r.exit_code == 0, r.output
    got = np.array([[float(v) for v in ln.split(",")] for ln in r.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, token_reference(m, ids), rtol=0, atol=ATOL)
    r = invoke(base, stdin="3\n1.5\n")
    assert r.exit_code == InputError.exit_code and "line 2: not a frame of token ids" in r.stderr
    r = invoke([*base, "--binary"], stdin="")
    assert r.exit_code == ConfigError.exit_code and "send them as text" in r.stderr
