"""Progress on stderr: a slow stage speaks at least every 10 s (under a fake clock), the heartbeat speaks while one
blocking call runs, --quiet silences it, real `edgernn train` and `edgernn export` runs show their stages, and
--json's stdout stays JSON while progress is on."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgernn import progress
from edgernn.cli.common import leaf_commands
from edgernn.cli.main import main
from edgernn.progress import Heartbeat, Reporter


@pytest.fixture(autouse=True)
def _progress_as_a_user_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite turns progress off (tests/conftest.py); these tests see what a user sees."""
    monkeypatch.delenv(progress.ENV, raising=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class Lines(io.StringIO):
    """A stream that records when (on the fake clock) each line was written."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        for line in s.splitlines():
            self.at.append((self.clock(), line))
        return super().write(s)


def test_a_slow_stage_speaks_at_least_every_interval() -> None:
    """An hour of 0.5 s batches: a line at least every 10 s, and not a line a batch."""
    clock = FakeClock()
    out = Lines(clock)
    r = Reporter(out, clock=clock, interval=10, tty=False, prefix="train: ")
    r.stage("60 epoch(s) of 120 batch(es)")
    for i in range(7200):
        clock.advance(0.5)
        r.tick(f"epoch {i // 120 + 1}/60, batch {i % 120 + 1}/120")
    times = [t for t, _ in out.at]
    gaps = [b - a for a, b in zip([0.0, *times], [*times, clock.now], strict=True)]
    assert max(gaps) <= 10
    assert len(out.at) == 361  # the stage line, then one line per 10 s: not one per batch
    assert out.at[0] == (0.0, "train: 60 epoch(s) of 120 batch(es)")
    assert out.at[1] == (10.0, "train: epoch 1/60, batch 20/120")


def test_the_heartbeat_speaks_while_a_blocking_call_runs() -> None:
    """A step that never calls back (a torch export) for 35 s: "still <stage> (N s)" at 10, 20 and 30 s. The
    heartbeat thread's sleep is injected: it moves the fake clock on by as long as it was asked to sleep."""
    clock = FakeClock()
    out = Lines(clock)
    r = Reporter(out, clock=clock, interval=10, tty=False, prefix="export: ")
    r.stage("tracing with torch's exporter (native, opset 18)")
    call_ends, stopping = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        if clock() + seconds > 35:  # the blocking call returns at 35 s
            call_ends.set()
            stopping.wait(60)
            return
        clock.advance(seconds)

    beat = Heartbeat(r, wait=sleep).start()
    assert call_ends.wait(60), "the heartbeat thread never reached the end of the blocking call"
    stopping.set()
    beat.stop()
    still = [(t, line) for t, line in out.at if "still" in line]
    assert still == [
        (10.0, "export: still tracing with torch's exporter (native, opset 18) (10 s)"),
        (20.0, "export: still tracing with torch's exporter (native, opset 18) (20 s)"),
        (30.0, "export: still tracing with torch's exporter (native, opset 18) (30 s)"),
    ]


def test_the_heartbeat_thread_runs_on_its_own() -> None:
    """The thread ``reporting`` starts, on the real clock with a tiny interval: it names the blocked stage without
    any call from the stage itself."""
    seen = threading.Event()

    class Stream(io.StringIO):
        def write(self, s: str) -> int:
            if "still waiting for the engine" in s:
                seen.set()
            return super().write(s)

    stream = Stream()
    with progress.reporting(stream=stream, interval=0.01, prefix="package: "):
        progress.stage("waiting for the engine")
        blocked = seen.wait(60)  # the blocking call: returns when the heartbeat has spoken
    assert blocked, stream.getvalue()
    assert re.search(r"^package: still waiting for the engine \(\d+ s\)$", stream.getvalue(), re.M)


def test_the_library_is_silent_unless_progress_is_turned_on(capsys: pytest.CaptureFixture[str]) -> None:
    progress.stage("a stage nobody asked to see")
    progress.tick("a tick")
    assert progress.current() is None and not progress.quieted()
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_status_line_is_cleared_before_the_result() -> None:
    """stdout and stderr on one terminal: the status line is rewritten in place, and wiped before the result."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = term
    try:
        with progress.reporting(prefix="export: ", heartbeat=False):
            progress.stage("tracing")
            progress.stage("parity case 1/2")
            print("wrote m.onnx")
    finally:
        sys.stdout, sys.stderr = saved
    assert term.getvalue() == "\r\x1b[Kexport: tracing\r\x1b[Kexport: parity case 1/2\r\x1b[Kwrote m.onnx\n"


def test_every_command_takes_quiet_and_verbose() -> None:
    for name, command in leaf_commands(main):
        names = {p.name for p in command.params}
        assert {"quiet", "verbose"} <= names, name
    r = CliRunner().invoke(main, ["targets", "--quiet", "--verbose"])
    assert r.exit_code == 2 and "--quiet and --verbose" in r.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real `edgernn train --epochs 1` on a small built-in task, with its stderr."""
    before = os.environ.pop(progress.ENV, None)  # module scope: the autouse fixture has not run yet
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--task", "sine", "--hidden", "8", "--epochs", "1", "--n-train", "64", "--out", str(out)]
    try:
        r = CliRunner().invoke(main, args)
    finally:
        if before is not None:
            os.environ[progress.ENV] = before
    assert r.exit_code == 0, r.output
    return out, r.stderr


def test_train_shows_its_stages(run_dir: tuple[Path, str]) -> None:
    _, stderr = run_dir
    assert "train: making 64 training and 256 validation sequences of sine\n" in stderr
    assert "train: 1 epoch(s) of 2 batch(es)\n" in stderr
    assert re.search(r"^train: writing .*model\.ckpt and the history$", stderr, re.M)


def test_export_shows_its_stages_and_json_stays_json(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    """A real `edgernn export` process, stderr a pipe (a log): every stage on stderr, stdout parses as JSON."""
    run, _ = run_dir
    model = tmp_path / "m.onnx"
    env = {k: v for k, v in os.environ.items() if k != progress.ENV}
    args = ["export", str(run), "--strategy", "native", "--out", str(model), "--json"]
    p = subprocess.run([sys.executable, "-m", "edgernn", *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["manifest"]["strategy"] == "native" and result["parity"]["passed"] is True
    lines = p.stderr.splitlines()
    for expected in (
        "export: preparing the native export for ort",
        "export: tracing with torch's exporter (native, opset 18)",
        "export: target ort's check of the native graph",
        "export: parity of the native export against torch",
        f"export: writing {model}",
    ):
        assert expected in lines, p.stderr
    cases = [line for line in lines if line.startswith("export: parity case ")]
    labels = {c["case"] for c in result["parity"]["comparisons"]}
    assert len(cases) == len(labels) >= 2  # each case the report holds, announced once, numbered of the total
    assert cases[0] == f"export: parity case 1/{len(labels)} ({result['parity']['comparisons'][0]['case']})"


def test_quiet_silences_progress_and_verbose_times_each_stage(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = run_dir
    runner = CliRunner()
    args = ["export", str(run), "--strategy", "native"]
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "quiet.onnx"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and "wrote" in r.stdout and "parity PASS" in r.stdout
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "verbose.onnx"), "--verbose"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^export: tracing with torch's exporter \(native, opset 18\): \d+\.\d\d s$", r.stderr, re.M)
    assert re.search(r"^export: done in \d+\.\d s$", r.stderr, re.M)
    assert "wrote" in r.stdout and "export:" not in r.stdout


def test_the_environment_can_leave_progress_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGERNN_PROGRESS=0 (a CI that wants the old logs): no stage lines, training's epoch lines as before;
    --quiet and --verbose still apply."""
    args = ["train", "--task", "sine", "--hidden", "4", "--epochs", "1", "--n-train", "16"]
    monkeypatch.setenv(progress.ENV, "0")
    with CliRunner().isolated_filesystem():
        r = CliRunner().invoke(main, [*args, "--out", "a"])
        assert r.exit_code == 0, r.output
        assert "train:" not in r.stderr and r.stderr.startswith("epoch 1/1: loss ")
        r = CliRunner().invoke(main, [*args, "--out", "b", "--quiet"])
        assert r.exit_code == 0, r.output
        assert r.stderr == "" and r.stdout.startswith("trained ")
        r = CliRunner().invoke(main, [*args, "--out", "c", "--verbose"])
        assert r.exit_code == 0, r.output
        assert "train: 1 epoch(s) of 1 batch(es)\n" in r.stderr and "epoch 1/1: loss " in r.stderr
    assert progress.level_for() is None and progress.level_for(quiet=True) == progress.QUIET
    monkeypatch.delenv(progress.ENV)
    assert progress.level_for() == progress.NORMAL
