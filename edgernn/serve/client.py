"""``StreamClient``: one stream of an ``edgernn serve ray`` application over HTTP, that survives a replica's death.

Plain ``urllib`` and numpy (no torch, no ray): usable from any machine that reaches the application's URL.

>>> from edgernn.serve import StreamClient
>>> c = StreamClient("http://127.0.0.1:8000/", "mic-1")
>>> y = c.step([0.1, 0.2, 0.3])          # the model's output for this frame (a float32 array)
>>> c.step(frame, close=True)            # the last frame: the server forgets the stream after it

Each response of a stateful application carries the stream's state as an opaque ``token`` (docs/scale-out.md);
the client keeps the last one. When the stream's state is gone (a 503 from a busy or lost replica, a connection
reset, a replica error, a response whose ``steps`` restarted because the stream moved to another replica, or an
HTTP 421 ``"moved"`` from a replica that is shutting down, whose body holds the token too), it resends the same
frame with that token, so the stream resumes where it was on whichever replica answers; the
outputs are those of an uninterrupted stream. Retries wait the server's ``Retry-After`` (or ``backoff_s``) and
stop after ``retries`` tries or ``deadline_s`` seconds (``ServeUnavailableError``). Against a ``--stateless``
application it sends each response's ``state`` back with the next frame.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import EdgeRNNError, InputError

RETRYABLE = (500, 502, 503, 504)
MOVED = 421  # a draining replica's answer to a new frame (edgernn.serve.ray.StreamMovedError): resend with the token
MAX_RETRIES = 1000  # the most `retries` may be
MAX_DEADLINE_S = 3600.0


class ServeUnavailableError(EdgeRNNError):
    """The application did not answer a frame within the client's retries and deadline."""

    exit_code = 1


class StreamClient:
    """One stream of a served application (see the module docstring).

    ``url``: the application's URL (``http://HOST:PORT/ROUTE``); ``stream``: the stream id (a string of at most the
    server's ``--max-id-chars`` characters, or an integer). ``timeout_s``: per HTTP request; ``retries``: tries of
    one frame beyond the first (at most 1000); ``deadline_s``: the most one frame may take, retries included;
    ``backoff_s``: the wait before a retry the server gave no ``Retry-After`` for.

    Attributes: ``steps`` (frames the stream's state has taken), ``token`` (the last state token), ``retried``
    (frames sent again), ``resumed`` (of those, frames sent with the token).
    """

    def __init__(
        self,
        url: str,
        stream: str | int,
        *,
        timeout_s: float = 30.0,
        retries: int = 20,
        deadline_s: float = 120.0,
        backoff_s: float = 0.2,
    ) -> None:
        from ..errors import ConfigError

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be http:// or https://; got {url!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ConfigError(f"retries must be an integer in 0..{MAX_RETRIES}; got {retries!r}")
        for what, v in (("timeout_s", timeout_s), ("deadline_s", deadline_s), ("backoff_s", backoff_s)):
            if not isinstance(v, (int, float)) or not 0 <= v <= MAX_DEADLINE_S or (v == 0 and what != "backoff_s"):
                raise ConfigError(f"{what} must be seconds in (0, {MAX_DEADLINE_S:g}]; got {v!r}")
        self.url = url
        self.stream = stream
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.deadline_s = float(deadline_s)
        self.backoff_s = float(backoff_s)
        self.steps = 0
        self.token: str | None = None
        self.state: Any = None  # a stateless application's state
        self.retried = 0
        self.resumed = 0
        self._reset = False

    def reset(self) -> None:
        """Start the stream again from the initial state with the next frame."""
        self.steps, self.token, self.state, self._reset = 0, None, None, True

    def step(self, frame: Any, *, close: bool = False) -> np.ndarray:
        """Send one frame (or chunk); returns the model's output for it. ``close``: the server forgets the stream
        after this frame. A refused frame (bad shape, bad id, a full replica) raises the typed error of
        ``edgernn.serve.ray.refusal`` at once; only failures of the server are retried."""
        from .ray import refusal

        body: dict[str, Any] = {"stream": self.stream, "frame": np.asarray(frame).tolist()}
        if close:
            body["close"] = True
        if self._reset:
            body["reset"] = True
        if self.state is not None:
            body["state"] = self.state
        resend = False
        t_end = time.monotonic() + self.deadline_s
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            if resend and self.token is not None and not body.get("reset"):
                body["token"] = self.token
                self.resumed += 1
            wait = self.backoff_s
            try:
                status, resp, retry_after = self._post(body)
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                resend = True
            else:
                if status == 200 and isinstance(resp, Mapping) and "output" in resp:
                    steps = resp.get("steps")
                    moved = (
                        steps is not None
                        and steps != self.steps + 1
                        and "token" not in body
                        and self.token is not None
                        and not body.get("reset")
                    )
                    if not moved:
                        return self._accept(resp)
                    last = f"the stream's state was lost on the server (steps {steps}, expected {self.steps + 1})"
                    resend, wait = True, 0.0  # its state moved or was forgotten: the same frame again, with the token
                elif status == MOVED and isinstance(resp, Mapping) and resp.get("moved"):
                    # a draining replica: the frame did not run; resend it with the stream's token (ours, or the
                    # one the replica gave when we hold none) and it runs on the replica that owns the stream now
                    last = "the stream's replica is shutting down (moved)"
                    if self.token is None and isinstance(resp.get("token"), str) and not body.get("reset"):
                        self.token = resp["token"]
                        self.steps = int(resp.get("steps", self.steps))
                    resend, wait = True, retry_after if retry_after is not None else 0.0
                elif status in RETRYABLE:
                    last = f"HTTP {status}: {str((resp or {}).get('error', ''))[:200]}"
                    resend = True
                    if retry_after is not None:
                        wait = retry_after
                else:
                    if isinstance(resp, Mapping) and "error" in resp:
                        raise refusal(resp)
                    raise InputError(f"stream {self.stream!r}: HTTP {status} without an edgernn error body")
            if time.monotonic() + wait > t_end:
                break
            time.sleep(wait)
        raise ServeUnavailableError(
            f"stream {self.stream!r}: no answer from {self.url} after {self.retried} retries within "
            f"{self.deadline_s:g} s (last: {last}); the client keeps the stream's token: call step again to resume"
        )

    def _accept(self, resp: Mapping[str, Any]) -> np.ndarray:
        self._reset = False
        if "steps" in resp:
            self.steps = int(resp["steps"])
        self.token = resp.get("token", self.token)
        if "state" in resp:
            self.state = resp["state"]
        return np.asarray(resp["output"], np.float32)

    def _post(self, body: Mapping[str, Any]) -> tuple[int, Any, float | None]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url, data, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, json.loads(r.read()), None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                resp = json.loads(raw)
            except ValueError:
                resp = {"error": raw[:200].decode("utf-8", "replace")}
            after = e.headers.get("Retry-After", "") if e.headers else ""
            retry_after = min(float(after), self.deadline_s) if after.replace(".", "", 1).isdigit() else None
            return e.code, resp, retry_after
