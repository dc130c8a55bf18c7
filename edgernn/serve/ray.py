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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class TooManyStreamsError(InputError):
    """A stateful replica holds its most streams: a new one is refused (HTTP 429), none is evicted for it."""

    http_status = 429


class BodyTooLargeError(InputError):
    """An HTTP request body beyond the deployment's byte bound (HTTP 413)."""

    http_status = 413


class RayStartError(EdgeRNNError):
    """Ray did not start (or could not be reached) within the time given to it."""

    exit_code = 1


def http_status(e: EdgeRNNError) -> int:
    """The HTTP status a refused request gets: 429 for a full replica, 413 for a body too large, else 400."""
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


class StreamTable:
    """What one replica holds: one ``StreamingModel`` and its live streams by id; no Ray in here.

    ``step_batch(requests)`` runs one batch of requests (dicts as the module docstring describes) and returns one
    response per request, in order: requests from different streams go into one ``step_many`` call per frame shape;
    a request the model refuses gets ``{"stream": ID, "error": message, "code": exit code}`` and does not fail the
    others. Thread-safe (one lock around each batch).
    """

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ..runtime.stream import StreamingModel

        check_bounds(ttl_s=ttl_s, max_streams=max_streams, max_id_chars=max_id_chars)
        self.model = StreamingModel(model, threads=threads, provider=provider)
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
        self.counts = {
            "requests": 0,
            "batches": 0,
            "calls": 0,
            "errors": 0,
            "evicted": 0,
            "closed": 0,
            "refused_full": 0,
        }

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

    def stats(self) -> dict[str, Any]:
        """Live streams and counters: requests, batches, onnxruntime calls, errors, evicted and closed streams."""
        with self._lock:
            return {
                "streams": len(self._streams),
                "stateless": self.stateless,
                "ttl_s": self.ttl_s,
                "max_streams": self.max_streams,
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
        return _Request(
            index, key, raw["stream"], frame, bool(raw.get("reset")), bool(raw.get("close")), dict(state or {}) or None
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
                        s.set_state(self._states(req))
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
                    if req.reset and not new:
                        s.reset()
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
                    if req.close:
                        self._streams.pop(req.key, None)
                        self.counts["closed"] += 1
                results[req.index] = out

    def _states(self, req: _Request) -> dict[str, np.ndarray]:
        """A stateless request's state, each array in its state input's dtype and checked finite after that cast
        (1e39 is a finite float64 and an infinite float32); ``Stream.set_state`` checks names and shapes."""
        assert req.state is not None
        specs = {st.input: st for st in self.model.states}
        out = {}
        for name, value in req.state.items():
            spec = specs.get(name)
            if spec is None:
                raise InputError(f"stream {req.key!r}: a state needs exactly {', '.join(sorted(specs))}; got {name!r}")
            a = _array(value, f"stream {req.key!r}: state {name!r}")
            if a.dtype.kind not in "fiu":
                raise InputError(f"stream {req.key!r}: state {name!r} must be an array of numbers; got {a.dtype}")
            want = np.dtype(spec.dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                cast = a.astype(want)
            if want.kind == "f" and not np.isfinite(cast).all():
                raise InputError(
                    f"stream {req.key!r}: state {name!r} has values that are not finite as {want} (NaN, inf, or "
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
        ) -> None:
            self.table = StreamTable(
                model,
                ttl_s=ttl_s,
                stateless=stateless,
                threads=threads,
                provider=provider,
                max_streams=max_streams,
                max_id_chars=max_id_chars,
            )
            self.stateless = stateless
            self.replica = serve.get_replica_context().replica_id.unique_id
            self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]  # serve.batch's setters
            self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

        async def step(self, request: Mapping[str, Any]) -> dict[str, Any]:
            """One frame of one stream; refused unless it was routed by its stream id (stateful mode)."""
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
            return await self._batched(request)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
        async def _batched(self, requests: list[Any]) -> list[dict[str, Any]]:
            import asyncio

            # onnxruntime runs in a worker thread: the event loop keeps queueing the next batch meanwhile
            results = await asyncio.to_thread(self.table.step_batch, requests)
            for r in results:
                r["replica"] = self.replica
            return results

        def stats(self) -> dict[str, Any]:
            """This replica's counters (``StreamTable.stats``) and its id."""
            self.table.evict_idle()
            return {**self.table.stats(), "replica": self.replica}

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

            if not isinstance(request, Request):  # a handle's call (a starlette Request is a Mapping too)
                if not isinstance(request, Mapping):
                    raise InputError(f"a request is a dict with 'stream' and 'frame'; got {type(request).__name__}")
                result = await self._route(request)
                if "error" in result:
                    raise refusal(result)
                return result
            try:
                body = parse_body(await self._read(request), self.max_body_bytes)
            except InputError as e:
                return JSONResponse(error_response(None, e), status_code=http_status(e))
            result = await self._route(body)
            status = int(result.get("status", 400)) if "error" in result else 200
            try:
                return JSONResponse(to_json(result), status_code=status)
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

        async def _route(self, body: Mapping[str, Any]) -> dict[str, Any]:
            try:
                key = stream_key(body, self.max_id_chars)
            except InputError as e:
                return error_response(None, e)
            if self.stateless:
                return await self.replicas.step.remote(body)
            return await self.replicas.options(session_id=key).step.remote(body)

    return StreamReplica, StreamIngress


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


class _Pending:
    def __init__(self, response: Any) -> None:
        self._response = response

    def result(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The response; a request the replica refused raises ``InputError`` with its message."""
        out = self._response.result(timeout_s=timeout_s)
        if "error" in out:
            raise refusal(out)
        return out


def refusal(response: Mapping[str, Any]) -> InputError:
    """The typed error of a refused request's response (TooManyStreamsError for a full replica)."""
    cls = {429: TooManyStreamsError, 413: BodyTooLargeError}.get(int(response.get("status", 400)), InputError)
    sid = response.get("stream")
    return cls(f"stream {sid!r:.80}: {response['error']}" if sid is not None else str(response["error"]))


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
    stream id (HTTP 400), ``max_body_bytes`` bytes of an HTTP body (HTTP 413; JSON nested too deep: HTTP 400).

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
    path = Path(model_path)
    if not path.is_file():
        raise ModelFormatError(f"no model file at {os.fspath(model_path)!r}")
    data = path.read_bytes()
    check_stream_model(data)
    require_ray("serve")
    from ray.serve.config import RequestRouterConfig

    replica_cls, ingress_cls = _deployments()
    options: dict[str, Any] = {
        "num_replicas": replicas,
        # enough requests in flight per replica to fill a batch while the previous one runs
        "max_ongoing_requests": max(2 * max_batch_size, 8),
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
    )
    return ingress_cls.options(num_replicas=ingress_replicas).bind(
        replica, stateless=stateless, max_id_chars=max_id_chars, max_body_bytes=max_body_bytes
    )


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
    value = 0.1 if sm.dtype.kind == "f" else 1
    frame = [value] * (sm.features or 1)
    return [frame] * sm.chunk if sm.chunk not in (None, 1) else frame
