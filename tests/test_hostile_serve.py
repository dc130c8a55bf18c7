"""Hostile and careless input to the serving surfaces (`edgernn serve triton`, `edgernn serve ray`,
`edgernn run --ray` and their library code): each case ends in its own typed error, as one line with its
documented exit code on the CLI (the folder left as it was) or as an HTTP 4xx with a JSON error from a server;
never exit 70, a traceback or an HTTP 500. The bounds are documented in docs/scale-out.md and docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_stream_models import stateless_model, step_model

from edgernn.cli import main
from edgernn.errors import ConfigError, InputError
from edgernn.serve.ray import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ID_CHARS,
    BodyTooLargeError,
    RayStartError,
    StreamTable,
    TooManyStreamsError,
    init_ray,
    parse_body,
    stream_key,
)

FEATURES = 3
NEEDS_TRITONCLIENT = "serve triton needs tritonclient: pip install 'edgernn[triton]'"


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="the Triton export is made with torch")
    import torch

    from edgernn.export import export_model
    from edgernn.model.zoo import ModelConfig, build_model

    d = tmp_path_factory.mktemp("hostile-serve")
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=FEATURES, hidden_size=4, output_size=2)).eval()
    export_model(model, d / "triton.onnx", strategy="step", target="triton", verify=False)
    (d / "step.onnx").write_bytes(step_model("lstm", FEATURES, 16, 2, time=1))
    (d / "plain.onnx").write_bytes(stateless_model(FEATURES))
    (d / "shards").mkdir()
    np.save(d / "shards" / "a.npy", np.zeros((2, 4, FEATURES), np.float32))
    if _has_tritonclient():
        from edgernn.serve.triton import write_repository

        write_repository(d / "triton.onnx", d / "repo", name="existing", max_batch_size=2)
    return d


def _has_tritonclient() -> bool:
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return False
    return True


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


TRITON = ["serve", "triton", "triton.onnx", "--repo", "repo"]
RAY = ["serve", "ray", "step.onnx"]
RUN_RAY = ["run", "plain.onnx", "--input", "shards", "--output", "out", "--ray"]

CASES: list[tuple[list[str], int, str]] = [
    # (args, exit code, a phrase of the one-line error); a "{closed}" argument becomes a port nothing listens on
    # serve triton: every size has its bound, checked before anything is written (Triton's config is int32)
    ([*TRITON, "--max-batch-size", str(10**12)], 2, "max_batch_size is at most 65,536"),
    ([*TRITON, "--max-batch-size", "100000"], 2, "per instance"),
    ([*TRITON, "--instances", str(10**12)], 2, "instances is at most 256"),
    ([*TRITON, "--idle-ms", str(10**12)], 2, "--idle-ms is at most 86,400,000"),
    ([*TRITON, "--max-queue-delay-us", str(10**20)], 2, "max_queue_delay_us is at most 10,000,000"),
    # serve triton never replaces a model silently
    ([*TRITON, "--name", "existing"], 2, "add --force"),
    # serve ray: its bounds, checked before Ray starts
    ([*RAY, "--max-batch-size", str(10**12)], 2, "--max-batch-size is at most 4,096"),
    ([*RAY, "--max-streams", "0"], 2, "--max-streams"),
    ([*RAY, "--max-streams", str(10**12)], 2, "10,000,000"),
    ([*RAY, "--max-id-chars", "0"], 2, "--max-id-chars"),
    ([*RAY, "--max-body-bytes", "10"], 2, "--max-body-bytes"),
    ([*RAY, "--max-body-bytes", str(10**12)], 2, "67,108,864"),
    ([*RAY, "--ray-timeout", "0"], 2, "--ray-timeout"),
    ([*RAY, "--ray-timeout", "nan"], 2, "--ray-timeout"),
    ([*RAY, "--ray-timeout", "1e9"], 2, "at most 3600 seconds"),
    ([*RAY, "--address", "127.0.0.1:{closed}", "--ray-timeout", "5"], 1, "nothing answers there"),
    ([*RAY, "--max-queued", "0"], 2, "--max-queued"),
    ([*RAY, "--max-queued", str(10**9)], 2, "65,536"),
    ([*RAY, "--health-period", "0"], 2, "--health-period"),
    ([*RAY, "--health-timeout", "1e9"], 2, "--health-timeout"),
    ([*RAY, "--max-body-bytes", "1100"], 2, "state token is 368 characters"),
    # run --ray: its start-up time-out is bounded; a cluster that is not there is named, not waited for forever
    ([*RUN_RAY, "--ray-timeout", "0"], 2, "--ray-timeout"),
    ([*RUN_RAY, "--ray-timeout", "inf"], 2, "at most 3600 seconds"),
    (["run", "plain.onnx", "--input", "shards", "--output", "out", "--ray-timeout", "5"], 2, "goes with --ray"),
    (["run", "plain.onnx", "--random", "--ray-timeout", "5"], 2, "run a directory of shards"),
]


@pytest.mark.parametrize(("args", "code", "phrase"), CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_hostile_serve_cli_case(
    folder: Path, args: list[str], code: int, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if args[:2] == ["serve", "triton"]:
        pytest.importorskip("tritonclient.grpc", reason=NEEDS_TRITONCLIENT)
    monkeypatch.chdir(folder)
    closed = str(_closed_port())
    args = [a.replace("{closed}", closed) for a in args]
    before = _snapshot(folder)
    r = CliRunner().invoke(main, args)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error: ") or "internal error" in ln]
    assert r.exit_code == code, (r.exit_code, r.output)
    assert len(lines) == 1 and phrase in lines[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == lines[0], r.stderr  # the error is the last word
    assert _snapshot(folder) == before  # nothing written, nothing replaced


def test_run_ray_on_a_cluster_that_is_not_there_is_one_line(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.data", reason="run --ray needs ray[data]: pip install 'edgernn[ray]'")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    before = _snapshot(folder)
    r = CliRunner().invoke(main, [*RUN_RAY, "--ray-timeout", "5"])
    assert r.exit_code == RayStartError.exit_code, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: could not connect to the Ray cluster at 127.0.0.1:")
    assert "nothing answers there" in r.stderr and not (folder / "out").exists()
    assert _snapshot(folder) == before


def test_run_ray_gives_up_after_its_timeout_and_says_how_long_it_waited(folder: Path, tmp_path: Path) -> None:
    """A port that accepts connections and never answers (Ray retries such a cluster without end): the command
    ends with exit 1 after --ray-timeout, naming the address and the time it waited. In a child process, since the
    abandoned ray.init thread stays behind until its process ends."""
    pytest.importorskip("ray.data", reason="run --ray needs ray[data]: pip install 'edgernn[ray]'")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        code = "import sys; from edgernn.cli import main; main(sys.argv[1:])"
        out = tmp_path / "out"
        args = ["run", str(folder / "plain.onnx"), "--input", str(folder / "shards"), "--output", str(out), "--ray"]
        p = subprocess.run(
            [sys.executable, "-c", code, *args, "--ray-timeout", "3"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == RayStartError.exit_code, p.stderr[-2000:]
    assert last.startswith(f"error: could not connect to the Ray cluster at 127.0.0.1:{port}"), last
    assert "within 3 s" in last and "--ray-timeout" in last and "internal error" not in p.stderr
    assert not out.exists()


@pytest.mark.slow
def test_run_ray_starts_a_local_cluster_that_lives_as_long_as_the_command(folder: Path, tmp_path: Path) -> None:
    """ray.init runs in init_ray's helper thread; the local cluster's processes die with the thread that started
    them (PR_SET_PDEATHSIG), so that thread must outlive the start: the run finishes and equals a run without Ray."""
    pytest.importorskip("ray.data", reason="run --ray needs ray[data]: pip install 'edgernn[ray]'")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = "import sys; from edgernn.cli import main; main(sys.argv[1:])"
    base = ["run", str(folder / "plain.onnx"), "--input", str(folder / "shards"), "--output"]
    p = subprocess.run(
        [sys.executable, "-c", code, *base, str(tmp_path / "ray"), "--ray", "--ray-timeout", "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert CliRunner().invoke(main, [*base, str(tmp_path / "local")]).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "ray" / "a.npy"), np.load(tmp_path / "local" / "a.npy"))


def test_init_ray_refuses_a_bad_timeout_before_touching_ray() -> None:
    class NoRay:
        def init(self, **kwargs: Any) -> None:
            raise AssertionError("ray.init must not run")

    for bad in (0, -1, float("nan"), float("inf"), 3601, True, "10"):
        with pytest.raises(ConfigError, match="--ray-timeout"):
            init_ray(NoRay(), timeout_s=bad)  # type: ignore[arg-type]


def test_init_ray_wraps_rays_own_failure_in_a_typed_error() -> None:
    class FailingRay:
        def init(self, **kwargs: Any) -> None:
            raise Exception("The current node timed out during startup.\nmore lines")

    with pytest.raises(RayStartError, match=r"start a local Ray cluster: Exception: The current node timed out"):
        init_ray(FailingRay(), timeout_s=5)


def test_serve_triton_force_replaces_the_model(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc", reason=NEEDS_TRITONCLIENT)
    repo = tmp_path / "repo"
    args = ["serve", "triton", str(folder / "triton.onnx"), "--repo", str(repo), "--name", "m"]
    assert CliRunner().invoke(main, [*args, "--max-batch-size", "2"]).exit_code == 0
    r = CliRunner().invoke(main, [*args, "--max-batch-size", "8"])
    assert r.exit_code == 2 and "add --force" in r.stderr
    assert "max_batch_size: 2" in (repo / "m" / "config.pbtxt").read_text()
    r = CliRunner().invoke(main, [*args, "--max-batch-size", "8", "--force"])
    assert r.exit_code == 0, r.output
    assert "max_batch_size: 8" in (repo / "m" / "config.pbtxt").read_text()


# ------------------------------------------------------------------------------- a replica's table, no Ray


def test_a_full_replica_refuses_new_streams_and_evicts_none(folder: Path) -> None:
    table = StreamTable(folder / "step.onnx", max_streams=3)
    f = np.zeros(FEATURES, np.float32)
    r = table.step_batch([{"stream": i, "frame": f} for i in range(4)])
    assert [x.get("steps") for x in r] == [1, 1, 1, None]
    assert r[3]["code"] == TooManyStreamsError.exit_code and r[3]["status"] == 429
    assert "most live streams (3" in r[3]["error"] and "no live one is dropped" in r[3]["error"]
    # the live streams go on where they were; none was dropped for the newcomer
    r = table.step_batch([{"stream": i, "frame": f} for i in range(3)] + [{"stream": "new", "frame": f}])
    assert [x.get("steps") for x in r] == [2, 2, 2, None] and r[3]["status"] == 429
    stats = table.stats()
    assert stats["streams"] == 3 and stats["evicted"] == 0 and stats["refused_full"] == 2
    # a closed stream frees its place
    table.step_batch([{"stream": 0, "frame": f, "close": True}])
    assert table.step_batch([{"stream": "new", "frame": f}])[0]["steps"] == 1


@pytest.mark.parametrize(
    ("sid", "phrase"),
    [
        ("x" * (DEFAULT_MAX_ID_CHARS + 1), "at most 256 characters"),
        ("x" * 1_000_000, "got one of 1,000,000"),
        (10**30, "fit in 64 bits"),
        (-(10**30), "fit in 64 bits"),
        ([1], "non-empty string or an integer"),
    ],
    ids=["257-chars", "1MB", "huge-int", "huge-negative-int", "list"],
)
def test_an_oversized_or_odd_stream_id_is_refused_and_not_kept(folder: Path, sid: Any, phrase: str) -> None:
    table = StreamTable(folder / "step.onnx")
    (r,) = table.step_batch([{"stream": sid, "frame": np.zeros(FEATURES, np.float32)}])
    assert r["code"] == InputError.exit_code and r["status"] == 400 and phrase in r["error"]
    assert r["stream"] is None or not isinstance(r["stream"], str)  # an oversized id is not echoed back
    assert len(r["error"]) < 300 and table.stats()["streams"] == 0
    with pytest.raises(InputError, match=phrase.split(" ")[0]):
        stream_key({"stream": sid})


def test_the_id_bound_is_an_option(folder: Path) -> None:
    table = StreamTable(folder / "step.onnx", max_id_chars=4)
    r = table.step_batch([{"stream": "abcd", "frame": np.zeros(FEATURES)}, {"stream": "abcde", "frame": [0.0] * 3}])
    assert r[0]["steps"] == 1 and "at most 4 characters" in r[1]["error"]
    for bad in (0, -1, 10**9, True, 2.5):
        with pytest.raises(ConfigError, match="max_id_chars"):
            StreamTable(folder / "step.onnx", max_id_chars=bad)  # type: ignore[arg-type]
    for bad in (0, 10**9):
        with pytest.raises(ConfigError, match="max_streams"):
            StreamTable(folder / "step.onnx", max_streams=bad)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (1e39, "not finite as float32"),
        (-1e39, "not finite as float32"),
        (float("nan"), "not finite as float32"),
        ("x", "must be an array of numbers"),
    ],
    ids=["1e39", "-1e39", "nan", "string"],
)
def test_a_stateless_state_is_checked_after_its_cast(folder: Path, value: Any, phrase: str) -> None:
    table = StreamTable(folder / "step.onnx", stateless=True)
    f = np.zeros(FEATURES, np.float32)
    (ok,) = table.step_batch([{"stream": "a", "frame": f}])
    state = {k: v.tolist() for k, v in ok["state"].items()}
    name = sorted(state)[0]
    bad = {**state, name: np.full(np.shape(state[name]), value).tolist()}
    (r,) = table.step_batch([{"stream": "a", "frame": f, "state": bad}])
    assert r["code"] == InputError.exit_code and phrase in r["error"] and name in r["error"], r
    # the largest finite float32 passes, and the next step answers finite numbers
    big = {**state, name: np.full(np.shape(state[name]), np.finfo(np.float32).max, np.float64).tolist()}
    (r,) = table.step_batch([{"stream": "a", "frame": f, "state": big}])
    assert np.isfinite(r["output"]).all() and all(np.isfinite(v).all() for v in r["state"].values())


@pytest.mark.parametrize(
    "frame", [[[1.0], [1.0, 2.0]], {"a": 1}, [[[[[0.0]]]]] * 2 + [[0.0]]], ids=["ragged", "mapping", "deep-ragged"]
)
def test_a_ragged_frame_is_an_input_error_not_a_crash(folder: Path, frame: Any) -> None:
    table = StreamTable(folder / "step.onnx")
    f = np.zeros(FEATURES, np.float32)
    r = table.step_batch([{"stream": "bad", "frame": frame}, {"stream": "good", "frame": f}])
    assert r[0]["code"] == InputError.exit_code and "error" in r[0]
    assert r[1]["steps"] == 1  # the other request of the batch is answered
    ragged_state = {"h_in": [[1.0], [1.0, 2.0]], "c_in": [0.0]}
    (one,) = StreamTable(folder / "step.onnx", stateless=True).step_batch(
        [{"stream": "s", "frame": f, "state": ragged_state}]
    )
    assert one["code"] == InputError.exit_code


@pytest.mark.parametrize(
    ("body", "exc", "phrase"),
    [
        (_deep(100_000), InputError, "nested too deeply"),
        (b"x" * (DEFAULT_MAX_BODY_BYTES + 1), BodyTooLargeError, "at most 1,048,576"),
        (b'{"stream": ' + b"9" * 10_000 + b"}", InputError, "one JSON object"),
        (b"\xff\xfe{}", InputError, "one JSON object"),
        (b"[1, 2]", InputError, "got list"),
        (b"not json", InputError, "one JSON object"),
    ],
    ids=["100k-deep", "over-1MiB", "10k-digit-int", "not-utf8", "list", "garbage"],
)
def test_a_hostile_body_is_refused_before_it_is_used(body: bytes, exc: type[Exception], phrase: str) -> None:
    from edgernn.serve.ray import http_status

    with pytest.raises(exc, match=phrase) as info:
        parse_body(body)
    assert http_status(info.value) == (413 if exc is BodyTooLargeError else 400)  # type: ignore[arg-type]
    assert parse_body(b'{"stream": "a", "frame": [0.5]}') == {"stream": "a", "frame": [0.5]}


# ---------------------------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local Ray cluster of 2 CPUs with Serve's HTTP proxy on 127.0.0.1 at a free port."""
    ray = pytest.importorskip("ray", reason="Ray Serve tests need ray: pip install 'edgernn[ray]'")
    pytest.importorskip("ray.serve", reason="Ray Serve tests need ray[serve]: pip install 'edgernn[ray]'")
    from ray import serve

    port = _closed_port()
    from edgernn.serve.ray import local_ray_options

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", **local_ray_options())  # 127.0.0.1 only
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield {"port": port}
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(port: int, app: str, data: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/{app}", data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())  # a JSON error, or this fails


@pytest.mark.slow
def test_a_served_app_answers_hostile_requests_with_a_4xx_and_json(cluster: Any, folder: Path) -> None:
    from ray import serve

    from edgernn.serve.ray import stream_deployment

    port = cluster["port"]
    kwargs: dict[str, Any] = {"num_cpus": 0.5, "max_streams": 2, "max_id_chars": 16}
    h = serve.run(stream_deployment(folder / "step.onnx", **kwargs), name="full", route_prefix="/full")
    frame = [0.25] * FEATURES

    def send(body: Any) -> tuple[int, dict[str, Any]]:
        return _post(port, "full", body if isinstance(body, bytes) else json.dumps(body).encode())

    assert send({"stream": "a", "frame": frame})[0] == 200
    assert send({"stream": "b", "frame": frame})[0] == 200
    code, body = send({"stream": "c", "frame": frame})
    assert code == 429 and "most live streams (2" in body["error"] and body["code"] == 7
    code, body = send({"stream": "a", "frame": frame})
    assert code == 200 and body["steps"] == 2  # nothing was evicted for the refused stream
    with pytest.raises(TooManyStreamsError):  # a handle's caller gets the typed error
        h.remote({"stream": "d", "frame": frame}).result()
    code, body = send({"stream": "x" * 17, "frame": frame})
    assert code == 400 and "at most 16 characters" in body["error"]
    code, body = send({"stream": "x" * 1_000_000, "frame": frame})
    assert code == 400 and "at most 16 characters" in body["error"]
    code, body = send(_deep(100_000))
    assert code == 400 and "nested too deeply" in body["error"]
    code, body = send(b"[" * (DEFAULT_MAX_BODY_BYTES + 10))
    assert code == 413 and "1,048,576" in body["error"]
    code, body = send({"stream": "a", "frame": [[1.0], [1.0, 2.0]]})
    assert code == 400 and body["code"] == 7
    serve.delete("full")

    serve.run(
        stream_deployment(folder / "step.onnx", num_cpus=0.5, stateless=True), name="carried", route_prefix="/carried"
    )
    code, body = _post(port, "carried", json.dumps({"stream": "s", "frame": frame}).encode())
    assert code == 200
    state = {k: np.full(np.shape(v), 1e39).tolist() for k, v in body["state"].items()}
    code, body = _post(port, "carried", json.dumps({"stream": "s", "frame": frame, "state": state}).encode())
    assert code == 400 and "not finite as float32" in body["error"]
    serve.delete("carried")


def test_the_bounds_are_documented_with_their_tests() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "scale-out.md").read_text() + (root / "docs" / "security.md").read_text()
    for phrase in (
        "--max-streams",
        "--max-id-chars",
        "--max-body-bytes",
        "--max-queued",
        "--ray-timeout",
        "--force",
        "429",
        "413",
        "503",
        "Retry-After",
    ):
        assert phrase in text, phrase
    assert "tests/test_hostile_serve.py" in text


def test_concurrent_batches_keep_the_bound(folder: Path) -> None:
    """Batches from several threads (as the replica's worker threads run them): the bound holds exactly."""
    table = StreamTable(folder / "step.onnx", max_streams=50)
    f = np.zeros(FEATURES, np.float32)

    def client(k: int) -> None:
        for j in range(10):
            table.step_batch([{"stream": f"{k}-{j}-{i}", "frame": f} for i in range(4)])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = table.stats()
    assert stats["streams"] == 50 and stats["refused_full"] == 4 * 10 * 4 - 50 and stats["evicted"] == 0
