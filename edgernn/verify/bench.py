"""``edgernn bench``: how fast an exported model runs here, and (given its checkpoint) against torch eager.

Latency per step and per sequence (p50, p95), throughput, and peak memory, on onnxruntime with the chosen
provider; with a checkpoint, torch eager on the same inputs in the same process, reported as ratios. The
onnxruntime part imports no torch (and is measured first, so its peak memory is the runtime's alone); torch is
imported only for ``ckpt``.

Timings belong to the machine and the moment they were taken: on a shared CPU one form's cost can collapse
under contention while another's barely moves (onnxruntime's Scan: 5x slower than the fused op at a load of 16,
62x at 37), so a single run's figure or ratio is not a property of the file. Every report therefore gives the
spread as well as the median (``Spread``: the fastest and slowest of the per-round medians, and the number of
rounds) and the load it was measured under (``machine_load``); ``in_turns`` interleaves several things to time
round by round, so that a change of load falls on each alike.
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, ModelFormatError
from ..manifest import TIMINGS_NOTE, load_words
from ..runtime.io import data_axes, streaming_model
from ..runtime.model import Model
from ..runtime.states import StatePair
from ..runtime.stream import StreamingModel


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        a = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.mean()), len(a))


ROUNDS = 5  # rounds a bench's calls are split into, for the spread
T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """One measurement with its spread: the median of the per-round medians, the fastest and the slowest of
    them, and how many rounds there were (seconds, or whatever unit the rounds were in)."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, per_round: Sequence[float]) -> Spread:
        a = np.asarray(per_round, dtype=np.float64)
        if a.size == 0:
            raise ValueError("a spread needs at least one round")
        return cls(float(np.median(a)), float(a.min()), float(a.max()), int(a.size))

    @classmethod
    def of_calls(cls, seconds: Sequence[float], rounds: int = ROUNDS) -> Spread:
        """The calls, in the order they ran, split into ``rounds`` consecutive rounds (fewer when there are
        fewer calls)."""
        parts = np.array_split(np.asarray(seconds, dtype=np.float64), max(1, min(rounds, len(seconds))))
        return cls.of([float(np.median(p)) for p in parts])

    def overlaps(self, other: Spread) -> bool:
        """True when the two ranges share a value: the runs do not tell the two apart."""
        return self.low <= other.high and other.low <= self.high

    def scaled(self, factor: float, digits: int = 1) -> dict[str, Any]:
        """The record a report keeps: ``{"median", "low", "high", "rounds"}`` in the unit ``factor`` gives."""
        r = lambda v: round(v * factor, digits)  # noqa: E731
        return {"median": r(self.median), "low": r(self.low), "high": r(self.high), "rounds": self.rounds}


