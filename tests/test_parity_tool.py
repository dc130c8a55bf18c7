"""`edgernn parity` as a tool: any two sides (checkpoint, user module, ONNX file, provider), the user's inputs and
tolerance, what makes the sides disagree said before any number, and the long run of a step export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

from edgernn.cli.main import main


def _cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _train(out: Path, *extra: str) -> Path:
    r = _cli("train", "--task", "sine", "--epochs", "1", "--n-train", "64", "--hidden", "12", *extra, "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parity-tool")
    run = _train(d / "run", "--cell", "gru", "--layers", "2", "--seed", "0")
    out = {"run": run, "other": _train(d / "other", "--cell", "gru", "--layers", "2", "--seed", "3")}
    out["arch"] = _train(d / "arch", "--cell", "lstm", "--layers", "1", "--seed", "0")
    for name, args in {
        "native": ["--strategy", "native"],
        "loop": ["--strategy", "loop"],
        "step": ["--strategy", "step"],
    }.items():
        path = d / f"{name}.onnx"
        r = _cli("export", run, "--out", path, *args)
        assert r.exit_code == 0, r.output
        out[name] = path
    # the step export with one recurrent weight shifted: a state error that the long run must see
    proto = onnx.load(str(out["step"]))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    a = numpy_helper.to_array(init).copy()
    a.reshape(-1)[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    out["step_bad"] = d / "step_bad.onnx"
    onnx.save(proto, str(out["step_bad"]))
    return out


def test_checkpoint_and_two_files(models: dict[str, Path]) -> None:
    r = _cli("parity", models["run"], models["native"], "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (
        d["passed"]
        and d["max_abs"] <= 1e-5
        and {c["candidate"] for c in d["comparisons"]}
        == {
            "onnxruntime:cpu",
            "numpy",
        }
    )
    r = _cli("parity", models["native"], models["loop"])
    assert r.exit_code == 0, r.output
    assert "vs native.onnx@cpu" in r.output and "loop.onnx@cpu" in r.output and "parity PASS" in r.output
    r = _cli("parity", models["native"], models["step"])  # a whole-sequence file against a streamed one
    assert r.exit_code == 0, r.output
    r = _cli("parity", models["step"], models["step_bad"])
    assert r.exit_code == 5 and "first exceeds at" in r.output, r.output


def test_other_weights_and_architecture_before_any_number(models: dict[str, Path]) -> None:
    r = _cli("parity", models["other"], models["native"])
    assert r.exit_code == 5
    assert r.output.startswith("problem: not the weights this model was exported from")
    assert "nothing compared" in r.output and "max abs" not in r.output
    r = _cli("parity", models["arch"], models["native"])
    assert r.exit_code == 5
    assert "another architecture: cell 'lstm' in the checkpoint, 'gru' in the model" in r.output
    assert "num_layers 1 in the checkpoint, 2 in the model" in r.output


def test_inputs_tolerance_and_providers(models: dict[str, Path], tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 40, 1)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, lengths=np.array([40, 7, 21]))
    r = _cli("parity", models["run"], models["loop"], "--inputs", tmp_path / "in.npz", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {c["case"] for c in d["comparisons"]} == {"given inputs"}
    r = _cli("parity", models["step"], models["step_bad"], "--atol", "1", "--rtol", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["atol"] == 1.0, r.output
    r = _cli("parity", models["run"], models["native"], "--atol", "-1")
    assert r.exit_code == 2 and "--atol must be a finite number >= 0" in r.output
    r = _cli("parity", models["native"], "--providers", "cpu,cpu")
    assert r.exit_code == 2 and "two or more different providers" in r.output
    r = _cli("parity", models["native"])
    assert r.exit_code == 2 and "nothing to compare with" in r.output


def test_user_module(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg_parity_tool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn = nn.LSTM(3, 8, num_layers=2, batch_first=True)\n"
        "        self.head = nn.Linear(8, 2)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.rnn(x)[0])\n\n"
        "def make():\n    torch.manual_seed(0)\n    return Net()\n\n"
        "def other():\n    torch.manual_seed(1)\n    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "u.onnx"
    r = _cli(
        "export", "--module", "pkg_parity_tool.nets:make", "--input", "x:2x5x3", "--strategy", "loop", "--out", path
    )
    assert r.exit_code == 0, r.output
    r = _cli("parity", path, "--module", "pkg_parity_tool.nets:make")
    assert r.exit_code == 0 and "parity PASS" in r.output, r.output
    r = _cli("parity", path, "--module", "pkg_parity_tool.nets:other")
    assert r.exit_code == 5 and "not the weights this model was exported from" in r.output


def test_long_run(models: dict[str, Path]) -> None:
    r = _cli("parity", models["run"], models["step"], "--steps", "3000", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["steps"] == 3000 and d["passed"] and d["max_abs"] <= 1e-5 and len(d["growth"]) == 10
    assert d["growth"][-1][0] == 3000 and "numpy oracle" in d["reference"]
    r = _cli("parity", models["run"], models["step_bad"], "--steps", "3000")
    assert r.exit_code == 5 and "long run FAIL" in r.output and "per 10k steps" in r.output
    r = _cli("parity", models["step"], models["step_bad"], "--steps", "500")  # another ONNX file, streamed too
    assert r.exit_code == 5
    r = _cli("parity", models["run"], models["native"], "--steps", "100")
    assert r.exit_code == 2 and "streams a step export" in r.output


def test_localize_finds_the_layer_and_plots(models: dict[str, Path], tmp_path: Path) -> None:
    """A weight of the second layer shifted in the file: parity fails, and --localize names layer 1 (0-based)."""
    proto = onnx.load(str(models["loop"]))
    # the loop export's weights in layer order: the input weights (16, 36) of layer 1 come after layer 0's
    inputs = [t for t in proto.graph.initializer if len(t.dims) == 2 and t.dims[0] == 12]
    assert len(inputs) >= 2
    target = inputs[1]
    a = numpy_helper.to_array(target).copy()
    a[0, 0] += 0.2
    target.CopyFrom(numpy_helper.from_array(a, target.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    png = tmp_path / "drift.png"
    r = _cli("parity", models["run"], bad, "--localize", "--plot", png)
    assert r.exit_code == 5, r.output
    assert "where it drifts: first exceeds tolerance at layer 'rnn' layer 1 (0-based: the 2nd)" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _cli("parity", models["run"], models["loop"], "--localize", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["localize"]["first"] is None and d["passed"]
    r = _cli("parity", models["native"], models["loop"], "--localize")
    assert r.exit_code == 2 and "give a checkpoint or --module" in r.output
