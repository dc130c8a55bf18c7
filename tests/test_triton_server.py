"""A real Triton Inference Server (the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles, with its Python
backend) serving the repositories ``edgernn serve triton`` writes.

* ``--state control``: 8 interleaved streams through ``TritonStreamClient`` equal edgernn's local ``Stream``s bit
  for bit; a sequence the server forgot (idle time-out) is resumed by the client with the state it holds; a
  refused request raises edgernn's InputError.
* ``--state implicit``: the config loads through the server's own config parser and sequence batcher. The wheel
  has no onnxruntime backend, so a stand-in Python-based backend named ``onnxruntime`` (Triton's mechanism for
  Python-based backends: ``BACKENDS/NAME/model.py``) takes its place; it computes nothing.

The wheel needs numpy < 2, which this project's environment does not have, so it is not part of the ``test``
extra: install it aside, without touching the environment (``pip install --no-deps --target DIR
nvidia-pytriton``), and point ``EDGERNN_PYTRITON_DIR`` at DIR; an importable ``pytriton`` is used too. Without
either the tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgernn.errors import InputError

F = 3  # features of the test model (tests/test_serve_triton.py)
START_TIMEOUT_S = 120  # server start (loading two models, spawning two Python stubs) on a busy 2-core machine
IDLE_MS = 2000  # the control repository's idle time-out


def _pytriton_dir() -> Path | None:
    """The folder holding the ``pytriton`` package (its ``tritonserver`` inside), or None."""
    env = os.environ.get("EDGERNN_PYTRITON_DIR")
    if env:
        return Path(env) if (Path(env) / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file() else None
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


NO_SERVER = (
    "no tritonserver here: install nvidia-pytriton aside (pip install --no-deps --target DIR nvidia-pytriton; it "
    "pins numpy < 2) and set EDGERNN_PYTRITON_DIR=DIR"
)


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


STAND_IN_ONNXRUNTIME = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """A stand-in for Triton's onnxruntime backend: it loads any config and answers zeros."""

    def initialize(self, args):
        self.outputs = json.loads(args["model_config"])["output"]

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack(o["name"], np.zeros([1, *o["dims"]], np.float32)) for o in self.outputs]
            )
            for _ in requests
        ]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    pytest.importorskip("tritonclient.grpc", reason="the client needs tritonclient: pip install 'edgernn[triton]'")
    site = _pytriton_dir()
    if site is None:
        pytest.skip(NO_SERVER)
    from test_serve_triton import _export

    from edgernn.serve.triton import write_repository

    home = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    tmp = tmp_path_factory.mktemp("triton")
    # Quirk: the Python backend runs the stub found in its own folder, and the wheel keeps one stub per Python
    # version apart (python_backend_stubs/X.Y): copy the backend and this Python's stub into a backends folder.
    backends = tmp / "backends"
    shutil.copytree(home / "backends" / "python", backends / "python")
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    (backends / "onnxruntime").mkdir()
    (backends / "onnxruntime" / "model.py").write_text(STAND_IN_ONNXRUNTIME)

    data = _export("lstm", 2).model_bytes
    (tmp / "lstm.onnx").write_bytes(data)
    write_repository(
        tmp / "lstm.onnx",
        tmp / "control",
        name="lstm_control",
        state="control",
        idle_us=IDLE_MS * 1000,
        max_batch_size=8,
        warmup=1,
    )
    write_repository(
        tmp / "lstm.onnx",
        tmp / "implicit",
        name="lstm_implicit",
        state="implicit",
        max_batch_size=8,
        strategy="oldest",
        preserve_ordering=True,
        preferred_batch_sizes=[4, 8],
        warmup=1,
    )

    http, grpc, metrics = _free_ports(3)
    env = dict(os.environ)
    # Quirk: the stub links libpython3.X.so.1.0 and takes the first one the loader finds; without this Python's
    # LIBDIR first it may load the system's libpython, whose sys.path lacks this environment's onnxruntime.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(site / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")) if p
    )
    cmd = [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={tmp / 'control'}",
        f"--model-repository={tmp / 'implicit'}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        # the stubs' shared-memory regions in /dev/shm are named by this prefix: one of this server's own
        f"--backend-config=python,shm-region-prefix-name=edgernn_test_{os.getpid()}_",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]
    log = tmp / "server.log"
    # Quirk: the server and its stubs run in the temporary folder (every path above is absolute), so that
    # nothing they leave in their working directory lands in the checkout.
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield {"url": f"127.0.0.1:{grpc}", "client": client, "data": data, "repo": tmp, "log": log}
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _local(data: bytes, x: np.ndarray) -> np.ndarray:
    from edgernn.runtime.stream import StreamingModel

    s = StreamingModel(data).stream()
    return np.stack([s.step(f) for f in x])


