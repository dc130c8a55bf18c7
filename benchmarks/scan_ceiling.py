"""How close can a `Scan` loop come to onnxruntime's fused LSTM/GRU op? The ceiling behind the `loop` target.

    python benchmarks/scan_ceiling.py            # about 2 minutes on 2 cores
    python benchmarks/scan_ceiling.py --json out.json

A `loop` export runs the recurrence as an ONNX ``Scan`` whose body is the cell written in plain ops (Gemm,
slices, activations). onnxruntime runs a Scan body node by node, so each step pays every body node's dispatch
cost; its fused ``LSTM``/``GRU`` kernels pay one call for the whole sequence. This measures, on one CPU thread, in
interleaved rounds:

1. the per-iteration cost of a Scan whose body is k tiny elementwise nodes (k = 1, 4, 8, 16) on a (1, H) state:
   the slope is onnxruntime's cost per body node, the intercept its cost per iteration;
2. for a 2-layer LSTM and GRU at batch 1, 100 steps, hidden 128 (and batch 8, 200 steps, hidden 256): the
   ONNX ``LSTM``/``GRU`` op, a hand-written Scan with the fewest nodes a cell needs (input projection and both
   biases hoisted out of the loop, one Gemm, Split, one activation per gate group: 11 nodes for an LSTM, 13 for a
   GRU), and edgernn's own `loop` export of the same torch layer, all on the same weights and checked against
   torch.

The hand-written minimal body is the best a Scan can do here; its time over the fused op's is the ceiling for
``loop``/``native``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def _session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _time(calls: dict[str, Any], rounds: int, block_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each callable, timed in interleaved rounds of blocks of about ``block_s``."""
    reps: dict[str, int] = {}
    for name, fn in calls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {k: statistics.median(v) for k, v in times.items()}


