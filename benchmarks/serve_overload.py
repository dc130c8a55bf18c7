"""Ray Serve under 2x overload: what `edgernn serve ray` answers when offered twice what it can serve.

Two phases against one stateful deployment (``edgernn.serve.ray.stream_deployment``) over HTTP on 127.0.0.1:

1. **Capacity**: ``--clients`` threads, each a closed loop over streams of its own (send a frame, wait for the
   answer, send the next), for ``--capacity-s`` seconds: the accepted frames per second at saturation.
2. **Overload**: ``--factor`` (2) times that rate, open loop: request k is due at ``t0 + k / rate`` whatever the
   answers do (a fixed arrival schedule), for ``--overload-s`` seconds. Each due request takes a stream that has
   no request in flight (``--streams`` of them) and sends its next frame; ``--workers`` threads send them. A due
   request that no worker could send within ``BEHIND_S`` (2 s) of its time is not sent and is counted
   (``client_behind``): the client, not the server, fell short of the offered rate.

Reported for the overload phase: requests accepted (200) and refused (503, with the reason: the queue bound
``--max-queued`` or the wait bound ``--max-wait``), and the wait of the accepted ones: as the replica measured it
(``waited_s``: from the ingress's receipt until its batch was taken, which ``--max-wait`` bounds) and its batch's
run (``ran_s``), and as the client saw it: from its sending to the answer (``client_latency_s``: Serve's HTTP
proxy and the Ray hops included) and from its due time (``client_wait_s``: this client's own lag too, when its
``--workers`` are all busy); no server setting bounds those. Checked, and the run fails (exit code 1) otherwise:
every 503 carries edgernn's body and ``Retry-After``; every accepted output equals a local ``Stream``'s bit for bit
(a refused frame changed nothing: the stream's next frame is the same one again); the ``steps`` of every answer.

Loopback only: a local Ray cluster (``init_ray``, ``local_ray_options``) and Serve's proxy on 127.0.0.1. The run
time is bounded: about ``--capacity-s + --overload-s`` + 3 s plus Ray's start, and at most ``--timeout-s`` (30 s)
more for the last answers.

    python benchmarks/serve_overload.py --json overload.json
    python benchmarks/serve_overload.py --step step.onnx --features 1 --overload-s 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MAX_SECONDS = 600.0  # the most --capacity-s + --overload-s may be
MAX_STREAMS = 100_000  # the most --streams may be (each holds its outputs until the check)
BEHIND_S = 2.0  # a due request that no worker could send within this many seconds is dropped, counted (client_behind)


def frame(stream: int, t: int, features: int) -> np.ndarray:
    """Frame ``t`` of stream ``stream``: the same numbers every run, made when needed (no table of all frames)."""
    return np.random.default_rng([stream, t]).standard_normal(features).astype(np.float32)


class Streams:
    """Every stream's next frame, its accepted outputs (checked against a local Stream at the end), and which
    streams have no request in flight."""

    def __init__(self, n: int, features: int, first: int = 0) -> None:
        self.features, self.first = features, first
        self.outputs: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self.idle.put(i)

    def body(self, i: int) -> bytes:
        t = len(self.outputs[i])
        return json.dumps({"stream": f"s{self.first + i}", "frame": frame(self.first + i, t, self.features).tolist()})

    def check(self, step: Path) -> int:
        """Every accepted output equals a local Stream's, bit for bit; returns how many were checked."""
        from edgernn.runtime.stream import StreamingModel

        sm = StreamingModel(step)
        checked = 0
        for i, outs in enumerate(self.outputs):
            s = sm.stream()
            for t, got in enumerate(outs):
                want = np.asarray(s.step(frame(self.first + i, t, self.features)))
                if not np.array_equal(got, want.astype(np.float32)):
                    raise AssertionError(f"stream s{self.first + i} frame {t}: {got} from Serve, {want} locally")
                checked += 1
        return checked


