"""int8 and fp16 against fp32: size, latency, drift and task metric, per cell and strategy, in one process.

    python benchmarks/precision.py                 # hidden 128 and 256, every cell and strategy (~20 min, 2 cores)
    python benchmarks/precision.py --hidden 128 --cells lstm --markdown

For each cell and hidden size a 2-layer model is trained briefly on the built-in `sine` task (so the metric
means something), exported with each strategy, quantised with `edgernn.optimize.quantize` as a user gets it
(judged by the task at the default budget of 1%, int8 per tensor or per channel where per tensor is over it; a
file refused at that budget is made again without one and marked), with the long-run drift measured, and the
three files are timed in interleaved rounds on one onnxruntime CPU thread: batch 1, 100 steps (a streaming file:
100 calls of one step). Ratios > 1 mean the reduced file is faster (latency) or smaller (size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CELLS = ("rnn-tanh", "rnn-relu", "lstm", "gru")
STRATEGIES = {"native": {}, "loop": {}, "unroll": {"seq_len": 100}, "step": {}}


def _runner(data: bytes, manifest, x: np.ndarray):  # type: ignore[no-untyped-def]
    from edgernn.runtime import Model, StreamingModel

    if manifest.states:
        sm = StreamingModel(data, threads=1)

        def run_stream() -> None:
            s = sm.stream()
            for t in range(x.shape[1]):
                s.step(x[0, t])

        return run_stream
    m = Model(data, threads=1)
    return lambda: m.run(x)


def _time(runners: dict[str, object], rounds: int, calls: int) -> dict[str, float]:
    for run in runners.values():
        run()  # type: ignore[operator]
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                run()  # type: ignore[operator]
            times[name].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--cells", nargs="+", default=list(CELLS))
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--long-steps", type=int, default=10_000)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()

    import torch

    from edgernn.errors import ParityError
    from edgernn.export.sources import export_checkpoint
    from edgernn.optimize.workflow import quantize_bytes
    from edgernn.train.workflow import train_to_dir
    from edgernn.verify.bench import machine_info

    torch.set_num_threads(1)
    rows = []
    x = np.random.default_rng(0).standard_normal((1, 100, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in args.hidden:
            for cell in args.cells:
                run = Path(tmp) / f"{cell}-{hidden}"
                train_to_dir(
                    task="sine",
                    cell=cell,
                    hidden=hidden,
                    layers=2,
                    bidirectional=False,
                    out_dir=str(run),
                    epochs=args.epochs,
                    n_train=512,
                    progress=False,
                )
                for strategy in args.strategies:
                    t0 = time.time()
                    fp32 = export_checkpoint(run, None, strategy=strategy, **STRATEGIES[strategy])
                    files = {"fp32": fp32.model_bytes}
                    reports = {}
                    refused = {}
                    for to in ("int8", "fp16"):
                        try:  # as a user gets it: the default budget (and, for int8, per channel where it helps)
                            q = quantize_bytes(fp32.model_bytes, to, None, ckpt=run, long_steps=args.long_steps)
                        except ParityError as e:  # refused: measured anyway, and marked
                            refused[to] = str(e)
                            q = quantize_bytes(
                                fp32.model_bytes, to, None, ckpt=run, max_metric_drop=1.0, long_steps=args.long_steps
                            )
                        files[to], reports[to] = q.model_bytes, q.report
                    ms = _time({k: _runner(v, fp32.manifest, x) for k, v in files.items()}, args.rounds, args.calls)
                    row = {"cell": cell, "hidden": hidden, "strategy": strategy, "fp32_ms": ms["fp32"]}
                    for to in ("int8", "fp16"):
                        r = reports[to]
                        row[to] = {
                            "ms": ms[to],
                            "speed": ms["fp32"] / ms[to],
                            "size": r["size_ratio"],
                            "weights_reduced": r["weights_reduced"],
                            "long_drift": r["long_drift"]["max_abs"],
                            "long_form": r["long_drift"]["form"],
                            "metric_drop": r["metric"]["drop"],
                            "per_channel": r["how"].get("per_channel", False),
                            "refused": refused.get(to),
                        }
                    rows.append(row)
                    print(
                        f"{cell} H{hidden} {strategy}: fp32 {ms['fp32']:.3f} ms, int8 {row['int8']['speed']:.2f}x "
                        f"({row['int8']['size']:.2f}x smaller), fp16 {row['fp16']['speed']:.2f}x "
                        f"({row['fp16']['size']:.2f}x smaller) [{time.time() - t0:.0f}s]",
                        file=sys.stderr,
                    )
    out = {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k not in ("markdown", "json_path")},
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2))
    if args.markdown:
        print(
            "| cell | H | strategy | fp32 ms | int8 speed | int8 size | int8 drift (10k) | int8 metric | "
            "fp16 speed | fp16 size | fp16 drift (10k) | fp16 metric |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            i, f = r["int8"], r["fp16"]
            mark = {k: (" (refused)" if r[k]["refused"] else "") for k in ("int8", "fp16")}
            pc = " (per channel)" if i["per_channel"] else ""
            print(
                f"| {r['cell']} | {r['hidden']} | {r['strategy']} | {r['fp32_ms']:.3f} | {i['speed']:.2f}x | "
                f"{i['size']:.2f}x | {i['long_drift']:.2e} | {i['metric_drop']:+.2%}{pc}{mark['int8']} | "
                f"{f['speed']:.2f}x | {f['size']:.2f}x | {f['long_drift']:.2e} | "
                f"{f['metric_drop']:+.2%}{mark['fp16']} |"
            )
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