def _vi(name: str, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# --------------------------------------------------------------------------------------- 1. cost per body node


def chain_scan(k: int, hidden: int, steps: int) -> onnx.ModelProto:
    """A Scan whose body adds the scanned row to the state k times."""
    nodes, prev = [], "s"
    for i in range(k):
        nodes.append(helper.make_node("Add", [prev, "x"], [f"a{i}"]))
        prev = f"a{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    body = helper.make_graph(
        nodes, "body", [_vi("s", [1, hidden]), _vi("x", [1, hidden])], [_vi(prev, [1, hidden]), _vi("y", [1, hidden])]
    )
    scan = helper.make_node("Scan", ["s0", "X"], ["sT", "Y"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [scan],
        "chain",
        [_vi("s0", [1, hidden]), _vi("X", [steps, 1, hidden])],
        [_vi("sT", [1, hidden]), _vi("Y", [steps, 1, hidden])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def node_cost(hidden: int, steps: int, rounds: int) -> dict[str, Any]:
    ks = (1, 4, 8, 16)
    feed = {"s0": np.zeros((1, hidden), np.float32), "X": np.ones((steps, 1, hidden), np.float32)}
    sessions = {k: _session(chain_scan(k, hidden, steps)) for k in ks}
    med = _time({str(k): (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, rounds)
    per_iter = {k: med[str(k)] / steps for k in ks}
    slope, intercept = np.polyfit(np.array(ks, float), np.array([per_iter[k] for k in ks]), 1)
    return {
        "per_iteration_us": {k: v * 1e6 for k, v in per_iter.items()},
        "per_node_us": slope * 1e6,
        "per_iteration_fixed_us": intercept * 1e6,
    }


# --------------------------------------------------------------------------------- 2. the cells, three ways


def _weights(layer: Any, index: int, gates: int) -> dict[str, np.ndarray]:
    w = getattr(layer, f"weight_ih_l{index}").detach().numpy()
    r = getattr(layer, f"weight_hh_l{index}").detach().numpy()
    wb = getattr(layer, f"bias_ih_l{index}").detach().numpy()
    rb = getattr(layer, f"bias_hh_l{index}").detach().numpy()
    return {"W": w, "R": r, "Wb": wb, "Rb": rb}


def _onnx_order(a: np.ndarray, cell: str) -> np.ndarray:
    """torch's gate blocks (LSTM i f g o, GRU r z n) to ONNX's (LSTM i o f c, GRU z r h), on axis 0."""
    blocks = np.split(a, 4 if cell == "lstm" else 3, axis=0)
    order = (0, 3, 1, 2) if cell == "lstm" else (1, 0, 2)
    return np.concatenate([blocks[i] for i in order], axis=0)


def fused_op(layer: Any, cell: str, features: int) -> onnx.ModelProto:
    """The ONNX LSTM/GRU op per layer, time-major input (T, B, F)."""
    h = layer.hidden_size
    inits, nodes, x = [], [], "X"
    for i in range(layer.num_layers):
        p = _weights(layer, i, 4 if cell == "lstm" else 3)
        W, R = _onnx_order(p["W"], cell)[None], _onnx_order(p["R"], cell)[None]
        B = np.concatenate([_onnx_order(p["Wb"], cell), _onnx_order(p["Rb"], cell)])[None]
        inits += [numpy_helper.from_array(a, f"{n}{i}") for n, a in (("W", W), ("R", R), ("B", B))]
        attrs = {"hidden_size": h}
        if cell == "gru":
            attrs["linear_before_reset"] = 1
        nodes.append(helper.make_node(cell.upper(), [x, f"W{i}", f"R{i}", f"B{i}"], [f"Y{i}"], **attrs))
        nodes.append(helper.make_node("Squeeze", [f"Y{i}", "axis1"], [f"x{i}"]))
        x = f"x{i}"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes[-1].output[0] = "Y"
    graph = helper.make_graph(nodes, "fused", [_vi("X", ["T", "B", features])], [_vi("Y", ["T", "B", h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _lstm_body(h: int, i: int) -> onnx.GraphProto:
    """11 nodes: Gemm(h, R^T, x_t) with both biases in x_t, one Sigmoid over i|o|f, one Tanh over c."""
    n = helper.make_node
    nodes = [
        n("Gemm", ["h", f"RT{i}", "xw"], ["pre"]),
        n("Split", ["pre", f"s3_1_{i}"], ["ioF", "g"], axis=1),
        n("Sigmoid", ["ioF"], ["sig"]),
        n("Tanh", ["g"], ["gt"]),
        n("Split", ["sig"], ["ig", "og", "fg"], axis=1, num_outputs=3),
        n("Mul", ["fg", "c"], ["fc"]),
        n("Mul", ["ig", "gt"], ["igt"]),
        n("Add", ["fc", "igt"], ["c_new"]),
        n("Tanh", ["c_new"], ["tc"]),
        n("Mul", ["og", "tc"], ["h_new"]),
        n("Identity", ["h_new"], ["y"]),
    ]
    return helper.make_graph(
        nodes,
        f"lstm{i}",
        [_vi("h", ["B", h]), _vi("c", ["B", h]), _vi("xw", ["B", 4 * h])],
        [_vi("h_new", ["B", h]), _vi("c_new", ["B", h]), _vi("y", ["B", h])],
    )


def _gru_body(h: int, i: int) -> onnx.GraphProto:
    """13 nodes: Gemm(h, R^T, Rb), the z|r pre-activations added and squashed at once, h' = n + z (h - n)."""
    n = helper.make_node
    nodes = [
        n("Gemm", ["h", f"RT{i}", f"Rb{i}"], ["hr"]),
        n("Split", ["xw", f"s2_1_{i}"], ["xzr", "xh"], axis=1),
        n("Split", ["hr", f"s2_1_{i}"], ["hzr", "hh"], axis=1),
        n("Add", ["xzr", "hzr"], ["azr"]),
        n("Sigmoid", ["azr"], ["zr"]),
        n("Split", ["zr"], ["z", "r"], axis=1, num_outputs=2),
        n("Mul", ["r", "hh"], ["rh"]),
        n("Add", ["xh", "rh"], ["an"]),
        n("Tanh", ["an"], ["nn"]),
        n("Sub", ["h", "nn"], ["d"]),
        n("Mul", ["z", "d"], ["zd"]),
        n("Add", ["nn", "zd"], ["h_new"]),
        n("Identity", ["h_new"], ["y"]),
    ]
    return helper.make_graph(
        nodes, f"gru{i}", [_vi("h", ["B", h]), _vi("xw", ["B", 3 * h])], [_vi("h_new", ["B", h]), _vi("y", ["B", h])]
    )


def minimal_scan(layer: Any, cell: str, features: int) -> onnx.ModelProto:
    """Per layer: the input projection of every step as one MatMul + Add, then a Scan of the minimal body."""
    h = layer.hidden_size
    inits = []
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "hdim"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["zeros"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([h], np.int64), "hdim"),
    ]
    x = "X"
    for i in range(layer.num_layers):
        p = _weights(layer, i, 4 if cell == "lstm" else 3)
        W, R = _onnx_order(p["W"], cell), _onnx_order(p["R"], cell)
        Wb, Rb = _onnx_order(p["Wb"], cell), _onnx_order(p["Rb"], cell)
        if cell == "lstm":
            xb = Wb + Rb
            inits.append(numpy_helper.from_array(np.array([3 * h, h], np.int64), f"s3_1_{i}"))
        else:  # z and r take both biases up front; the candidate's recurrent bias stays inside r * (...)
            xb = Wb
            inits.append(numpy_helper.from_array(Rb, f"Rb{i}"))
            inits.append(numpy_helper.from_array(np.array([2 * h, h], np.int64), f"s2_1_{i}"))
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(W.T), f"WT{i}"),
            numpy_helper.from_array(xb, f"xb{i}"),
            numpy_helper.from_array(np.ascontiguousarray(R.T), f"RT{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"WT{i}"], [f"xw0_{i}"]),
            helper.make_node("Add", [f"xw0_{i}", f"xb{i}"], [f"xw{i}"]),
        ]
        body = _lstm_body(h, i) if cell == "lstm" else _gru_body(h, i)
        states = ["zeros", "zeros"] if cell == "lstm" else ["zeros"]
        outs = [f"hT{i}", f"cT{i}"] if cell == "lstm" else [f"hT{i}"]
        nodes.append(helper.make_node("Scan", [*states, f"xw{i}"], [*outs, f"y{i}"], body=body, num_scan_inputs=1))
        x = f"y{i}"
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    graph = helper.make_graph(nodes, "scan", [_vi("X", ["T", "B", features])], [_vi("Y", ["T", "B", h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def edgernn_loop(layer: Any, batch: int, steps: int, features: int) -> bytes:
    import torch

    from edgernn.export import export

    class OutputOnly(torch.nn.Module):
        def __init__(self, rnn: Any) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export(OutputOnly(layer).eval(), (torch.zeros(batch, steps, features),), None, strategy="loop")
    return res.model_bytes


def body_nodes(model: bytes | onnx.ModelProto) -> list[int]:
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    return [len(a.g.node) for n in proto.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"]


def cell_row(cell: str, shape: tuple[int, int, int, int], features: int, rounds: int) -> dict[str, Any]:
    import torch

    batch, steps, hidden, layers = shape
    torch.manual_seed(0)
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(features, hidden, layers, batch_first=True).eval()
    x = np.random.default_rng(0).standard_normal((batch, steps, features)).astype(np.float32)
    with torch.no_grad():
        want = layer(torch.from_numpy(x))[0].numpy()
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    fused, minimal = _session(fused_op(layer, cell, features)), _session(minimal_scan(layer, cell, features))
    loop_bytes = edgernn_loop(layer, batch, steps, features)
    loop = _session(loop_bytes)
    loop_name = loop.get_inputs()[0].name
    calls = {
        "fused op": lambda: fused.run(None, {"X": xt}),
        "minimal Scan": lambda: minimal.run(None, {"X": xt}),
        "edgernn loop": lambda: loop.run(None, {loop_name: x}),
    }
    errors = {
        "fused op": np.abs(calls["fused op"]()[0].transpose(1, 0, 2) - want).max(),
        "minimal Scan": np.abs(calls["minimal Scan"]()[0].transpose(1, 0, 2) - want).max(),
        "edgernn loop": np.abs(calls["edgernn loop"]()[0] - want).max(),
    }
    for name, err in errors.items():
        if not err < 1e-4:
            raise SystemExit(f"{cell} {shape}: {name} differs from torch by {err:.3g}")
    med = _time(calls, rounds)
    return {
        "cell": cell,
        "shape": list(shape),
        "us": {k: v * 1e6 for k, v in med.items()},
        "over_fused": {k: v / med["fused op"] for k, v in med.items()},
        "body_nodes": {
            "minimal Scan": body_nodes(minimal_scan(layer, cell, features)),
            "edgernn loop": body_nodes(loop_bytes),
        },
        "max_abs_vs_torch": {k: float(v) for k, v in errors.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cost = node_cost(128, 200, args.rounds)
    rows = [
        cell_row(cell, shape, args.features, args.rounds)
        for shape in ((1, 100, 128, 2), (8, 200, 256, 2))
        for cell in ("lstm", "gru")
    ]
    from edgernn.verify.bench import machine_info

    chain = ", ".join(f"{k}: {v:.2f} us" for k, v in cost["per_iteration_us"].items())
    print(
        f"Scan body on onnxruntime {ort.__version__}, one thread: {cost['per_node_us']:.2f} us per body node, "
        f"{cost['per_iteration_fixed_us']:.2f} us per iteration besides (k elementwise nodes on (1, 128): {chain})"
    )
    print()
    print(
        "| cell | B x T x H x L | fused op | minimal Scan (body nodes) | edgernn loop (body nodes) "
        "| minimal / fused | loop / fused |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        us, nodes, over = r["us"], r["body_nodes"], r["over_fused"]
        print(
            f"| {r['cell']} | {' x '.join(map(str, r['shape']))} | {us['fused op']:.0f} us | "
            f"{us['minimal Scan']:.0f} us ({nodes['minimal Scan'][0]}) | {us['edgernn loop']:.0f} us "
            f"({nodes['edgernn loop'][0]}) | {over['minimal Scan']:.2f}x | {over['edgernn loop']:.2f}x |"
        )
    out = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "node_cost": cost, "rows": rows}
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