class Client:
    """One HTTP/1.1 connection to the application (kept open between requests)."""

    def __init__(self, port: int, path: str, timeout_s: float) -> None:
        self.port, self.path, self.timeout_s = port, path, timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, dict[str, Any], str | None]:
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: open a new one once
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            try:
                self.conn.request("POST", self.path, body, {"content-type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, json.loads(data), r.getheader("Retry-After")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def answer(streams: Streams, i: int, status: int, body: dict[str, Any], retry_after: str | None) -> str:
    """Record one answer for stream ``i``: "ok" (its output kept, its steps checked) or why it was refused; raises
    AssertionError for anything that is not a 200 or a 503 in edgernn's body with Retry-After."""
    sid = f"s{streams.first + i}"
    if status == 200:
        want_steps = len(streams.outputs[i]) + 1
        if body.get("steps") != want_steps or body.get("stream") != sid:
            raise AssertionError(f"{sid}: steps {body.get('steps')} (want {want_steps}): {str(body)[:200]}")
        streams.outputs[i].append(np.asarray(body["output"], np.float32))
        return "ok"
    keys = {"stream", "error", "code", "status", "retry_after", "state_lost"}
    if status != 503 or not keys <= set(body) or body["stream"] != sid or body["state_lost"] is not False:
        raise AssertionError(f"{sid}: HTTP {status} {str(body)[:300]}")
    if retry_after != str(body["retry_after"]) or body["status"] != 503 or body["code"] != 1:
        raise AssertionError(f"{sid}: 503 with Retry-After {retry_after!r}: {str(body)[:300]}")
    return "wait" if "--max-wait" in body["error"] else "queue" if "--max-queued" in body["error"] else "other"


def capacity(port: int, path: str, streams: Streams, clients: int, seconds: float, timeout_s: float) -> dict[str, Any]:
    """Closed loop: ``clients`` threads, each sending frame after frame on its own streams, for ``seconds``."""
    counts = {"ok": 0, "wait": 0, "queue": 0, "other": 0}
    ran_max = [0.0]  # the longest batch run an accepted answer reported
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run(c: int) -> None:
        client = Client(port, path, timeout_s)
        mine = list(range(c, len(streams.outputs), clients))
        k = 0
        try:
            while time.perf_counter() < stop:
                i = mine[k % len(mine)]
                status, body, retry_after = client.post(streams.body(i))
                got = answer(streams, i, status, body, retry_after)
                k += got == "ok"
                with lock:
                    counts[got] += 1
                    ran_max[0] = max(ran_max[0], float(body.get("ran_s", 0.0)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout_s + 10)
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "clients": clients,
        "seconds": took,
        "accepted": counts["ok"],
        "frames_per_s": counts["ok"] / took,
        "ran_s_max": ran_max[0],
        **{f"refused_{k}": v for k, v in counts.items() if k != "ok"},
    }


def overload(
    port: int, path: str, streams: Streams, rate: float, seconds: float, workers: int, timeout_s: float
) -> dict[str, Any]:
    """Open loop: request k due at ``t0 + k / rate``; each takes an idle stream and sends its next frame."""
    due: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    rows: list[tuple[str, float, float, float, float, float]] = []  # outcome, late, wait, waited_s, ran_s, latency
    errors: list[BaseException] = []
    lock = threading.Lock()
    no_stream, behind = [0], [0]

    def run() -> None:
        client = Client(port, path, timeout_s)
        while (at := due.get()) is not None:
            if time.perf_counter() - at > BEHIND_S:  # this client is behind its schedule: not sent, counted
                with lock:
                    behind[0] += 1
                continue
            try:
                i = streams.idle.get_nowait()
            except queue.Empty:
                with lock:
                    no_stream[0] += 1
                continue
            try:
                sent = time.perf_counter()
                status, body, retry_after = client.post(streams.body(i))
                done = time.perf_counter()
                got = answer(streams, i, status, body, retry_after)
            except BaseException as e:
                errors.append(e)
                return
            finally:
                streams.idle.put(i)
            with lock:
                rows.append(
                    (got, sent - at, done - at, body.get("waited_s", -1.0), body.get("ran_s", -1.0), done - sent)
                )

    pool = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for t in pool:
        t.start()
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.1
    for k in range(n):
        at = t0 + k / rate
        pause = at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        due.put(at)
    for _ in pool:
        due.put(None)
    for t in pool:
        t.join(timeout_s + 10)
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    ok = [r for r in rows if r[0] == "ok"]

    def pct(values: list[float]) -> dict[str, float]:
        if not values:
            return {"min": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        a = np.asarray(values)
        return {
            "min": float(a.min()),
            "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        }

    return {
        "rate_per_s": rate,
        "due": n,
        "seconds": took,
        "sent": len(rows),
        "sent_per_s": len(rows) / took,
        "no_idle_stream": no_stream[0],
        "client_behind": behind[0],
        "accepted": len(ok),
        "accepted_per_s": len(ok) / took,
        **{f"refused_{k}": sum(r[0] == k for r in rows) for k in ("wait", "queue", "other")},
        "server_waited_s": pct([r[3] for r in ok]),
        "server_ran_s": pct([r[4] for r in ok]),
        "server_total_s_max": max((r[3] + r[4] for r in ok), default=0.0),
        "client_wait_s": pct([r[2] for r in ok]),
        "client_latency_s": pct([r[5] for r in ok]),
        "client_late_s": pct([r[1] for r in rows]),
        "refused_waited_s": pct([r[3] for r in rows if r[0] == "wait"]),
    }


def run(
    step: Path,
    port: int,
    *,
    name: str = "overload",
    features: int = 1,
    replicas: int = 1,
    num_cpus: float = 1.0,
    max_batch_size: int = 32,
    max_queued: int = 64,
    max_wait_s: float = 0.5,
    clients: int = 32,
    capacity_s: float = 5.0,
    overload_s: float = 20.0,
    factor: float = 2.0,
    streams: int = 512,
    workers: int = 256,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Deploy ``step`` as application ``name`` on the running Serve (HTTP on 127.0.0.1:``port``), measure its
    capacity, offer ``factor`` times it, check every answer, delete the application; returns every number."""
    from ray import serve

    from edgernn.errors import ConfigError
    from edgernn.serve.ray import stream_deployment

    if not 0 < capacity_s + overload_s <= MAX_SECONDS or min(capacity_s, overload_s) <= 0:
        raise ConfigError(f"--capacity-s and --overload-s are positive and together at most {MAX_SECONDS:g} s")
    if not 1 <= clients <= streams <= MAX_STREAMS or not 1 <= workers <= 1024 or not 1 <= factor <= 100:
        raise ConfigError(f"need 1 <= --clients <= --streams <= {MAX_STREAMS:,}, --workers in 1..1024, --factor 1..100")
    app = stream_deployment(
        step,
        replicas=replicas,
        num_cpus=num_cpus,
        max_batch_size=max_batch_size,
        max_queued=max_queued,
        max_wait_s=max_wait_s,
    )
    serve.run(app, name=name, route_prefix=f"/{name}")
    path = f"/{name}"
    try:
        warm = Streams(clients, features, first=10 * MAX_STREAMS)  # start-up costs (connections, sessions) not timed
        capacity(port, path, warm, clients, 1.0, timeout_s)
        cap_streams = Streams(clients, features, first=MAX_STREAMS)
        cap = capacity(port, path, cap_streams, clients, capacity_s, timeout_s)
        over_streams = Streams(streams, features)
        over = overload(port, path, over_streams, factor * cap["frames_per_s"], overload_s, workers, timeout_s)
        checked = cap_streams.check(step) + over_streams.check(step) + warm.check(step)
    finally:
        serve.delete(name)
    return {
        "settings": {
            "replicas": replicas,
            "num_cpus": num_cpus,
            "max_batch_size": max_batch_size,
            "max_queued": max_queued,
            "max_wait_s": max_wait_s,
            "factor": factor,
            "streams": streams,
            "workers": workers,
        },
        "capacity": cap,
        "overload": over,
        "checked_bit_for_bit": checked,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step", type=Path, help="a step export (default: a 2-layer LSTM, hidden 16, exported here)")
    p.add_argument("--features", type=int, default=1)
    p.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)), help="CPUs of the local Ray cluster")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queued", type=int, default=64)
    p.add_argument("--max-wait", type=float, default=0.5, help="the deployment's --max-wait (seconds)")
    p.add_argument("--clients", type=int, default=32, help="closed-loop threads that measure the capacity")
    p.add_argument("--capacity-s", type=float, default=5.0)
    p.add_argument("--overload-s", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=2.0, help="the offered rate, in multiples of the capacity")
    p.add_argument("--streams", type=int, default=512)
    p.add_argument("--workers", type=int, default=256, help="threads that send the open-loop requests")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = p.parse_args()

    import ray
    from ray import serve
    from scale_out import exports, machine

    from edgernn.serve.ray import init_ray

    tmp = tempfile.TemporaryDirectory()
    step = args.step or exports(Path(tmp.name), args.features)[0]
    port = free_port()
    init_ray(ray, num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        result = run(
            step,
            port,
            features=args.features,
            replicas=args.replicas,
            num_cpus=1.0,
            max_batch_size=args.max_batch_size,
            max_queued=args.max_queued,
            max_wait_s=args.max_wait,
            clients=args.clients,
            capacity_s=args.capacity_s,
            overload_s=args.overload_s,
            factor=args.factor,
            streams=args.streams,
            workers=args.workers,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    result = {"machine": machine(), "command": " ".join(["python", *sys.argv]), **result}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def report(r: dict[str, Any]) -> None:
    m, c, o, s = r["machine"], r["capacity"], r["overload"], r["settings"]
    print(f"{m['date']}  {m['cpu']}, {m['cpus_usable']} CPUs usable, load {m['load_average']}")
    print(f"python {m['python']}, onnxruntime {m['onnxruntime']}, ray {m['ray']}; {r['command']}")
    print(
        f"capacity: {c['frames_per_s']:.0f} frames/s ({c['clients']} closed-loop clients, {c['seconds']:.1f} s); "
        f"settings {s}"
    )
    print(
        f"offered {o['rate_per_s']:.0f}/s ({s['factor']:g}x) for {o['seconds']:.1f} s: sent {o['sent']} "
        f"({o['sent_per_s']:.0f}/s; {o['no_idle_stream']} found no idle stream, {o['client_behind']} not sent: "
        f"the client over {BEHIND_S:g} s behind), accepted {o['accepted']} "
        f"({o['accepted_per_s']:.0f}/s), refused 503: {o['refused_wait']} past --max-wait, {o['refused_queue']} "
        f"past --max-queued, {o['refused_other']} other"
    )
    for what in ("server_waited_s", "server_ran_s", "client_latency_s", "client_wait_s", "client_late_s"):
        q = o[what]
        print(f"  {what}: p50 {q['p50'] * 1e3:.1f} ms, p99 {q['p99'] * 1e3:.1f} ms, max {q['max'] * 1e3:.1f} ms")
    print(f"every accepted output equal to a local Stream's, bit for bit: {r['checked_bit_for_bit']} frames")


if __name__ == "__main__":
    main()
