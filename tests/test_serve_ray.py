"""Ray Serve (edgernn.serve.ray, `edgernn serve ray`): streams over replicas, checked against local streams.

The per-replica logic (``StreamTable``) is tested here without Ray. The Ray tests share one local cluster of 2 CPUs
for the module (its start-up is the slow part) and are marked slow: 2 replicas serving 8 interleaved streams equal
to local ``Stream``s bit for bit, routing by stream id, a 2 -> 1 rescale in both modes (stateful: the streams on the
removed replica start again and say so; stateless: nothing lost), TTL eviction, HTTP, the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgernn.errors import InputError
from edgernn.runtime.stream import StreamingModel
from edgernn.serve.ray import StreamClient, StreamTable

FEATURES = 3


@pytest.fixture(scope="module")
def step_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An edgernn `step` export of a 2-layer LSTM (H16): the graph the replicas really serve (Gemm/MatMul per step)."""
    pytest.importorskip("torch", reason="the step export is made with torch")
    import torch

    from edgernn import ModelConfig, build_model
    from edgernn.export import export_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", input_size=FEATURES, hidden_size=16, num_layers=2))
    path = tmp_path_factory.mktemp("serve") / "step.onnx"
    export_model(model, path, strategy="step", verify=False)  # parity is tested elsewhere; here the serving is
    return path


@pytest.fixture(scope="module")
def small_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stateful LSTM graph built directly in ONNX (no torch): for the tests of the replica logic without Ray."""
    from test_stream_models import step_model

    path = tmp_path_factory.mktemp("serve-small") / "small.onnx"
    path.write_bytes(step_model("lstm", FEATURES, 16, 2, time=1))
    return path


def local_outputs(path: Path, frames: np.ndarray) -> list[list[np.ndarray]]:
    """Each stream's outputs from its own local Stream, one frame at a time (frames: streams x steps x F)."""
    sm = StreamingModel(path)
    out = []
    for row in frames:
        s = sm.stream()
        out.append([s.step(f) for f in row])
    return out


# ----------------------------------------------------------------------------------------- StreamTable, no Ray


def test_table_batches_streams_runs_repeats_in_order_and_isolates_errors(small_step: Path) -> None:
    frames = np.random.default_rng(0).standard_normal((3, 4, FEATURES)).astype(np.float32)
    want = local_outputs(small_step, frames)
    table = StreamTable(small_step)
    # one batch: stream a twice (two rounds), b and c once, a refused frame, a request without a stream
    batch = [
        {"stream": "a", "frame": frames[0, 0]},
        {"stream": 7, "frame": frames[1, 0]},
        {"stream": "a", "frame": frames[0, 1]},
        {"stream": "bad", "frame": [1.0, 2.0]},
        {"frame": frames[2, 0]},
        {"stream": "c", "frame": frames[2, 0].tolist()},
    ]
    r = table.step_batch(batch)
    assert [x.get("steps") for x in r] == [1, 1, 2, None, None, 1]
    assert np.array_equal(r[0]["output"], want[0][0]) and np.array_equal(r[2]["output"], want[0][1])
    assert np.array_equal(r[1]["output"], want[1][0]) and r[1]["stream"] == 7
    assert np.array_equal(r[5]["output"], want[2][0])  # a JSON-style list of float32 values: exact
    assert r[3]["code"] == 7 and "expects 3 features" in r[3]["error"]
    assert r[4]["code"] == 7 and "'stream'" in r[4]["error"]
    stats = table.stats()
    assert stats["streams"] == 3 and stats["calls"] == 2 and stats["errors"] == 2  # 'bad' was not kept
    # reset starts a stream again; close forgets it after the frame
    r = table.step_batch([{"stream": "a", "frame": frames[0, 0], "reset": True}, {"stream": 7, "frame": frames[1, 1]}])
    assert r[0]["steps"] == 1 and np.array_equal(r[0]["output"], want[0][0])
    assert r[1]["steps"] == 2 and np.array_equal(r[1]["output"], want[1][1])
    r = table.step_batch([{"stream": "c", "frame": frames[2, 1], "close": True}])
    assert r[0]["steps"] == 2 and table.stats()["streams"] == 2 and table.stats()["closed"] == 1
    r = table.step_batch([{"stream": "c", "frame": frames[2, 0], "state": {}}])
    assert "stateless" in r[0]["error"]


