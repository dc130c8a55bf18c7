"""Ray Serve: many live streams of a ``step`` export, served by replicas that each hold one onnxruntime session.

``stream_deployment(path, replicas=N)`` builds a Ray Serve application of two deployments::

    HTTP (JSON) or a DeploymentHandle  ->  StreamIngress (1 replica, no CPU)  ->  StreamReplica x N

* A request is one frame (or chunk) of one stream: ``{"stream": ID, "frame": [...], "reset": bool, "close": bool}``
  (``reset``: start the stream again from the initial state before this frame; ``close``: forget the stream after
  it). The response is ``{"stream": ID, "output": ..., "steps": n, "replica": ...}``: the model's primary output for
  this stream, the number of steps its state has taken (this one included) and the replica that ran it. A client
  that counts its own frames sees from ``steps`` whether its state was lost (evicted, or moved by a rescale): the
  count starts again at 1.
* Each replica (``StreamReplica``) owns one ``StreamingModel``; ``@serve.batch`` gathers the requests that arrive
  together, from different streams, into one ``StreamingModel.step_many`` call (one onnxruntime run) and splits the
  outputs back. A stream with several requests in one batch has them run in order, one per round.
* Stateful mode (the default): the replica keeps each stream's state; a stream idle for ``ttl_s`` seconds is
  forgotten (checked whenever a batch runs). Every request of a stream must reach the same replica, so the ingress
  sends it with ``session_id=str(stream)`` to the replicas, whose request router is Ray's consistent-hash router
  (``ray.serve.experimental.consistent_hash_router.ConsistentHashRouter``, experimental in Ray 2.60) with
  ``num_fallback_replicas=0``: a busy replica makes the request wait, it never sends it to another replica. A
  replica refuses a request whose routing key is not its stream id (a caller that bypasses the ingress without
  ``session_id`` would scatter a stream's state over replicas). Rescaling changes the hash ring: the streams whose
  arc moves start again from the initial state on their new replica (``steps`` says so).
* Stateless mode (``stateless=True``): the request carries the state (``"state": {name: array}``, left out or
  ``reset`` for the initial state) and the response returns the next one; a replica keeps nothing between requests,
  requests go to any replica (Serve's default router), and rescaling loses nothing. An LSTM's state is
  layers x hidden x 2 floats: 2 x 16 x 2 x 4 bytes = 256 bytes per request for the test model.

* Bounds (docs/scale-out.md): a stateful replica keeps at most ``max_streams`` streams (a new one beyond: HTTP 429,
  ``TooManyStreamsError``; no live stream is evicted for it), a stream id has at most ``max_id_chars`` characters
  (an integer id: 64 bits), an HTTP body at most ``max_body_bytes`` (HTTP 413; JSON nested too deep: 400). A
  refused request's response is ``{"stream", "error", "code", "status"}`` (exit code, HTTP status).
* Faults (docs/scale-out.md, "Faults"): each stateful response carries ``"token"``, the stream's state
  (``StateCodec``: versioned, tied to the model's sha256, sized by the model); a request that sends it back
  resumes the stream from it on any replica, so a replica's death loses nothing for a client that keeps it
  (``edgernn.serve.StreamClient`` does). Beyond ``max_queued`` waiting requests Serve refuses and the ingress
  answers HTTP 503 with ``Retry-After`` (``OverloadedError``); so is a request that waited longer than
  ``max_wait_s`` (from the ingress's receipt) when its batch is taken: it never runs. Each response says how long
  its request waited (``waited_s``) and its batch ran (``ran_s``). A replica that dies or fails while it holds a
  request is answered HTTP 503 with ``"state_lost": true`` (``ReplicaLostError``), never a bare 500. Each replica
  runs the model on a zero frame at start and in Serve's periodic ``check_health``, and forgets idle streams on a
  timer. ``init_ray`` starts a local cluster on 127.0.0.1 only (``local_ray_options``).
* Drain (docs/scale-out.md, "Drain"): a replica that Serve stops (scale-down, update, delete) finishes the frames
  it holds (up to ``drain_timeout_s``); a stateful one answers a new frame with HTTP 421 ``"moved": true`` and the
  stream's token (``StreamMovedError``), which ``StreamClient`` resends to the replica that owns the stream now.
* Metrics (``ReplicaMetrics``, through ``ray.serve.metrics``): streams held, requests queued, batch sizes, and
  counters of evicted streams, resets and moved frames, per replica.

Python callers use the handle ``serve.run`` returns: ``handle.remote({"stream": "a", "frame": [0.1]}).result()``
(numpy arrays in, numpy arrays out, exact), or ``StreamClient(app_name)``, which routes each request to its replica
itself and saves the hop through the ingress (about twice the frames per second on 2 cores); HTTP clients POST the
same JSON (arrays as nested lists; float32 values survive the round trip through JSON exactly).

Nothing here imports ray until a deployment is built (``StreamTable``, the per-replica logic, is plain numpy and
onnxruntime); without ray installed, ``stream_deployment`` raises ``MissingPackageError`` (exit code 10 on the CLI).
"""

from __future__ import annotations

import collections
import functools
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, EdgeRNNError, InputError, MissingPackageError, ModelFormatError

# Ray's consistent-hash request router (ray 2.60: experimental), by import path as RequestRouterConfig takes it
CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
RAY_EXTRA = "pip install 'edgernn[ray]'"

# bounds of what a client controls (documented in docs/scale-out.md and docs/security.md)
DEFAULT_MAX_STREAMS = 10_000  # live streams one replica keeps (stateful mode); --max-streams
MAX_STREAMS_LIMIT = 10_000_000  # the most --max-streams may be
DEFAULT_MAX_ID_CHARS = 256  # characters of a stream id (an integer id: within 64 bits); --max-id-chars
MAX_ID_CHARS_LIMIT = 65_536
DEFAULT_MAX_BODY_BYTES = 1 << 20  # bytes of one HTTP request body; --max-body-bytes
MAX_BODY_BYTES_LIMIT = 64 << 20
DEFAULT_RAY_TIMEOUT_S = 120.0  # how long `ray.init` may take (start a local cluster, or connect to one)
MAX_RAY_TIMEOUT_S = 3600.0
MAX_BATCH_LIMIT = 4096  # requests one replica runs in one onnxruntime call; --max-batch-size
DEFAULT_MAX_QUEUED = 64  # requests an ingress replica queues for busy replicas before it answers 503; --max-queued
MAX_QUEUED_LIMIT = 65_536
RETRY_AFTER_S = 1  # what a 503 tells the client to wait (the Retry-After header and "retry_after")
DEFAULT_HEALTH_PERIOD_S = 10.0  # how often Serve runs a replica's check_health (the model on a zero frame)
DEFAULT_HEALTH_TIMEOUT_S = 30.0  # how long one check may take before the replica is replaced
MAX_HEALTH_S = 3600.0
DEFAULT_DRAIN_TIMEOUT_S = 20.0  # how long a stopping replica may finish the frames it holds; --drain-timeout
MAX_DRAIN_S = 3600.0
DEFAULT_MAX_WAIT_S = 5.0  # how long a request may wait for its batch before it is refused (HTTP 503); --max-wait
MIN_MAX_WAIT_S, MAX_MAX_WAIT_S = 0.01, 600.0
DRAIN_POLL_S = 0.1  # how often Serve looks whether a draining replica still holds requests
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]  # the batch-size histogram's bounds
TOKEN_VERSION = 1  # of the state token's layout (a token of another version is refused, never misread)
TOKEN_MAGIC = b"ERS"
TOKEN_HEADER = struct.Struct("<3sB8sQ")  # magic, version, the model's sha256 prefix, steps; then the states


class TooManyStreamsError(InputError):
    """A stateful replica holds its most streams: a new one is refused (HTTP 429), none is evicted for it."""

    http_status = 429


