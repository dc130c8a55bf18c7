"""Streaming targets of issue 4, measured side by side in one process (CPU, one thread).

(a) batch 1, LSTM hidden 128, 2 layers: a ``Stream.step`` against a torch eager step of the same model
    (target >= 5x) and against a bare onnxruntime call on pre-bound buffers (target: within 1.3x);
(b) 64 streams served by one batched call (``StreamingModel.step_many``, and ``StreamGroup.step`` for streams
    that stay together on pre-bound batch buffers) against 64 separate ``Stream.step`` calls (target >= 10x
    throughput).

The model is an edgernn zoo model (LSTM stack + linear head, one output per step), exported with the ``step``
strategy twice: plain MatMul + activations (``--form step``, what mobile providers can partition) and with
``fused=True`` (``--form step-fused``, ONNX ``LSTM`` ops carrying the state) to show what the graph form costs.
Timings interleave the candidates round by round and report medians, because the machine is shared.

    python benchmarks/streaming.py                 # table and ratios
    python benchmarks/streaming.py --markdown      # the section for docs/benchmarks.md
    python benchmarks/streaming.py --json
    python benchmarks/streaming.py --cpu-time      # CPU time of the calling thread instead of wall time

``--cpu-time`` times each block by ``time.thread_time``: onnxruntime (one intra-op thread) and torch (one
thread) compute in the calling thread, so it counts their work, and not the time other jobs on a shared machine
take the core away, which wall time does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


CLOCK: Callable[[], float] = time.perf_counter  # time.thread_time with --cpu-time


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    clock = CLOCK
    t = clock()
    for _ in range(calls):
        fn()
    return (clock() - t) / calls * 1e6


def interleaved(candidates: dict[str, tuple[Callable[[], Any], int]], rounds: int) -> dict[str, float]:
    """Median over rounds of each candidate's mean time per call (us); every round runs each candidate once."""
    for fn, calls in candidates.values():  # warm up: first calls bind buffers and fill caches
        per_call_us(fn, max(calls // 10, 3))
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, (fn, calls) in candidates.items():
            samples[name].append(per_call_us(fn, calls))
    return {k: statistics.median(v) for k, v in samples.items()}


def machine() -> dict[str, str]:
    import onnxruntime as ort
    import torch

    cpu = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores_available": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def build(form: str, features: int, hidden: int, layers: int, out_dir: Path) -> tuple[Any, Path, str]:
    """The torch zoo model and its stateful ONNX file: the step strategy's export, plain or fused."""
    import torch

    from edgernn.model.zoo import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(cell="lstm", input_size=features, hidden_size=hidden, num_layers=layers, readout="all")
    model = build_model(cfg).eval()
    path = out_dir / f"{form}.onnx"
    from edgernn.export import export_model

    fused = form == "step-fused"
    export_model(model, path, strategy="step", chunk=1, fused=fused)
    return model, path, "edgernn export --strategy step --chunk 1" + (" --fused" if fused else "")


def run(form: str, features: int, hidden: int, layers: int, streams: int, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from edgernn.runtime import StreamingModel
    from edgernn.runtime.model import run_options

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, path, how = build(form, features, hidden, layers, Path(tmp))
        sm = StreamingModel(path, provider="cpu", threads=1)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((256, features)).astype(np.float32)

    # correctness first: a Stream over 256 frames against torch eager on the same frames
    s = sm.stream()
    got = np.concatenate([s.step(f) for f in xs])
    with torch.inference_mode():
        want = model(torch.from_numpy(xs[None])).numpy()[0]
    diff = float(np.abs(got - want).max())

    # (a) batch 1
    s = sm.stream()
    frame = xs[0]
    s.step(frame)  # binds this stream's buffers
    sess = sm.session
    ov = ort.OrtValue.ortvalue_from_numpy
    x_buf = frame.reshape(1, 1, features).copy()
    init = sm.initial_state(1)
    pp = [{k: v.copy() for k, v in init.items()}, {k: v.copy() for k, v in init.items()}]
    out_bufs = {o.name: np.zeros_like(sm.step_many_all([sm.stream()], [frame])[0][o.name][None]) for o in sm.outputs}
    bindings = []
    for cur in (0, 1):  # what a hand-written caller would do: two bindings whose state buffers swap
        io = sess.io_binding()
        io.bind_ortvalue_input(sm.data.name, ov(x_buf))
        for st in sm.states:
            io.bind_ortvalue_input(st.input, ov(pp[cur][st.input]))
            io.bind_ortvalue_output(st.output, ov(pp[1 - cur][st.input]))
        for name, buf in out_bufs.items():
            io.bind_ortvalue_output(name, ov(buf))
        bindings.append(io)
    parity = [0]

    def bare() -> None:
        sess.run_with_iobinding(bindings[parity[0]])
        parity[0] ^= 1

    options = run_options()  # what edgernn gives every call (see edgernn.runtime.model.run_options)

    def bare_run_options() -> None:
        sess.run_with_iobinding(bindings[parity[0]], options)
        parity[0] ^= 1

    state = dict(init)
    names = [*sess.get_outputs()]
    out_names = [o.name for o in names]
    feed_x = frame.reshape(1, 1, features)

    def plain() -> None:
        res = sess.run(out_names, {sm.data.name: feed_x, **state})
        for st in sm.states:
            state[st.input] = res[out_names.index(st.output)]

    t_frame = torch.from_numpy(frame.reshape(1, 1, features))
    t_state: list[Any] = [None]

    def torch_step() -> None:
        with torch.inference_mode():
            y, t_state[0] = model.rnn(t_frame, t_state[0])
            model.head(y)

    a = interleaved(
        {
            "stream_step": (lambda: s.step(frame), 2000),
            "bare_bound_call": (bare, 2000),
            "bare_bound_call_run_options": (bare_run_options, 2000),
            "session_run": (plain, 2000),
            "torch_eager_step": (torch_step, 500),
        },
        rounds,
    )

    # (b) many streams
    many = [sm.stream() for _ in range(streams)]
    frames = [xs[i % len(xs)] for i in range(streams)]
    feed_many = {sm.data.name: np.stack(frames)[:, None], **sm.initial_state(streams)}

    def separate() -> None:
        for st, f in zip(many, frames, strict=True):
            st.step(f)

    def batched() -> None:
        sm.step_many(many, frames)

    def bare_batched() -> None:
        sess.run(out_names, feed_many)

    group = sm.group(streams)
    frames_array = np.stack(frames)
    check = sm.group(streams)  # the group computes what the separate streams compute
    apart = [sm.stream() for _ in range(streams)]
    for _ in range(3):
        got = check.step(frames_array)
        want = np.stack([st.step(f) for st, f in zip(apart, frames, strict=True)])
        if not np.allclose(got, want, rtol=0, atol=1e-5):
            raise SystemExit(f"a group step differs from separate streams by {np.abs(got - want).max():.3g}")

    b = interleaved(
        {
            "separate_calls": (separate, 20),
            "one_batched_call": (batched, 100),
            "group_step": (lambda: group.step(frames_array), 100),
            "bare_batched_run": (bare_batched, 100),
        },
        rounds,
    )
    return {
        "form": form,
        "model": how,
        "config": {"cell": "lstm", "features": features, "hidden": hidden, "layers": layers, "head": "linear(1)"},
        "max_abs_diff_vs_torch": diff,
        "batch1_us": a,
        "streams": streams,
        "many_us": b,
        "ratios": {
            "stream_vs_torch": a["torch_eager_step"] / a["stream_step"],
            "stream_vs_bare": a["stream_step"] / a["bare_bound_call"],
            "stream_vs_bare_run_options": a["stream_step"] / a["bare_bound_call_run_options"],
            "session_run_vs_bare": a["session_run"] / a["bare_bound_call"],
            "batched_vs_separate_throughput": b["separate_calls"] / b["one_batched_call"],
            "group_vs_separate_throughput": b["separate_calls"] / b["group_step"],
            "ceiling_batched_vs_separate": streams * a["bare_bound_call"] / b["bare_batched_run"],
        },
    }


def markdown(results: list[dict[str, Any]], info: dict[str, str]) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores_available']} cores available (shared with other jobs), "
        f"onnxruntime {info['onnxruntime']}, torch {info['torch']}, numpy {info['numpy']}, Python {info['python']}; "
        f"{info['date']}. One intra-op thread everywhere (onnxruntime and torch). Medians of interleaved rounds, "
        f"timed by {info['clock']}; load average {info['load_before']} before, {info['load_after']} after.",
        "",
        "| model form | Stream.step | bare bound call | bare bound call, RunOptions made once | session.run | "
        "torch eager step | Stream vs torch (target >= 5x) | Stream / bare (goal <= 1.1x) | Stream / bare with "
        "RunOptions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, q = r["batch1_us"], r["ratios"]
        lines.append(
            f"| {r['form']} | {a['stream_step']:.1f} us | {a['bare_bound_call']:.1f} us | "
            f"{a['bare_bound_call_run_options']:.1f} us | {a['session_run']:.1f} us | {a['torch_eager_step']:.1f} us | "
            f"{q['stream_vs_torch']:.1f}x | {q['stream_vs_bare']:.2f}x | {q['stream_vs_bare_run_options']:.2f}x |"
        )
    lines += [
        "",
        f"| model form | {results[0]['streams']} separate Stream.step | one step_many | one StreamGroup.step | "
        "bare batched run | gain: step_many / group (target >= 10x) | ceiling (N x bare B1 / bare BN) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, q = r["many_us"], r["ratios"]
        lines.append(
            f"| {r['form']} | {b['separate_calls']:.0f} us | {b['one_batched_call']:.0f} us | "
            f"{b['group_step']:.0f} us | {b['bare_batched_run']:.0f} us | "
            f"{q['batched_vs_separate_throughput']:.1f}x / {q['group_vs_separate_throughput']:.1f}x | "
            f"{q['ceiling_batched_vs_separate']:.1f}x |"
        )
    lines.append("")
    for r in results:
        lines.append(
            f"- `{r['form']}`: {r['model']}; max abs diff against torch over 256 steps "
            f"{r['max_abs_diff_vs_torch']:.2g}."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--form", choices=["step", "step-fused", "both"], default="both")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--cpu-time", action="store_true", help="time by the thread's CPU time (time.thread_time)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.cpu_time else time.perf_counter
    forms = ["step", "step-fused"] if args.form == "both" else [args.form]
    info = machine()
    info["clock"] = "CPU time (time.thread_time)" if args.cpu_time else "wall time (time.perf_counter)"
    info["load_before"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    results = [run(f, args.features, args.hidden, args.layers, args.streams, args.rounds) for f in forms]
    info["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    if args.json:
        print(json.dumps({"machine": info, "results": results}, indent=2))
    elif args.markdown:
        print(markdown(results, info))
    else:
        print(json.dumps(info))
        for r in results:
            print(f"\n[{r['form']}] {r['model']}  (max |diff| vs torch {r['max_abs_diff_vs_torch']:.2g})")
            for k, v in {**r["batch1_us"], **r["many_us"]}.items():
                print(f"  {k:<20} {v:10.1f} us")
            for k, v in r["ratios"].items():
                print(f"  {k:<34} {v:6.2f}x")


if __name__ == "__main__":
    main()
