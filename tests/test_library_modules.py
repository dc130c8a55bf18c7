"""Modules written the way audio, speech, text and forecasting libraries write them, exported from the command
line (``edgernn export --module``) and checked against torch: a channels-first (batch, features, time) model like
torchaudio's WaveRNN, an RNN wrapper taking relative lengths and returning (output, hidden) like speechbrain's,
a module handed an explicit zero initial state like flair's, and one whose export torch's exporter itself gets
wrong."""

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli.main import main
from edgernn.errors import ConfigError, ExportError
from edgernn.export.sources import DEFAULT_EXAMPLE_STEPS, MAX_EXAMPLE_ELEMENTS, parse_input_spec
from edgernn.runtime import Model

NETS = """
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class ChannelsFirst(nn.Module):
    \"\"\"As torchaudio's WaveRNN takes its spectrogram: (batch, n_freq, time) in, (batch, classes, time) out.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(10, 12, 1)  # a pointwise front: causal, so the model streams
        self.gru = nn.GRU(12, 16, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, mels):
        y, _ = self.gru(self.conv(mels).transpose(1, 2))
        return self.head(y).transpose(1, 2)


class RelativeLengthsRNN(nn.Module):
    \"\"\"As speechbrain's RNN wrappers: lengths relative to the padded length (0..1], returns (output, hidden).\"\"\"

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 8, num_layers=2, batch_first=True)

    def forward(self, x, lengths=None):
        steps = x.shape[1]
        if lengths is not None:
            absolute = torch.round(lengths * steps).long()
            x = pack_padded_sequence(x, absolute.cpu(), batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(x)
        if lengths is not None:
            output, _ = pad_packed_sequence(output, batch_first=True, total_length=steps)
        return output, hidden


class ZeroStart(nn.Module):
    \"\"\"As flair's API: the caller builds the initial state, zeros, and passes it.\"\"\"

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 7, batch_first=True)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        b = x.shape[0]
        hx = (torch.zeros(1, b, 7, dtype=x.dtype), torch.zeros(1, b, 7, dtype=x.dtype))
        y, _ = self.rnn(x, hx)
        return self.head(y)


class BatchSqueeze(nn.Module):
    \"\"\"Squeezes an axis as if it were always 1 (as speechbrain's CRDNN does): torch's exporter writes an
    invalid Squeeze for it, with or without edgernn.\"\"\"

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)

    def forward(self, x):
        y, _ = self.gru(x)
        return y[:, -1:, :].squeeze(0)


def channels_first():
    torch.manual_seed(0)
    return ChannelsFirst()


def relative_lengths():
    torch.manual_seed(1)
    return RelativeLengthsRNN()


def zero_start():
    torch.manual_seed(2)
    return ZeroStart()


def batch_squeeze():
    torch.manual_seed(3)
    return BatchSqueeze()
"""


@pytest.fixture
def libmods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    pkg = tmp_path / "libmods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    import libmods.nets  # type: ignore[import-not-found]

    yield libmods.nets
    for name in [m for m in sys.modules if m.startswith("libmods")]:
        del sys.modules[name]


def _export(factory: str, out: Path, *args: str) -> dict[str, Any]:
    r = CliRunner().invoke(main, ["export", "--module", f"libmods.nets:{factory}", "--out", str(out), "--json", *args])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["parity"]["passed"], result["parity"]
    return result


def _chained(path: Path, name: str, feed: np.ndarray, chunk: int, axis: int) -> list[np.ndarray]:
    """Input ``name`` chunk after chunk through the step file from zero states: each non-state output joined
    along ``axis``, then the last states."""
    model = Model(path)
    m = model.manifest
    assert m is not None and m.states
    state = {s.input: np.zeros([feed.shape[0] if d == "batch" else d for d in s.shape], np.float32) for s in m.states}
    outputs = [o.name for o in m.outputs if o.role != "state"]
    pieces: list[list[np.ndarray]] = [[] for _ in outputs]
    for j in range(feed.shape[axis] // chunk):
        got = model.run_feed({name: np.take(feed, np.arange(j * chunk, (j + 1) * chunk), axis=axis), **state})
        for i, o in enumerate(outputs):
            pieces[i].append(got[o])
        state = {s.input: got[s.output] for s in m.states}
    return [np.concatenate(p, axis=axis) for p in pieces] + [state[s.input] for s in m.states]


def test_input_shapes_mark_their_time_axis() -> None:
    spec = parse_input_spec("feats:1x40xT98")
    assert (spec.name, spec.shape, spec.dtype, spec.time_axis) == ("feats", (1, 40, 98), "float32", 2)
    spec = parse_input_spec("feats:2xTx3:float64")
    assert (spec.shape, spec.dtype, spec.time_axis) == ((2, DEFAULT_EXAMPLE_STEPS, 3), "float64", 1)
    assert parse_input_spec("x:2x5x3").time_axis is None
    for bad in ("x:2xTxT", "x:2xT0x3", "x:2xTwox3"):
        with pytest.raises(ConfigError, match="T<steps>"):
            parse_input_spec(bad)
    with pytest.raises(ConfigError, match="at most"):
        parse_input_spec(f"x:{MAX_EXAMPLE_ELEMENTS}x2")


def test_channels_first_model_with_its_time_axis_named(libmods: Any, tmp_path: Path) -> None:
    """(batch, features, time): time marked in the shape, or named with --time-axis; parity varies that axis."""
    net = libmods.channels_first().eval()
    out = tmp_path / "m.onnx"
    result = _export("channels_first", out, "--strategy", "native", "--input", "mels:2x10xT9")
    m = result["manifest"]
    assert m["inputs"][0]["shape"] == ["batch", 10, "time"]
    assert m["outputs"][0]["axes"] == ["batch", None, "time"]
    lengths = {int(c.split("T=")[1].split()[0]) for c in m["parity"]["cases"]}
    assert len(lengths) >= 3, m["parity"]["cases"]
    x = np.random.default_rng(0).standard_normal((3, 10, 23)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Model(out).run_feed({"mels": x})["y"], want, atol=1e-5, rtol=1e-5)

    step = tmp_path / "step.onnx"
    _export(
        "channels_first", step, "--strategy", "step", "--chunk", "4", "--input", "mels:2x10x9", "--time-axis", "mels:2"
    )
    y, h = _chained(step, "mels", x[:, :, :20], 4, axis=2)
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x[:, :, :20])).numpy(), atol=1e-5, rtol=1e-5)
        _, want_h = net.gru(net.conv(torch.from_numpy(x[:, :, :20])).transpose(1, 2))
    np.testing.assert_allclose(h, want_h.numpy(), atol=1e-5, rtol=1e-5)