def machine_load() -> dict[str, Any]:
    """How busy the machine was: the 1, 5 and 15-minute load averages (None where the platform keeps none),
    the CPU count, and the time (UTC, ISO 8601). A load near or above the CPU count means the timings were taken
    under contention."""
    try:
        loads: list[float | None] = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # Windows
        loads = [None, None, None]
    return {
        "load_1m": loads[0],
        "load_5m": loads[1],
        "load_15m": loads[2],
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def in_turns(runs: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Call each of ``runs`` once per round, in turn, ``rounds`` times: each one's results in round order. A
    shared machine's load, which changes from second to second, then falls on every one alike."""
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1; got {rounds}")
    out: dict[str, list[T]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            out[name].append(fn())
    return out


@dataclass
class BenchReport:
    model: str
    provider: dict[str, Any]
    threads: int | None
    streaming: bool  # stateful model: steps run through a Stream
    chunk: int  # steps per call
    batch: int
    seq_len: int
    features: int
    step: Latency  # one call of `chunk` steps, batch 1
    sequence: Latency  # `seq_len` steps for `batch` sequences
    frames_per_s: float  # batch * seq_len / sequence p50
    sequences_per_s: float
    peak_rss_mb: float | None  # the process's peak before torch is loaded
    torch: dict[str, Any] | None = None
    ratios: dict[str, float] = field(default_factory=dict)  # torch time / onnxruntime time (> 1: onnxruntime faster)
    max_abs_diff: float | None = None  # torch vs onnxruntime on the sequence input, when shapes match
    machine: dict[str, str] = field(default_factory=dict)
    # the p50 of each of ``rounds`` consecutive rounds of calls: {"step": {median, low, high, rounds}, "sequence"}
    spread_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)  # machine_load() when measured
    timings_note: str = TIMINGS_NOTE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        mode = f"stream (stateful, {self.chunk} step(s) per call)" if self.streaming else "sequence model"
        lines = [
            f"model      {self.model}",
            f"provider   {self.provider.get('used')}"
            + (
                f" (fell back from {self.provider['requested']}: {self.provider['reason']})"
                if self.provider.get("fell_back")
                else ""
            )
            + f", threads {self.threads if self.threads else 'auto'}",
            f"mode       {mode}",
            f"step       p50 {self.step.p50_ms:.4f} ms  p95 {self.step.p95_ms:.4f} ms  (batch 1, {self.chunk} step(s))",
            f"sequence   p50 {self.sequence.p50_ms:.3f} ms  p95 {self.sequence.p95_ms:.3f} ms  "
            f"(batch {self.batch}, {self.seq_len} steps)",
            f"throughput {self.frames_per_s:,.0f} steps/s, {self.sequences_per_s:,.1f} sequences/s",
            f"peak RSS   {self.peak_rss_mb:.1f} MB" if self.peak_rss_mb is not None else "peak RSS   n/a",
        ]
        if self.spread_ms:
            st, sq = self.spread_ms["step"], self.spread_ms["sequence"]
            lines.insert(
                5,
                f"spread     step {st['low']:.4f}-{st['high']:.4f} ms over {st['rounds']} rounds, sequence "
                f"{sq['low']:.3f}-{sq['high']:.3f} ms over {sq['rounds']} (the fastest and slowest round's p50)",
            )
        lines.append(f"measured   {load_words(self.load)}; {self.timings_note}")
        if self.torch:
            t = self.torch
            lines += [
                f"torch      step p50 {t['step']['p50_ms']:.4f} ms, sequence p50 {t['sequence']['p50_ms']:.3f} ms "
                f"(torch {t['version']}, {t['threads']} thread(s))",
                f"ratio      onnxruntime is {self.ratios['step']:.2f}x torch's speed per step, "
                f"{self.ratios['sequence']:.2f}x per sequence",
            ]
            if self.max_abs_diff is not None:
                lines.append(f"max |diff| {self.max_abs_diff:.3g} (torch vs onnxruntime on the sequence input)")
        return "\n".join(lines)


def peak_rss_mb() -> float | None:
    """The process's peak resident set size so far, in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def machine_info() -> dict[str, str]:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor()
    import onnxruntime as ort

    info["onnxruntime"] = ort.__version__
    info["numpy"] = np.__version__
    return info


def _time_calls(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


@dataclass(frozen=True)
class _Inputs:
    """What bench feeds a model: a random (batch, time, features) sequence, the steps per call, and where a
    sequence model's data input keeps (batch, time)."""

    x: np.ndarray  # (batch, time, features), float32
    chunk: int  # steps per call (1 for a sequence model)
    seq_axes: tuple[int, int] = (0, 1)

    @property
    def features(self) -> int:
        return int(self.x.shape[2])


def bench(
    model: str | os.PathLike[str] | bytes,
    *,
    ckpt: str | os.PathLike[str] | None = None,
    provider: str = "cpu",
    fallback: str | None = None,
    threads: int | None = 1,
    optimization: str = "all",
    optimized_model_path: str | os.PathLike[str] | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None,
    steps: int = 500,
    seq_len: int = 100,
    batch: int = 1,
    repeats: int = 20,
    warmup: int = 20,
    states: Sequence[StatePair | str] | None = None,
    layout: str | None = None,
    seed: int = 0,
    rounds: int = ROUNDS,
) -> BenchReport:
    """Measure ``model`` (and the checkpoint's torch model on the same inputs); see the module docstring. The
    calls are split into ``rounds`` consecutive rounds for the spread."""
    for name, v in (
        ("steps", steps), ("seq_len", seq_len), ("batch", batch), ("repeats", repeats), ("rounds", rounds)
    ):  # fmt: skip
        if v < 1:
            raise ConfigError(f"{name} must be at least 1; got {v}")
    m = Model(
        model,
        provider,
        fallback=fallback,
        threads=threads,
        optimization=optimization,
        optimized_model_path=optimized_model_path,
        provider_options=provider_options,
    )
    sm = streaming_model(m, states, layout)
    inputs = _inputs(m, sm, layout, batch, seq_len, seed)
    if sm is not None:
        step_times, seq_times, ort_out = _time_stream(sm, inputs, steps, repeats, warmup)
    else:
        step_times, seq_times, ort_out = _time_sequence_model(m, inputs, steps, repeats, warmup)
    seq = Latency.of(seq_times)
    report = BenchReport(
        model="<in memory>" if isinstance(model, bytes) else os.fspath(model),
        provider=m.choice.to_dict(),
        threads=threads,
        streaming=sm is not None,
        chunk=inputs.chunk,
        batch=batch,
        seq_len=seq_len,
        features=inputs.features,
        step=Latency.of(step_times),
        sequence=seq,
        frames_per_s=batch * seq_len / (seq.p50_ms / 1e3),
        sequences_per_s=batch / (seq.p50_ms / 1e3),
        peak_rss_mb=peak_rss_mb(),
        machine=machine_info(),
        spread_ms={
            "step": Spread.of_calls(step_times, rounds).scaled(1e3, 6),
            "sequence": Spread.of_calls(seq_times, rounds).scaled(1e3, 6),
        },
        load=machine_load(),
    )
    if ckpt is not None:
        _bench_torch(report, ckpt, inputs.x, inputs.chunk, threads, steps, repeats, warmup, ort_out)
    return report


def _inputs(m: Model, sm: StreamingModel | None, layout: str | None, batch: int, seq_len: int, seed: int) -> _Inputs:
    """The inputs bench times ``m`` on (``sm``: its streaming form, or None for a sequence model): ConfigError or
    ModelFormatError when the model's shape does not let bench make them."""
    rng = np.random.default_rng(seed)
    features: int | str | None
    seq_axes = (0, 1)  # where (batch, time) go in the data input of a sequence model
    if sm is not None:
        features, chunk = sm.features, sm.chunk or 1
        if seq_len % chunk:
            raise ConfigError(f"seq_len {seq_len} is not a multiple of the model's chunk ({chunk})")
    else:
        data = m.data_inputs()
        if len(data) != 1:
            raise ModelFormatError("bench runs models with one data input (batch, time, features)")
        features, chunk = data[0].shape[-1], 1
        axes = data_axes(data[0], layout)
        if axes is None or axes.rank != 3 or axes.batch is None or axes.time is None:
            raise ModelFormatError(
                f"bench needs a (batch, time, features) input; {data[0].name!r} is {data[0].shape} (try --layout)"
            )
        seq_axes = (axes.batch, axes.time)
    if not isinstance(features, int):
        raise ModelFormatError("the model's feature size is not fixed in its graph; bench cannot make inputs for it")
    x = rng.standard_normal((batch, seq_len, features)).astype(np.float32)  # (batch, time, features)
    return _Inputs(x, chunk, seq_axes)


def _time_stream(
    sm: StreamingModel, inputs: _Inputs, steps: int, repeats: int, warmup: int
) -> tuple[list[float], list[float], np.ndarray | None]:
    """A stateful model's call times: ``steps`` single steps of one stream, then ``repeats`` sequences of
    ``batch`` streams; with the last sequence's outputs (for the comparison with torch)."""
    x, chunk = inputs.x, inputs.chunk
    batch, seq_len = x.shape[0], x.shape[1]
    s = sm.stream()
    next_frame = itertools.cycle([x[0, i : i + chunk] if chunk > 1 else x[0, i] for i in range(0, seq_len, chunk)])

    def one_step() -> None:
        s.step(next(next_frame))

    step_times = _time_calls(one_step, steps, warmup)
    streams = [sm.stream() for _ in range(batch)]
    ort_out: np.ndarray | None = None

    def one_sequence() -> None:
        nonlocal ort_out
        for st in streams:
            st.reset()
        ys = []
        for i in range(0, seq_len, chunk):
            piece = x[:, i : i + chunk] if chunk > 1 else x[:, i]
            ys.append(np.stack(sm.step_many(streams, list(piece))) if batch > 1 else streams[0].step(piece[0])[None])
        ort_out = _join(ys)

    seq_times = _time_calls(one_sequence, repeats, min(warmup, 3))
    return step_times, seq_times, ort_out


def _time_sequence_model(
    m: Model, inputs: _Inputs, steps: int, repeats: int, warmup: int
) -> tuple[list[float], list[float], np.ndarray | None]:
    """A sequence model's call times: ``steps`` calls on one frame of one sequence, then ``repeats`` calls on the
    whole batch; with the last call's first output (for the comparison with torch)."""
    name = m.data_inputs()[0].name
    x, seq_axes = inputs.x, inputs.seq_axes
    xm = np.moveaxis(x, (0, 1), seq_axes)  # in the model's own layout
    one = {name: np.moveaxis(x[:1, :1], (0, 1), seq_axes)}
    step_times = _time_calls(lambda: m.run_feed(one), steps, warmup)
    full = {name: xm}
    ort_out: np.ndarray | None = None

    def one_sequence() -> None:
        nonlocal ort_out
        ort_out = m.run_feed(full)[m.output_names[0]]

    seq_times = _time_calls(one_sequence, repeats, min(warmup, 3))
    return step_times, seq_times, ort_out


def _join(ys: list[np.ndarray]) -> np.ndarray:
    """Per-call outputs (batch, ...) of a stream run as one array: (batch, time, out) outputs concatenated over
    time, last-step readouts (batch, out) from the last call -- what the full-sequence model returns."""
    return np.concatenate(ys, axis=1) if ys[-1].ndim >= 3 else ys[-1]


def _bench_torch(
    report: BenchReport,
    ckpt: str | os.PathLike[str],
    x: np.ndarray,
    chunk: int,
    threads: int | None,
    steps: int,
    repeats: int,
    warmup: int,
    ort_out: np.ndarray | None,
) -> None:
    import torch

    from ..model import checkpoint

    cp = checkpoint.load(ckpt)
    model = cp.model()
    if cp.config.input_size != report.features:
        raise ConfigError(
            f"the checkpoint's model takes {cp.config.input_size} features but the ONNX model takes {report.features}"
        )
    if threads:
        torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    next_frame = itertools.cycle([xt[:1, i : i + chunk] for i in range(0, x.shape[1], chunk)])
    state: Any = None

    def one_step() -> None:
        # what a streaming step computes in eager torch: the recurrent stack with carried state, then the head
        nonlocal state
        y, state = model.rnn(next(next_frame), state)
        model.head(y if model.config.readout == "all" else y[:, -1])

    out: Any = None

    def one_sequence() -> None:
        nonlocal out
        out = model(xt)

    with torch.inference_mode():
        step_times = _time_calls(one_step, steps, warmup)
        seq_times = _time_calls(one_sequence, repeats, min(warmup, 3))
    t_step, t_seq = Latency.of(step_times), Latency.of(seq_times)
    report.torch = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "step": asdict(t_step),
        "sequence": asdict(t_seq),
        "peak_rss_mb_with_torch": peak_rss_mb(),
    }
    report.ratios = {
        "step": t_step.p50_ms / report.step.p50_ms,
        "sequence": t_seq.p50_ms / report.sequence.p50_ms,
    }
    if ort_out is not None and out is not None:
        ref = out.detach().numpy()
        if ref.shape == ort_out.shape:
            report.max_abs_diff = float(np.abs(ref - ort_out).max())


def timed_in_turns(
    model: str | os.PathLike[str] | bytes, other: str | os.PathLike[str] | bytes, *, rounds: int = 3, **options: Any
) -> dict[str, Any]:
    """Two models timed in turns in one process (``in_turns``), ``rounds`` times each, with the same inputs and
    settings (a shared machine's load falls on both alike): each one's median step and sequence p50 over the
    rounds with their spread, ``other``'s speed as ratios to ``model``'s (> 1: ``other`` is faster), whether the
    two overlap within their spread, and the load."""
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1; got {rounds}")
    options.pop("ckpt", None)
    runs = in_turns({"model": lambda: bench(model, **options), "other": lambda: bench(other, **options)}, rounds)

    def per_round(key: str, which: str) -> Spread:
        return Spread.of([getattr(r, key).p50_ms for r in runs[which]])

    out: dict[str, Any] = {"rounds": rounds}
    for which in ("model", "other"):
        step, seq = per_round("step", which), per_round("sequence", which)
        out[which] = {
            "step_p50_ms": step.median,
            "sequence_p50_ms": seq.median,
            "spread_ms": {"step": step.scaled(1, 6), "sequence": seq.scaled(1, 6)},
        }
    a, b = out["model"], out["other"]
    out["ratios"] = {
        "step_speed": a["step_p50_ms"] / b["step_p50_ms"],
        "sequence_speed": a["sequence_p50_ms"] / b["sequence_p50_ms"],
    }
    out["overlap"] = {  # True: the rounds' ranges overlap, the runs do not tell the two apart
        key: per_round(key, "model").overlaps(per_round(key, "other")) for key in ("step", "sequence")
    }
    out["load"] = machine_load()
    out["timings_note"] = TIMINGS_NOTE
    return out


def bench_against(
    model: str | os.PathLike[str], other: str | os.PathLike[str], *, rounds: int = 3, **options: Any
) -> dict[str, Any]:
    """Two files of one model (fp32 and int8, two strategies, ...) timed in turns (``timed_in_turns``); the
    medians, ``other``'s size and speed as ratios to ``model``'s (speed > 1: ``other`` is faster), and how far
    their outputs differ on one sequence."""
    from .drift import long_drift

    out = timed_in_turns(model, other, rounds=rounds, **options)
    out["machine"] = machine_info()
    for which, path in (("model", model), ("other", other)):
        out[which].update(path=os.fspath(path), bytes=os.path.getsize(path))
    out["ratios"]["size"] = out["model"]["bytes"] / out["other"]["bytes"]
    first = Model(model, threads=1)
    if first.manifest is not None:
        with open(model, "rb") as fa, open(other, "rb") as fb:
            out["drift"] = long_drift(fa.read(), fb.read(), first.manifest, steps=options.get("seq_len", 100))
    return out


def ratio_words(ratio: float, more: str, less: str) -> str:
    """A ratio (> 1: better) in the direction that reads naturally, three significant digits: ``ratio_words(0.002,
    "faster", "slower")`` is "500x slower"; within 0.5% of 1 it is "1.00x (the same)"."""
    if not np.isfinite(ratio) or ratio <= 0:
        return f"not measured ({ratio})"
    if abs(ratio - 1) < 0.005:
        return "1.00x (the same)"
    return f"{ratio:.3g}x {more}" if ratio > 1 else f"{1 / ratio:.3g}x {less}"


def format_against(result: dict[str, Any]) -> str:
    a, b, r = result["model"], result["other"], result["ratios"]
    lines = [
        f"{'':<9} {'file':<40} {'size':>10} {'step p50':>12} {'sequence p50':>14}",
        *(
            f"{label:<9} {d['path'][-40:]:<40} {d['bytes'] / 1024:>8.1f}Ki {d['step_p50_ms']:>10.4f}ms "
            f"{d['sequence_p50_ms']:>12.3f}ms"
            for label, d in (("model", a), ("against", b))
        ),
        f"against is {ratio_words(r['size'], 'smaller', 'larger')}, "
        f"{ratio_words(r['step_speed'], 'faster', 'slower')} per step, "
        f"{ratio_words(r['sequence_speed'], 'faster', 'slower')} per sequence "
        f"(medians of {result['rounds']} rounds in turns)",
    ]
    same = [k for k, v in (result.get("overlap") or {}).items() if v]
    if same:
        lines.append(
            f"per {' and per '.join(same)} the two overlap within their spread (the fastest and slowest round): "
            "the runs do not tell them apart"
        )
    lines.append(f"measured: {load_words(result.get('load'))}; {result.get('timings_note', TIMINGS_NOTE)}")
    if "drift" in result:
        lines.append(f"outputs differ by up to {result['drift']['max_abs']:.3g} over {result['drift']['steps']} steps")
    return "\n".join(lines)
