"""Whole-sequence forward of plain torch recurrent layers: torch eager against onnxruntime on torch's own
(legacy TorchScript) ONNX export and on edgernn's exports (native, loop, unroll, and auto where it exists),
side by side in one process on one CPU thread.

    python benchmarks/strategies.py --quick                  # one small shape, few rounds (a smoke run)
    python benchmarks/strategies.py --out results.json       # the full table (lstm, gru, rnn-tanh x 2 shapes)
    python benchmarks/strategies.py --cells lstm --shapes 1x100x128x2 --rounds 21

The model is the torch layer alone (``nn.LSTM/GRU/RNN(input_size=F, H, num_layers=L, batch_first=True)``,
eval, no grad; F = 64 unless ``--features``). torch eager runs that layer; the ONNX files are exported from it
wrapped to return only its output sequence (no final states). A shape ``BxTxHxL`` is batch x time x hidden x
layers. Every ONNX file runs on a plain ``onnxruntime.InferenceSession`` (CPU, intra- and inter-op threads 1,
default graph optimisations) with ``session.run`` on one seeded normal input, the same input torch runs; each
file's output must match torch's within 1e-4 (max abs) on it before anything is timed. torch runs with one
intra-op thread too.

Timing: the contenders run in interleaved rounds (round-robin, the starting contender rotating each round) so a
busy machine slows each alike; a sample is the mean of enough back-to-back calls to last ``--sample-ms``; the
table gives the median sample per full-sequence forward. Ratios are speedups (> 1: faster than the reference):
against torch eager and against onnxruntime on the legacy export.

FLOPs per forward count the recurrent matrix products only: for each layer 2*T*B*(G*H)*(I + H), G = 4 (LSTM),
3 (GRU), 1 (RNN), I = F for the first layer and H above it (biases, activations and gate arithmetic are left
out). The core's fp32 matmul peak is measured in the same process (512x512 @ 512x512, one thread; numpy under
threadpoolctl when that is installed, torch.mm otherwise), before and after the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = {"lstm": 4, "gru": 3, "rnn-tanh": 1}  # gates per cell
SHAPES = ("1x100x128x2", "8x200x256x2")
QUICK_SHAPE = "1x50x64x2"
STRATEGIES = ("native", "loop", "unroll", "auto")
TOLERANCE = 1e-4
TORCH, LEGACY = "torch eager", "ORT legacy export"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"1x100x128x2"`` -> (batch, time, hidden, layers)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
        if len(parts) != 4 or min(parts) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BxTxHxL, e.g. 1x100x128x2; got {text!r}") from None
    return parts  # type: ignore[return-value]


def machine() -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    import edgernn

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "edgernn": edgernn.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def matmul_peak(n: int = 512, seconds: float = 1.0) -> dict[str, Any]:
    """Single-thread fp32 GFLOP/s of an n x n @ n x n product: the best and the median of ~20 samples."""
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((n, n)).astype(np.float32)
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=1)
        how = "numpy matmul, threadpoolctl 1 thread"

        def mm() -> Any:
            return a @ b

    except ImportError:
        import torch

        limit = None
        how = "torch.mm, torch.set_num_threads(1) (threadpoolctl not installed)"
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def mm() -> Any:
            return torch.mm(ta, tb)

    try:
        mm()
        t0 = time.perf_counter()
        mm()
        one = time.perf_counter() - t0
        calls = max(1, round(seconds / 20 / max(one, 1e-6)))
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            for _ in range(calls):
                mm()
            samples.append((time.perf_counter() - t0) / calls)
    finally:
        if limit is not None:
            limit.unregister()
    flops = 2 * n**3
    return {
        "how": how,
        "n": n,
        "gflops_best": flops / min(samples) / 1e9,
        "gflops_median": flops / statistics.median(samples) / 1e9,
    }


def flops(cell: str, batch: int, steps: int, hidden: int, layers: int, features: int) -> int:
    g = CELLS[cell]
    return sum(2 * steps * batch * (g * hidden) * ((features if i == 0 else hidden) + hidden) for i in range(layers))


def torch_layer(cell: str, features: int, hidden: int, layers: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if cell == "lstm":
        return nn.LSTM(features, hidden, num_layers=layers, batch_first=True).eval()
    if cell == "gru":
        return nn.GRU(features, hidden, num_layers=layers, batch_first=True).eval()
    return nn.RNN(features, hidden, num_layers=layers, nonlinearity="tanh", batch_first=True).eval()


def output_only(layer: Any) -> Any:
    """The layer wrapped to return its output sequence alone: what both exporters are given."""
    from torch import nn

    class OutputOnly(nn.Module):
        def __init__(self, rnn: nn.Module) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    return OutputOnly(layer).eval()


def legacy_export(module: Any, x: Any, opset: int) -> bytes:
    """torch's TorchScript exporter (``dynamo=False``), dynamic batch and time axes, its warnings silenced."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}},
            opset_version=opset,
        )
    return buf.getvalue()


