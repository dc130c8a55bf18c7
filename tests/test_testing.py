"""edgernn.testing in users' suites: assert_parity against each kind of reference, the failure message, the
pytest plugin's provider option, and the example test file in docs/ that users copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgernn.export import export
from edgernn.testing import assert_parity

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 12, num_layers=layers, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path_factory.mktemp("m") / "net.onnx"
    export(net, (torch.zeros(2, 6, 3),), path, strategy="loop")
    return net, path


def _perturbed(path: Path, out: Path, delta: float = 0.05) -> Path:
    """The same file with one weight of its recurrence shifted (the manifest, and its weights hash, kept)."""
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest: a weight matrix
    a = numpy_helper.to_array(init).copy()
    a.reshape(-1)[0] += delta
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(model, str(out))
    return out


def test_assert_parity_passes_against_each_reference(exported: tuple[nn.Module, Path], tmp_path: Path) -> None:
    net, path = exported
    report = assert_parity(net, path)
    assert report.passed and report.max_abs < 1e-5 and len(report.comparisons) >= 4
    report = assert_parity(net, path, shapes={"x": (4, 40, 3)})
    assert report.summary()["cases"] == ["B=4 T=40"]
    x = np.random.default_rng(0).standard_normal((2, 9, 3)).astype(np.float32)
    assert assert_parity(net, path, inputs={"x": x}).summary()["cases"] == ["given inputs"]
    np.savez(tmp_path / "in.npz", x=x)
    assert assert_parity(net, path, inputs=tmp_path / "in.npz").passed
    assert assert_parity(path, path).passed  # an ONNX reference


def test_failure_names_output_case_item_step_and_numbers(exported: tuple[nn.Module, Path], tmp_path: Path) -> None:
    net, path = exported
    bad = _perturbed(path, tmp_path / "bad.onnx")
    with pytest.raises(AssertionError) as err:
        assert_parity(net, bad, shapes={"x": (2, 30, 3)})
    msg = str(err.value)
    assert "parity FAILED" in msg and "onnxruntime:cpu y" in msg and "B=2 T=30" in msg
    assert "first exceeds at batch item" in msg and "step" in msg and "candidate" in msg and "reference" in msg
    assert "where it drifts: first exceeds tolerance at layer 'gru' layer" in msg  # the layer and step, by localize
    assert "of 30" in msg  # followed at the caller's shape: 30 steps
    with pytest.raises(AssertionError, match="first exceeds at batch item"):  # file against file
        assert_parity(path, bad)
    assert assert_parity(path, bad, atol=1.0, rtol=1.0).passed  # a tolerance of the caller's


def test_other_weights_and_architecture_are_named(exported: tuple[nn.Module, Path]) -> None:
    _, path = exported
    torch.manual_seed(7)
    with pytest.raises(AssertionError, match="not the weights this model was exported from"):
        assert_parity(Net().eval(), path)
    torch.manual_seed(0)
    with pytest.raises(AssertionError) as err:
        assert_parity(Net(layers=2).eval(), path)
    assert "another architecture: num_layers 2 in the module, 3 in the model" in str(err.value)
    assert "not the weights" not in str(err.value)


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *args],  # in this process
        capture_output=True,
        text=True,
        cwd=ROOT / "docs" / "examples",
        timeout=600,
    )


def test_the_docs_example_runs_per_provider() -> None:
    example = str(ROOT / "docs" / "examples" / "test_parity_example.py")
    r = _pytest(example, "--edgernn-provider", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    r = _pytest(example, "--edgernn-provider", "cpu,cuda", "-k", "matches_torch")
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        assert r.returncode == 0, r.stdout
    else:  # asked for a provider this onnxruntime lacks: that test fails and says so, cpu's passes
        assert r.returncode == 1 and "1 passed" in r.stdout and "1 failed" in r.stdout, r.stdout
        assert "cuda" in r.stdout
