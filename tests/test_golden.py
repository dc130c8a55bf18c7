"""Golden files: `edgernn export --golden` (golden= in Python) writes the parity inputs and eager torch's outputs
beside the model, and `edgernn verify` checks the model against them with numpy and onnxruntime only. The recorded
outputs are checked against torch here, the verdicts against a golden file that was tampered with, and the whole
check in a virtual environment where torch is not installed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgernn.cli.main import main
from edgernn.errors import ConfigError, ParityError
from edgernn.verify.golden import Golden, golden_path, read_golden, verify_golden

ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained checkpoint: one epoch of `edgernn train` on 64 sine sequences."""
    out = tmp_path_factory.mktemp("run")
    r = _invoke("train", "--task", "sine", "--hidden", "8", "--epochs", "1", "--n-train", "64", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out / "model.ckpt"


@pytest.fixture(scope="module")
def native(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`edgernn export CKPT --golden` (native): the model, its golden file and what the command printed."""
    d = tmp_path_factory.mktemp("native")
    r = _invoke("export", str(ckpt), "--strategy", "native", "--out", str(d / "m.onnx"), "--golden")
    assert r.exit_code == 0, r.output
    return {"dir": d, "model": d / "m.onnx", "golden": d / "m.golden.npz", "output": r.output}


def _torch_outputs(ckpt: Path, golden: Golden) -> list[np.ndarray]:
    """The checkpoint's eager model on each golden case's inputs, computed here."""
    from edgernn.model import checkpoint

    model = checkpoint.load(ckpt).model().eval()
    out = []
    with torch.no_grad():
        for case in golden.cases:
            args = [torch.from_numpy(case.inputs[n]) for n in golden.input_names]
            out.append(model(*args).numpy())
    return out


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz written as a third party would, with numpy alone."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------------------ writing


def test_cli_export_golden_native_records_parity_inputs_and_torch_outputs(native: dict[str, Any], ckpt: Path) -> None:
    golden = read_golden(native["golden"])
    assert f"wrote {native['golden']} (5 cases)" in native["output"]
    assert golden_path(native["model"]) == native["golden"]
    # the export's parity cases, by label, and the inputs at their shapes
    parity_cases = {line.split("  ")[0] for line in native["output"].splitlines() if "onnxruntime:cpu" in line}
    assert set(golden.meta["cases"]) == parity_cases == {c.label for c in golden.cases}
    for case in golden.cases:
        b, t = (int(part.split("=")[1]) for part in case.label.split()[:2])
        assert case.inputs["x"].shape == (b, t, 1) and case.inputs["x"].dtype == np.float32
        assert case.inputs["lengths"].shape == (b,)
        if "padded" in case.label:
            assert case.inputs["lengths"].min() < t
    # the recorded outputs are eager torch's on those inputs
    for case, want in zip(golden.cases, _torch_outputs(ckpt, golden), strict=True):
        np.testing.assert_array_equal(case.outputs["y"], want)
    meta = golden.meta
    from edgernn.runtime import Model

    manifest = Model(native["model"]).manifest
    assert manifest is not None
    assert meta["weights_sha256"] == manifest.weights_sha256 and meta["strategy"] == "native"
    assert (meta["atol"], meta["rtol"]) == (1e-5, 1e-5) and meta["edgernn_version"]
    assert meta["outputs"] == ["y"] and [d["name"] for d in meta["inputs"]] == ["x", "lengths"]
    assert set(_arrays(native["golden"])) >= {"meta", "case0.in.x", "case0.in.lengths", "case0.out.y"}


def test_cli_verify_passes_with_real_numbers(native: dict[str, Any]) -> None:
    r = _invoke("verify", str(native["model"]), "--golden", str(native["golden"]))
    assert r.exit_code == 0, r.output
    assert "parity PASS" in r.output
    rows = [ln.split() for ln in r.output.splitlines() if "onnxruntime:cpu" in ln]
    assert len(rows) == 5 and all(row[-1] == "ok" for row in rows)
    diffs = [float(row[-3]) for row in rows]
    assert max(diffs) < 1e-5 and max(diffs) > 0  # numbers computed, not a pass by default
    r = _invoke("verify", str(native["model"]), "--json")  # the golden file beside the model by default
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["passed"] is True and d["golden"] == str(native["golden"]) and d["provider"]["used"] == "cpu"
    assert len(d["comparisons"]) == 5 and d["max_abs"] < 1e-5


def test_cli_export_golden_step_streams_whole_sequences(ckpt: Path, tmp_path: Path) -> None:
    model = tmp_path / "s.onnx"
    r = _invoke("export", str(ckpt), "--strategy", "step", "--chunk", "4", "--out", str(model), "--golden", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["golden"] == str(tmp_path / "s.golden.npz")
    golden = read_golden(tmp_path / "s.golden.npz")
    assert golden.meta["streamed"] is True and golden.meta["chunk"] == 4
    # whole sequences, a whole number of chunks long; no states among the inputs
    assert [c.label for c in golden.cases] == ["B=1 T=52", "B=3 T=52"]
    assert golden.input_names == ["x"]
    for case, want in zip(golden.cases, _torch_outputs(ckpt, golden), strict=True):
        np.testing.assert_array_equal(case.outputs["y"], want)
    r = _invoke("verify", str(model), "--golden", str(tmp_path / "s.golden.npz"))
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.output.splitlines() if "onnxruntime:cpu" in ln]
    assert [" ".join(row[:4]) for row in rows] == ["B=1 T=52 streamed K=4", "B=3 T=52 streamed K=4"]
    assert all(row[-1] == "ok" and 0 < float(row[-3]) < 1e-5 for row in rows)
    # the same whole sequences check the native export of the same weights
    r = _invoke(
        "export", str(ckpt), "--strategy", "native", "--out", str(tmp_path / "n.onnx")
    )  # with lengths: filled in by the runtime
    assert r.exit_code == 0, r.output
    r = _invoke("verify", str(tmp_path / "n.onnx"), "--golden", str(tmp_path / "s.golden.npz"))
    assert r.exit_code == 0 and "recorded from the step export" in r.output, r.output


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


@pytest.mark.parametrize("strategy", ["native", "step"])
def test_python_export_golden_true_for_a_user_module(strategy: str, tmp_path: Path) -> None:
    from edgernn.export import export

    torch.manual_seed(0)
    net = Net().eval()
    result = export(net, (torch.zeros(2, 5, 3),), tmp_path / "u.onnx", strategy=strategy, golden=True)
    assert result.golden is not None and result.golden.path == tmp_path / "u.golden.npz"
    golden = read_golden(tmp_path / "u.golden.npz")
    assert golden.strategy == strategy and golden.weights_sha256 == result.manifest.weights_sha256
    with torch.no_grad():
        for case in golden.cases:
            np.testing.assert_array_equal(case.outputs["y"], net(torch.from_numpy(case.inputs["x"])).numpy())
    labels = {c.case for c in result.report.comparisons if c.candidate == "onnxruntime:cpu"}
    assert {lb.split(" chained")[0] for lb in labels} == {c.label for c in golden.cases}
    report = verify_golden(tmp_path / "u.onnx", tmp_path / "u.golden.npz")
    assert report.passed and len(report.comparisons) == len(golden.cases)
    assert 0 < report.max_abs < 1e-5


def test_golden_path_is_given_or_refused(tmp_path: Path) -> None:
    from edgernn import ModelConfig, build_model
    from edgernn.export import export_model

    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=4))
    out = tmp_path / "g" / "record.npz"
    result = export_model(model, tmp_path / "z.onnx", golden=out, strategy="native")
    assert result.golden.path == out and out.is_file() and not (tmp_path / "z.golden.npz").exists()
    assert verify_golden(tmp_path / "z.onnx", out).passed
    with pytest.raises(ConfigError, match="checked model"):
        export_model(model, tmp_path / "y.onnx", verify=False, golden=True, strategy="native")
    with pytest.raises(ConfigError, match="path"):
        export_model(model, None, golden=True, strategy="native")
    assert not (tmp_path / "y.onnx").exists()


def test_cli_golden_refused_with_no_verify(ckpt: Path, tmp_path: Path) -> None:
    r = _invoke("export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--golden", "--no-verify")
    assert r.exit_code == 2, r.output
    assert "a golden file records a checked model" in r.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.golden.npz").exists()


# ------------------------------------------------------------------------------------------ verdicts on tampering


def test_golden_from_other_weights_fails_before_any_number(native: dict[str, Any], ckpt: Path, tmp_path: Path) -> None:
    from edgernn.export import export_model
    from edgernn.model import checkpoint

    model = checkpoint.load(ckpt).model()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # the same architecture, other weights
    export_model(model, tmp_path / "other.onnx", strategy="native")
    r = _invoke("verify", str(tmp_path / "other.onnx"), "--golden", str(native["golden"]))
    assert r.exit_code == 5, r.output
    assert "golden file made from other weights than this model (weights_sha256" in r.output
    assert "onnxruntime:cpu" not in r.output  # no table: nothing was compared
    with pytest.raises(ParityError, match="other weights"):
        verify_golden(tmp_path / "other.onnx", native["golden"])


def test_perturbed_golden_output_fails_naming_output_and_case(native: dict[str, Any], tmp_path: Path) -> None:
    arrays = _arrays(native["golden"])
    labels = json.loads(str(arrays["meta"]))["cases"]
    k = labels.index("B=3 T=17")
    arrays[f"case{k}.out.y"] = arrays[f"case{k}.out.y"] + np.float32(1e-3)
    bad = tmp_path / "bad.npz"
    _save(bad, arrays)
    r = _invoke("verify", str(native["model"]), "--golden", str(bad))
    assert r.exit_code == 5, r.output
    assert "parity FAIL" in r.output
    failed = [ln for ln in r.output.splitlines() if ln.rstrip().endswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("B=3 T=17 ") and " y " in failed[0]
    assert float(failed[0].split()[-3]) == pytest.approx(1e-3, rel=0.01)
    report = verify_golden(native["model"], bad)
    assert [(c.case, c.output) for c in report.failures()] == [("B=3 T=17", "y")]
    # a looser tolerance, given explicitly, lets it through
    r = _invoke("verify", str(native["model"]), "--golden", str(bad), "--atol", "2e-3")
    assert r.exit_code == 0 and "given tolerance: atol 0.002, rtol 1e-05" in r.output, r.output


def test_golden_that_does_not_fit_the_model_is_a_clear_error(native: dict[str, Any], tmp_path: Path) -> None:
    arrays = _arrays(native["golden"])
    arrays["case0.in.x"] = np.zeros((1, 1, 2), np.float32)  # 2 features; the model takes 1
    wrong = tmp_path / "shape.npz"
    _save(wrong, arrays)
    r = _invoke("verify", str(native["model"]), "--golden", str(wrong))
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert line.startswith("error: golden case B=1 T=1: input 'x' has shape (1, 1, 2)") and "(batch, time, 1)" in line
    assert "Traceback" not in r.output
    arrays = _arrays(native["golden"])
    meta = json.loads(str(arrays["meta"]))
    meta["inputs"][0]["name"] = "z"
    for i in range(len(meta["cases"])):
        arrays[f"case{i}.in.z"] = arrays.pop(f"case{i}.in.x")
    arrays["meta"] = np.array(json.dumps(meta))
    _save(wrong, arrays)
    r = _invoke("verify", str(native["model"]), "--golden", str(wrong))
    assert r.exit_code == 2 and "golden input 'z' is not an input of this model" in r.output, r.output


class _Unpickled:
    """Unpickling this makes a directory: proof that a loader ran pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


def test_golden_files_are_never_unpickled(native: dict[str, Any], tmp_path: Path, monkeypatch: Any) -> None:
    marker = tmp_path / "unpickled"
    arrays: dict[str, Any] = _arrays(native["golden"])
    arrays["case0.out.y"] = np.array([_Unpickled(str(marker))], dtype=object)
    crafted = tmp_path / "crafted.npz"
    _save(crafted, arrays)
    with pytest.raises(ConfigError, match="never unpickles"):
        read_golden(crafted)
    r = _invoke("verify", str(native["model"]), "--golden", str(crafted))
    assert r.exit_code == 2 and "never unpickles" in r.output and "Traceback" not in r.output, r.output
    pickled = tmp_path / "pickled.npz"  # a bare pickle named like a golden file
    import pickle

    pickled.write_bytes(pickle.dumps(_Unpickled(str(marker))))
    with pytest.raises(ConfigError, match="never unpickles"):
        read_golden(pickled)
    assert not marker.exists()
    # and every load asks numpy not to unpickle
    seen: list[Any] = []
    load = np.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("allow_pickle"))
        return load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    read_golden(native["golden"])
    assert seen == [False]


def test_golden_file_that_is_not_one(native: dict[str, Any], tmp_path: Path) -> None:
    for name, data in (("text.npz", b"hello"), ("one.npz", None)):
        path = tmp_path / name
        if data is None:
            buf = io.BytesIO()
            np.save(buf, np.zeros(3))
            data = buf.getvalue()
        path.write_bytes(data)
        r = _invoke("verify", str(native["model"]), "--golden", str(path))
        assert r.exit_code == 2 and "is not a golden file" in r.output, r.output
    r = _invoke("verify", str(native["model"]), "--golden", str(tmp_path / "absent.npz"))
    assert r.exit_code == 2 and "no golden file" in r.output


# ----------------------------------------------------------------------------------------------- without torch


def test_verify_runs_with_torch_blocked(native: dict[str, Any], tmp_path: Path) -> None:
    from test_device_install import BLOCKER

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    code = "import sys, edgernn.cli.verify, edgernn.verify.golden; assert 'torch' not in sys.modules; import torch"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "No module named 'torch'" in p.stderr, p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "edgernn", "verify", str(native["model"]), "--golden", str(native["golden"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "parity PASS" in p.stdout, p.stderr


# what pip prints when it cannot reach the package registry (as opposed to an install that fails)
UNREACHABLE = (
    "Could not find a version",
    "No matching distribution",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
    "ConnectTimeout",
    "ReadTimeout",
)


@pytest.mark.slow
def test_verify_in_a_torch_free_venv(native: dict[str, Any], ckpt: Path, tmp_path: Path) -> None:
    """What a device installs: a fresh venv with edgernn's dependencies and no torch; `edgernn verify` there."""
    step = tmp_path / "s.onnx"
    r = _invoke("export", str(ckpt), "--strategy", "step", "--out", str(step), "--golden")
    assert r.exit_code == 0, r.output
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    deps = subprocess.run(
        [*pip, "numpy", "onnxruntime", "click", "onnx", "onnxconverter-common"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if deps.returncode != 0:
        said = deps.stdout + deps.stderr
        if any(s in said for s in UNREACHABLE):
            pytest.skip(f"pip cannot reach the package registry: {said.strip().splitlines()[-1][:300]}")
        raise AssertionError(f"installing edgernn's dependencies failed:\n{said[-3000:]}")
    # edgernn itself from a copy of the source (building in place would write into the work tree)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "edgernn", src / "edgernn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    own = subprocess.run([*pip, "--no-deps", str(src)], capture_output=True, text=True, timeout=900)
    if own.returncode != 0 and any(s in own.stdout + own.stderr for s in UNREACHABLE):
        pytest.skip("pip cannot reach the package registry for the build backend (setuptools)")
    assert own.returncode == 0, own.stderr[-3000:]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGERNN_DEBUG")}
    p = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True, env=clean)
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr
    for model in (native["model"], step):
        p = subprocess.run(
            [str(venv / "bin" / "edgernn"), "verify", str(model), "--golden", str(golden_path(model))],
            capture_output=True,
            text=True,
            env=clean,
            cwd=tmp_path,
            timeout=300,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "parity PASS" in p.stdout and "Traceback" not in p.stderr