def test_table_evicts_streams_idle_past_the_ttl(small_step: Path) -> None:
    now = [0.0]
    table = StreamTable(small_step, ttl_s=10.0, clock=lambda: now[0])
    f = np.zeros(FEATURES, np.float32)
    table.step_batch([{"stream": "a", "frame": f}, {"stream": "b", "frame": f}])
    now[0] = 6.0
    assert table.step_batch([{"stream": "a", "frame": f}])[0]["steps"] == 2
    now[0] = 12.0  # b idle for 12 s, a for 6 s
    assert table.evict_idle() == 1 and table.stats()["streams"] == 1
    now[0] = 30.0
    assert table.step_batch([{"stream": "a", "frame": f}])[0]["steps"] == 1  # forgotten: it starts again
    assert table.stats()["evicted"] == 2


def test_table_stateless_carries_the_state_in_the_request(small_step: Path) -> None:
    frames = np.random.default_rng(1).standard_normal((2, 5, FEATURES)).astype(np.float32)
    want = local_outputs(small_step, frames)
    table = StreamTable(small_step, stateless=True)
    states: list[Any] = [None, None]
    for t in range(5):
        batch = [{"stream": i, "frame": frames[i, t], **({"state": states[i]} if states[i] else {})} for i in (0, 1)]
        r = table.step_batch(batch)
        for i in (0, 1):
            assert np.array_equal(r[i]["output"], want[i][t]) and "steps" not in r[i]
            # the state as JSON would carry it: nested lists of float32 values, exact
            states[i] = {k: v.tolist() for k, v in r[i]["state"].items()}
    assert table.stats()["streams"] == 0  # the replica keeps nothing
    bad = table.step_batch([{"stream": 0, "frame": frames[0, 0], "state": {"h_in": [0.0]}}])[0]
    assert bad["code"] == 7 and "state needs exactly" in bad["error"]