class BodyTooLargeError(InputError):
    """An HTTP request body beyond the deployment's byte bound (HTTP 413)."""

    http_status = 413


class OverloadedError(EdgeRNNError):
    """Every replica is busy and the ingress's queue is full (Serve's ``max_queued_requests``): HTTP 503 with
    ``Retry-After``; nothing ran, the stream's state is as it was."""

    exit_code = 1
    http_status = 503


def waited_too_long(stream_id: Any, waited_s: float, max_wait_s: float) -> dict[str, Any]:
    """The answer of a request that waited ``waited_s`` seconds, more than ``max_wait_s``, for its batch: HTTP 503,
    ``Retry-After``, edgernn's body (``OverloadedError``); it did not run and the stream's state is as it was."""
    busy = OverloadedError(
        f"this request waited {waited_s:.3f} s for a busy replica, more than --max-wait {max_wait_s:g} s; nothing "
        f"ran and the stream's state is kept: retry after {RETRY_AFTER_S} s"
    )
    return {
        **error_response(stream_id, busy),
        "retry_after": RETRY_AFTER_S,
        "state_lost": False,
        "waited_s": round(waited_s, 6),
    }


def overdue(request: Any, arrived: float, max_wait_s: float, now: float | None = None) -> dict[str, Any] | None:
    """``waited_too_long``'s answer if ``request``, received at ``arrived`` (``time.time()``), has waited longer
    than ``max_wait_s`` by ``now`` (default: now); else None."""
    waited = (time.time() if now is None else now) - arrived
    if waited <= max_wait_s:
        return None
    return waited_too_long(request.get("stream") if isinstance(request, Mapping) else None, waited, max_wait_s)


async def run_batch(
    table: StreamTable, items: Sequence[tuple[Any, float]], max_wait_s: float
) -> tuple[list[dict[str, Any]], int]:
    """One batch of (request, arrival time) as a replica takes it: a request that has waited longer than
    ``max_wait_s`` by now is answered 503 (``waited_too_long``) and never runs; the others run together in
    ``table.step_batch`` (in a worker thread: the event loop keeps queueing the next batch meanwhile), and each of
    their responses says how long it waited (``waited_s``) and the batch ran (``ran_s``). Returns the responses,
    in order, and how many ran."""
    import asyncio

    taken = time.time()
    results: list[dict[str, Any] | None] = [overdue(raw, arrived, max_wait_s, taken) for raw, arrived in items]
    run = [k for k, r in enumerate(results) if r is None]
    if run:
        t0 = time.perf_counter()
        ran = await asyncio.to_thread(table.step_batch, [items[k][0] for k in run])
        ran_s = round(time.perf_counter() - t0, 6)
        for k, r in zip(run, ran, strict=True):
            results[k] = {**r, "waited_s": round(max(taken - items[k][1], 0.0), 6), "ran_s": ran_s}
    return [r if r is not None else {"error": "not run", "code": 70} for r in results], len(run)


class ReplicaLostError(EdgeRNNError):
    """The replica serving a stream stopped (killed, crashed) or failed while running its request: HTTP 503, the
    response says ``state_lost: true``; resend the frame with the last response's ``token`` to resume."""

    exit_code = 1
    http_status = 503


class StreamMovedError(EdgeRNNError):
    """A stateful replica that is shutting down (rescale, update, delete) refuses a new frame: HTTP 421 (Misdirected
    Request), ``"moved": true``, and the stream's state ``token``; nothing ran. Resend the frame with the token: it
    runs on the replica that owns the stream next (``edgernn.serve.StreamClient`` does this by itself)."""

    exit_code = 1
    http_status = 421


class RayStartError(EdgeRNNError):
    """Ray did not start (or could not be reached) within the time given to it."""

    exit_code = 1


def http_status(e: EdgeRNNError) -> int:
    """The HTTP status a refused request gets: 429 for a full replica, 413 for a body too large, 503 for a busy or
    lost replica, else 400."""
    return int(getattr(e, "http_status", 400))


def require_ray(part: str = "") -> Any:
    """``import ray`` (and ``ray.serve`` / ``ray.data`` for ``part``), or ``MissingPackageError`` naming the extra."""
    import importlib

    try:
        ray = importlib.import_module("ray")
        if part:
            importlib.import_module(f"ray.{part}")
    except ImportError as e:
        what = f"ray[{part}]" if part else "ray"
        raise MissingPackageError(f"this needs {what}, which is not installed here ({e}): {RAY_EXTRA}") from None
    return ray


def init_ray(ray: Any, *, address: str | None = None, timeout_s: float = DEFAULT_RAY_TIMEOUT_S, **kwargs: Any) -> None:
    """``ray.init(address=address, **kwargs)`` that gives up after ``timeout_s`` seconds with ``RayStartError``
    (exit code 1) saying what failed and how long it waited, instead of waiting forever on a cluster that does not
    answer (Ray retries its connection without end) or failing with Ray's own exception. A ``HOST:PORT`` address
    (given, or in ``RAY_ADDRESS``) that refuses connections is refused at once. ``ray.init`` runs in a helper
    thread, which then stays parked for the life of the process (the local cluster's processes end with the thread
    that started them); after a time-out it is left behind (a command exits; a library caller should too)."""
    import logging
    import socket

    check_ray_timeout(timeout_s)
    target = address or os.environ.get("RAY_ADDRESS") or None
    what = f"connect to the Ray cluster at {target}" if target else "start a local Ray cluster"
    if target is None:  # a local cluster: loopback only
        kwargs = {**local_ray_options(), **kwargs}
    host_port = _host_port(target)
    if host_port is not None:
        try:
            socket.create_connection(host_port, timeout=min(timeout_s, 10.0)).close()
        except OSError as e:
            raise RayStartError(
                f"could not {what}: nothing answers there ({e.strerror or e}); start it (`ray start --head`) or "
                "give the address `ray status` prints"
            ) from None
    box: dict[str, BaseException] = {}
    done = threading.Event()

    def start() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e
        finally:
            done.set()
        # Ray starts a local cluster's processes with PR_SET_PDEATHSIG, which fires when the *thread* that started
        # them ends: this thread stays (parked, a daemon) for as long as the process lives
        _PARKED.wait()

    class _Quiet(logging.Filter):  # ray.init off the main thread warns that it sets no SIGTERM handler
        def filter(self, record: logging.LogRecord) -> bool:
            return "SIGTERM handler is not set" not in record.getMessage()

    worker_log = logging.getLogger("ray._private.worker")
    quiet = _Quiet()
    worker_log.addFilter(quiet)
    t0 = time.monotonic()
    thread = threading.Thread(target=start, name="edgernn-ray-init", daemon=True)
    try:
        thread.start()
        finished = done.wait(timeout_s)
    finally:
        worker_log.removeFilter(quiet)
    if not finished:
        raise RayStartError(
            f"could not {what}: Ray did not finish starting within {timeout_s:g} s; check that the cluster is up "
            "(`ray status`), or give it longer (--ray-timeout)"
        )
    if "error" in box:
        failure = box["error"]
        if isinstance(failure, EdgeRNNError):
            raise failure
        first = (str(failure).strip().splitlines() or [""])[0][:200]
        raise RayStartError(
            f"could not {what}: {type(failure).__name__}: {first} (after {time.monotonic() - t0:.1f} s of "
            f"--ray-timeout {timeout_s:g} s)"
        ) from None


