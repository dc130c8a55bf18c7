"""docs/scale-out.md runs as written: every shell line in order from an empty folder, except those that need what
this machine cannot have (named below with the reason), then its Ray Python example; the Ray Data run over the
shards equals the local run bit for bit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).parent.parent / "docs" / "scale-out.md"

# lines of the doc's shell blocks not run here, each with why
NOT_RUN = {
    "pip install": "installs; the test environment has the extras already",
    "tritonserver": "needs NVIDIA's Triton server container, which is not on this machine",
    "edgernn serve ray": "serves until Ctrl-C (tests/test_serve_ray.py runs the command and stops it with SIGINT)",
    "curl": "needs the server of `edgernn serve ray` running",
    "EDGERNN_PYTRITON_DIR=": "runs the repository's own test file from its root (CI runs that file in the suite)",
}


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.slow
def test_scale_out_doc_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc", reason="the Triton commands need tritonclient (edgernn[triton])")
    pytest.importorskip("ray", reason="the Ray commands need ray (edgernn[ray])")
    ran = 0
    for block in _blocks("bash"):
        for line in block.splitlines():
            command = line.strip()
            if not command or command.startswith("#") or any(command.startswith(k) for k in NOT_RUN):
                continue
            r = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
            ran += 1
    assert ran >= 7
    assert (tmp_path / "repo" / "sine" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "sine-control" / "1" / "model.py").is_file()  # the control-state form beside it
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert len(shards) == 4
    for name in shards:
        assert np.array_equal(np.load(tmp_path / "out" / name), np.load(tmp_path / "out-ray" / name))
    # the Python examples: Triton's needs a server (TritonStreamClient asks it for the config); Ray's runs here
    python = [b for b in _blocks("python") if "edgernn.serve.ray" in b]
    assert len(python) == 1 and any("TritonStreamClient" in b for b in _blocks("python"))
    r = subprocess.run([sys.executable, "-c", python[0]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'steps': 2" in r.stdout
