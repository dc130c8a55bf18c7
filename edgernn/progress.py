"""Progress on stderr for work that takes a while, so that slow can be told from hung.

The library reports where it is (``stage`` at each boundary: "tracing with torch's exporter", "parity case 3/8";
``tick`` inside long loops; ``counter`` for numbered steps) and says nothing unless progress is turned on: the
CLI turns it on for every command (``--quiet`` off, ``--verbose`` with each stage's timing); a Python user can
with ``reporting()``.

While on, off a terminal (a log, CI) a line is written at each stage, a tick's line when ``INTERVAL`` seconds
have passed since the last line, and a heartbeat thread writes ``still <stage> (N s)`` when one step (a torch
export, an engine's conversion) runs longer than that without a line: a line at least every ``INTERVAL``
seconds. On a terminal the same lines rewrite one status line, cleared before anything else is printed.

``EDGERNN_PROGRESS=0`` leaves progress off for commands too (``--quiet`` and ``--verbose`` still apply).

Torch-free, numpy-free: the base room.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2
INTERVAL = 10.0  # seconds: the longest a running command stays silent on stderr off a terminal
TTY_REFRESH = 0.5  # seconds: how often a tick may rewrite the status line on a terminal
ENV = "EDGERNN_PROGRESS"  # "0" (or off, no, false): commands leave progress off unless asked (--verbose)


class Reporter:
    """Writes progress lines to ``stream``; ``clock`` (seconds, monotonic) and ``interval`` are injectable so a
    test can run hours of a slow stage in no time. ``tty`` None asks the stream."""

    def __init__(
        self,
        stream: TextIO,
        *,
        level: int = NORMAL,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
        tty: bool | None = None,
        prefix: str = "",
    ) -> None:
        self.stream = stream
        self.level = level
        self.clock = clock
        self.interval = interval
        self.tty = _isatty(stream) if tty is None else tty
        self.prefix = prefix
        self._lock = threading.RLock()
        now = clock()
        self._began = now
        self._stage: str | None = None  # the stage running now
        self._stage_began = now
        self._label: str | None = None  # what the heartbeat names: the stage, or the loop's last tick
        self._since = now  # when that began
        self._last = now  # when the last line (or, on a terminal, anything) went to the stream
        self._shown = False  # a status line is on the terminal

    # what the library calls

    def stage(self, text: str) -> None:
        """A new stage begins: one line now (on a terminal, the status line)."""
        if self.level < NORMAL:
            return
        with self._lock:
            now = self.clock()
            self._timing(now)
            self._stage, self._stage_began = text, now
            self._label, self._since = text, now
            self._write(text, now)

    def tick(self, text: str) -> None:
        """Inside a loop: where it is now. A line when ``interval`` seconds passed since the last one (on a
        terminal, the status line rewritten at most every ``TTY_REFRESH`` seconds)."""
        if self.level < NORMAL:
            return
        with self._lock:
            now = self.clock()
            self._label, self._since = text, now
            if now - self._last >= (TTY_REFRESH if self.tty else self.interval):
                self._write(text, now)

    def beat(self) -> None:
        """The heartbeat: ``still <what runs> (N s)`` when ``interval`` seconds passed without a line."""
        if self.level < NORMAL:
            return
        with self._lock:
            now = self.clock()
            if self._label is not None and now - self._last >= self.interval:
                self._write(f"still {self._label} ({now - self._since:.0f} s)", now)

    def due_in(self) -> float:
        """Seconds until the heartbeat would next speak (the heartbeat thread sleeps that long)."""
        with self._lock:
            return max(0.05, min(self.interval, self._last + self.interval - self.clock()))

    def close(self, failed: bool = False) -> None:
        """The last stage's timing (``--verbose``), and the status line cleared."""
        with self._lock:
            if self.level >= VERBOSE:
                now = self.clock()
                self._timing(now)
                self._stage = None
                self._write(f"{'stopped after' if failed else 'done in'} {now - self._began:.1f} s", now, keep=True)
            self.clear()

    def clear(self) -> None:
        """Take the status line off the terminal (something else is about to be written)."""
        with self._lock:
            if self._shown:
                self._put("\r\x1b[K")
                self._shown = False

    def touch(self) -> None:
        """Something else was written to the terminal (a progress bar): the heartbeat waits its interval again."""
        with self._lock:
            self._last = self.clock()

    # the writing

    def _timing(self, now: float) -> None:
        if self.level >= VERBOSE and self._stage is not None:
            self._write(f"{self._stage}: {now - self._stage_began:.2f} s", now, keep=True)

    def _write(self, text: str, now: float, *, keep: bool = False) -> None:
        line = self.prefix + text
        if not self.tty:
            self._put(line + "\n")
        else:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            if keep:
                self._put("\r\x1b[K" + line + "\n")
                self._shown = False
            else:
                self._put("\r\x1b[K" + (line if len(line) <= width else line[: max(width - 3, 0)] + "..."))
                self._shown = True
        self._last = now

    def _put(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: progress is not worth failing the command for
            self.level = QUIET
            self._shown = False


class Counter:
    """Numbered stages: ``next("B=2 T=17")`` is the stage "parity case 3/8 (B=2 T=17)" ("parity case 3" where
    the total is not known)."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total, self.done = what, total, 0

    def next(self, detail: str = "") -> None:
        self.done += 1
        of = f"/{self.total}" if self.total is not None else ""
        stage(f"{self.what} {self.done}{of}" + (f" ({detail})" if detail else ""))


_current: list[Reporter] = []  # the reporter turned on (innermost last); none: the library is silent


def current() -> Reporter | None:
    return _current[-1] if _current else None


def stage(text: str) -> None:
    """A new stage begins (see ``Reporter.stage``); nothing while progress is off."""
    if _current:
        _current[-1].stage(text)


def tick(text: str) -> None:
    """Where a loop is (see ``Reporter.tick``); nothing while progress is off."""
    if _current:
        _current[-1].tick(text)


def counter(what: str, items: Any) -> Counter:
    """Numbered stages of one loop over ``items`` (a count, or what the loop runs over: its length where it has
    one): ``c = counter("parity case", cases)``, then ``c.next(case.label)`` in the loop."""
    total = items if isinstance(items, int) else len(items) if isinstance(items, Sized) else None
    return Counter(what, total)


def quieted() -> bool:
    """Whether progress was turned off on purpose (``--quiet``): the library's own bars stay off too. Progress
    never turned on is not quieted (a Python caller's ``progress=True`` still draws)."""
    return bool(_current) and _current[-1].level < NORMAL


def level_for(quiet: bool = False, verbose: bool = False) -> int | None:
    """The level ``--quiet``/``--verbose`` ask for; neither: normal, or None where ``EDGERNN_PROGRESS=0`` (progress
    not turned on at all: no stage lines, and the library's own output, such as training's epoch lines, as from
    Python)."""
    if verbose:
        return VERBOSE
    if quiet:
        return QUIET
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return None
    return NORMAL


class Heartbeat:
    """A daemon thread that calls ``reporter.beat()`` whenever a line is due. ``wait(seconds)`` (default: the stop
    event's wait) is injectable: a test lets each beat through by hand under a fake clock."""

    def __init__(self, reporter: Reporter, wait: Callable[[float], Any] | None = None) -> None:
        self.reporter = reporter
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread = threading.Thread(target=self._run, name="edgernn-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wait(self.reporter.due_in())
            if self._stop.is_set():
                return
            self.reporter.beat()


@contextmanager
def reporting(
    level: int = NORMAL,
    *,
    stream: TextIO | None = None,
    prefix: str = "",
    label: str | None = None,
    heartbeat: bool = True,
    clock: Callable[[], float] = time.monotonic,
    interval: float = INTERVAL,
    tty: bool | None = None,
) -> Iterator[Reporter]:
    """Progress on (to ``stream``, default stderr) for the block, with a heartbeat thread; ``label`` names what
    runs before the first stage (a command's name: the heartbeat speaks for a command that has no stages of its
    own). On a terminal, stdout and stderr are wrapped for the block so that the status line is cleared before
    anything else is written there."""
    out = stream if stream is not None else sys.stderr
    reporter = Reporter(out, level=level, clock=clock, interval=interval, tty=tty, prefix=prefix)
    if label is not None:
        reporter._label = label
    beat = Heartbeat(reporter).start() if heartbeat and level >= NORMAL else None
    wrapped: list[tuple[str, Any]] = []
    if reporter.tty and level >= NORMAL and stream is None:
        for name in ("stdout", "stderr"):
            wrapped.append((name, getattr(sys, name)))
            setattr(sys, name, _ClearFirst(getattr(sys, name), reporter, touch=name == "stderr"))
    _current.append(reporter)
    failed = False
    try:
        yield reporter
    except BaseException:
        failed = True
        raise
    finally:
        _current.remove(reporter)
        if beat is not None:
            beat.stop()
        for name, original in reversed(wrapped):
            if isinstance(getattr(sys, name), _ClearFirst):
                setattr(sys, name, original)
        reporter.close(failed)


class _ClearFirst:
    """stdout or stderr while a status line is on the terminal: the line is cleared before anything is written
    (a result, an error, another progress bar); writes to stderr count as signs of life for the heartbeat."""

    def __init__(self, stream: Any, reporter: Reporter, *, touch: bool) -> None:
        self._stream = stream
        self._reporter = reporter
        self._touch = touch

    def write(self, s: Any) -> Any:
        if s:
            self._reporter.clear()
            if self._touch:
                self._reporter.touch()
        return self._stream.write(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
