"""strategy auto: every candidate exported and checked, the correct ones timed, the fastest (or a simpler one
within the margin) written with the measurements in its manifest; the default for onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgernn import ModelConfig, build_model
from edgernn.cli.main import main
from edgernn.errors import ConfigError
from edgernn.export import auto, export, export_model
from edgernn.runtime import Model
from edgernn.verify.bench import Spread


def test_zoo_model_gets_the_fastest_correct_strategy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=3, hidden_size=16, num_layers=2))
    result = export_model(model, tmp_path / "m.onnx", strategy="auto", profile_shape="2x40")
    sel = result.manifest.selection
    assert sel is not None and set(sel["median_us"]) == {"native", "loop"}
    assert all(v > 0 for v in sel["median_us"].values())
    assert sel["chosen"] == auto.choose(auto.spreads_of(sel)) == result.manifest.strategy
    assert sel["profile_shape"] == [2, 40] and result.report.passed
    for name, s in sel["spread_us"].items():  # the median of the rounds, within the fastest and slowest round
        assert s["rounds"] == sel["rounds"] == auto.ROUNDS and s["low"] <= s["median"] <= s["high"]
        assert s["median"] == sel["median_us"][name]
    measured = sel["measured"]
    assert measured["cpus"] == os.cpu_count() and "belong to the machine and moment" in measured["note"]
    on_disk = Model(tmp_path / "m.onnx").manifest
    assert on_disk.strategy == sel["chosen"] and on_disk.selection == sel


def test_the_timing_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(ModelConfig(cell="lstm", input_size=2, hidden_size=8))
    monkeypatch.setattr(auto, "time_models", lambda models, **kw: {n: (1.0 if n == "loop" else 2.0) for n in models})
    result = export_model(model, tmp_path / "m.onnx", strategy="auto")
    assert result.manifest.strategy == "loop" and result.manifest.selection["chosen"] == "loop"
    assert Model(tmp_path / "m.onnx").manifest.strategy == "loop"


def test_refused_strategies_drop_out_with_their_reason() -> None:
    class Projected(nn.Module):  # native takes no LSTM projection
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 10, proj_size=4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    result = export(Projected().eval(), (torch.zeros(2, 5, 3),), None, strategy="auto", seq_len=12)
    sel = result.manifest.selection
    assert sel["chosen"] in ("loop", "unroll") and "projection" in sel["refused"]["native"]
    assert set(sel["median_us"]) == {"loop", "unroll"} and sel["profile_shape"][1] == 12


def test_auto_refusals() -> None:
    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=8))
    with pytest.raises(ConfigError, match="cannot skip the parity check"):
        export_model(model, None, strategy="auto", verify=False)
    with pytest.raises(ConfigError, match="goes with strategy auto"):
        export_model(model, None, strategy="native", profile_shape="1x10")
    with pytest.raises(ConfigError, match="BATCHxTIME"):
        export_model(model, None, strategy="auto", profile_shape="1x")
    with pytest.raises(ConfigError, match="takes no chunk"):
        export_model(model, None, strategy="auto", chunk=4)
    with pytest.raises(ConfigError, match="target 'triton' takes none of them: export with --strategy step"):
        export_model(model, None, strategy="auto", target="triton")


def test_cli_and_inspect(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--task", "sine", "--epochs", "1", "--n-train", "64", "--hidden", "8", "--out", str(run)]
    assert CliRunner().invoke(main, args).exit_code == 0
    out = tmp_path / "a.onnx"
    r = CliRunner().invoke(
        main, ["export", str(run), "--strategy", "auto", "--profile-shape", "1x30", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "strategy auto chose" in r.output and "per call at batch 1 x time 30" in r.output
    assert "interleaved rounds; measured: " in r.output  # each median's spread and the load, as inspect shows
    r = CliRunner().invoke(main, ["inspect", str(out)])
    assert r.exit_code == 0 and "strategy chosen by auto:" in r.output


def test_the_simpler_form_wins_within_the_margin() -> None:
    """Ranked native, loop, unroll: a later form must be more than MARGIN faster to be chosen, so two forms the
    machine runs equally fast give the same file on every run."""
    assert auto.MARGIN == 1.10
    assert auto.choose({"native": 105.0, "loop": 100.0}) == "native"
    assert auto.choose({"loop": 100.0, "native": 111.0}) == "loop"
    assert auto.choose({"native": 300.0, "loop": 100.0, "unroll": 95.0}) == "loop"
    assert auto.choose({"native": 300.0, "loop": 100.0, "unroll": 80.0}) == "unroll"
    assert auto.choose({"loop": 100.0, "unroll": 100.0}) == "loop"


def test_the_margin_is_recorded_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(ModelConfig(cell="rnn-tanh", input_size=2, hidden_size=8))
    monkeypatch.setattr(auto, "time_models", lambda models, **kw: {n: (1.0 if n == "loop" else 1.05) for n in models})
    result = export_model(model, tmp_path / "m.onnx", strategy="auto")
    sel = result.manifest.selection
    assert result.manifest.strategy == sel["chosen"] == "native"
    assert sel["why"].startswith("native is within 10% of the fastest (loop)")
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0 and "native is within 10% of the fastest (loop)" in r.output


def test_default_strategy() -> None:
    assert auto.default_strategy("ort", True) == auto.default_strategy(None, True) == "auto"
    assert auto.default_strategy("ort", False) == "native"  # auto keeps only checked forms
    assert auto.default_strategy("openvino", True) == auto.default_strategy("tract", True) == "native"
    assert auto.default_strategy("nnapi", True) == "step"  # the target takes no native: its own first choice
    assert auto.default_strategy("coreml", True, {"seq_len": 20}) == "unroll"
    assert auto.default_strategy("ort", True, {"chunk": 4, "seq_len": None}) == "step"
    assert auto.default_strategy("ort", True, {"fused": True}) == "step"
    assert auto.default_strategy("ort", True, {"fused": None, "chunk": None, "seq_len": 20}) == "auto"


def test_auto_is_the_default_for_onnxruntime(tmp_path: Path) -> None:
    """No strategy named: auto for onnxruntime (one file written, the chosen one, with its ORT Mobile package and
    golden file), native for another target and for an unverified export."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", input_size=2, hidden_size=8))
    path = tmp_path / "m.onnx"
    result = export_model(model, path, golden=True, ort_format=True)
    sel = result.manifest.selection
    assert sel is not None and set(sel["median_us"]) == {"native", "loop"}
    assert result.manifest.strategy == sel["chosen"] and result.report.passed
    assert Model(path).manifest.selection == sel and Model(path).manifest.strategy == sel["chosen"]
    assert {p.name for p in tmp_path.iterdir()} == {"m.onnx", "m.ort", "m.required_operators.config", "m.golden.npz"}
    r = CliRunner().invoke(main, ["verify", str(path), "--json"])
    assert r.exit_code == 0, r.output
    other = export_model(model, None, target="openvino")
    assert other.manifest.strategy == "native" and other.manifest.selection is None
    bare = export_model(model, None, verify=False)
    assert bare.manifest.strategy == "native" and bare.manifest.parity["passed"] is None