def test_importing_edgernn_ray_modules_does_not_import_ray_and_missing_ray_exits_10(small_step: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["ray"] = None  # what an install without ray looks like to `import ray`
        from click.testing import CliRunner
        import edgernn.serve.ray, edgernn.batch.ray, edgernn.cli.serve_ray, edgernn.cli.runtime
        from edgernn.cli.serve_ray import ray_command
        r = CliRunner().invoke(ray_command, [{str(small_step)!r}])
        print(r.exit_code, r.output.strip().replace("\\n", " "))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("10 error: ") and "pip install 'edgernn[ray]'" in out.stdout, out.stdout
    code = "import sys, edgernn.serve.ray, edgernn.batch.ray, edgernn.cli.serve_ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local Ray cluster of 2 CPUs with Serve's HTTP proxy on a free port, for the whole module; started as the
    CLI starts one (``init_ray``: 127.0.0.1 only)."""
    ray = pytest.importorskip("ray", reason="Ray Serve tests need ray: pip install 'edgernn[ray]'")
    pytest.importorskip("ray.serve", reason="Ray Serve tests need ray[serve]: pip install 'edgernn[ray]'")
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from edgernn.serve.ray import init_ray

    init_ray(ray, num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield {"port": port, "address": ray.get_runtime_context().gcs_address}
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(name: str, path: Path, **kwargs: Any) -> Any:
    from ray import serve

    from edgernn.serve.ray import stream_deployment

    kwargs.setdefault("num_cpus", 0.5)  # room for three apps' replicas on the 2-CPU cluster
    return serve.run(stream_deployment(path, **kwargs), name=name, route_prefix=f"/{name}")


def replica_stats(app: str, replicas: int) -> dict[str, dict[str, Any]]:
    """Each replica's stats: the stats call is not routed by stream, so call until every replica has answered."""
    from ray import serve

    h = serve.get_deployment_handle("StreamReplica", app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        s = h.stats.remote().result()
        seen[s["replica"]] = s
        if len(seen) == replicas:
            break
    return seen


def wait_for_replicas(app: str, n: int, timeout: float = 60.0) -> None:
    """Until the app's StreamReplica deployment has exactly ``n`` replicas, all running (a removed one gone)."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = serve.status().applications[app].deployments["StreamReplica"].replica_states
        if {str(getattr(k, "value", k)): v for k, v in states.items() if v} == {"RUNNING": n}:
            return
        time.sleep(0.2)
    raise AssertionError(f"{app}: StreamReplica did not settle at {n} replica(s): {states}")


def post(port: int, app: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{app}", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_two_replicas_serve_interleaved_streams_bit_for_bit(cluster: Any, step_path: Path) -> None:
    from ray import serve

    n, steps = 8, 12
    frames = np.random.default_rng(2).standard_normal((n, steps + 1, FEATURES)).astype(np.float32)
    want = local_outputs(step_path, frames)
    h = deploy("stateful", step_path, replicas=2, max_batch_size=8, batch_wait_timeout_s=0.02)
    client = StreamClient("stateful")  # half the streams straight to the replicas, routed by the client
    order = np.random.default_rng(3)
    where: dict[int, set[str]] = {i: set() for i in range(n)}
    for t in range(steps):  # each round: every stream's next frame in flight at once, in a shuffled order
        ids = order.permutation(n)
        pending = [(i, (h.remote if i % 2 else client.submit)({"stream": f"s{i}", "frame": frames[i, t]})) for i in ids]
        for i, resp in pending:
            r = resp.result()
            assert r["steps"] == t + 1
            assert np.array_equal(r["output"], want[i][t]), (i, t)  # bit for bit: no tolerance
            where[i].add(r["replica"])
    assert all(len(w) == 1 for w in where.values()), where  # strict affinity: one replica per stream
    stats = replica_stats("stateful", 2)
    assert sum(s["requests"] for s in stats.values()) == n * steps
    assert sum(s["calls"] for s in stats.values()) < n * steps  # streams shared onnxruntime calls
    # the consistent-hash ring spreads streams over both replicas
    spread = [h.remote({"stream": f"spread-{k}", "frame": frames[0, 0]}) for k in range(32)]
    assert len({r.result()["replica"] for r in spread}) == 2

    # HTTP: the same streams, JSON in and out (float32 survives the round trip exactly)
    s = StreamingModel(step_path).stream()
    for t in range(3):
        code, body = post(cluster["port"], "stateful", {"stream": "http-1", "frame": frames[0, t].tolist()})
        assert code == 200 and body["steps"] == t + 1
        assert np.array_equal(np.asarray(body["output"], np.float32), s.step(frames[0, t]))
    code, body = post(cluster["port"], "stateful", {"stream": "http-1", "frame": [1.0]})
    assert code == 400 and "features" in body["error"]
    with pytest.raises(InputError, match="features"):  # a handle's caller gets the edgernn error
        h.remote({"stream": "s0", "frame": [1.0]}).result()
    with pytest.raises(InputError, match="features"):
        client.step({"stream": "s1", "frame": [1.0]})

    # a replica refuses a request not routed by its stream id (its state would be scattered over replicas)
    direct = serve.get_deployment_handle("StreamReplica", "stateful")
    r = direct.step.remote({"stream": "s0", "frame": frames[0, 0]}).result()
    assert r["code"] == 2 and "routed by" in r["error"]
    r = direct.options(session_id="probe").step.remote({"stream": "probe", "frame": frames[0, 0]}).result()
    assert r["steps"] == 1

    # rescale 2 -> 1: the streams of the removed replica start again on the other, and `steps` says so
    before = {i: next(iter(w)) for i, w in where.items()}
    deploy("stateful", step_path, replicas=1, max_batch_size=8, batch_wait_timeout_s=0.02)
    wait_for_replicas("stateful", 1)
    after = [h.remote({"stream": f"s{i}", "frame": frames[i, steps]}).result() for i in range(n)]
    kept = {r["replica"] for r in after}
    assert len(kept) == 1
    for i, r in enumerate(after):
        if before[i] in kept:  # its replica stayed: its state too
            assert r["steps"] == steps + 1 and np.array_equal(r["output"], want[i][steps])
        else:  # moved: a fresh state, told by steps == 1 (the limit of stateful mode, see docs/scale-out.md)
            assert r["steps"] == 1
    serve.delete("stateful")


@pytest.mark.slow
def test_idle_streams_are_evicted_after_the_ttl(cluster: Any, step_path: Path) -> None:
    from ray import serve

    frames = np.random.default_rng(4).standard_normal((2, 3, FEATURES)).astype(np.float32)
    want = local_outputs(step_path, frames)
    h = deploy("ttl", step_path, replicas=1, ttl_s=1.0)
    assert h.remote({"stream": "a", "frame": frames[0, 0]}).result()["steps"] == 1
    assert h.remote({"stream": "a", "frame": frames[0, 1]}).result()["steps"] == 2
    assert h.remote({"stream": "b", "frame": frames[1, 0]}).result()["steps"] == 1
    time.sleep(1.5)
    r = h.remote({"stream": "a", "frame": frames[0, 0]}).result()
    assert r["steps"] == 1 and np.array_equal(r["output"], want[0][0])  # a fresh stream: its state was forgotten
    (stats,) = replica_stats("ttl", 1).values()
    assert stats["evicted"] == 2 and stats["streams"] == 1
    serve.delete("ttl")


@pytest.mark.slow
def test_stateless_rescale_under_traffic_loses_nothing(cluster: Any, step_path: Path) -> None:
    from ray import serve

    n, steps = 8, 16
    frames = np.random.default_rng(5).standard_normal((n, steps, FEATURES)).astype(np.float32)
    want = local_outputs(step_path, frames)
    h = deploy("stateless", step_path, replicas=2, stateless=True, max_batch_size=8)
    states: list[Any] = [None] * n
    replicas: list[set[str]] = [set() for _ in range(steps)]
    rescale = threading.Thread(target=deploy, args=("stateless", step_path), kwargs={"replicas": 1, "stateless": True})
    for t in range(steps):
        if t == steps // 4:
            rescale.start()  # 2 -> 1 replicas while the streams go on
        pending = [
            h.remote({"stream": i, "frame": frames[i, t], **({"state": states[i]} if states[i] else {})})
            for i in range(n)
        ]
        for i, resp in enumerate(pending):
            r = resp.result()
            assert np.array_equal(r["output"], want[i][t]), (i, t)
            states[i] = r["state"]
            replicas[t].add(r["replica"])
        if t == steps // 2:
            rescale.join()
    assert len(set().union(*replicas[: steps // 4])) == 2  # both replicas served before the rescale
    assert len(replicas[-1]) == 1  # one after it
    # over HTTP, the state as JSON
    code, body = post(cluster["port"], "stateless", {"stream": "j", "frame": frames[0, 0].tolist()})
    code, body = post(
        cluster["port"], "stateless", {"stream": "j", "frame": frames[0, 1].tolist(), "state": body["state"]}
    )
    assert code == 200 and np.array_equal(np.asarray(body["output"], np.float32), want[0][1])
    serve.delete("stateless")


@pytest.mark.slow
def test_cli_serves_until_ctrl_c_and_prints_how_to_send_frames(cluster: Any, step_path: Path) -> None:
    from ray import serve

    # on the module's cluster (--address): Ctrl-C removes this application only
    cmd = [
        sys.executable,
        "-c",
        "import sys; from edgernn.cli.serve_ray import ray_command; ray_command(sys.argv[1:])",
        str(step_path),
        "--replicas",
        "1",
        "--address",
        cluster["address"],
        "--port",
        str(cluster["port"]),
        "--route",
        "/cli",
        "--name",
        "cli",
    ]
    env = {**os.environ, "RAY_ADDRESS": cluster["address"]}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it." in line:
                break
        text = "".join(lines)
        assert "Ctrl-C stops it." in text, text
        curl = next(x for x in lines if x.strip().startswith("curl "))
        body = json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0])
        assert f"http://127.0.0.1:{cluster['port']}/cli" in curl
        code, got = post(cluster["port"], "cli", body)
        frame = np.asarray(body["frame"], np.float32)
        assert code == 200 and np.array_equal(
            np.asarray(got["output"], np.float32), local_outputs(step_path, frame[None, None])[0][0]
        )
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    assert rc == 0, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
    assert "cli" not in serve.status().applications  # its app is gone, the cluster's Serve is not
