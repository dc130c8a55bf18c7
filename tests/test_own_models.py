"""Other people's models as they are written: each module below is in the style of real recurrent model code that
used to break the export path. Each exports with every strategy that applies and matches the module itself at
shapes other than the traced one, or is refused with a message that names the cause and a way out."""

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from edgernn.cli.main import main
from edgernn.errors import ConfigError, ExportError, ParityError
from edgernn.export import export
from edgernn.runtime import Model
from edgernn.verify.parity import flat_outputs

OPTS: dict[str, dict[str, Any]] = {"native": {}, "loop": {}, "unroll": {"seq_len": 9}, "step": {"chunk": 3}}


def _run_module(module: nn.Module, *args: Any) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.eval()(*[torch.as_tensor(a) for a in args])
    return [o.numpy() for o in flat_outputs(out)]


def _matches(path: Path, module: nn.Module, feed: dict[str, np.ndarray], n_out: int = 1) -> None:
    """The written file on onnxruntime against the module itself, on inputs the trace never saw."""
    got = Model(path).run_feed(feed)
    want = _run_module(module, *feed.values())
    names = list(got)[:n_out]
    assert len(want) >= n_out
    for name, w in zip(names, want, strict=False):
        np.testing.assert_allclose(got[name], w, atol=1e-5, rtol=1e-5)


def _spec(result: Any, name: str) -> Any:
    return next(s for s in result.manifest.inputs if s.name == name)


def _passed(result: Any) -> None:
    assert result.report is not None and result.report.passed, result.report.table()
    assert result.report.max_abs <= 1e-5


# --------------------------------------------------------------------------- 1. a submodule under two names


class Aliased(nn.Module):
    """A loss registered twice (``self.valid_loss = self.loss``) and the GRU reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.encoder = self.gru
        self.head = nn.Linear(8, 2)
        self.loss = nn.MSELoss()
        self.valid_loss = self.loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[0])


@pytest.mark.parametrize("strategy", list(OPTS))
def test_aliased_submodules(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Aliased().eval()
    t = OPTS[strategy].get("seq_len") or OPTS[strategy].get("chunk") or 5
    result = export(net, (torch.zeros(2, 5, 3),), tmp_path / "m.onnx", strategy=strategy, **OPTS[strategy])
    _passed(result)
    assert net.encoder is net.gru and type(net.gru) is nn.GRU  # the user's module untouched
    x = np.random.default_rng(1).standard_normal((4, t if strategy in ("unroll", "step") else 13, 3))
    if strategy == "step":  # one call from the zero state is the module on that chunk
        feed = {"x": x.astype(np.float32), "h_in": np.zeros((1, 4, 8), np.float32)}
        got = Model(tmp_path / "m.onnx").run_feed(feed)["y"]
        np.testing.assert_allclose(got, _run_module(net, feed["x"])[0], atol=1e-5)
    else:
        _matches(tmp_path / "m.onnx", net, {"x": x.astype(np.float32)})


# --------------------------------------------------------------------------- 2. subclasses of torch's layers


class OrthoLSTM(nn.LSTM):
    """A library's LSTM: its own init, torch's forward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, p in self.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(p)


class LengthsGRU(nn.GRU):
    """A library's GRU whose forward takes lengths and packs (as many taggers' wrappers do)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Any:  # type: ignore[override]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, h = super().forward(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y, h


class HandRolledRNN(nn.RNN):
    """A subclass that runs its own recurrence and never calls torch's forward."""

    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:  # type: ignore[override]
        h = x.new_zeros(x.shape[0], self.hidden_size)
        ys = []
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ self.weight_ih_l0.T + self.bias_ih_l0 + h @ self.weight_hh_l0.T + self.bias_hh_l0)
            ys.append(h)
        return torch.stack(ys, 1), h.unsqueeze(0)


class Wrapped(nn.Module):
    def __init__(self, layer: nn.Module, out: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(out, 2)

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x, *rest)[0])


