"""Scale-out on Ray, measured in one run: throughput with 1 and 2 Serve replicas and 1 and 2 Ray Data actors.

Serve (``edgernn.serve.ray.stream_deployment``, stateful and stateless): ``--streams`` streams, each with one
request in flight at a time; every round sends the next frame of every stream and waits for all of them (a closed
loop, as live streams are), through the application's handle (ingress -> replica) or ``StreamClient`` (straight to
the replica). Reported: frames per second, the mean time of a round, and the mean onnxruntime batch the replicas
ran (requests / calls).

Data (``edgernn.batch.ray.map_model``, whole-sequence and step exports): ``--rows`` sequences of ``--steps`` steps,
``batch_size`` 64 rows, 1 CPU (and 1 onnxruntime thread) per actor; the wall time of running the whole dataset,
actor start-up included. Beside each, the same batches through ``ModelBatch`` in this process with no Ray: what
one core does without the pipeline.

The ratio 2 / 1 is the point: how much the second replica or actor adds on this machine. The script starts its
own Ray cluster with ``--cpus`` CPUs (default: what this process may use) and shuts it down at the end.

    python benchmarks/scale_out.py                          # exports a 2-layer LSTM (H16) to a temp folder first
    python benchmarks/scale_out.py --step step.onnx --seq seq.onnx --json scale_out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def exports(folder: Path, features: int) -> tuple[Path, Path]:
    """A 2-layer LSTM (hidden 16, one output per sequence), as the docs' `edgernn train --task sine` makes it,
    exported as `step` and `native` (weights seeded, untrained: speed does not depend on them)."""
    import torch

    from edgernn import ModelConfig, build_model
    from edgernn.export import export_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", input_size=features, hidden_size=16, num_layers=2))
    step, seq = folder / "step.onnx", folder / "seq.onnx"
    export_model(model, step, strategy="step")
    export_model(model, seq, strategy="native")
    return step, seq


def serve_throughput(
    step: Path, replicas: int, *, stateless: bool, client: bool, streams: int, rounds: int, features: int
) -> dict[str, Any]:
    from ray import serve

    from edgernn.serve.ray import StreamClient, stream_deployment

    name = f"bench-{'stateless' if stateless else 'stateful'}-{replicas}-{int(client)}"
    app = stream_deployment(step, replicas=replicas, stateless=stateless, max_batch_size=streams, num_cpus=1)
    app_handle = serve.run(app, name=name, route_prefix=f"/{name}")
    send = StreamClient(name).submit if client else app_handle.remote
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((rounds + 20, streams, features)).astype(np.float32)
    states: list[Any] = [None] * streams

    def one_round(t: int) -> None:
        reqs = []
        for i in range(streams):
            body: dict[str, Any] = {"stream": f"s{i}", "frame": frames[t, i]}
            if stateless and states[i] is not None:
                body["state"] = states[i]
            reqs.append(send(body))
        for i, r in enumerate(reqs):
            out = r.result()
            if stateless:
                states[i] = out["state"]

    for t in range(20):  # warm-up: replicas bound, routers filled
        one_round(t)
    t0 = time.perf_counter()
    for t in range(rounds):
        one_round(20 + t)
    seconds = time.perf_counter() - t0
    rh = serve.get_deployment_handle("StreamReplica", name)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        s = rh.stats.remote().result()
        seen[s["replica"]] = s
        if len(seen) == replicas:
            break
    requests = sum(s["requests"] for s in seen.values())
    calls = sum(s["calls"] for s in seen.values())
    serve.delete(name)
    return {
        "replicas": replicas,
        "mode": "stateless" if stateless else "stateful",
        "path": "StreamClient" if client else "app handle",
        "frames_per_s": streams * rounds / seconds,
        "round_ms": seconds / rounds * 1e3,
        "mean_batch": requests / calls if calls else 0.0,
    }


def local_frames_per_s(step: Path, streams: int, rounds: int, features: int) -> dict[str, float]:
    """The same streams in this process, no Ray: one ``step_many`` call per round, or a ``Stream.step`` per frame."""
    from edgernn.runtime.stream import StreamingModel

    sm = StreamingModel(step)
    ss = [sm.stream() for _ in range(streams)]
    frames = np.random.default_rng(0).standard_normal((rounds, streams, features)).astype(np.float32)
    sm.step_many(ss, list(frames[0]))
    t0 = time.perf_counter()
    for t in range(rounds):
        sm.step_many(ss, list(frames[t]))
    many = streams * rounds / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in range(rounds):
        for s, f in zip(ss, frames[t], strict=True):
            s.step(f)
    one = streams * rounds / (time.perf_counter() - t0)
    return {"step_many": many, "stream_step": one}


def data_throughput(model: Path, actors: int, rows: np.ndarray) -> dict[str, Any]:
    import ray

    from edgernn.batch.ray import map_model

    ds = ray.data.from_numpy(rows).repartition(actors * 8)
    ds = ds.materialize()  # the input in the object store: only the mapping is timed
    t0 = time.perf_counter()
    n, first_n, first_t = 0, 0, 0.0
    mapped = map_model(ds, model, column="data", batch_size=64, concurrency=actors, num_cpus=1)
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(batch["y"])
        if not first_t:  # the first block back: the actors have started
            first_n, first_t = n, time.perf_counter()
    end = time.perf_counter()
    assert n == len(rows)
    return {
        "actors": actors,
        "rows_per_s": n / (end - t0),
        "seconds": end - t0,
        "first_block_s": first_t - t0,
        "steady_rows_per_s": (n - first_n) / (end - first_t) if end > first_t else 0.0,
    }


def local_rows_per_s(model: Path, rows: np.ndarray) -> float:
    """The same work in this process, one thread, no Ray: ModelBatch over batches of 64 rows."""
    from edgernn.batch.ray import ModelBatch

    mb = ModelBatch(str(model), column="data", threads=1)
    t0 = time.perf_counter()
    for start in range(0, len(rows), 64):
        mb({"data": rows[start : start + 64]})
    return len(rows) / (time.perf_counter() - t0)


def machine() -> dict[str, Any]:
    import onnxruntime as ort
    import ray

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), "?")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "ray": ray.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step", type=Path, help="a step export (default: exported here)")
    p.add_argument("--seq", type=Path, help="a whole-sequence export of the same model (default: exported here)")
    p.add_argument("--features", type=int, default=1)
    p.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = p.parse_args()

    import ray

    tmp = tempfile.TemporaryDirectory()
    step, seq = args.step, args.seq
    if step is None or seq is None:
        step, seq = exports(Path(tmp.name), args.features)
    rows = np.random.default_rng(1).standard_normal((args.rows, args.steps, args.features)).astype(np.float32)
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        from ray import serve

        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        result["serve"] = [
            serve_throughput(
                step, r, stateless=sl, client=c, streams=args.streams, rounds=args.rounds, features=args.features
            )
            for c in (False, True)
            for sl in (False, True)
            for r in (1, 2)
        ]
        serve.shutdown()
        result["serve_local"] = local_frames_per_s(step, args.streams, args.rounds, args.features)
        result["data"] = []
        for kind, model in (("sequence", seq), ("step", step)):
            local = local_rows_per_s(model, rows)
            for actors in (1, 2):
                result["data"].append({"mode": kind, "local_rows_per_s": local, **data_throughput(model, actors, rows)})
    finally:
        ray.shutdown()
        tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(f"{m['date']}  {m['cpu']}, {m['cpus_usable']} CPUs usable, load {m['load_average']}")
    print(f"python {m['python']}, onnxruntime {m['onnxruntime']}, ray {m['ray']}, numpy {m['numpy']}")
    print(f"\nServe: {args.streams} streams, one frame in flight each, {args.rounds} rounds")
    print("| sent through | mode | replicas | frames/s | round (ms) | mean batch | vs 1 replica |")
    print("|---|---|---|---|---|---|---|")
    for r in result["serve"]:
        base = next(
            x for x in result["serve"] if (x["mode"], x["path"]) == (r["mode"], r["path"]) and x["replicas"] == 1
        )
        print(
            f"| {r['path']} | {r['mode']} | {r['replicas']} | {r['frames_per_s']:.0f} | {r['round_ms']:.1f} | "
            f"{r['mean_batch']:.1f} | {r['frames_per_s'] / base['frames_per_s']:.2f}x |"
        )
    loc = result["serve_local"]
    print(
        f"in this process, no Ray: step_many of {args.streams} streams {loc['step_many']:.0f} frames/s; "
        f"Stream.step one by one {loc['stream_step']:.0f} frames/s"
    )
    print(f"\nData: {args.rows} sequences of {args.steps} steps, 64 rows per call, 1 CPU per actor")
    print(
        "| export | actors | rows/s | seconds (first block) | vs 1 actor | after the first block: rows/s, vs 1 actor "
        "| in-process, no Ray (rows/s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in result["data"]:
        base = next(x for x in result["data"] if x["mode"] == r["mode"] and x["actors"] == 1)
        print(
            f"| {r['mode']} | {r['actors']} | {r['rows_per_s']:.0f} | {r['seconds']:.2f} ({r['first_block_s']:.2f}) | "
            f"{r['rows_per_s'] / base['rows_per_s']:.2f}x | {r['steady_rows_per_s']:.0f}, "
            f"{r['steady_rows_per_s'] / base['steady_rows_per_s']:.2f}x | {r['local_rows_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