def test_when_every_candidate_refuses_each_reason_is_named() -> None:
    from edgernn.errors import ExportError

    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=8))
    with pytest.raises(ExportError) as e:  # an export error, exit code 4, as with one strategy
        export_model(model, None, opset=99)
    assert type(e.value) is ExportError and "no strategy exports this model correctly" in str(e.value)
    assert "native: strategy 'native' supports opset 15-25; got 99" in str(e.value)
    assert "loop: strategy 'loop' supports opset 15-25; got 99" in str(e.value)


class _Late(nn.Module):
    """Reads step 120 of its output: it takes sequences of 121 steps or more."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0][:, 120]


def test_the_profile_shape_is_one_the_model_takes() -> None:
    """The default profile length rises to min_len; a profile shape the model does not take is an export error
    that says what to give, not onnxruntime's traceback."""
    from edgernn.errors import ExportError

    torch.manual_seed(0)
    late = _Late().eval()
    result = export(late, (torch.zeros(2, 130, 3),), None, min_len=130)
    assert result.manifest.selection["profile_shape"] == [1, 130] and result.report.passed
    with pytest.raises(ExportError, match=r"no candidate runs at the profile shape batch 1 x time 50") as e:
        export(late, (torch.zeros(2, 130, 3),), None, min_len=130, profile_shape="1x50")
    assert "native: does not run at batch 1 x time 50" in str(e.value) and "give --profile-shape" in str(e.value)


def test_overlapping_candidates_keep_the_simpler_graph() -> None:
    """A later-ranked strategy wins only when it is faster beyond the margin *and* its rounds' range is clear of
    the simpler one's: ranges that overlap mean the runs did not tell the two apart."""
    noisy_native = Spread(median=200.0, low=150.0, high=400.0, rounds=5)
    assert auto.choose({"native": noisy_native, "loop": Spread(100.0, 90.0, 160.0, 5)}) == "native"  # 2x, overlapping
    assert auto.choose({"native": noisy_native, "loop": Spread(100.0, 90.0, 140.0, 5)}) == "loop"  # clear of it
    assert auto.choose({"native": Spread(105.0, 104.0, 106.0, 5), "loop": Spread(100.0, 99.0, 101.0, 5)}) == "native"
    assert not auto.ties(Spread(100.0, 90.0, 140.0, 5), Spread(10.0, 5.0, 89.0, 5))
    assert auto.ties(Spread(100.0, 90.0, 140.0, 5), Spread(10.0, 5.0, 90.0, 5))  # touching ranges overlap
    three = {"native": noisy_native, "loop": Spread(100.0, 95.0, 145.0, 5), "unroll": Spread(50.0, 40.0, 98.0, 5)}
    assert auto.choose(three) == "loop"  # unroll overlaps loop, loop is clear of native
    assert auto.choose({"loop": 100.0, "native": 111.0}) == "loop"  # bare medians: a spread of one round


def test_overlap_is_recorded_said_and_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spreads = {"native": Spread(2e-4, 1.5e-4, 4e-4, 5), "loop": Spread(1e-4, 0.9e-4, 1.6e-4, 5)}
    monkeypatch.setattr(auto, "time_models", lambda models, **kw: {n: spreads[n] for n in models})
    model = build_model(ModelConfig(cell="rnn-tanh", input_size=2, hidden_size=8))
    result = export_model(model, tmp_path / "m.onnx", strategy="auto")
    sel = result.manifest.selection
    assert result.manifest.strategy == sel["chosen"] == "native"  # loop's median is 2x faster, within the spread
    assert sel["why"].startswith("native and loop overlap within their spread")
    assert sel["spread_us"]["loop"] == {"median": 100.0, "low": 90.0, "high": 160.0, "rounds": 5}
    assert auto.spreads_of(sel) == {"native": Spread(200.0, 150.0, 400.0, 5), "loop": Spread(100.0, 90.0, 160.0, 5)}
    assert Model(tmp_path / "m.onnx").manifest.selection == sel  # written and read back whole
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "loop 100 us (90-160), native 200 us (150-400) per call" in r.output
    assert "native and loop overlap within their spread" in r.output
    assert f"on {os.cpu_count()} CPUs" in r.output and "fastest-slowest of 5 interleaved rounds" in r.output
    assert "timings belong to the machine and moment they were taken" in r.output