def test_time_axis_mistakes_are_told(libmods: Any, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    base = ["export", "--module", "libmods.nets:channels_first", "--out", str(out), "--strategy", "native"]
    for args, said in (
        (["--input", "mels:2x10x9", "--time-axis", "mels:0"], "batch axis"),
        (["--input", "mels:2x10x9", "--time-axis", "mels:3"], "has 3 axes"),
        (["--input", "mels:2x10x9", "--time-axis", "feats:2"], "no input is named 'feats'"),
        (["--input", "mels:2xT10x9", "--time-axis", "mels:2"], "marks time axis 1"),
    ):
        r = CliRunner().invoke(main, [*base, *args])
        assert r.exit_code == ConfigError.exit_code and said in r.output, r.output
    r = CliRunner().invoke(main, [*base, "--input", "mels:2x10x9"])  # time taken as axis 1, the features
    assert r.exit_code == ExportError.exit_code, r.output
    assert "--time-axis mels:AXIS" in r.output and "mels:2x10xT" in r.output and "edgernn bug" not in r.output
    r = CliRunner().invoke(main, ["export", "ckpt", "--out", str(out), "--time-axis", "x:2"])
    assert r.exit_code == ConfigError.exit_code and "go with --module" in r.output
    assert not out.exists()


def test_relative_lengths_behind_absolute_lengths(libmods: Any, tmp_path: Path) -> None:
    """The module takes fractions of T; the ONNX file takes absolute int64 lengths, padded cases checked."""
    net = libmods.relative_lengths().eval()
    out = tmp_path / "m.onnx"
    args = ["--strategy", "loop", "--input", "x:2x7x6", "--input", "lengths:2", "--lengths-input", "lengths"]
    result = _export("relative_lengths", out, *args, "--lengths-relative")
    m = result["manifest"]
    assert any("padded" in c for c in m["parity"]["cases"]), m["parity"]["cases"]
    spec = next(s for s in m["inputs"] if s["name"] == "lengths")
    assert (spec["dtype"], spec["role"]) == ("int64", "lengths")
    x = np.random.default_rng(1).standard_normal((3, 12, 6)).astype(np.float32)
    lengths = np.array([12, 5, 9], dtype=np.int64)
    got = Model(out).run_feed({"x": x, "lengths": lengths})
    with torch.no_grad():
        y, (h, c) = net(torch.from_numpy(x), torch.from_numpy(lengths / 12.0).float())
    np.testing.assert_allclose(got["output_0"], y.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["output_1"], h.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["output_2"], c.numpy(), atol=1e-5, rtol=1e-5)
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--module",
            "libmods.nets:relative_lengths",
            "--out",
            str(out),
            "--input",
            "x:2x7x6",
            "--lengths-relative",
        ],
    )
    assert r.exit_code == ConfigError.exit_code and "--lengths-input" in r.output


def test_step_of_a_module_returning_its_own_final_state(libmods: Any, tmp_path: Path) -> None:
    """(output, (h, c)) from the module: the step's h_out/c_out are those states, not outputs of their own."""
    net = libmods.relative_lengths().eval()
    out = tmp_path / "m.onnx"
    result = _export("relative_lengths", out, "--strategy", "step", "--chunk", "3", "--input", "x:2x6x6")
    assert [o["name"] for o in result["manifest"]["outputs"]] == ["output_0", "h_out", "c_out"]
    x = np.random.default_rng(2).standard_normal((2, 12, 6)).astype(np.float32)
    y, h, c = _chained(out, "x", x, 3, axis=1)
    with torch.no_grad():
        want_y, (want_h, want_c) = net(torch.from_numpy(x))
    for got, want in ((y, want_y), (h, want_h), (c, want_c)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)


def test_step_of_a_module_given_an_explicit_zero_state(libmods: Any, tmp_path: Path) -> None:
    net = libmods.zero_start().eval()
    out = tmp_path / "m.onnx"
    result = _export("zero_start", out, "--strategy", "step", "--chunk", "2", "--input", "x:2x4x4")
    assert [s["input"] for s in result["manifest"]["states"]] == ["h_in", "c_in"]
    x = np.random.default_rng(3).standard_normal((3, 10, 4)).astype(np.float32)
    y, _, _ = _chained(out, "x", x, 2, axis=1)
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-5)


def test_an_exporter_failure_of_torch_is_reported_as_torchs(libmods: Any, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--module",
            "libmods.nets:batch_squeeze",
            "--out",
            str(out),
            "--strategy",
            "native",
            "--input",
            "x:2x5x3",
        ],
    )
    assert r.exit_code == ExportError.exit_code, r.output
    assert "torch's exporter" in r.output and "Squeeze" in r.output and "edgernn bug" not in r.output
    assert "torch.onnx.export(module, (torch.zeros(2, 5, 3),), dynamo=True" in r.output
    assert not out.exists()
