"""How fast can onnxruntime run a 2-layer LSTM at batch 8 x 200 steps x hidden 256? The ceiling behind the
"auto at least 1.2x torch eager" target for the large LSTM.

    python benchmarks/lstm_ceiling.py [--rounds 15] [--json out.json]
    python benchmarks/lstm_ceiling.py --streams 64     # the same for one streaming step of 64 streams at once

An LSTM's work is its matrix products and its gates. Whatever ONNX graph carries the recurrence, onnxruntime
runs those products with its own GEMM kernel and the gates with its own elementwise kernels; this times each
part alone, on one onnxruntime CPU thread, at the sizes the model needs:

- per layer, the input projection of every step at once: (B*T x I) @ W^T (a constant, which onnxruntime packs);
- per layer and step, the recurrent product (B x H) @ R^T (H x 4H): one call of a one-`MatMul` session, less
  the cost of an empty call (an `Identity`), times T steps;
- per layer, the gates of every step at once ([B*T, 4H] pre-activations: one `Sigmoid` over i|o|f, `Tanh` of
  g and of c, the products and the sum): fewer, larger calls than a step-by-step cell makes, so a lower bound.

Their sum is a lower bound for *any* graph on onnxruntime (no loop, no copies, no per-step call). It is timed
side by side with onnxruntime's fused `LSTM` op (edgernn's `native` export, what `auto` picks here) and torch
eager, in interleaved rounds; the ratios say how far the fused op is from the bound and whether 1.2x torch eager
lies below it.

``--streams N`` does the same for the streaming target (N streams stepped in one batched call against N separate
calls): the model of ``benchmarks/streaming.py`` (LSTM, input 40, hidden 128, 2 layers, a linear head on every
step), exported with ``step`` (chunk 1), run bare at batch 1 and batch N, against the sum of onnxruntime's
kernels for one batch-N step (the products of the two layers, timed both as two per layer and as one over the
joined input [x, h] as the step graph runs them, whichever is faster; the head; the gates). N x (batch-1 call) /
(sum of the parts) is the most any batched caller could gain on this core with this runtime's kernels, and
N x (batch-1 call) / (the products alone) the most even if the gates cost nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from strategies import interleaved
from strategies import session as _session

B, T, H, LAYERS, FEATURES = 8, 200, 256, 2, 64


def session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    """A plain one-thread CPU session (``benchmarks/strategies.py``'s), from a proto or bytes."""
    return _session(model if isinstance(model, bytes) else model.SerializeToString())


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _vi(name: str, shape: list[int]) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def product(m: int, k: int, n: int) -> onnx.ModelProto:
    """(m x k) @ W (k x n), W a constant initializer."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) / k, "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [m, k])], [_vi("y", [m, n])], [w])


def empty(m: int, k: int) -> onnx.ModelProto:
    return _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [m, k])], [_vi("y", [m, k])], [])


def gates(rows: int, h: int) -> onnx.ModelProto:
    """An LSTM's elementwise work on ``rows`` pre-activations [rows, 4H] (i|o|f|g) and previous cells [rows, H]."""
    split = numpy_helper.from_array(np.array([3 * h, h], np.int64), "split")
    split3 = numpy_helper.from_array(np.array([h, h, h], np.int64), "split3")
    nodes = [
        helper.make_node("Split", ["z", "split"], ["iof_pre", "g_pre"], axis=1),
        helper.make_node("Sigmoid", ["iof_pre"], ["iof"]),
        helper.make_node("Split", ["iof", "split3"], ["i", "o", "f"], axis=1),
        helper.make_node("Tanh", ["g_pre"], ["g"]),
        helper.make_node("Mul", ["f", "c0"], ["fc"]),
        helper.make_node("Mul", ["i", "g"], ["ig"]),
        helper.make_node("Add", ["fc", "ig"], ["c"]),
        helper.make_node("Tanh", ["c"], ["tc"]),
        helper.make_node("Mul", ["o", "tc"], ["h"]),
    ]
    return _model(
        nodes,
        [_vi("z", [rows, 4 * h]), _vi("c0", [rows, h])],
        [_vi("h", [rows, h]), _vi("c", [rows, h])],
        [split, split3],
    )


def timed(runs: dict[str, Callable[[], Any]], rounds: int, sample_s: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each, round by round (``benchmarks/strategies.py``'s interleaving)."""
    return interleaved(runs, rounds, sample_s)[0]


Parts = dict[str, tuple[ort.InferenceSession, dict[str, np.ndarray], int]]  # name: (session, feed, times needed)


def time_with_parts(
    runs: dict[str, Callable[[], Any]], parts: Parts, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of ``runs`` and of each part (interleaved together), and each part's share of the
    work: (its call less an empty call, the part named "empty call") x the times the model needs it."""
    runs = {**runs, **{name: (lambda s=s, f=f: s.run(None, f)) for name, (s, f, _) in parts.items()}}
    med = {k: statistics.median(v) for k, v in timed(runs, rounds).items()}
    return med, {k: (med[k] - med["empty call"]) * m for k, (_, _, m) in parts.items() if m}


def report(result: dict[str, Any], json_out: str | None) -> None:
    print(json.dumps(result, indent=2))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)


def streams(n: int, rounds: int) -> dict[str, Any]:
    """One step of ``n`` streams in one call, against its kernels' sum and against the batch-1 call."""
    import torch

    from edgernn.export import export_model
    from edgernn.model.zoo import ModelConfig, build_model

    features, hidden = 40, 128
    torch.manual_seed(0)
    cfg = ModelConfig(cell="lstm", input_size=features, hidden_size=hidden, num_layers=2, readout="all")
    step = session(export_model(build_model(cfg).eval(), None, strategy="step", chunk=1).model_bytes)
    rng = np.random.default_rng(0)

    def feed(b: int) -> dict[str, np.ndarray]:
        shapes = {i.name: [b if isinstance(d, str) else d for d in i.shape] for i in step.get_inputs()}
        return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}

    f1, fn = feed(1), feed(n)
    h_in, c_in = fn["h_in"][0], fn["c_in"][0]
    joined = {
        "joined product L0": (n, features + hidden),  # [x, h] @ [W, R]^T: what the step graph runs
        "joined product L1": (n, 2 * hidden),
    }
    parts: Parts = {
        "input product L0": (session(product(n, features, 4 * hidden)), {"x": fn["x"].reshape(n, features)}, 1),
        "128-wide product": (session(product(n, hidden, 4 * hidden)), {"x": h_in}, 3),
        **{
            name: (session(product(m, k, 4 * hidden)), {"x": rng.standard_normal((m, k)).astype(np.float32)}, 1)
            for name, (m, k) in joined.items()
        },
        "head": (session(product(n, hidden, 1)), {"x": h_in}, 1),
        "gates": (
            session(gates(n, hidden)),
            {"z": rng.standard_normal((n, 4 * hidden)).astype(np.float32), "c0": c_in},
            2,
        ),
        "empty call": (session(empty(n, hidden)), {"x": h_in}, 0),
    }
    runs = {"step, batch 1": lambda: step.run(None, f1), f"step, batch {n}": lambda: step.run(None, fn)}
    med, shares = time_with_parts(runs, parts, rounds)
    # the products either way (two per layer, or one over the joined input), whichever onnxruntime does faster
    separate = shares["input product L0"] + shares["128-wide product"]
    together = sum(shares[k] for k in joined)
    products = min(separate, together)
    bound = products + shares["head"] + shares["gates"]
    one, many = med["step, batch 1"], med[f"step, batch {n}"]
    return {
        "streams": n,
        "median_us": {k: round(v * 1e6, 1) for k, v in med.items()},
        "products_us (two per layer / joined)": [round(separate * 1e6, 1), round(together * 1e6, 1)],
        "sum_of_parts_us": round(bound * 1e6, 1),
        "gain of the step graph (N x batch-1 / batch-N)": round(n * one / many, 2),
        "most a batched call can gain (N x batch-1 / sum of parts)": round(n * one / bound, 2),
        "most with free gates (N x batch-1 / products alone)": round(n * one / products, 2),
        "batch-N step / sum of parts": round(many / bound, 2),
    }


def large_lstm(rounds: int) -> dict[str, Any]:
    """The 2-layer LSTM at B x T x H: torch eager and the fused op against the sum of the parts."""
    import torch
    from torch import nn

    from edgernn.export import export

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = nn.LSTM(FEATURES, H, num_layers=LAYERS, batch_first=True).eval()

    class OutputOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = lstm

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    x = torch.randn(B, T, FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = export(OutputOnly().eval(), (x,), None, strategy="native")
    rng = np.random.default_rng(1)
    s_native = session(native.model_bytes)
    feed_native = {"x": x.numpy()}
    runs: dict[str, Callable[[], Any]] = {}

    def torch_eager() -> None:
        with torch.inference_mode():
            lstm(x)

    runs["torch eager"] = torch_eager
    runs["onnxruntime LSTM op (native)"] = lambda: s_native.run(None, feed_native)
    parts: Parts = {}
    for layer in range(LAYERS):
        k = FEATURES if layer == 0 else H
        parts[f"input projection L{layer}"] = (
            session(product(B * T, k, 4 * H)),
            {"x": rng.standard_normal((B * T, k)).astype(np.float32)},
            1,
        )
    parts["recurrent product (one step)"] = (
        session(product(B, H, 4 * H)),
        {"x": rng.standard_normal((B, H)).astype(np.float32)},
        T * LAYERS,
    )
    parts["empty call"] = (session(empty(B, H)), {"x": rng.standard_normal((B, H)).astype(np.float32)}, 0)
    parts["gates (all steps at once)"] = (
        session(gates(B * T, H)),
        {
            "z": rng.standard_normal((B * T, 4 * H)).astype(np.float32),
            "c0": rng.standard_normal((B * T, H)).astype(np.float32),
        },
        LAYERS,
    )
    med, shares = time_with_parts(runs, parts, rounds)
    bound_parts = {
        "input projections": sum(shares[f"input projection L{i}"] for i in range(LAYERS)),
        "recurrent products": shares["recurrent product (one step)"],
        "gates": shares["gates (all steps at once)"],
    }
    bound = sum(bound_parts.values())
    flops = sum(2 * T * B * 4 * H * ((FEATURES if i == 0 else H) + H) for i in range(LAYERS))
    te, op = med["torch eager"], med["onnxruntime LSTM op (native)"]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, torch "
        f"{torch.__version__}, 1 thread",
        "shape": {"batch": B, "time": T, "hidden": H, "layers": LAYERS, "input": FEATURES},
        "median_us": {n: round(v * 1e6, 1) for n, v in med.items()},
        "bound_us": {n: round(v * 1e6, 1) for n, v in bound_parts.items()},
        "bound_total_us": round(bound * 1e6, 1),
        "ratios": {
            "LSTM op / bound": round(op / bound, 3),
            "torch eager / LSTM op": round(te / op, 3),
            "torch eager / bound (the most any onnxruntime graph can give)": round(te / bound, 3),
        },
        "gflops": {"LSTM op": round(flops / op / 1e9, 1), "torch eager": round(flops / te / 1e9, 1)},
        "target_us (torch eager / 1.2)": round(te / 1.2 * 1e6, 1),
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--streams", type=int, default=None, help="measure one step of this many streams instead")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    if args.streams is not None:
        result = {
            "date": date.today().isoformat(),
            "onnxruntime": ort.__version__,
            **streams(args.streams, args.rounds),
        }
    else:
        result = large_lstm(args.rounds)
    report(result, args.json_out)


if __name__ == "__main__":
    main()
