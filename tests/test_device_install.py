"""The device install (`pip install edgernn`: numpy, onnxruntime, click, onnx, onnxconverter-common; no torch):
every command either works or says in one line which extra to install, with exit code 10, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# torch and torch-only packages are not installed on a device: importing them fails as it would there
# torch and the torch-only packages are not installed on a device: every finder is made blind to them, so that
# `import torch` fails and `importlib.util.find_spec("torch")` is None, exactly as where they are absent
BLOCKER = textwrap.dedent(
    """
    import sys

    class _Blind:
        blocked = ("torch", "onnxscript", "onnx_ir", "matplotlib")

        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find else None

        def find_distributions(self, *args, **kwargs):  # importlib.metadata asks the finders too
            find = getattr(self.inner, "find_distributions", None)
            dists = find(*args, **kwargs) if find else []
            return [d for d in dists if (d.metadata["Name"] or "").lower().replace("-", "_") not in self.blocked]

        def invalidate_caches(self):
            if hasattr(self.inner, "invalidate_caches"):
                self.inner.invalidate_caches()

    sys.meta_path[:] = [_Blind(f) for f in sys.meta_path]
    """
)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Files made here with torch (a checkpoint, a sequence export, a step export), and a device environment."""
    from edgernn.export import export_model
    from edgernn.model import checkpoint
    from edgernn.model.zoo import ModelConfig, build_model

    tmp = tmp_path_factory.mktemp("device")
    model = build_model(ModelConfig(cell="gru", input_size=1, hidden_size=8))
    checkpoint.save(tmp / "run" / "model.ckpt", model, {"task": "sine"})
    record = {"name": "sine", "n_train": 0, "n_val": 8, "min_len": 4, "max_len": 12, "seed": 0}
    export_model(model, tmp / "seq.onnx", strategy="loop", manifest_extra={"task": record})
    export_model(model, tmp / "step.onnx", strategy="step")
    # a file made for `portable` (the form every engine installed here loads); an `ort` file states symbolic shapes
    # that tract, which portable's check runs where it is installed, refuses
    export_model(model, tmp / "portable.onnx", strategy="loop", target="portable")
    np.save(tmp / "x.npy", np.random.default_rng(0).standard_normal((2, 7, 1)).astype(np.float32))
    block = tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    env.pop("EDGERNN_DEBUG", None)
    return {"tmp": tmp, "env": env}


def _edgernn(device: dict[str, object], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgernn", *args],
        cwd=device["tmp"],  # type: ignore[arg-type]
        env=device["env"],  # type: ignore[arg-type]
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_torch_is_really_blocked(device: dict[str, object]) -> None:
    p = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env=device["env"],
        capture_output=True,
        text=True,  # type: ignore[arg-type]
    )
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr


WORKS = [
    ("run", "seq.onnx", "--input", "x.npy", "--output", "y.npy"),
    ("run", "seq.onnx", "--random", "--output", "-"),
    ("bench", "seq.onnx", "--steps", "5", "--repeats", "2", "--json"),
    ("inspect", "seq.onnx", "--json"),
    ("check", "portable.onnx", "--target", "portable", "--json"),
    ("package", "seq.onnx", "--out", "pkg"),
    ("quantize", "seq.onnx", "--to", "int8", "--out", "seq8.onnx", "--long-steps", "200"),
    ("quantize", "seq.onnx", "--to", "fp16", "--out", "seq16.onnx", "--long-steps", "200"),
    ("strategies", "--json"),
    ("targets",),
    ("parity", "seq.onnx", "seq.onnx", "--json"),  # two files: onnxruntime on both, no torch
    ("parity", "step.onnx", "step.onnx", "--steps", "40", "--json"),
    ("--help",),
]


@pytest.mark.parametrize("args", WORKS, ids=[" ".join(a[:2]) for a in WORKS])
def test_device_commands_work_without_torch(device: dict[str, object], args: tuple[str, ...]) -> None:
    p = _edgernn(device, *args)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    if "--json" in args:
        json.loads(p.stdout)


def test_streaming_works_without_torch(device: dict[str, object]) -> None:
    p = _edgernn(device, "run", "step.onnx", "--stream", stdin="0.1\n0.3\n")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().splitlines()) == 2


NEEDS_TORCH = [
    ("train", "--epochs", "1", "--out", "r2"),
    ("export", "run", "--out", "m.onnx"),
    ("parity", "run", "seq.onnx"),
    ("demo", "--epochs", "1", "--out", "d"),
    ("bench", "step.onnx", "--ckpt", "run", "--steps", "3", "--repeats", "1"),
]


@pytest.mark.parametrize("args", NEEDS_TORCH, ids=[a[0] for a in NEEDS_TORCH])
def test_torch_commands_say_which_extra_to_install(device: dict[str, object], args: tuple[str, ...]) -> None:
    p = _edgernn(device, *args)
    assert p.returncode == 10, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("edgernn: streaming")]
    assert lines == ["error: this command needs torch, which is not installed here: pip install 'edgernn[torch]'"]