def edgernn_export(module: Any, x: Any, strategy: str) -> Any:
    """``edgernn.export.export`` of the module at the timed shape; unroll (and auto) fixed to its length."""
    import torch

    from edgernn.export import export

    b, t, f = x.shape
    opts: dict[str, Any] = {}
    if strategy == "unroll":
        opts = {"seq_len": t}
    elif strategy == "auto":
        opts = {"seq_len": t, "profile_shape": (b, t)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(module, (torch.zeros(b, t, f),), None, strategy=strategy, **opts)


def session(data: bytes) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def interleaved(
    runs: dict[str, Callable[[], Any]], rounds: int, sample_s: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each contender's samples (seconds per call), round by round, the first contender rotating each round; a
    sample is the mean of enough calls to last ``sample_s`` (calibrated after a warm-up)."""
    calls: dict[str, int] = {}
    for name, fn in runs.items():
        for _ in range(3):  # first calls allocate and fill caches
            fn()
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        calls[name] = max(1, math.ceil(sample_s / max(one, 1e-7)))
    names = list(runs)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, k = runs[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return samples, calls


def spread(v: list[float]) -> float:
    """Interquartile range over the median: how noisy a contender's samples were."""
    if len(v) < 4:
        return (max(v) - min(v)) / statistics.median(v)
    q = statistics.quantiles(v, n=4)
    return (q[2] - q[0]) / statistics.median(v)


def bench_row(
    cell: str,
    shape: tuple[int, int, int, int],
    features: int,
    strategies: list[str],
    rounds: int,
    sample_s: float,
    opset: int,
    auto_state: dict[str, Any],
) -> dict[str, Any]:
    import torch

    from edgernn.errors import ConfigError, EdgeRNNError, ExportError

    batch, steps, hidden, layers = shape
    layer = torch_layer(cell, features, hidden, layers)
    wrapped = output_only(layer)
    x_np = np.random.default_rng(0).standard_normal((batch, steps, features)).astype(np.float32)
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        want = layer(x)[0].numpy()

    t0 = time.time()
    files: dict[str, bytes] = {LEGACY: legacy_export(wrapped, x, opset)}
    refused: dict[str, str] = {}
    auto: dict[str, Any] | None = None
    for s in strategies:
        if s == "auto" and auto_state.get("missing"):
            continue
        try:
            res = edgernn_export(wrapped, x, s)
        except (ConfigError, ExportError) as e:
            why = str(e).strip().splitlines()[0][:300]
            if s == "auto" and "tried" not in auto_state:
                auto_state["missing"] = why  # not in this edgernn (yet): the column is left out of the run
                auto_state["tried"] = True
                continue
            refused[s] = f"{type(e).__name__}: {why}"
            continue
        except EdgeRNNError as e:  # parity failure and the like: edgernn refused to write it
            refused[s] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            continue
        if s == "auto":
            auto_state["tried"] = True
            sel = res.manifest.selection or {}
            auto = {"chosen": sel.get("chosen", res.manifest.strategy), "selection": sel}
        files[s] = res.model_bytes
    export_s = time.time() - t0

    sessions = {name: session(data) for name, data in files.items()}
    feed = {"x": x_np}
    diffs: dict[str, float] = {}
    for name, sess in sessions.items():  # a benchmark of a wrong model is worthless: check on the timed input
        got = sess.run(None, feed)[0]
        if got.shape != want.shape:
            sys.exit(f"{cell} {shape}: {name} returns shape {got.shape}, torch {want.shape}; not timing it")
        diffs[name] = float(np.abs(got - want).max())
        if not diffs[name] <= TOLERANCE:
            sys.exit(
                f"{cell} {'x'.join(map(str, shape))}: {name} differs from torch by {diffs[name]:.3g} (max abs) on "
                f"the timed input, over the {TOLERANCE:g} allowed; not timing a wrong model"
            )

    def torch_run() -> None:
        with torch.no_grad():
            layer(x)

    runs: dict[str, Callable[[], Any]] = {TORCH: torch_run}
    for name, sess in sessions.items():
        runs[name] = lambda s=sess: s.run(["y"], feed)
    samples, calls = interleaved(runs, rounds, sample_s)
    med = {n: statistics.median(v) for n, v in samples.items()}
    # auto's file is one of the others again: the best is named by what it is, not twice
    distinct = [n for n in med if not (n == "auto" and auto and auto["chosen"] in med)]
    best = min(distinct, key=lambda n: med[n])
    fl = flops(cell, batch, steps, hidden, layers, features)
    contenders = {
        n: {
            "median_us": med[n] * 1e6,
            "spread_iqr": spread(samples[n]),
            "calls_per_sample": calls[n],
            "samples_us": [v * 1e6 for v in samples[n]],
            "speedup_vs_torch": med[TORCH] / med[n],
            "speedup_vs_legacy": med[LEGACY] / med[n],
            "gflops": fl / med[n] / 1e9,
            "max_abs_diff_vs_torch": diffs.get(n, 0.0),
        }
        for n in runs
    }
    return {
        "cell": cell,
        "batch": batch,
        "time": steps,
        "hidden": hidden,
        "layers": layers,
        "features": features,
        "flops": fl,
        "contenders": contenders,
        "refused": refused,
        "auto": auto,
        "best": best,
        "best_gflops": fl / med[best] / 1e9,
        "export_s": export_s,
    }


def fmt_time(us: float) -> str:
    return f"{us:.0f} us" if us < 1000 else f"{us / 1e3:.2f} ms"


def columns(rows: list[dict[str, Any]], strategies: list[str]) -> list[str]:
    return [TORCH, LEGACY] + [s for s in strategies if any(s in r["contenders"] or s in r["refused"] for r in rows)]


def markdown(result: dict[str, Any]) -> str:
    m, peak, rows = result["machine"], result["peak"], result["rows"]
    cols = columns(rows, result["settings"]["strategies"])
    peak_gf = max(p["gflops_median"] for p in (peak["before"], peak.get("after")) if p)  # the less disturbed
    head = ["cell", "B x T x H x L"] + [c if c in (TORCH, LEGACY) else f"edgernn {c}" for c in cols]
    head += ["best", "best GFLOP/s (% of peak)"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores_available']} of {m['cores']} cores available, load average "
        f"{m['load_average']} at the start; {m['date']}. torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"edgernn {m['edgernn']}, onnx {m['onnx']}, numpy {m['numpy']}, Python {m['python']}.",
        "",
        f"One thread everywhere (torch.set_num_threads(1); onnxruntime intra_op 1, inter_op 1). Input features "
        f"{result['settings']['features']}, batch_first, fp32. Median of {result['settings']['rounds']} interleaved "
        f"rounds per full-sequence forward; each ONNX cell: time (speedup vs torch eager, vs ORT on torch's legacy "
        f"export), > 1 is faster. Every ONNX output matched torch within {TOLERANCE:g} on the timed input.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        c = r["contenders"]
        cells = [r["cell"], f"{r['batch']} x {r['time']} x {r['hidden']} x {r['layers']}"]
        for name in cols:
            if name == TORCH:
                cells.append(fmt_time(c[name]["median_us"]))
            elif name in c:
                v = c[name]
                text = f"{fmt_time(v['median_us'])} ({v['speedup_vs_torch']:.2f}x, {v['speedup_vs_legacy']:.2f}x)"
                if name == "auto" and r["auto"]:
                    text += f" [{r['auto']['chosen']}]"
                cells.append(text)
            elif name in r["refused"]:
                cells.append("refused")
            else:
                cells.append("-")
        cells.append(r["best"])
        cells.append(f"{r['best_gflops']:.2f} ({r['best_gflops'] / peak_gf:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    b, a = peak["before"], peak.get("after")
    lines += [
        "",
        f"FLOPs per forward = sum over layers of 2*T*B*(G*H)*(I + H), G = 4 (LSTM), 3 (GRU), 1 (RNN), I = "
        f"{result['settings']['features']} for the first layer and H above it (recurrent matrix products only). "
        f"Core peak ({b['how']}, {b['n']}x{b['n']} @ {b['n']}x{b['n']}): {b['gflops_median']:.1f} GFLOP/s median, "
        f"{b['gflops_best']:.1f} best before the rounds"
        + (f"; {a['gflops_median']:.1f} median, {a['gflops_best']:.1f} best after" if a else "")
        + "; the % column uses the higher median.",
    ]
    for r in rows:
        for s, why in r["refused"].items():
            lines.append(f"- {r['cell']} {r['batch']}x{r['time']}x{r['hidden']}x{r['layers']}: {s} refused: {why}")
        if r["auto"]:
            sel = r["auto"]["selection"]
            timed = ", ".join(f"{k} {v:.0f} us" for k, v in (sel.get("median_us") or {}).items())
            ours = {k: r["contenders"][k]["median_us"] for k in ("native", "loop", "unroll") if k in r["contenders"]}
            fastest = min(ours, key=lambda k: ours[k]) if ours else None
            agree = "" if fastest in (None, r["auto"]["chosen"]) else f"; fastest in these rounds: {fastest}"
            lines.append(
                f"- {r['cell']} {r['batch']}x{r['time']}x{r['hidden']}x{r['layers']}: auto chose "
                f"{r['auto']['chosen']} (its own timing at {sel.get('profile_shape')}: {timed}){agree}"
            )
    worst = max(
        ((v["max_abs_diff_vs_torch"], r, n) for r in rows for n, v in r["contenders"].items()), key=lambda t: t[0]
    )
    lines.append(
        f"- largest max-abs difference from torch on the timed inputs: {worst[0]:.2g} ({worst[1]['cell']} "
        f"{worst[1]['batch']}x{worst[1]['time']}x{worst[1]['hidden']}x{worst[1]['layers']}, {worst[2]})"
    )
    if result.get("auto_missing"):
        lines.append(f"- no auto column: this edgernn refuses strategy auto ({result['auto_missing']})")
    noisy = [
        f"{r['cell']} {r['batch']}x{r['time']}x{r['hidden']}x{r['layers']} {n} ({v['spread_iqr']:.0%})"
        for r in rows
        for n, v in r["contenders"].items()
        if v["spread_iqr"] > 0.1
    ]
    if noisy:
        lines.append("- noisy (interquartile range over 10% of the median): " + "; ".join(noisy))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"shape {QUICK_SHAPE}, 3 rounds of 20 ms samples")
    ap.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    ap.add_argument(
        "--shapes", nargs="+", type=parse_shape, default=None, help=f"BxTxHxL (default: {' '.join(SHAPES)})"
    )
    ap.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    ap.add_argument("--features", type=int, default=64, help="input features F")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; 3 with --quick)")
    ap.add_argument("--sample-ms", type=float, default=None, help="ms per sample (default 200; 20 with --quick)")
    ap.add_argument("--opset", type=int, default=17, help="opset of the legacy torch export")
    ap.add_argument("--out", default=None, help="write the results (every sample too) to this JSON file")
    args = ap.parse_args()
    shapes = args.shapes or [parse_shape(s) for s in ((QUICK_SHAPE,) if args.quick else SHAPES)]
    rounds = args.rounds or (3 if args.quick else 15)
    sample_s = (args.sample_ms or (20.0 if args.quick else 200.0)) / 1e3

    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(1)
    info = machine()
    print(
        f"{info['cpu']} ({info['processor'] or '-'}), {info['cores_available']}/{info['cores']} cores, load "
        f"{info['load_average']}; {info['date']}; torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
        f"edgernn {info['edgernn']}",
        file=sys.stderr,
    )
    peak: dict[str, Any] = {"before": matmul_peak()}
    print(f"matmul peak: {peak['before']['gflops_median']:.1f} GFLOP/s ({peak['before']['how']})", file=sys.stderr)
    auto_state: dict[str, Any] = {}
    rows = []
    for shape in shapes:
        for cell in args.cells:
            t0 = time.time()
            row = bench_row(cell, shape, args.features, list(args.strategies), rounds, sample_s, args.opset, auto_state)
            rows.append(row)
            summary = ", ".join(f"{n} {fmt_time(v['median_us'])}" for n, v in row["contenders"].items())
            print(
                f"{cell} {'x'.join(map(str, shape))}: {summary} (exports {row['export_s']:.0f}s, "
                f"all {time.time() - t0:.0f}s)",
                file=sys.stderr,
            )
            for s, why in row["refused"].items():
                print(f"  {s} refused: {why}", file=sys.stderr)
            if row["auto"]:
                print(f"  auto chose {row['auto']['chosen']}: {row['auto']['selection']}", file=sys.stderr)
    if auto_state.get("missing"):
        print(f"no auto column: {auto_state['missing']}", file=sys.stderr)
    peak["after"] = matmul_peak()
    result = {
        "machine": info,
        "settings": {
            "cells": args.cells,
            "shapes": ["x".join(map(str, s)) for s in shapes],
            "strategies": list(args.strategies),
            "features": args.features,
            "rounds": rounds,
            "sample_ms": sample_s * 1e3,
            "legacy_opset": args.opset,
            "threads": 1,
            "tolerance": TOLERANCE,
            "quick": args.quick,
        },
        "flops_formula": "sum over layers of 2*T*B*(G*H)*(I+H); G=4 LSTM, 3 GRU, 1 RNN; I=F first layer, H above",
        "peak": peak,
        "auto_missing": auto_state.get("missing"),
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    print(markdown(result))


if __name__ == "__main__":
    main()
