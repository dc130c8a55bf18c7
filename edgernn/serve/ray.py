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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ..runtime.stream import StreamingModel

        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"ttl_s must be positive seconds (or None: never evict); got {ttl_s}")
        self.model = StreamingModel(model, threads=threads, provider=provider)
        self.stateless = stateless
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        # stream key -> (Stream, last use); oldest use first, so eviction stops at the first stream still live
        self._streams: collections.OrderedDict[str, tuple[Any, float]] = collections.OrderedDict()
        self._scratch: list[Any] = []  # stateless mode: streams lent to one batch, their state set from the request
        self.counts = {"requests": 0, "batches": 0, "calls": 0, "errors": 0, "evicted": 0, "closed": 0}

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
            return {"streams": len(self._streams), "stateless": self.stateless, "ttl_s": self.ttl_s, **self.counts}

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
        key = stream_key(raw)
        if "frame" not in raw:
            raise InputError(f"request for stream {key!r} has no 'frame'")
        frame = np.asarray(raw["frame"])
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
        return {"stream": sid, "error": str(e), "code": e.exit_code}

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
                        s.set_state({k: _as_state(v) for k, v in req.state.items()})
                    ready.append((req, s, False))
                else:
                    entry = self._streams.get(req.key)
                    new = entry is None
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


def stream_key(request: Mapping[str, Any]) -> str:
    """The routing key of a request: its ``stream`` id (a non-empty string or an integer) as a string."""
    sid = request.get("stream")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "":
        raise InputError(f"a request needs 'stream': a non-empty string or an integer id; got {sid!r}")
    return str(sid)


def _as_state(value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise InputError(f"a state must be an array of numbers; got {a.dtype}")
    return a.astype(np.float32) if a.dtype.kind != "f" else a


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
        ) -> None:
            self.table = StreamTable(model, ttl_s=ttl_s, stateless=stateless, threads=threads, provider=provider)
            self.stateless = stateless
            self.replica = serve.get_replica_context().replica_id.unique_id
            self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]  # serve.batch's setters
            self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

        async def step(self, request: Mapping[str, Any]) -> dict[str, Any]:
            """One frame of one stream; refused unless it was routed by its stream id (stateful mode)."""
            if not self.stateless and isinstance(request, Mapping):
                try:
                    key = stream_key(request)
                except InputError as e:
                    return {"stream": None, "error": str(e), "code": e.exit_code, "replica": self.replica}
                # the routing key this request came with (a private accessor of ray 2.60, which edgernn pins)
                routed = serve.context._get_serve_request_context().session_id
                if routed != key:
                    return {
                        "stream": request.get("stream"),
                        "error": f"stream {key!r} reached this replica routed by session id {routed!r}: a stream's "
                        "requests must be routed by its id (send them through the app's ingress, or call this "
                        "deployment with handle.options(session_id=str(stream)))",
                        "code": 2,
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

        def __init__(self, replicas: Any, *, stateless: bool) -> None:
            self.replicas = replicas
            self.stateless = stateless

        async def __call__(self, request: Any) -> Any:
            from starlette.requests import Request
            from starlette.responses import JSONResponse

            if not isinstance(request, Request):  # a handle's call (a starlette Request is a Mapping too)
                if not isinstance(request, Mapping):
                    raise InputError(f"a request is a dict with 'stream' and 'frame'; got {type(request).__name__}")
                result = await self._route(request)
                if "error" in result:
                    raise InputError(f"stream {result.get('stream')!r}: {result['error']}")
                return result
            try:
                body = await request.json()
            except ValueError as e:
                return JSONResponse({"error": f"the body must be one JSON object: {e}"}, status_code=400)
            if not isinstance(body, Mapping):
                return JSONResponse({"error": "the body must be one JSON object"}, status_code=400)
            result = await self._route(body)
            return JSONResponse(to_json(result), status_code=400 if "error" in result else 200)

        async def _route(self, body: Mapping[str, Any]) -> dict[str, Any]:
            if self.stateless:
                return await self.replicas.step.remote(body)
            try:
                key = stream_key(body)
            except InputError as e:
                return {"stream": None, "error": str(e), "code": e.exit_code}
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
            raise InputError(f"stream {out.get('stream')!r}: {out['error']}")
        return out


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
) -> Any:
    """A Ray Serve application serving the streams of the ``step`` export at ``model_path`` (see the module
    docstring); run it with ``serve.run(app, name=...)``, which returns the handle to send requests to.

    ``replicas`` replicas, each with one onnxruntime session of ``threads`` intra-op threads and ``num_cpus``
    reserved CPUs (default: ``threads``, or 1). ``max_batch_size`` and ``batch_wait_timeout_s`` are those of
    ``@serve.batch``. ``ttl_s``: forget a stream idle that long (None: never). ``stateless``: the state travels
    with each request. ``virtual_nodes``: points per replica on the consistent-hash ring (stateful mode).
    ``ingress_replicas``: replicas of the (stateless, CPU-free) ingress that parses and routes requests.

    The model is read here and shipped to the replicas as bytes (no shared file system needed), after a check that
    it is a stateful model that can stream.
    """
    if replicas < 1 or ingress_replicas < 1:
        raise ConfigError(f"replicas and ingress_replicas must be at least 1; got {replicas}, {ingress_replicas}")
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be at least 1; got {max_batch_size}")
    if batch_wait_timeout_s < 0:
        raise ConfigError(f"batch_wait_timeout_s must be >= 0; got {batch_wait_timeout_s}")
    if ttl_s is not None and ttl_s <= 0:
        raise ConfigError(f"ttl_s must be positive seconds (or None: never evict); got {ttl_s}")
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
    )
    return ingress_cls.options(num_replicas=ingress_replicas).bind(replica, stateless=stateless)


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