def local_ray_options() -> dict[str, Any]:
    """The ``ray.init`` options of a local cluster that listens on 127.0.0.1 only (node, GCS, dashboard), which
    ``init_ray`` uses whenever it starts one: ``ray.init(num_cpus=2, **local_ray_options())``.

    Ray (2.60) replaces a node address of 127.0.0.1 by the host's interface address unless it is told that this is
    a one-machine cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by Ray's own processes at start-up and,
    here, by this process's already imported Ray): this says so, for this process and the ones Ray starts."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants  # read at import: this process may have imported it already

        ray_constants.ENABLE_RAY_CLUSTER = False
    except ImportError:
        pass
    return {"_node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1"}


_PARKED = threading.Event()  # never set: where init_ray's thread waits once Ray has started


def check_ray_timeout(timeout_s: Any) -> float:
    """``timeout_s`` if it is a number of seconds in (0, MAX_RAY_TIMEOUT_S], else ConfigError."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= MAX_RAY_TIMEOUT_S:
        raise ConfigError(
            f"the Ray start-up time-out (--ray-timeout) is more than 0 and at most {MAX_RAY_TIMEOUT_S:g} seconds; "
            f"got {timeout_s!r}"
        )
    return float(timeout_s)


def _host_port(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a plain ``HOST:PORT`` cluster address; None for none, ``auto``, ``local`` or ``ray://``."""
    if not address or "://" in address or address in ("auto", "local"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------------------------------- one replica's streams


@dataclass
class _Request:
    index: int  # position in the batch
    key: str  # the stream id as a string (the routing key)
    stream_id: Any  # as the client gave it, echoed back
    frame: np.ndarray
    reset: bool
    close: bool
    state: dict[str, Any] | None
    token: tuple[dict[str, np.ndarray], int] | None = None  # a decoded state token: the state and its steps


class StateCodec:
    """The state token of a stateful stream: its state itself, so that any replica can resume it.

    ``base64url(header + states)``: the header is ``TOKEN_HEADER`` (b"ERS", the layout version, the first 8 bytes
    of the model file's sha256, the stream's steps, little-endian); then each state input's values in the model's
    order, as its dtype (float32 for edgernn's exports), little-endian, C order. The size is fixed by the model:
    ``chars`` characters (an LSTM of 2 layers x 16 hidden: 256 bytes of state, 368 characters). ``decode`` checks
    the version, the model and the length (the shapes); ``Stream.set_state`` then checks the values are finite.
    Opaque to clients: they send back what they got."""

    def __init__(self, model: Any, data: bytes) -> None:
        import hashlib

        self.model_id = hashlib.sha256(data).digest()[:8]
        self.specs = [
            (st.input, tuple(int(d) for d in st.shape), np.dtype(st.dtype).newbyteorder("<")) for st in model.states
        ]
        self.state_bytes = sum(int(np.prod(shape)) * dt.itemsize for _, shape, dt in self.specs)
        self.raw_bytes = TOKEN_HEADER.size + self.state_bytes
        self.chars = 4 * -(-self.raw_bytes // 3)

    def encode(self, state: Mapping[str, np.ndarray], steps: int) -> str:
        import base64

        parts = [TOKEN_HEADER.pack(TOKEN_MAGIC, TOKEN_VERSION, self.model_id, steps)]
        parts += [np.ascontiguousarray(state[name], dt).tobytes() for name, _, dt in self.specs]
        return base64.urlsafe_b64encode(b"".join(parts)).decode("ascii")

    def decode(self, token: Any, key: str) -> tuple[dict[str, np.ndarray], int]:
        import base64
        import binascii

        what = f"stream {key!r}: 'token'"
        if not isinstance(token, str) or len(token) != self.chars:
            got = f"{len(token):,} characters" if isinstance(token, str) else type(token).__name__
            raise InputError(
                f"{what} must be the {self.chars:,}-character string a response of this model returned; got {got}"
            )
        try:
            raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise InputError(
                f"{what} is not a state token (not base64url); send back the one a response returned"
            ) from None
        if len(raw) != self.raw_bytes:
            raise InputError(f"{what} holds {len(raw):,} bytes; this model's state takes {self.raw_bytes:,}")
        magic, version, model_id, steps = TOKEN_HEADER.unpack_from(raw)
        if magic != TOKEN_MAGIC:
            raise InputError(f"{what} is not a state token of edgernn; send back the one a response returned")
        if version != TOKEN_VERSION:
            raise InputError(f"{what} has layout version {version}; this server reads version {TOKEN_VERSION}")
        if model_id != self.model_id:
            raise InputError(
                f"{what} was made by another model (sha256 {model_id.hex()}..., this one is {self.model_id.hex()}...); "
                'a stream cannot resume on a different model: start it again ("reset": true, no token)'
            )
        state, at = {}, TOKEN_HEADER.size
        for name, shape, dt in self.specs:
            n = int(np.prod(shape)) * dt.itemsize
            state[name] = np.frombuffer(raw, dt, count=n // dt.itemsize, offset=at).reshape(shape)
            at += n
        return state, int(steps)


class StreamTable:
    """What one replica holds: one ``StreamingModel`` and its live streams by id; no Ray in here.

    ``step_batch(requests)`` runs one batch of requests (dicts as the module docstring describes) and returns one
    response per request, in order: requests from different streams go into one ``step_many`` call per frame shape;
    a request the model refuses gets ``{"stream": ID, "error": message, "code": exit code}`` and does not fail the
    others. Thread-safe (one lock around each batch).
    """

    COUNTERS = (
        "requests",
        "batches",
        "calls",
        "errors",
        "evicted",
        "closed",
        "refused_full",
        "resumed",
        "resets",
        "moved",
    )

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        ttl_s: float | None = 600.0,
        stateless: bool = False,
        threads: int | None = 1,
        provider: str = "cpu",
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_id_chars: int = DEFAULT_MAX_ID_CHARS,
        state_tokens: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ..runtime.stream import StreamingModel

        check_bounds(ttl_s=ttl_s, max_streams=max_streams, max_id_chars=max_id_chars)
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.model = StreamingModel(data, threads=threads, provider=provider)
        # stateful mode: each response carries the stream's state as a token a request may send back to resume it
        self.codec = StateCodec(self.model, data) if state_tokens and not stateless else None
        self._probe: Any = None  # check_health's own stream
        self._evictor: threading.Thread | None = None
        self._stop = threading.Event()
        self.stateless = stateless
        self.ttl_s = ttl_s
        self.max_streams = max_streams
        self.max_id_chars = max_id_chars
        # bytes of state one stream holds (dynamic axes counted as 1): for the message of a full replica
        self.state_bytes = sum(int(np.prod(st.shape)) * np.dtype(st.dtype).itemsize for st in self.model.states)
        self._clock = clock
        self._lock = threading.Lock()
        # stream key -> (Stream, last use); oldest use first, so eviction stops at the first stream still live
        self._streams: collections.OrderedDict[str, tuple[Any, float]] = collections.OrderedDict()
        self._scratch: list[Any] = []  # stateless mode: streams lent to one batch, their state set from the request
        self.counts = dict.fromkeys(self.COUNTERS, 0)

    # -- public ------------------------------------------------------------------------------------------------

    def step_batch(self, requests: Sequence[Any]) -> list[dict[str, Any]]:
        """One response per request, in order (see the class docstring)."""
        with self._lock:
            now = self._clock()
            self._evict(now)
            results: list[dict[str, Any] | None] = [None] * len(requests)
            rounds: dict[int, list[_Request]] = collections.defaultdict(list)
            seen: collections.Counter[str] = collections.Counter()
            for i, raw in enumerate(requests):
                try:
                    req = self._parse(i, raw)
                except EdgeRNNError as e:
                    results[i] = self._error(raw, e)
                    continue
                rounds[seen[req.key]].append(req)  # the k-th request of a stream in this batch runs in round k
                seen[req.key] += 1
            for k in sorted(rounds):
                self._run_round(rounds[k], results, now)
            self.counts["requests"] += len(requests)
            self.counts["batches"] += 1
            return [r if r is not None else {"error": "not run", "code": 70} for r in results]

    def evict_idle(self) -> int:
        """Forget the streams idle for longer than ``ttl_s``; returns how many were forgotten."""
        with self._lock:
            return self._evict(self._clock())

    def check_health(self) -> None:
        """Run the model on a zero frame in a stream of its own (not the table's: no lock, no live stream touched);
        raises ``ModelFormatError`` if the run fails or its output is not finite. Serve's health check."""
        frame = np.zeros_like(np.asarray(example_frame(self.model, 0)), dtype=self.model.dtype)
        try:
            if self._probe is None:
                self._probe = self.model.stream()
            self._probe.reset()
            y = np.asarray(self._probe.step(frame))
        except Exception as e:  # any failure of the model is an unhealthy replica
            raise ModelFormatError(f"the model failed its health check: {type(e).__name__}: {str(e)[:200]}") from None
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ModelFormatError("the model failed its health check: its output for a zero frame is not finite")

    def start_evictor(self, period_s: float | None = None) -> None:
        """Forget idle streams every ``period_s`` seconds (default: a quarter of ``ttl_s``, 0.05 to 30 s) in a
        daemon thread, so that a replica that gets no requests still lets its idle streams go. Idempotent."""
        if self.ttl_s is None or self._evictor is not None:
            return
        period = period_s if period_s is not None else min(max(self.ttl_s / 4, 0.05), 30.0)

        def run() -> None:
            while not self._stop.wait(period):
                self.evict_idle()

        self._evictor = threading.Thread(target=run, name="edgernn-evictor", daemon=True)
        self._evictor.start()

    def stop_evictor(self) -> None:
        self._stop.set()

    def moved(self, raw: Any) -> dict[str, Any]:
        """The answer of a draining replica to a new frame (``StreamMovedError``, HTTP 421): the frame does not
        run; ``"token"`` is the state this replica holds for the stream (when tokens are on and it holds one), so
        that a client resumes it on the replica that owns it next. The stream stays here until the replica stops
        (a late frame gets the same token). Counted in ``moved``."""
        with self._lock:
            try:
                key = stream_key(raw if isinstance(raw, Mapping) else {}, self.max_id_chars)
            except InputError as e:
                return self._error(raw, e)
            self.counts["moved"] += 1
            entry = self._streams.get(key)
            err = StreamMovedError(
                "this replica is shutting down (a rescale, an update or a delete) and takes no new frames; the frame "
                "did not run: resend it with the stream's 'token' and it runs on the replica that owns the stream "
                "now (edgernn.serve.StreamClient does), or without one to start the stream again"
            )
            out = {**error_response(raw.get("stream"), err), "moved": True, "retry_after": 0, "state_lost": False}
            if self.codec is not None and entry is not None:
                out["token"] = self.codec.encode(entry[0].state, entry[0].steps)
                out["steps"] = entry[0].steps
            return out

    def stats(self) -> dict[str, Any]:
        """Live streams and counters: requests, batches, onnxruntime calls, errors, evicted, closed, resumed and
        reset streams, and new frames answered ``moved`` while draining. Reads only: evicts nothing."""
        with self._lock:
            return {
                "streams": len(self._streams),
                "stateless": self.stateless,
                "ttl_s": self.ttl_s,
                "max_streams": self.max_streams,
                "token_chars": self.codec.chars if self.codec else 0,
                **self.counts,
            }

    # -- internals ---------------------------------------------------------------------------------------------

    def _evict(self, now: float) -> int:
        if self.ttl_s is None:
            return 0
        gone = 0
        while self._streams:
            key, (_, last) = next(iter(self._streams.items()))
            if now - last <= self.ttl_s:
                break
            del self._streams[key]  # the Stream's slot goes back to the model's pool when it is collected
            gone += 1
        self.counts["evicted"] += gone
        return gone

    def _parse(self, index: int, raw: Any) -> _Request:
        if not isinstance(raw, Mapping):
            raise InputError(f"a request is a mapping with 'stream' and 'frame'; got {type(raw).__name__}")
        key = stream_key(raw, self.max_id_chars)
        if "frame" not in raw:
            raise InputError(f"request for stream {key!r} has no 'frame'")
        frame = _array(raw["frame"], f"stream {key!r}: 'frame'")
        if frame.dtype.kind not in "fiu":
            raise InputError(f"stream {key!r}: 'frame' must be numbers; got {frame.dtype}")
        if frame.dtype.kind == "f" and self.model.dtype.kind == "f":
            frame = frame.astype(self.model.dtype, copy=False)  # JSON's float64 and numpy's float32 batch together
        state = raw.get("state")
        if state is not None and not self.stateless:
            raise InputError("this deployment keeps each stream's state itself; 'state' is for a stateless deployment")
        if state is not None and not isinstance(state, Mapping):
            raise InputError(f"stream {key!r}: 'state' must map each state input to its array")
        for flag in ("reset", "close"):
            if not isinstance(raw.get(flag, False), bool):
                raise InputError(f"stream {key!r}: {flag!r} must be true or false")
        token = None
        if raw.get("token") is not None:
            if self.codec is None:
                raise InputError(
                    f"stream {key!r}: this deployment hands out no state tokens ("
                    + ("stateless: send 'state'" if self.stateless else "served without them")
                    + "); send the request without 'token'"
                )
            if raw.get("reset"):
                raise InputError(
                    f"stream {key!r}: 'reset' starts from the initial state, 'token' from a saved one; send one"
                )
            token = self.codec.decode(raw["token"], key)
        return _Request(
            index,
            key,
            raw["stream"],
            frame,
            bool(raw.get("reset")),
            bool(raw.get("close")),
            dict(state or {}) or None,
            token,
        )

    def _error(self, raw: Any, e: EdgeRNNError) -> dict[str, Any]:
        self.counts["errors"] += 1
        sid = raw.get("stream") if isinstance(raw, Mapping) else None
        if isinstance(sid, str) and len(sid) > self.max_id_chars:
            sid = None  # an oversized id is not echoed back
        return error_response(sid, e)

    def _run_round(self, reqs: list[_Request], results: list[dict[str, Any] | None], now: float) -> None:
        """Requests of distinct streams: one ``step_many`` call per frame shape."""
        ready: list[tuple[_Request, Any, bool]] = []  # request, its Stream, whether the stream was made for it
        lent = 0
        for req in reqs:
            try:
                if self.stateless:
                    if lent == len(self._scratch):
                        self._scratch.append(self.model.stream())
                    s = self._scratch[lent]
                    lent += 1
                    if req.reset or req.state is None:
                        s.reset()
                    else:
                        s.set_state(self._states(req.key, req.state))
                    ready.append((req, s, False))
                else:
                    entry = self._streams.get(req.key)
                    new = entry is None
                    if new and len(self._streams) >= self.max_streams:
                        self.counts["refused_full"] += 1
                        raise TooManyStreamsError(
                            f"this replica holds its most live streams ({self.max_streams:,}, "
                            f"{self.max_streams * self.state_bytes:,} bytes of state); a new stream is refused and no "
                            'live one is dropped for it: close finished streams ("close": true), let idle ones '
                            "expire (ttl), or serve with more replicas or a larger --max-streams"
                        )
                    s = self.model.stream() if entry is None else entry[0]
                    if req.token is not None:  # resume from the state the client sent (any replica, any time)
                        s.set_state(req.token[0])  # checks names, shapes, finite after the cast
                        s.steps = req.token[1]
                        self.counts["resumed"] += 1
                    elif req.reset and not new:
                        s.reset()
                    if req.reset:
                        self.counts["resets"] += 1
                    self._streams[req.key] = (s, now)
                    self._streams.move_to_end(req.key)
                    ready.append((req, s, new))
            except EdgeRNNError as e:
                results[req.index] = self._error({"stream": req.stream_id}, e)
        groups: dict[tuple[tuple[int, ...], str], list[tuple[_Request, Any, bool]]] = collections.defaultdict(list)
        for item in ready:
            groups[(item[0].frame.shape, item[0].frame.dtype.str)].append(item)
        for items in groups.values():
            streams = [s for _, s, _ in items]
            outs: list[np.ndarray | None]
            try:
                outs = list(self.model.step_many(streams, [r.frame for r, _, _ in items]))
                self.counts["calls"] += 1
            except EdgeRNNError:
                outs = []  # one refused frame refuses the call: run each alone so the others still get answers
                for req, s, new in items:
                    try:
                        outs.append(s.step(req.frame))
                        self.counts["calls"] += 1
                    except EdgeRNNError as e:
                        outs.append(None)
                        results[req.index] = self._error({"stream": req.stream_id}, e)
                        if new:  # a stream made for a refused frame holds nothing: do not keep it
                            self._streams.pop(req.key, None)
            for (req, s, _), y in zip(items, outs, strict=True):
                if y is None:
                    continue
                out: dict[str, Any] = {"stream": req.stream_id, "output": np.array(y)}
                if self.stateless:
                    out["state"] = s.state
                else:
                    out["steps"] = s.steps
                    if self.codec is not None and not req.close:
                        out["token"] = self.codec.encode(s.state, s.steps)
                    if req.close:
                        self._streams.pop(req.key, None)
                        self.counts["closed"] += 1
                results[req.index] = out

    def _states(self, key: str, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """A stateless request's state, each array in its state input's dtype and checked finite after that cast
        (1e39 is a finite float64 and an infinite float32); ``Stream.set_state`` checks names and shapes."""
        specs = {st.input: st for st in self.model.states}
        out = {}
        for name, value in state.items():
            spec = specs.get(name)
            if spec is None:
                raise InputError(f"stream {key!r}: a state needs exactly {', '.join(sorted(specs))}; got {name!r}")
            a = _array(value, f"stream {key!r}: state {name!r}")
            if a.dtype.kind not in "fiu":
                raise InputError(f"stream {key!r}: state {name!r} must be an array of numbers; got {a.dtype}")
            want = np.dtype(spec.dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                cast = a.astype(want)
            if want.kind == "f" and not np.isfinite(cast).all():
                raise InputError(
                    f"stream {key!r}: state {name!r} has values that are not finite as {want} (NaN, inf, or "
                    f"beyond +-{np.finfo(want).max:.4g}); send back the state a response returned"
                )
            out[name] = cast
        return out


def error_response(stream_id: Any, e: EdgeRNNError) -> dict[str, Any]:
    """What a refused request gets back: ``{"stream", "error", "code", "status"}`` (exit code, HTTP status)."""
    return {"stream": stream_id, "error": str(e), "code": e.exit_code, "status": http_status(e)}


def stream_key(request: Mapping[str, Any], max_chars: int = DEFAULT_MAX_ID_CHARS) -> str:
    """The routing key of a request: its ``stream`` id (a non-empty string of at most ``max_chars`` characters, or
    an integer within 64 bits) as a string."""
    sid = request.get("stream")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "":
        raise InputError(f"a request needs 'stream': a non-empty string or an integer id; got {sid!r:.80}")
    if isinstance(sid, int):
        if not -(1 << 63) <= sid < (1 << 64):
            raise InputError("an integer stream id must fit in 64 bits; use a string id")
        return str(sid)
    if len(sid) > max_chars:
        raise InputError(f"a stream id is at most {max_chars:,} characters; got one of {len(sid):,}")
    return sid


def parse_body(body: bytes, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Mapping[str, Any]:
    """One HTTP request body as the request it holds: at most ``max_bytes`` bytes (BodyTooLargeError, HTTP 413),
    one JSON object (InputError, HTTP 400, also for nesting too deep for the parser)."""
    import json

    if len(body) > max_bytes:
        raise BodyTooLargeError(f"the body is {len(body):,} bytes; this deployment takes at most {max_bytes:,}")
    try:
        value = json.loads(body)
    except RecursionError:
        raise InputError("the body is nested too deeply to be a request: send one flat JSON object") from None
    except ValueError as e:  # bad JSON, bad UTF-8, an integer of too many digits
        raise InputError(f"the body must be one JSON object: {str(e)[:200]}") from None
    if not isinstance(value, Mapping):
        raise InputError(f"the body must be one JSON object; got {type(value).__name__}")
    return value


def check_bounds(
    *,
    ttl_s: float | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    max_id_chars: int = DEFAULT_MAX_ID_CHARS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """ConfigError for a bound outside its documented range (docs/scale-out.md)."""
    if ttl_s is not None and not (isinstance(ttl_s, (int, float)) and 0 < ttl_s < float("inf")):
        raise ConfigError(f"ttl_s must be positive seconds (or None: never evict); got {ttl_s}")
    for what, value, lo, hi in (
        ("max_streams", max_streams, 1, MAX_STREAMS_LIMIT),
        ("max_id_chars", max_id_chars, 1, MAX_ID_CHARS_LIMIT),
        ("max_body_bytes", max_body_bytes, 1024, MAX_BODY_BYTES_LIMIT),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            flag = "--" + what.replace("_", "-")
            raise ConfigError(f"{what} ({flag}) must be an integer in {lo:,}..{hi:,}; got {value!r}")


def _array(value: Any, what: str) -> np.ndarray:
    """``np.asarray(value)``, a ragged or otherwise unusable value refused as InputError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise InputError(f"{what} must be an array of numbers of one shape ({str(e)[:120]})") from None


def to_json(response: Mapping[str, Any]) -> dict[str, Any]:
    """A response with its arrays as nested lists (float32 values print as the shortest float64 that reads back to
    the same float32, so a JSON round trip is exact)."""

    def conv(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in response.items()}


# ------------------------------------------------------------------------------------------------------ Ray Serve


@functools.cache
def _deployments() -> tuple[Any, Any]:
    """The two deployment classes, defined on first use (they need ray.serve at definition time)."""
    require_ray("serve")
    from ray import serve

    quiet = {"enable_access_log": False, "log_level": "WARNING"}  # a log line per frame costs more than the frame
    return _replica_deployment(serve, quiet), _ingress_deployment(serve, quiet)


def _replica_deployment(serve: Any, quiet: Mapping[str, Any]) -> Any:
    """The ``StreamReplica`` deployment: one ``StreamTable`` behind ``@serve.batch``, drained on shutdown."""

    @serve.deployment(name="StreamReplica", logging_config=quiet)
    class StreamReplica:
        """One onnxruntime session, the streams routed to it, and a batcher in front of ``StreamTable``."""

        def __init__(
            self,
            model: bytes,
            *,
            ttl_s: float | None,
            stateless: bool,
            threads: int | None,
            provider: str,
            max_batch_size: int,
            batch_wait_timeout_s: float,
            max_streams: int = DEFAULT_MAX_STREAMS,
            max_id_chars: int = DEFAULT_MAX_ID_CHARS,
            state_tokens: bool = True,
            max_wait_s: float = DEFAULT_MAX_WAIT_S,
        ) -> None:
            self.max_wait_s = max_wait_s
            self.table = StreamTable(
                model,
                ttl_s=ttl_s,
                stateless=stateless,
                threads=threads,
                provider=provider,
                max_streams=max_streams,
                max_id_chars=max_id_chars,
                state_tokens=state_tokens,
            )
            self.table.check_health()  # a replica whose model cannot run never takes a request
            self.table.start_evictor()  # idle streams go on a timer, requests or not
            self.stateless = stateless
            self.replica = serve.get_replica_context().replica_id.unique_id
            self._serve_replica = _serve_replica()  # Serve's own replica object: says when the drain begins
            self.metrics = ReplicaMetrics()
            self.waiting = 0  # requests in this replica: in its batch queue or running
            self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]  # serve.batch's setters
            self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

        def draining(self) -> bool:
            """Whether Serve is stopping this replica (scale-down, an update, ``serve.delete``): its graceful
            shutdown has begun. Read from Serve's replica object (ray 2.60, which edgernn pins; see
            ``_serve_replica``); False where that cannot be read, and the replica then serves until it stops."""
            return bool(getattr(self._serve_replica, "_shutting_down", False))

        async def step(self, request: Mapping[str, Any], arrived: float | None = None) -> dict[str, Any]:
            """One frame of one stream; refused unless it was routed by its stream id (stateful mode). A stateful
            replica that is draining answers a new frame with ``StreamMovedError`` (HTTP 421, the stream's token):
            the frames it already holds run to the end, a new one runs on the replica that owns the stream next.
            ``arrived``: the ingress's ``time.time()`` on receipt (default: now), whence ``max_wait_s`` counts."""
            arrived = time.time() if arrived is None else float(arrived)
            if not self.stateless and isinstance(request, Mapping):
                try:
                    key = stream_key(request, self.table.max_id_chars)
                except InputError as e:
                    return {**error_response(None, e), "replica": self.replica}
                # the routing key this request came with (a private accessor of ray 2.60, which edgernn pins)
                routed = serve.context._get_serve_request_context().session_id
                if routed != key:
                    return {
                        "stream": request.get("stream"),
                        "error": f"stream {key!r} reached this replica routed by session id {routed!r}: a stream's "
                        "requests must be routed by its id (send them through the app's ingress, or call this "
                        "deployment with handle.options(session_id=str(stream)))",
                        "code": 2,
                        "status": 400,
                        "replica": self.replica,
                    }
                if self.draining():
                    moved = self.table.moved(request)
                    self.metrics.sync(self.table.stats())
                    return {**moved, "replica": self.replica}
            late = overdue(request, arrived, self.max_wait_s)
            if late is not None:  # waited past the bound before it got here: refused now, not after a batch
                return {**late, "replica": self.replica}
            self.waiting += 1
            self.metrics.queued(self.waiting)
            try:
                return await self._batched((request, arrived))
            finally:
                self.waiting -= 1
                self.metrics.queued(self.waiting)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
        async def _batched(self, items: list[tuple[Any, float]]) -> list[dict[str, Any]]:
            results, ran = await run_batch(self.table, items, self.max_wait_s)
            for r in results:
                r["replica"] = self.replica
            if ran:
                self.metrics.batch(ran)
            self.metrics.sync(self.table.stats())
            return results

        def check_health(self) -> None:
            """Serve's periodic health check: the model runs a zero frame (``StreamTable.check_health``); a replica
            that fails it (or takes longer than the health-check time-out) is replaced. Also brings the metrics
            up to date (streams held, evictions on the timer) when no batch runs."""
            self.table.check_health()
            self.metrics.sync(self.table.stats())

        def stats(self) -> dict[str, Any]:
            """This replica's counters (``StreamTable.stats``), its id, whether it is draining and whether it can
            tell (``drain_aware``); evicts nothing. One replica's, the one Serve's router picks (docs/scale-out.md)."""
            watched = self._serve_replica is not None  # False: this Ray's replica object was not found
            return {**self.table.stats(), "replica": self.replica, "draining": self.draining(), "drain_aware": watched}

        def __del__(self) -> None:
            # Serve calls this after the drain (no request left in the replica), before it stops the actor
            self.table.stop_evictor()
            if hasattr(self, "metrics"):
                self.metrics.sync(self.table.stats())

    return StreamReplica


def _ingress_deployment(serve: Any, quiet: Mapping[str, Any]) -> Any:
    """The ``StreamIngress`` deployment: parses a request and routes it to the replicas by stream."""

    @serve.deployment(
        name="StreamIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096, logging_config=quiet
    )
    class StreamIngress:
        """Parses a request (a dict from a handle, JSON over HTTP) and sends it to the replicas, routed by stream."""

        def __init__(
            self,
            replicas: Any,
            *,
            stateless: bool,
            max_id_chars: int = DEFAULT_MAX_ID_CHARS,
            max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        ) -> None:
            self.replicas = replicas
            self.stateless = stateless
            self.max_id_chars = max_id_chars
            self.max_body_bytes = max_body_bytes

        async def __call__(self, request: Any) -> Any:
            from starlette.requests import Request
            from starlette.responses import JSONResponse

            arrived = time.time()  # a request's wait for its batch counts from here (max_wait_s)
            if not isinstance(request, Request):  # a handle's call (a starlette Request is a Mapping too)
                if not isinstance(request, Mapping):
                    raise InputError(f"a request is a dict with 'stream' and 'frame'; got {type(request).__name__}")
                result = await self._route(request, arrived)
                if "error" in result:
                    raise refusal(result)
                return result
            try:
                body = parse_body(await self._read(request), self.max_body_bytes)
            except InputError as e:
                return JSONResponse(error_response(None, e), status_code=http_status(e))
            result = await self._route(body, arrived)
            status = int(result.get("status", 400)) if "error" in result else 200
            headers = {"Retry-After": str(result["retry_after"])} if "retry_after" in result else None
            try:
                return JSONResponse(to_json(result), status_code=status, headers=headers)
            except ValueError:  # NaN or inf in an output: JSON has no such numbers
                nan = InputError(
                    f"stream {result.get('stream')!r}: the model computed values that are not finite for this "
                    "frame (NaN or inf), which JSON cannot carry; check the frame and the state sent"
                )
                return JSONResponse(error_response(None, nan), status_code=422)

        async def _read(self, request: Any) -> bytes:
            """The body, read no further than ``max_body_bytes`` (+1, so that a longer one is told apart)."""
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise BodyTooLargeError(
                    f"the body is {int(length):,} bytes; this deployment takes at most {self.max_body_bytes:,}"
                )
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyTooLargeError(
                        f"the body is over {self.max_body_bytes:,} bytes, the most this deployment takes"
                    )
                chunks.append(chunk)
            return b"".join(chunks)

        async def _route(self, body: Mapping[str, Any], arrived: float | None = None) -> dict[str, Any]:
            try:
                key = stream_key(body, self.max_id_chars)
            except InputError as e:
                return error_response(None, e)
            arrived = time.time() if arrived is None else arrived
            try:
                if self.stateless:
                    return await self.replicas.step.remote(body, arrived)
                return await self.replicas.options(session_id=key).step.remote(body, arrived)
            except Exception as e:  # every failure is answered in edgernn's error body
                return failure_response(body.get("stream"), e, stateless=self.stateless)

    return StreamIngress


class ReplicaMetrics:
    """A replica's metrics through Ray Serve's metrics API (``ray.serve.metrics``; Serve tags each with its
    deployment, replica and application, and Ray exports them where its metrics go, e.g. Prometheus):

    * ``edgernn_streams`` (gauge): live streams the replica holds;
    * ``edgernn_queued_requests`` (gauge): requests in the replica, waiting for a batch or running;
    * ``edgernn_batch_size`` (histogram, ``BATCH_SIZE_BUCKETS``): requests per batch;
    * ``edgernn_streams_evicted``, ``edgernn_stream_resets``, ``edgernn_streams_moved`` (counters): idle streams
      forgotten, requests with ``"reset": true``, new frames answered ``moved`` while draining.

    ``sync(stats)`` brings the gauge and the counters up to ``StreamTable.stats()`` (counters by what changed since
    the last sync); the replica calls it after each batch and in each health check (so evictions on the timer
    show within one health period). ``metrics``: the module to make them with (tests pass a fake)."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "evicted": "edgernn_streams_evicted",
        "resets": "edgernn_stream_resets",
        "moved": "edgernn_streams_moved",
    }

    def __init__(self, metrics: Any = None) -> None:
        if metrics is None:
            from ray.serve import metrics
        self.streams = metrics.Gauge("edgernn_streams", description="live streams this replica holds")
        self.waiting = metrics.Gauge(
            "edgernn_queued_requests", description="requests in this replica, waiting for a batch or running"
        )
        self.batch_size = metrics.Histogram(
            "edgernn_batch_size", description="requests per onnxruntime batch", boundaries=BATCH_SIZE_BUCKETS
        )
        self.counters = {
            what: metrics.Counter(name, description=f"{what} streams (see edgernn.serve.ray.ReplicaMetrics)")
            for what, name in self.COUNTERS.items()
        }
        self.seen = dict.fromkeys(self.COUNTERS, 0)

    def sync(self, stats: Mapping[str, Any]) -> None:
        self.streams.set(int(stats["streams"]))
        for what, counter in self.counters.items():
            delta = int(stats[what]) - self.seen[what]
            if delta > 0:
                counter.inc(delta)
                self.seen[what] = int(stats[what])

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def queued(self, n: int) -> None:
        self.waiting.set(n)


def _serve_replica() -> Any:
    """Serve's own object for the replica this runs in (ray 2.60, which edgernn pins), or None: Serve gives a
    deployment no call when its graceful shutdown begins (``__del__`` comes after the drain), but its replica object
    sets ``_shutting_down`` then. Reached through the handle-registration callback of the replica context, a
    closure over that object; anything else found there (another Ray) gives None, and the replica never drains."""
    from ray.serve import context

    try:
        callback = context._get_internal_replica_context()._handle_registration_callback
        names = callback.__code__.co_freevars
        found = callback.__closure__[names.index("self")].cell_contents
    except (AttributeError, ValueError, TypeError, IndexError):
        return None
    return found if isinstance(getattr(found, "_shutting_down", None), bool) else None


def failure_response(stream_id: Any, e: BaseException, *, stateless: bool = False) -> dict[str, Any]:
    """The response of a request that no replica answered: ``error_response`` plus ``retry_after`` (seconds) and
    ``state_lost``. Serve's back-pressure (``max_queued_requests``): OverloadedError, HTTP 503, nothing ran, the
    state is kept. A replica that died or failed while it held the request: ReplicaLostError, HTTP 503,
    ``state_lost: true`` in stateful mode (its streams' states went with it; resend the frame with the last token)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError

    if isinstance(e, BackPressureError):
        busy = OverloadedError(
            f"every replica is busy and {e.args[1]:,} requests already wait (--max-queued); nothing ran "
            f"and the stream's state is kept: retry after {RETRY_AFTER_S} s"
        )
        return {**error_response(stream_id, busy), "retry_after": RETRY_AFTER_S, "state_lost": False}
    why = "stopped (killed or crashed)" if isinstance(e, RayActorError) else f"failed ({type(e).__name__})"
    lost = ReplicaLostError(
        f"the replica serving this stream {why} while it held this request"
        + (
            "; the stream's state went with it: resend the frame with the last response's 'token' to resume it "
            "on another replica (edgernn.serve.StreamClient does), or without one to start again"
            if not stateless
            else "; nothing was kept: resend the frame with its state"
        )
    )
    return {**error_response(stream_id, lost), "retry_after": RETRY_AFTER_S, "state_lost": not stateless}


class StreamClient:
    """Frames straight to the replicas of a running stream application, from Python on the cluster: one Ray hop
    fewer than the application's handle (which goes through ``StreamIngress``). Each request is routed by its
    stream id here, as the ingress would route it; works for both modes.

    >>> client = StreamClient("edgernn")                       # the name given to serve.run / --name
    >>> client.step({"stream": "a", "frame": [0.1]})           # one frame: the response, or an InputError
    >>> pending = [client.submit(r) for r in requests]         # many in flight; then p.result() for each
    """

    def __init__(self, app_name: str = "edgernn") -> None:
        require_ray("serve")
        from ray import serve

        self._handle = serve.get_deployment_handle("StreamReplica", app_name)

    def submit(self, request: Mapping[str, Any]) -> _Pending:
        """Send one request; ``.result()`` on what this returns waits for its response."""
        key = stream_key(request)
        return _Pending(self._handle.options(session_id=key).step.remote(request))

    def step(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its response."""
        return self.submit(request).result()


def app_stats(app_name: str = "edgernn", *, tries_per_replica: int = 64) -> dict[str, Any]:
    """The ``stats()`` of every running replica of a stream application, and their sum: ``{"replicas": {id:
    stats}, "total": {counter: sum}}`` (``total["replicas"]``: how many answered). A call reaches one replica, the
    one Serve's router picks (by the routing key in stateful mode), so this calls with different keys until as many
    replicas answered as ``serve.status()`` counts running, at most ``tries_per_replica`` calls per replica; a
    replica that was never reached (one starting or stopping meanwhile) is missing from both. Reads only."""
    require_ray("serve")
    from ray import serve

    states = serve.status().applications[app_name].deployments["StreamReplica"].replica_states
    want = sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")
    handle = serve.get_deployment_handle("StreamReplica", app_name)
    seen: dict[str, dict[str, Any]] = {}
    for k in range(max(want, 1) * tries_per_replica):
        if len(seen) >= want:
            break
        s = handle.options(session_id=f"stats-{k}").stats.remote().result()
        seen[s["replica"]] = s
    total: dict[str, Any] = {"replicas": len(seen)}
    for s in seen.values():
        for key, value in s.items():
            if key in ("streams", *StreamTable.COUNTERS):
                total[key] = total.get(key, 0) + int(value)
    return {"replicas": seen, "total": total}


class _Pending:
    def __init__(self, response: Any) -> None:
        self._response = response

    def result(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The response; a request the replica refused raises ``InputError`` with its message."""
        out = self._response.result(timeout_s=timeout_s)
        if "error" in out:
            raise refusal(out)
        return out


def refusal(response: Mapping[str, Any]) -> EdgeRNNError:
    """The typed error of a refused request's response (TooManyStreamsError for a full replica)."""
    cls: type[EdgeRNNError] = {429: TooManyStreamsError, 413: BodyTooLargeError, 421: StreamMovedError}.get(
        int(response.get("status", 400)), InputError
    )
    if int(response.get("status", 400)) == 503:
        cls = ReplicaLostError if response.get("state_lost") else OverloadedError
    sid = response.get("stream")
    return cls(f"stream {sid!r:.80}: {response['error']}" if sid is not None else str(response["error"]))


def max_ongoing(max_batch_size: int) -> int:
    """The requests a replica takes in at once (Serve's ``max_ongoing_requests``): enough to fill a batch while the
    previous one runs; more wait at the caller, up to ``max_queued``."""
    return max(2 * max_batch_size, 8)


def stream_deployment(
    model_path: str | os.PathLike[str],
    *,
    replicas: int = 1,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.002,
    ttl_s: float | None = 600.0,
    stateless: bool = False,
    threads: int | None = 1,
    num_cpus: float | None = None,
    provider: str = "cpu",
    virtual_nodes: int = 100,
    ingress_replicas: int = 1,
    max_streams: int = DEFAULT_MAX_STREAMS,
    max_id_chars: int = DEFAULT_MAX_ID_CHARS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queued: int = DEFAULT_MAX_QUEUED,
    health_period_s: float = DEFAULT_HEALTH_PERIOD_S,
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    state_tokens: bool = True,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> Any:
    """A Ray Serve application serving the streams of the ``step`` export at ``model_path`` (see the module
    docstring); run it with ``serve.run(app, name=...)``, which returns the handle to send requests to.

    ``replicas`` replicas, each with one onnxruntime session of ``threads`` intra-op threads and ``num_cpus``
    reserved CPUs (default: ``threads``, or 1). ``max_batch_size`` and ``batch_wait_timeout_s`` are those of
    ``@serve.batch``. ``ttl_s``: forget a stream idle that long (None: never). ``stateless``: the state travels
    with each request. ``virtual_nodes``: points per replica on the consistent-hash ring (stateful mode).
    ``ingress_replicas``: replicas of the (stateless, CPU-free) ingress that parses and routes requests.
    Bounds of what clients send (docs/scale-out.md): ``max_streams`` live streams per replica (a new one beyond
    it: HTTP 429, ``TooManyStreamsError``; no live stream is evicted for it), ``max_id_chars`` characters of a
    stream id (HTTP 400), ``max_body_bytes`` bytes of an HTTP body (HTTP 413; JSON nested too deep: HTTP 400),
    ``max_queued`` requests waiting for a busy replica at each ingress replica (Serve's ``max_queued_requests``;
    one more: HTTP 503 with ``Retry-After``, ``OverloadedError``). ``health_period_s``/``health_timeout_s``: how
    often Serve runs each replica's ``check_health`` (the model on a zero frame) and how long one may take.
    ``state_tokens`` (stateful mode): each response carries the stream's state as a token a request may send back
    to resume it on any replica (``StateCodec``); False saves its bytes but a replica's death loses its streams.
    ``drain_timeout_s``: how long a replica that Serve stops (scale-down, update, delete) may take to finish the
    frames it holds (Serve's ``graceful_shutdown_timeout_s``); meanwhile a stateful one answers new frames with
    ``StreamMovedError`` and the stream's token (docs/scale-out.md, "Drain"). ``max_wait_s``: the longest a
    request may wait, from the ingress's receipt until its batch is taken; one that waited longer is answered
    HTTP 503 with ``Retry-After`` and never runs (docs/scale-out.md, "Overload"), so an accepted request's time in
    the application is at most ``max_wait_s`` plus the run of one batch.

    The model is read here and shipped to the replicas as bytes (no shared file system needed), after a check that
    it is a stateful model that can stream.
    """
    if replicas < 1 or ingress_replicas < 1:
        raise ConfigError(f"replicas and ingress_replicas must be at least 1; got {replicas}, {ingress_replicas}")
    if not 1 <= max_batch_size <= MAX_BATCH_LIMIT:
        raise ConfigError(f"max_batch_size must be in 1..{MAX_BATCH_LIMIT:,}; got {max_batch_size:,}")
    if batch_wait_timeout_s < 0:
        raise ConfigError(f"batch_wait_timeout_s must be >= 0; got {batch_wait_timeout_s}")
    check_bounds(ttl_s=ttl_s, max_streams=max_streams, max_id_chars=max_id_chars, max_body_bytes=max_body_bytes)
    check_serving(
        max_queued=max_queued,
        health_period_s=health_period_s,
        health_timeout_s=health_timeout_s,
        drain_timeout_s=drain_timeout_s,
        max_wait_s=max_wait_s,
    )
    path = Path(model_path)
    if not path.is_file():
        raise ModelFormatError(f"no model file at {os.fspath(model_path)!r}")
    data = path.read_bytes()
    check_stream_model(data)
    if state_tokens and not stateless:
        check_token_fits(data, max_body_bytes)
    require_ray("serve")
    from ray.serve.config import RequestRouterConfig

    replica_cls, ingress_cls = _deployments()
    options: dict[str, Any] = {
        "num_replicas": replicas,
        "max_ongoing_requests": max_ongoing(max_batch_size),
        "max_queued_requests": max_queued,  # beyond it, at each caller (the ingress): BackPressureError -> HTTP 503
        "health_check_period_s": health_period_s,
        "health_check_timeout_s": health_timeout_s,
        "graceful_shutdown_timeout_s": drain_timeout_s,  # then Serve kills the replica, frames held or not
        "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,  # Serve's default, 2 s, would add up to 2 s to every drain
        "ray_actor_options": {"num_cpus": num_cpus if num_cpus is not None else float(threads or 1)},
    }
    if not stateless:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=CONSISTENT_HASH_ROUTER,  # type: ignore[arg-type]  # a str is documented
            request_router_kwargs={"num_virtual_nodes": virtual_nodes, "num_fallback_replicas": 0},
        )
    replica = replica_cls.options(**options).bind(
        data,
        ttl_s=ttl_s,
        stateless=stateless,
        threads=threads,
        provider=provider,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_streams=max_streams,
        max_id_chars=max_id_chars,
        state_tokens=state_tokens,
        max_wait_s=float(max_wait_s),
    )
    return ingress_cls.options(num_replicas=ingress_replicas, graceful_shutdown_wait_loop_s=DRAIN_POLL_S).bind(
        replica, stateless=stateless, max_id_chars=max_id_chars, max_body_bytes=max_body_bytes
    )


def check_serving(
    *,
    max_queued: int = DEFAULT_MAX_QUEUED,
    health_period_s: float = DEFAULT_HEALTH_PERIOD_S,
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> None:
    """ConfigError for a queue bound, health-check, drain or wait time outside its documented range
    (docs/scale-out.md)."""
    if isinstance(max_queued, bool) or not isinstance(max_queued, int) or not 1 <= max_queued <= MAX_QUEUED_LIMIT:
        raise ConfigError(
            f"max_queued (--max-queued) must be an integer in 1..{MAX_QUEUED_LIMIT:,}; got {max_queued!r}"
        )
    for what, value in (
        ("health_period_s (--health-period)", health_period_s),
        ("health_timeout_s (--health-timeout)", health_timeout_s),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= MAX_HEALTH_S:
            raise ConfigError(f"{what} must be seconds in 0.1..{MAX_HEALTH_S:g}; got {value!r}")
    bad = isinstance(drain_timeout_s, bool) or not isinstance(drain_timeout_s, (int, float))
    if bad or not 0.1 <= drain_timeout_s <= MAX_DRAIN_S:
        raise ConfigError(
            f"drain_timeout_s (--drain-timeout) must be seconds in 0.1..{MAX_DRAIN_S:g}; got {drain_timeout_s!r}"
        )
    bad = isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float))
    if bad or not MIN_MAX_WAIT_S <= max_wait_s <= MAX_MAX_WAIT_S:
        raise ConfigError(
            f"max_wait_s (--max-wait) must be seconds in {MIN_MAX_WAIT_S:g}..{MAX_MAX_WAIT_S:g}; got {max_wait_s!r}"
        )


def check_token_fits(model: bytes, max_body_bytes: int) -> int:
    """The characters of the model's state token; ConfigError if a request that sends it back (with a frame, 1 KiB
    allowed for it) would not fit in ``max_body_bytes``: the message gives the token's size."""
    from ..runtime.stream import StreamingModel

    codec = StateCodec(StreamingModel(model, threads=1), model)
    if codec.chars + 1024 > max_body_bytes:
        raise ConfigError(
            f"this model's state token is {codec.chars:,} characters ({codec.state_bytes:,} bytes of state), and a "
            f"request that sends it back would not fit in --max-body-bytes {max_body_bytes:,}: give at least "
            f"{codec.chars + 1024:,}"
        )
    return codec.chars


def check_stream_model(model: str | os.PathLike[str] | bytes) -> Any:
    """Refuse a model that cannot stream (no state: a whole-sequence export) before any replica starts; returns an
    example frame for it (nested lists: one frame, or one chunk for a model that runs fixed chunks)."""
    from ..runtime.io import streaming_model
    from ..runtime.model import Model

    if not isinstance(model, bytes) and not os.path.isfile(model):
        raise ModelFormatError(f"no model file at {os.fspath(model)!r}")
    sm = streaming_model(Model(model, threads=1), None, None)
    if sm is None:
        raise ConfigError(
            "serving streams needs a stateful model: export it with --strategy step (a whole-sequence export takes "
            "whole sequences; run those with Ray Data: edgernn.batch.ray.map_model)"
        )
    return example_frame(sm)


def example_frame(sm: Any, value: float | None = None) -> Any:
    """A frame the streaming model ``sm`` takes (nested lists: one frame, or one chunk for a model that runs fixed
    chunks), every value ``value`` (default 0.1, or 1 for a model of token ids)."""
    if value is None:
        value = 0.1 if sm.dtype.kind == "f" else 1
    frame = [value] * (sm.features or 1)
    return [frame] * sm.chunk if sm.chunk not in (None, 1) else frame
