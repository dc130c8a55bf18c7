"""`edgernn run` and `edgernn bench` through click's CliRunner, and the runtime without torch (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_stream_models import lengths_model, stateless_model, step_model, third_party_model

from edgernn.cli.runtime import bench, run
from edgernn.runtime import Model, available
from edgernn.runtime.io import read_csv
from edgernn.runtime.stream import StreamingModel

ROOT = Path(__file__).resolve().parents[1]
MISSING = next((p for p in ("cuda", "tensorrt", "openvino", "coreml", "nnapi") if p not in available()), None)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "stateless": stateless_model(),
        "lengths": lengths_model(),
        "step": step_model("lstm", 3, 8, 2, time=1),
        "step4": step_model("gru", 3, 8, 2, time=4),
        "third": third_party_model("lstm", 4, 6),
    }
    out = {}
    for name, data in paths.items():
        out[name] = tmp_path / f"{name}.onnx"
        out[name].write_bytes(data)
    return out


def invoke(cmd: object, args: list[str], stdin: str | bytes | None = None) -> object:
    result = CliRunner().invoke(cmd, [str(a) for a in args], input=stdin)  # type: ignore[arg-type]
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_run_npy_npz_csv(models: dict[str, Path], tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ref = Model(models["stateless"]).run(x)

    r = invoke(run, [models["stateless"], "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"])
    assert r.exit_code == 0, r.output
    assert "wrote y (2, 5, 2)" in r.output and "on cpu" in r.output
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), ref)

    # a 2-D .npy and a CSV are one sequence: the batch axis is added
    np.save(tmp_path / "x2.npy", x[0])
    r = invoke(run, [models["stateless"], "--input", tmp_path / "x2.npy", "--output", tmp_path / "y2.npy"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "y2.npy"), ref[:1])
    (tmp_path / "x.csv").write_text("a,b,c\n" + "\n".join(",".join(f"{v:.9g}" for v in row) for row in x[0]) + "\n")
    r = invoke(run, [models["stateless"], "--input", tmp_path / "x.csv", "--output", tmp_path / "y.csv"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(read_csv(tmp_path / "y.csv"), ref[0], rtol=1e-6)

    # .npz by input name (lengths included), and every output by name
    np.savez(tmp_path / "in.npz", x=x, lengths=np.array([5, 3]))
    r = invoke(run, [models["lengths"], "--input", tmp_path / "in.npz", "--output", tmp_path / "out.npz", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["provider"]["used"] == "cpu" and report["outputs"]["y"]["shape"] == [2, 5, 3]
    with np.load(tmp_path / "out.npz") as out:
        assert out["n"].tolist() == [5, 3]
        np.testing.assert_array_equal(out["y"], 2 * x)
    # an unnamed single array is the data input; --lengths from its own file
    np.savez(tmp_path / "plain.npz", x)
    np.save(tmp_path / "len.npy", np.array([2, 4]))
    args = [models["lengths"], "--input", tmp_path / "plain.npz", "--lengths", tmp_path / "len.npy"]
    r = invoke(run, [*args, "--output", tmp_path / "o.npz"])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "o.npz") as out:
        assert out["n"].tolist() == [2, 4]


def test_run_stateful_model_runs_the_sequence_from_zero_state(models: dict[str, Path], tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 8, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for name in ("step", "step4"):
        r = invoke(run, [models[name], "--input", tmp_path / "x.npy", "--output", tmp_path / f"{name}.npz"])
        assert r.exit_code == 0, r.output
        want = StreamingModel(models[name]).run_sequence(x)
        with np.load(tmp_path / f"{name}.npz") as out:
            assert set(out.files) == set(want)
            for k in want:
                np.testing.assert_array_equal(out[k], want[k])


def test_stream_text_frames(models: dict[str, Path]) -> None:
    x = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    lines = "\n".join(("," if i % 2 else " ").join(f"{v:.9g}" for v in row) for i, row in enumerate(x))
    r = invoke(run, [models["step"], "--stream"], stdin="# header comment\n" + lines + "\n\n")
    assert r.exit_code == 0, r.output
    out = [ln for ln in r.stdout.splitlines() if ln]
    s = StreamingModel(models["step"]).stream()
    want = [s.step(f) for f in x]
    assert len(out) == 6
    got = np.array([[float(v) for v in ln.split(",")] for ln in out], dtype=np.float32)
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-6)
    assert "streaming on cpu" in r.stderr


def test_stream_chunks_and_incomplete_chunk(models: dict[str, Path]) -> None:
    x = np.random.default_rng(3).standard_normal((8, 3)).astype(np.float32)
    text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in x) + "\n"
    r = invoke(run, [models["step4"], "--stream"], stdin=text)
    assert r.exit_code == 0, r.output
    got = np.array([[float(v) for v in ln.split(",")] for ln in r.stdout.splitlines()], dtype=np.float32)
    want = StreamingModel(models["step4"]).run_sequence(x[None])["y"][0]
    assert got.shape == (8, 2)  # one line per time step of the chunk's output
    np.testing.assert_allclose(got, want, rtol=1e-6)
    r = invoke(run, [models["step4"], "--stream"], stdin=text + "1 2 3\n")
    # input ending inside a chunk is not an error of the frames given: the whole chunks ran, the rest is reported
    assert r.exit_code == 0 and "ended 1 frame(s) into a chunk of 4; they were not run" in r.stderr
    assert len(r.stdout.splitlines()) == 8


def test_stream_binary(models: dict[str, Path]) -> None:
    x = np.random.default_rng(4).standard_normal((5, 3)).astype("<f4")
    r = invoke(run, [models["step"], "--stream", "--binary"], stdin=x.tobytes())
    assert r.exit_code == 0, r.output
    got = np.frombuffer(r.stdout_bytes, dtype="<f4").reshape(5, 2)
    s = StreamingModel(models["step"]).stream()
    np.testing.assert_array_equal(got, np.concatenate([s.step(f) for f in x]))
    r = invoke(run, [models["step"], "--stream", "--binary"], stdin=x.tobytes()[:-2])
    assert r.exit_code == 7 and "inside frame 5" in r.stderr


def test_stream_third_party_model_with_named_states(models: dict[str, Path]) -> None:
    x = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    text = "\n".join(",".join(f"{v:.9g}" for v in row) for row in x)
    states = ["--state", "initial_h:Y_h:1x1x6", "--state", "initial_c:Y_c:1x1x6"]
    r = invoke(run, [models["third"], "--stream", *states], stdin=text)
    assert r.exit_code == 0, r.output
    got = np.array([[float(v) for v in ln.split(",")] for ln in r.stdout.splitlines()], dtype=np.float32)
    ref = StreamingModel(models["third"], states=["initial_h:Y_h:1x1x6", "initial_c:Y_c:1x1x6"]).run_sequence(
        x[:, None]
    )["Y"]
    np.testing.assert_allclose(got, ref.reshape(4, 6), rtol=1e-6)
    r = invoke(run, [models["third"], "--stream"], stdin=text)
    assert r.exit_code == 2 and "--state" in r.stderr


@pytest.mark.skipif(MISSING is None, reason="every accelerator provider is in this onnxruntime build")
def test_run_provider_errors_and_fallback(models: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 2, 3), np.float32))
    args = [models["stateless"], "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--provider", MISSING]
    r = invoke(run, args)
    assert r.exit_code == 8
    assert r.stderr.startswith("error: ") and "available: " in r.stderr and "Traceback" not in r.stderr
    r = invoke(run, [*args, "--fallback", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["provider"]
    assert p["fell_back"] is True and p["used"] == "cpu" and p["requested"] == MISSING
    r = invoke(run, [*args, "--fallback", "cpu"])
    assert f"fell back from {MISSING}" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (["--input", "{x}", "--output", "{tmp}/y.txt"], 2, "unknown format .txt"),
        (["--input", "{tmp}/nothing.npy", "--output", "{tmp}/y.npy"], 7, "no input file"),
        (["--input", "{bad}", "--output", "{tmp}/y.npy"], 7, "floating point"),
        (["--output", "{tmp}/y.npy"], 2, "give --input FILE (or --random) and --output FILE"),
        (["--stream", "--input", "{x}"], 2, "--stream reads stdin"),
        (["--binary", "--input", "{x}", "--output", "{tmp}/y.npy"], 2, "--binary goes with --stream"),
        (["--stream"], 2, "--stream needs a stateful model"),
        (["--input", "{x}", "--output", "{tmp}/y.npy", "--provider-option", "nokey"], 2, "KEY=VALUE"),
        (["--input", "{x}", "--output", "{tmp}/y.npy", "--provider", "auto", "--provider-option", "a=1"], 2, "named"),
    ],
)
def test_run_errors_are_one_line_and_an_exit_code(
    models: dict[str, Path], tmp_path: Path, args: list[str], code: int, match: str
) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 2, 3), np.float32))
    np.save(tmp_path / "bad.npy", np.ones((1, 2, 3), np.int64))
    fill = {"x": str(tmp_path / "x.npy"), "bad": str(tmp_path / "bad.npy"), "tmp": str(tmp_path)}
    r = invoke(run, [models["stateless"], *[a.format(**fill) for a in args]])
    assert r.exit_code == code, r.output
    assert match in r.stderr and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def test_run_model_errors(tmp_path: Path) -> None:
    r = invoke(run, [tmp_path / "none.onnx", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"])
    assert r.exit_code == 6 and "no model file" in r.stderr


def test_help_texts() -> None:
    r = invoke(run, ["--help"])
    for word in ("--input", ".npz", "--stream", "--binary", "--state", "--provider", "--fallback", "--threads"):
        assert word in r.output
    r = invoke(bench, ["--help"])
    for word in ("--ckpt", "--steps", "p50", "--json", "--provider"):
        assert word in r.output


def test_bench_reports_latency_throughput_memory(models: dict[str, Path]) -> None:
    for name in ("step", "step4", "stateless"):
        args = [models[name], "--steps", "5", "--seq-len", "8", "--repeats", "2", "--batch", "2", "--json"]
        r = invoke(bench, args)
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["streaming"] is (name != "stateless")
        assert rep["step"]["n"] == 5 and rep["sequence"]["n"] == 2
        assert 0 < rep["step"]["p50_ms"] <= rep["step"]["p95_ms"]
        assert rep["frames_per_s"] > 0 and rep["peak_rss_mb"] > 0 and rep["torch"] is None
    r = invoke(bench, [models["step"], "--steps", "3", "--repeats", "1", "--seq-len", "4"])
    assert r.exit_code == 0 and "p50" in r.stdout and "steps/s" in r.stdout
    r = invoke(bench, [models["step4"], "--seq-len", "6"])
    assert r.exit_code == 2 and "multiple of the model's chunk" in r.stderr


def test_bench_with_checkpoint_compares_torch_eager(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the torch comparison needs torch")
    from test_stream_models import from_zoo_model

    from edgernn.model import checkpoint
    from edgernn.model.zoo import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", input_size=3, hidden_size=8, num_layers=2, readout="all")).eval()
    checkpoint.save(tmp_path / "m.ckpt", model)
    (tmp_path / "m.onnx").write_bytes(from_zoo_model(model))
    args = [tmp_path / "m.onnx", "--ckpt", tmp_path / "m.ckpt", "--steps", "5", "--seq-len", "6", "--repeats", "2"]
    r = invoke(bench, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["torch"]["step"]["n"] == 5 and rep["ratios"]["step"] > 0 and rep["ratios"]["sequence"] > 0
    assert rep["max_abs_diff"] is not None and rep["max_abs_diff"] < 1e-5  # same inputs, same function
    r = invoke(bench, args)
    assert "ratio" in r.stdout and "torch" in r.stdout


# -- without torch ---------------------------------------------------------------------------------------------

BLOCKER = textwrap.dedent(
    """
    import sys

    class _NoTorch:
        # an edge device: torch is not installed
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def _no_torch_env(tmp_path: Path) -> dict[str, str]:
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_runtime_and_run_work_where_torch_cannot_be_imported(models: dict[str, Path], tmp_path: Path) -> None:
    env = _no_torch_env(tmp_path)
    code = (
        "import sys\n"
        "import edgernn, edgernn.runtime, edgernn.runtime.stream, edgernn.runtime.io, edgernn.cli\n"
        "import edgernn.verify.bench, edgernn.cli.common\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n    import torch\nexcept ImportError:\n    print('blocked')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "blocked", p.stderr

    x = np.random.default_rng(6).standard_normal((1, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, "-m", "edgernn", "run", str(models["step"])]
    p = subprocess.run(
        [*cmd, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), StreamingModel(models["step"]).run_sequence(x)["y"])
    p = subprocess.run([*cmd, "--stream"], input="1,2,3\n4,5,6\n", env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2, p.stderr
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgernn",
            "bench",
            str(models["step"]),
            "--steps",
            "3",
            "--repeats",
            "1",
            "--seq-len",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and "p50" in p.stdout, p.stderr


def test_full_cli_run_works_without_torch(models: dict[str, Path], tmp_path: Path) -> None:
    from edgernn.cli.main import main  # a broken import is a failure, never a skip

    assert "run" in main.commands
    env = _no_torch_env(tmp_path)
    np.save(tmp_path / "x.npy", np.ones((1, 2, 3), np.float32))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgernn",
            "run",
            str(models["stateless"]),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert np.load(tmp_path / "y.npy").shape == (1, 2, 2)
