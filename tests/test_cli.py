"""The CLI through click's CliRunner: the issue's commands as written, JSON output, errors and exit codes."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgernn.cli.main import main


def _train(out: Path, *extra: str) -> None:
    """A tiny `edgernn train` run (one epoch on 64 sequences) into ``out``."""
    args = ["train", "--task", "sine", "--hidden", "8", "--epochs", "1", "--n-train", "64", "--out", str(out), *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _train(out, "--cell", "gru", "--layers", "2", "--bidirectional")
    return out


def test_train_writes_checkpoint_and_history(trained: Path) -> None:
    assert (trained / "model.ckpt").is_file()
    hist = json.loads((trained / "history.json").read_text())
    assert hist["metric"] == "mse" and len(hist["val_metric"]) == 1


def test_export_then_parity(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    r = runner.invoke(main, ["export", str(trained / "model.ckpt"), "--strategy", "native", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "parity PASS" in r.output and out.is_file()
    r = runner.invoke(main, ["parity", str(trained), str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["passed"] is True and report["max_abs"] < 1e-5
    cases = {c["case"] for c in report["comparisons"]}
    assert {"B=1 T=1", "B=3 T=17", "B=2 T=257"} <= cases


def test_export_json(trained: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["manifest"]["strategy"] == "native" and d["parity"]["passed"] is True


def test_parity_detects_a_different_model(trained: Path, tmp_path: Path) -> None:
    """A model exported from other weights must fail parity against this checkpoint, with exit code 5."""
    other = tmp_path / "other"
    runner = CliRunner()
    _train(other, "--cell", "gru", "--layers", "2", "--bidirectional", "--seed", "9")
    runner.invoke(main, ["export", str(other), "--out", str(tmp_path / "other.onnx")])
    r = runner.invoke(main, ["parity", str(trained), str(tmp_path / "other.onnx")])
    assert r.exit_code == 5 and "parity FAIL" in r.output


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 3
    assert r.output.strip().startswith("error: no checkpoint") and "Traceback" not in r.output
    assert not (tmp_path / "m.onnx").exists()
    r = runner.invoke(main, ["train", "--task", "nope", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "choose one of" in r.output
    r = runner.invoke(main, ["export", "x", "--strategy", "magic", "--out", "m.onnx"])
    assert r.exit_code == 2 and "magic" in r.output


def test_help_on_every_command() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0 and "Exit codes" in r.output
    for name in main.commands:
        r = runner.invoke(main, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, name


def test_demo(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert "parity PASS" in r.output and (tmp_path / "demo" / "model.onnx").is_file()


def test_strategy_choices_come_from_the_registry() -> None:
    from edgernn.export import BUILTIN, strategy_names

    assert list(BUILTIN) == strategy_names()
    export_cmd = main.commands["export"]
    choice = next(p for p in export_cmd.params if p.name == "strategy").type
    assert list(choice.choices) == strategy_names()
    r = CliRunner().invoke(main, ["strategies", "--json"])
    assert r.exit_code == 0
    table = json.loads(r.output)
    assert list(table) == sorted(strategy_names()) and table["step"]["streaming"] is True


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from edgernn.cli import main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("step", ["--chunk", "4"]), ("step", ["--fused"]), ("unroll", ["--seq-len", "20"]), ("loop", [])],
)
def test_parity_command_on_every_strategy(strategy: str, extra: list[str], tmp_path: Path) -> None:
    _train(tmp_path, "--cell", "lstm", "--task", "denoise")
    out = tmp_path / f"{strategy}.onnx"
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", strategy, *extra, "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["parity", str(tmp_path), str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["passed"] is True


def test_strategy_options_are_checked(trained: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["export", str(trained), "--strategy", "loop", "--seq-len", "9", "--out", "m.onnx"])
    assert r.exit_code == 2 and "does not take seq_len" in r.output
    r = CliRunner().invoke(main, ["export", str(trained), "--strategy", "step", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 4 and "bidirectional" in r.output and not (tmp_path / "m.onnx").exists()


def test_lstm_variants_from_the_cli(tmp_path: Path) -> None:
    _train(tmp_path, "--cell", "lstm", "--peephole", "--proj-size", "4")
    ckpt = json.loads((tmp_path / "history.json").read_text())
    assert ckpt["metric"] == "mse"
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", "native", "--out", str(tmp_path / "n.onnx")])
    assert r.exit_code == 4 and "use one of: loop, unroll, step" in r.output
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", "loop", "--out", str(tmp_path / "l.onnx")])
    assert r.exit_code == 0 and "parity PASS" in r.output
    r = runner.invoke(main, ["inspect", str(tmp_path / "l.onnx")])
    assert "projection 4" in r.output and "peepholes" in r.output
