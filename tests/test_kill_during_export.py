"""kill -9 at any moment of an export leaves the model path as it was or holds the whole new model: never half a
file, never a file that fails to load. Moments are spread over one uninterrupted export's duration, measured first
on this machine (so a busy machine moves the moments with the run, not past it). ``EDGERNN_KILL_MOMENTS`` sets how
many (default 8; 31 for the full sweep)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

from edgernn.manifest import read_manifest
from edgernn.model import checkpoint
from edgernn.model.zoo import ModelConfig, build_model

pytestmark = pytest.mark.slow  # one export per moment: minutes on 2 cores (the quick run leaves it out)

MOMENTS = int(os.environ.get("EDGERNN_KILL_MOMENTS", "8"))


def _complete(path: Path) -> None:
    """The file loads, passes onnx's checker and carries edgernn's manifest."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert read_manifest({p.key: p.value for p in model.metadata_props}).strategy == "native"


def test_kill_9_during_export_never_leaves_half_a_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "model.ckpt"
    checkpoint.save(
        ckpt, build_model(ModelConfig(cell="gru", input_size=2, hidden_size=8, num_layers=2)), {"task": "sine"}
    )
    out = tmp_path / "out" / "m.onnx"
    cmd = [sys.executable, "-m", "edgernn", "export", str(ckpt), "--strategy", "native", "--out", str(out)]
    env = {**os.environ, "EDGERNN_PROGRESS": "0"}

    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    whole = time.monotonic() - t0
    _complete(out)

    outcomes = {"absent": 0, "complete": 0}
    for k in range(1, MOMENTS + 1):
        if k % 2:  # half the moments write a new file, half replace the one there
            out.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=whole * k / (MOMENTS + 1))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if out.exists():
            _complete(out)
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
        others = {p.name for p in out.parent.iterdir()} - {out.name}
        assert all(n.startswith(".m.onnx.edgernn-") and n.endswith(".tmp") for n in others), others

    # a killed run's temporary file is removed by the next write to the same path
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    _complete(out)
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert sum(outcomes.values()) == MOMENTS