@pytest.mark.parametrize("strategy", list(OPTS))
def test_subclass_without_forward(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = Wrapped(OrthoLSTM(3, 8, num_layers=2, batch_first=True), 8).eval()
    result = export(net, (torch.zeros(2, 5, 3),), tmp_path / "m.onnx", strategy=strategy, **OPTS[strategy])
    _passed(result)
    assert type(net.rnn) is OrthoLSTM
    if strategy != "step":
        t = OPTS[strategy].get("seq_len", 11)
        x = np.random.default_rng(2).standard_normal((3, t, 3)).astype(np.float32)
        _matches(tmp_path / "m.onnx", net, {"x": x})


@pytest.mark.parametrize("strategy", ["native", "loop", "unroll"])
def test_subclass_with_its_own_forward(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = Wrapped(LengthsGRU(3, 8, batch_first=True, bidirectional=True), 16).eval()
    example = (torch.zeros(2, 6, 3), torch.tensor([6, 4]))
    result = export(
        net, example, tmp_path / "m.onnx", strategy=strategy, input_names=["x", "lengths"], **OPTS[strategy]
    )
    _passed(result)
    assert result.manifest.input("lengths") is not None  # found: the one integer (batch,) input of a packing module
    t = OPTS[strategy].get("seq_len", 12)
    x = np.random.default_rng(3).standard_normal((3, t, 3)).astype(np.float32)
    _matches(tmp_path / "m.onnx", net, {"x": x, "lengths": np.array([2, t, 5])})


def test_subclass_that_never_calls_torch_forward_is_refused() -> None:
    net = Wrapped(HandRolledRNN(3, 8, batch_first=True), 8).eval()
    with pytest.raises(ExportError) as err:
        export(net, (torch.zeros(2, 5, 3),), None, strategy="loop")
    msg = str(err.value)
    assert "HandRolledRNN" in msg and "super().forward" in msg and "'rnn'" in msg


# --------------------------------------------------------------------------- 3. a minimum length


class ConvFront(nn.Module):
    """A convolution of kernel 4 (no padding) before the GRU: sequences shorter than 4 steps are refused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 4)
        self.gru = nn.GRU(5, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]


class Blocks(nn.Module):
    """Reads the input in blocks of 4 steps: the length must be a multiple of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return self.gru(x.reshape(b, t // 4, 4))[0]


@pytest.mark.parametrize("strategy", ["native", "loop"])
def test_minimum_length_found(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = ConvFront().eval()
    result = export(net, (torch.zeros(2, 8, 3),), tmp_path / "m.onnx", strategy=strategy)
    _passed(result)
    assert "B=1 T=4" in result.report.summary()["cases"]  # the one-step case ran at the shortest length it takes
    assert any("refuses T=1" in n and "Kernel size" in n for n in result.report.notes)
    x = np.random.default_rng(4).standard_normal((2, 23, 3)).astype(np.float32)
    _matches(tmp_path / "m.onnx", net, {"x": x})


def test_minimum_length_given_and_cases_given() -> None:
    torch.manual_seed(4)
    net = ConvFront().eval()
    result = export(net, (torch.zeros(2, 8, 3),), None, strategy="native", min_len=9)
    _passed(result)
    assert "B=1 T=9" in result.report.summary()["cases"] and not result.report.notes
    result = export(net, (torch.zeros(2, 8, 3),), None, strategy="loop", cases=[{"x": (3, 12, 3)}, {"x": (1, 4, 3)}])
    _passed(result)
    assert result.report.summary()["cases"] == ["B=1 T=4", "B=3 T=12"]
    with pytest.raises(ExportError) as err:  # a case the caller gave is run as given
        export(net, (torch.zeros(2, 8, 3),), None, strategy="loop", cases=[{"x": (1, 2, 3)}])
    msg = str(err.value)
    assert "parity case B=1 T=2" in msg and "Kernel size" in msg and "--parity-shape" in msg and "--min-len" in msg
    with pytest.raises(ConfigError, match="unknown input"):
        export(net, (torch.zeros(2, 8, 3),), None, cases=[{"y": (1, 4, 3)}], strategy="native")


def test_length_multiple_of_a_block(tmp_path: Path) -> None:
    torch.manual_seed(5)
    net = Blocks().eval()
    result = export(net, (torch.zeros(2, 8, 1),), tmp_path / "m.onnx", strategy="loop")
    _passed(result)
    assert {"B=1 T=4", "B=1 T=32", "B=3 T=20", "B=2 T=260"} <= set(result.report.summary()["cases"])
    x = np.random.default_rng(5).standard_normal((2, 44, 1)).astype(np.float32)
    _matches(tmp_path / "m.onnx", net, {"x": x})
    result = export(net, (torch.zeros(2, 8, 1),), None, strategy="unroll", seq_len=12)  # the Scan runs 3 blocks
    _passed(result)
    result = export(net, (torch.zeros(2, 8, 1),), None, strategy="step", chunk=8)
    _passed(result)
    with pytest.raises(ExportError) as err:  # a length the model cannot read, said before tracing
        export(net, (torch.zeros(2, 8, 1),), None, strategy="unroll", seq_len=6)
    msg = str(err.value)
    assert "time fixed to the strategy's length 6" in msg and "module's own forward" in msg


# --------------------------------------------------------------------------- 4. outputs of the last k steps


class LastK(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -self.k :])


class MeanOverTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0].mean(1)


@pytest.mark.parametrize(("k", "chunk"), [(2, 1), (2, 3), (8, 4)])
def test_step_of_last_k_outputs(k: int, chunk: int, tmp_path: Path) -> None:
    torch.manual_seed(6)
    net = LastK(k).eval()
    result = export(net, (torch.zeros(2, 5, 3),), tmp_path / "m.onnx", strategy="step", chunk=chunk)
    _passed(result)
    # chained by hand: each call's rows are the last min(k, chunk) steps of the sequence so far
    x = np.random.default_rng(7).standard_normal((2, 4 * chunk, 3)).astype(np.float32)
    m = Model(tmp_path / "m.onnx")
    h = np.zeros((1, 2, 8), np.float32)
    for j in range(4):
        out = m.run_feed({"x": x[:, j * chunk : (j + 1) * chunk], "h_in": h})
        h = out["h_out"]
        want = _run_module(net, x[:, : (j + 1) * chunk])[0][:, -min(k, chunk) :]
        np.testing.assert_allclose(out["y"], want, atol=1e-5)


def test_step_of_an_output_a_stream_cannot_give_is_refused() -> None:
    with pytest.raises(ParityError) as err:
        export(MeanOverTime().eval(), (torch.zeros(2, 5, 3),), None, strategy="step", chunk=2)
    assert "parity FAILED" in str(err.value) and "Nothing was written" in str(err.value)


# --------------------------------------------------------------------------- 5. a model that feeds its own state


class Forecaster(nn.Module):
    """Encoder over the history, then a decoder that feeds its own prediction and state back for 4 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.GRU(1, 8, batch_first=True)
        self.dec = nn.GRU(1, 8, batch_first=True)
        self.proj = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.enc(x)
        y = x[:, -1:, :]
        outs = []
        for _ in range(4):
            o, h = self.dec(y, h)
            y = self.proj(o)
            outs.append(y)
        return torch.cat(outs, 1)


class LearnedStart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 8))
        self.c0 = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.lstm(x, (self.h0.expand(1, b, 8).contiguous(), self.c0.expand(1, b, 8).contiguous()))[0]


@pytest.mark.parametrize("strategy", ["native", "loop", "unroll"])
def test_decoder_feeding_itself(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(8)
    net = Forecaster().eval()
    result = export(net, (torch.zeros(2, 6, 1),), tmp_path / "m.onnx", strategy=strategy, **OPTS[strategy])
    _passed(result)
    t = OPTS[strategy].get("seq_len", 19)
    x = np.random.default_rng(9).standard_normal((3, t, 1)).astype(np.float32)
    _matches(tmp_path / "m.onnx", net, {"x": x})


def test_own_state_streams_are_refused_with_the_way_out() -> None:
    for net, features, layer in ((Forecaster(), 1, "'dec'"), (LearnedStart(), 3, "'lstm'")):
        with pytest.raises(ExportError) as err:
            export(net.eval(), (torch.zeros(2, 6, features),), None, strategy="step")
        msg = str(err.value)
        assert "native, loop or unroll" in msg and layer in msg
    _passed(export(LearnedStart().eval(), (torch.zeros(2, 6, 3),), None, strategy="unroll", seq_len=7))


# --------------------------------------------------------------------------- 6. packed sequences


class Tagger(nn.Module):
    """The standard tagger: embedding, pack_padded_sequence, bidirectional GRU, pad_packed_sequence, head."""

    def __init__(self, enforce_sorted: bool = False) -> None:
        super().__init__()
        self.enforce_sorted = enforce_sorted
        self.emb = nn.Embedding(30, 6)
        self.gru = nn.GRU(6, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(self.emb(tokens), lengths.cpu(), True, self.enforce_sorted)
        out, h = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return self.head(out), h


@pytest.mark.parametrize("strategy", ["native", "loop", "unroll"])
def test_packed_tagger(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(10)
    net = Tagger().eval()
    example = (torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]))
    result = export(
        net, example, tmp_path / "m.onnx", strategy=strategy, input_names=["tokens", "lengths"], **OPTS[strategy]
    )
    _passed(result)
    assert [s.role for s in result.manifest.inputs] == ["data", "lengths"]
    t = OPTS[strategy].get("seq_len", 14)
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, 30, size=(4, t))
    lengths = np.array([3, t, 1, t - 2])  # unsorted, as a real batch comes
    _matches(tmp_path / "m.onnx", net, {"tokens": tokens, "lengths": lengths}, n_out=2)


def test_packed_with_enforce_sorted(tmp_path: Path) -> None:
    torch.manual_seed(12)
    net = Tagger(enforce_sorted=True).eval()
    example = (torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]))
    result = export(net, example, tmp_path / "m.onnx", strategy="native", input_names=["tokens", "lengths"])
    _passed(result)
    assert any("decreasing order" in n for n in result.report.notes)
    tokens = np.random.default_rng(13).integers(0, 30, size=(3, 10))
    _matches(tmp_path / "m.onnx", net, {"tokens": tokens, "lengths": np.array([10, 7, 2])}, n_out=2)


def test_packing_without_a_lengths_input_to_find_is_refused() -> None:
    class TwoInts(Tagger):
        def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, other: torch.Tensor) -> Any:  # type: ignore[override]
            return super().forward(tokens, lengths)[0]

    example = (torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]), torch.tensor([1, 1]))
    with pytest.raises(ExportError, match="lengths_input="):
        export(TwoInts().eval(), example, None, input_names=["tokens", "lengths", "other"], strategy="native")


# --------------------------------------------------------------------------- 7. several time axes


class EncDec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.LSTM(3, 8, batch_first=True)
        self.dec = nn.LSTM(2, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        _, state = self.enc(src)
        return self.head(self.dec(tgt, state)[0])


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("strategy", ["native", "loop"])
def test_encoder_decoder_lengths(strategy: str, named: bool, tmp_path: Path) -> None:
    torch.manual_seed(14)
    net = EncDec().eval()
    axes = {"src": {0: "batch", 1: "time"}, "tgt": {0: "batch", 1: "dec_time"}} if named else None
    example = (torch.zeros(2, 6, 3), torch.zeros(2, 4, 2))
    result = export(net, example, tmp_path / "m.onnx", strategy=strategy, input_names=["src", "tgt"], dynamic_axes=axes)
    _passed(result)
    dec_axis = "dec_time" if named else "time_tgt"
    assert _spec(result, "tgt").shape == ["batch", dec_axis, 2]
    cases = result.report.summary()["cases"]
    assert any(f"T=31 {dec_axis}=1" in c for c in cases) and any(f"T=1 {dec_axis}=7" in c for c in cases)
    rng = np.random.default_rng(15)
    feed = {"src": rng.standard_normal((3, 13, 3)), "tgt": rng.standard_normal((3, 5, 2))}
    _matches(tmp_path / "m.onnx", net, {k: v.astype(np.float32) for k, v in feed.items()})


def test_encoder_decoder_fixed_length() -> None:
    net = EncDec().eval()
    example = (torch.zeros(2, 6, 3), torch.zeros(2, 4, 2))
    with pytest.raises(ExportError) as err:
        export(net, example, None, strategy="unroll", seq_len=6, input_names=["src", "tgt"])
    msg = str(err.value)
    assert "'time_tgt'" in msg and "fixed size" in msg and "native, loop" in msg
    axes = {"src": {0: "batch", 1: "time"}, "tgt": {0: "batch"}}  # the decoder's length fixed to the example's
    _passed(export(net, example, None, strategy="unroll", seq_len=6, input_names=["src", "tgt"], dynamic_axes=axes))


# --------------------------------------------------------------------------- 9. an example of batch 1


@pytest.mark.parametrize("strategy", list(OPTS))
def test_batch_one_example(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(16)
    net = LastK(3).eval()
    result = export(net, (torch.zeros(1, 1, 3),), tmp_path / "m.onnx", strategy=strategy, **OPTS[strategy])
    _passed(result)
    assert _spec(result, "x").shape[0] == "batch"
    if strategy != "step":
        t = OPTS[strategy].get("seq_len", 7)
        x = np.random.default_rng(17).standard_normal((5, t, 3)).astype(np.float32)
        _matches(tmp_path / "m.onnx", net, {"x": x})


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def conv_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    pkg = tmp_path / "convpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class ConvFront(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(3, 5, 4)
                self.gru = nn.GRU(5, 8, batch_first=True)

            def forward(self, x):
                return self.gru(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]

        def make():
            torch.manual_seed(0)
            return ConvFront()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("convpkg")]:
        del sys.modules[name]


def test_cli_min_len_and_parity_shape(conv_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    base = [
        "export",
        "--strategy",
        "native",
        "--module",
        "convpkg.nets:make",
        "--input",
        "x:2x8x3",
        "--out",
        str(out),
        "--json",
    ]
    r = CliRunner().invoke(main, [*base, "--min-len", "6"])
    assert r.exit_code == 0, r.output
    assert "B=1 T=6" in r.output
    r = CliRunner().invoke(main, [*base, "--parity-shape", "x:3x5x3", "--parity-shape", "x:1x40x3"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.stdout)["manifest"]["parity"]["cases"] == ["B=1 T=40", "B=3 T=5"]
    out.unlink()
    r = CliRunner().invoke(main, [*base, "--parity-shape", "x:1x2x3"])
    assert r.exit_code == ExportError.exit_code and "parity case B=1 T=2" in r.output
    assert not out.exists()
    r = CliRunner().invoke(main, [*base, "--parity-shape", "x:1x2"])
    assert r.exit_code == ConfigError.exit_code and "2 dims given, the input has 3" in r.output
    r = CliRunner().invoke(main, ["export", "--strategy", "native", "ckpt", "--out", str(out), "--min-len", "3"])
    assert r.exit_code == ConfigError.exit_code and "go with --module" in r.output


def test_a_bare_layer_and_its_nested_outputs(tmp_path: Path) -> None:
    """nn.LSTM itself returns (y, (h, c)): three graph outputs, each checked; a step export returns those
    states as its state outputs."""
    torch.manual_seed(18)
    lstm = nn.LSTM(3, 8, num_layers=2, batch_first=True).eval()
    result = export(lstm, (torch.zeros(2, 5, 3),), tmp_path / "m.onnx", strategy="loop")
    _passed(result)
    assert [o.name for o in result.manifest.outputs] == ["output_0", "output_1", "output_2"]
    x = np.random.default_rng(19).standard_normal((3, 11, 3)).astype(np.float32)
    _matches(tmp_path / "m.onnx", lstm, {"x": x}, n_out=3)
    step = export(lstm, (torch.zeros(2, 5, 3),), None, strategy="step")  # its (h, c) are the step's states
    _passed(step)
    assert [o.name for o in step.manifest.outputs] == ["output_0", "h_out", "c_out"]