def test_control_state_streams_equal_local_streams_bit_for_bit(server: dict[str, object]) -> None:
    from edgernn.serve.triton import TritonStreamClient

    client = TritonStreamClient("lstm_control", url=str(server["url"]))
    rng = np.random.default_rng(5)
    xs = {sid: rng.standard_normal((int(rng.integers(3, 8)), F)).astype(np.float32) for sid in range(1, 9)}
    order = [sid for sid, x in xs.items() for _ in range(len(x))]
    rng.shuffle(order)  # the 8 streams' steps interleaved
    pos = dict.fromkeys(xs, 0)
    got: dict[int, list[np.ndarray]] = {sid: [] for sid in xs}
    for sid in order:
        t = pos[sid]
        out = client.step(sid, xs[sid][t], start=t == 0, end=t == len(xs[sid]) - 1)
        assert set(out) == {"y"}  # the state outputs are held by the client, not returned
        got[sid].append(out["y"])
        pos[sid] += 1
    for sid, x in xs.items():
        np.testing.assert_array_equal(np.stack(got[sid]), _local(server["data"], x), err_msg=f"stream {sid}")
    assert client.held == {} and client.restarts == 0  # every stream ended: nothing held


def test_a_forgotten_sequence_resumes_with_the_client_held_state(server: dict[str, object]) -> None:
    from edgernn.serve.triton import TritonStreamClient

    client = TritonStreamClient("lstm_control", url=str(server["url"]))
    x = np.random.default_rng(6).standard_normal((4, F)).astype(np.float32)
    ys = [client.step(21, x[0], start=True)["y"], client.step(21, x[1])["y"]]
    time.sleep(IDLE_MS / 1000 * 1.5)  # past the idle time-out: the server forgets sequence 21
    ys += [client.step(21, x[2])["y"], client.step(21, x[3], end=True)["y"]]
    assert client.restarts == 1
    np.testing.assert_array_equal(np.stack(ys), _local(server["data"], x))

    fresh = TritonStreamClient("lstm_control", url=str(server["url"]))
    with pytest.raises(InputError, match="START it again"):  # no held state: edgernn's error, not tritonclient's
        fresh.step(22, x[0])


def test_implicit_state_config_loads_in_the_real_server(server: dict[str, object]) -> None:
    client = server["client"]
    assert client.is_model_ready("lstm_implicit")  # type: ignore[attr-defined]
    cfg = client.get_model_config("lstm_implicit").config  # type: ignore[attr-defined]
    seq = cfg.sequence_batching
    assert [(s.input_name, s.output_name) for s in seq.state] == [("h_in", "h_out"), ("c_in", "c_out")]
    assert seq.oldest.preserve_ordering and list(seq.oldest.preferred_batch_size) == [4, 8]
    assert [i.name for i in cfg.input] == ["x"] and cfg.backend == "onnxruntime"
    ctl = client.get_model_config("lstm_control").config  # type: ignore[attr-defined]
    assert ctl.backend == "python" and {c.name for c in ctl.sequence_batching.control_input} == {
        "START",
        "END",
        "READY",
        "CORRID",
    }
