"""Models users already have: plain torch.nn.GRU/LSTM inside their own modules, verified against their module."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgernn.cli.main import main
from edgernn.errors import CheckpointError, ConfigError, ExportError
from edgernn.export import export, get_strategy_class, strategy_names
from edgernn.runtime import Model


class TextClassifier(nn.Module):
    """embedding + 2-layer bidirectional GRU + linear head, per-step logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.gru = nn.GRU(8, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.emb(tokens))
        return self.head(y)


class Projected(nn.Module):
    """nn.LSTM with proj_size + head on the last state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 10, proj_size=6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


def _dynamic_non_streaming() -> list[str]:
    return [s for s in strategy_names() if not get_strategy_class(s).caps.streaming]


@pytest.mark.parametrize("strategy", _dynamic_non_streaming())
def test_embedding_bigru_head(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TextClassifier().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opts = {} if get_strategy_class(strategy).caps.dynamic_length else {"seq_len": 9}
    t = opts.get("seq_len", 5)
    result = export(
        net,
        (torch.zeros(2, t, dtype=torch.long),),
        tmp_path / "m.onnx",
        strategy=strategy,
        input_names=["tokens"],
        **opts,
    )
    assert result.report is not None and result.report.passed, result.report.table()
    # the user's module is untouched: same classes, same weights
    assert type(net.gru) is nn.GRU
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    tokens = np.random.default_rng(0).integers(0, 40, size=(3, t))
    with torch.no_grad():
        want = net(torch.from_numpy(tokens)).numpy()
    got = Model(tmp_path / "m.onnx").run_feed({"tokens": tokens})["y"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_projection_refused_by_native_with_alternatives() -> None:
    with pytest.raises(ExportError) as err:
        export(Projected(), (torch.zeros(2, 5, 4),), None, strategy="native")
    msg = str(err.value)
    assert "projection" in msg
    for other in strategy_names():
        if "projection" in get_strategy_class(other).caps.variants:
            assert other in msg


@pytest.mark.parametrize(
    "strategy", [s for s in _dynamic_non_streaming() if "projection" in get_strategy_class(s).caps.variants]
)
def test_projection_lstm(strategy: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    opts = {} if get_strategy_class(strategy).caps.dynamic_length else {"seq_len": 17}
    t = opts.get("seq_len", 5)
    result = export(Projected().eval(), (torch.zeros(2, t, 4),), tmp_path / "m.onnx", strategy=strategy, **opts)
    assert result.report is not None and result.report.passed, result.report.table()


def test_module_without_recurrent_layers() -> None:
    with pytest.raises(ExportError, match=r"no torch\.nn\.RNN/LSTM/GRU"):
        export(nn.Linear(3, 2), (torch.zeros(2, 3),), None, strategy="native")


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(30, 6)
                self.gru = nn.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True)
                self.head = nn.Linear(16, 2)

            def forward(self, tokens):
                y, _ = self.gru(self.emb(tokens))
                return self.head(y)

        def make():
            return Net()

        def make_with_example():
            return Net(), (torch.zeros(2, 5, dtype=torch.long),)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_cli_module_export_with_safe_weights(user_package: Path, tmp_path: Path) -> None:
    from userpkg.nets import Net  # type: ignore[import-not-found]

    torch.manual_seed(3)
    trained = Net()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--strategy",
            "native",
            "--module",
            "userpkg.nets:make",
            "--weights",
            str(tmp_path / "w.pt"),
            "--input",
            "tokens:2x5:int64",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    tokens = np.random.default_rng(1).integers(0, 30, size=(2, 11))
    with torch.no_grad():
        want = trained.eval()(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(Model(out).run_feed({"tokens": tokens})["y"], want, atol=1e-5)
    r = CliRunner().invoke(
        main, ["export", "--strategy", "native", "--module", "userpkg.nets:make_with_example", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output


def test_cli_module_errors(user_package: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        main, ["export", "--strategy", "native", "--module", "userpkg.nets:make", "--out", str(tmp_path / "m.onnx")]
    )
    assert r.exit_code == ConfigError.exit_code and "--input" in r.output
    r = runner.invoke(
        main, ["export", "--strategy", "native", "--module", "userpkg.nope:make", "--out", str(tmp_path / "m.onnx")]
    )
    assert r.exit_code == ConfigError.exit_code and "PYTHONPATH" in r.output
    (tmp_path / "bad.pt").write_bytes(b"junk")
    r = runner.invoke(
        main,
        [
            "export",
            "--strategy",
            "native",
            "--module",
            "userpkg.nets:make",
            "--weights",
            str(tmp_path / "bad.pt"),
            "--input",
            "tokens:2x5:int64",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert r.exit_code == CheckpointError.exit_code
    r = runner.invoke(main, ["export", "--strategy", "native", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "either CKPT or --module" in r.output
    assert not (tmp_path / "m.onnx").exists()
