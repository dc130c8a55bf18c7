"""Parity that cannot fool itself: each check is judged by an implementation it shares no code with, never
passes on nothing, and says what it did (a fallback, a skipped runtime) rather than hiding it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgernn
import edgernn.model.cell_ops as cell_ops
import edgernn.model.nn as enn
from edgernn.cli import main
from edgernn.errors import ExportError, ParityError
from edgernn.export import export, export_model
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.runtime import available
from edgernn.verify.against_torch import verify_parity

ROOT = Path(__file__).resolve().parents[1]
# the strategies whose graph is traced from the shared cell code (a fused step uses ONNX's LSTM operator instead)
PEEPHOLE_STRATEGIES = [("loop", {}), ("unroll", {"seq_len": 9}), ("step", {"chunk": 2, "fused": False})]


class PeepholeNet(nn.Module):
    """A user's module: edgernn's peephole LSTM (torch has none) under a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = edgernn.LSTM(3, 6, num_layers=2, batch_first=True, peephole=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


def _net() -> PeepholeNet:
    torch.manual_seed(3)
    net = PeepholeNet().eval()
    with torch.no_grad():  # peepholes large enough that swapping two of them shows well above the tolerance
        for name, p in net.rnn.named_parameters():
            if name.startswith("weight_ph"):
                p.uniform_(-1.5, 1.5)
    return net


def _swap_input_and_forget_peepholes(step):  # type: ignore[no-untyped-def]
    """The shared cell code with p_i and p_f swapped (P is in ONNX order p_i, p_o, p_f)."""

    def corrupted(kind, xw, h, c, RT, rb, P=None, WrT=None):  # type: ignore[no-untyped-def]
        if P is not None:
            n = P.shape[0] // 3
            P = torch.cat([P[2 * n :], P[n : 2 * n], P[:n]])
        return step(kind, xw, h, c, RT, rb, P, WrT)

    return corrupted


@pytest.mark.parametrize(("strategy", "options"), PEEPHOLE_STRATEGIES, ids=[s for s, _ in PEEPHOLE_STRATEGIES])
def test_corrupted_shared_cell_code_is_refused_for_a_user_module(
    strategy: str, options: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = _swap_input_and_forget_peepholes(cell_ops.recurrent_step)
    monkeypatch.setattr(cell_ops, "recurrent_step", bad)  # what every strategy's graph is traced from
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError) as err:
        export(_net(), (torch.zeros(2, 5, 3),), out, strategy=strategy, **options)
    assert not out.exists()
    failed = {c.candidate for c in err.value.report.failures()}
    assert "onnxruntime:cpu" in failed  # the graph, built from the corrupted code, disagrees with eager torch


@pytest.mark.slow
def test_uncorrupted_peephole_exports_pass_with_the_layer_oracle(tmp_path: Path) -> None:
    for strategy, options in [*PEEPHOLE_STRATEGIES, ("step", {"chunk": 2, "fused": True}), ("native", {})]:
        res = export(_net(), (torch.zeros(2, 5, 3),), None, strategy=strategy, **options)
        candidates = {c.candidate for c in res.report.comparisons}
        assert "numpy (layer rnn)" in candidates, strategy  # judged by the oracle too, layer by layer
        assert res.report.passed


def test_a_wrong_eager_reference_is_caught_by_the_layer_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    real = enn._peephole_lstm

    def swapped(x, h, c, w, valid, reverse):  # type: ignore[no-untyped-def]
        return real(x, h, c, {**w, "p_i": w["p_f"], "p_f": w["p_i"]}, valid, reverse)

    monkeypatch.setattr(enn, "_peephole_lstm", swapped)
    with pytest.raises(ParityError) as err:
        export(_net(), (torch.zeros(2, 5, 3),), None, strategy="loop")
    failed = {c.candidate for c in err.value.report.failures()}
    assert "numpy (layer rnn)" in failed


def test_parity_needs_a_runtime_not_only_the_oracle() -> None:
    import onnx

    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=3))
    res = export_model(model, None, strategy="loop")
    proto = onnx.load_from_string(res.model_bytes)
    with pytest.raises(ExportError, match="at least one onnxruntime provider"):
        verify_parity(model, proto, res.manifest, providers=(), oracle=lambda feed: [])


def test_parity_command_says_when_it_fell_back(tmp_path: Path) -> None:
    missing = next((p for p in ("cuda", "tensorrt", "openvino", "coreml", "nnapi") if p not in available()), None)
    if missing is None:
        pytest.skip("every accelerator provider is in this onnxruntime build: nothing to fall back from")
    from edgernn.model import checkpoint

    model = build_model(ModelConfig(cell="lstm", input_size=1, hidden_size=4))
    ckpt = checkpoint.save(tmp_path / "model.ckpt", model)
    onnx_path = tmp_path / "m.onnx"
    export_model(model, onnx_path, strategy="native")
    args = ["parity", str(ckpt), str(onnx_path), "--provider", missing, "--fallback", "cpu"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    notes = json.loads(r.output)["notes"]
    assert len(notes) == 1 and f"asked for provider {missing!r}, ran on 'cpu'" in notes[0]
    r = CliRunner().invoke(main, args)
    assert f"note: asked for provider {missing!r}, ran on 'cpu'" in r.output


def test_strategy_registration_does_not_depend_on_import_order() -> None:
    code = (
        "import edgernn.strategies.loop\n"
        "from edgernn.strategies.registry import strategy_names\n"
        "print(','.join(strategy_names()))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "native,loop,unroll,step"
