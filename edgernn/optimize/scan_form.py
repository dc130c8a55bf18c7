"""ONNX ``GRU`` and ``RNN`` nodes rewritten as a ``Scan`` around the cell, in plain MatMul and activations.

onnxruntime's dynamic quantiser has an integer form of ONNX's ``LSTM`` (``DynamicQuantizeLSTM``) but none of
``GRU`` or ``RNN``: it leaves their weights in fp32. Written as a Scan, the input projection is one MatMul over
every step and the recurrent product one MatMul per step, both of which it quantises. The rewrite follows the
operator specification (gate order z, r, h; ``linear_before_reset`` 0 or 1; ``sequence_lens`` by masking: a
padded step keeps the state and outputs zeros; the reverse direction scans backwards, so a sequence's padding is
met first and leaves its initial state alone). Default activations only (GRU: Sigmoid, Tanh; RNN: Tanh or
Relu), no ``clip``, time-major ``layout`` 0: anything else is refused. Imports onnx and numpy, not torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..graphs import all_graphs

_DEFAULT = ("", "ai.onnx")


def rewrite(model: Any, ops: tuple[str, ...] = ("GRU", "RNN")) -> int:
    """Rewrite, in place, every top-level node of ``ops`` in ``model`` (an onnx.ModelProto) as a Scan; returns
    how many were rewritten."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    out_nodes: list[Any] = []
    count = 0
    names = _Names(model)
    for node in graph.node:
        if node.op_type in ops and node.domain in _DEFAULT:
            out_nodes.extend(_rewrite_node(node, weights, graph, names))
            count += 1
        else:
            out_nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(out_nodes)
        _drop_unread(graph)
    return count


def _drop_unread(graph: Any) -> None:
    """Initializers nothing reads any more: the rewritten nodes' own W, R, B (now stored transposed)."""
    read: set[str] = {o.name for o in graph.output}
    for g in all_graphs(graph):
        for node in g.node:
            read.update(node.input)
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


class _Names:
    def __init__(self, model: Any) -> None:
        self.used: set[str] = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
        for node in model.graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def __call__(self, base: str) -> str:
        name, n = base, 0
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _rewrite_node(node: Any, weights: dict[str, Any], graph: Any, fresh: _Names) -> list[Any]:
    from onnx import TensorProto, helper, numpy_helper

    op = node.op_type
    gates = 3 if op == "GRU" else 1
    hidden = int(_attr(node, "hidden_size", 0))
    direction = _attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    acts = [a.decode() if isinstance(a, bytes) else a for a in _attr(node, "activations", [])]
    lbr = int(_attr(node, "linear_before_reset", 0))
    default_acts = ["Sigmoid", "Tanh"] if op == "GRU" else ["Tanh"]
    dirs = 2 if direction == "bidirectional" else 1
    if _attr(node, "clip", None) is not None or int(_attr(node, "layout", 0)) != 0:
        raise ModelFormatError(f"{op} node {node.name!r}: clip and layout=1 are not supported by the Scan rewrite")
    per_dir = [acts[i * len(default_acts) : (i + 1) * len(default_acts)] or default_acts for i in range(dirs)]
    if op == "GRU" and any(a != ["Sigmoid", "Tanh"] for a in per_dir):
        raise ModelFormatError(f"GRU node {node.name!r}: only the default activations (Sigmoid, Tanh) are supported")
    if op == "RNN" and any(a[0] not in ("Tanh", "Relu") for a in per_dir):
        raise ModelFormatError(f"RNN node {node.name!r}: only Tanh or Relu activations are supported")
    ins = list(node.input) + [""] * (6 - len(node.input))
    x, w_name, r_name, b_name, seq_name, h0_name = ins[:6]
    if w_name not in weights or r_name not in weights or (b_name and b_name not in weights):
        raise ModelFormatError(f"{op} node {node.name!r}: its weights must be initializers to be rewritten")
    W = numpy_helper.to_array(weights[w_name])
    R = numpy_helper.to_array(weights[r_name])
    B = numpy_helper.to_array(weights[b_name]) if b_name else np.zeros((dirs, 2 * gates * hidden), W.dtype)
    gh = gates * hidden
    nodes: list[Any] = []
    tag = node.name or op

    def const(base: str, value: np.ndarray) -> str:
        name = fresh(f"{tag}_{base}")
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def make(op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = fresh(f"{tag}_{base}")
        nodes.append(helper.make_node(op_type, inputs, [out], name=fresh(f"{tag}_{base}_node"), **attrs))
        return out

    axes0, axes1, axes2 = const("axes0", np.array([0])), const("axes1", np.array([1])), const("axes2", np.array([2]))
    shape = make("Shape", [x], "shape")
    batch = make("Slice", [shape, axes1, const("two", np.array([2])), axes0], "batch")
    mask = None
    if seq_name:  # (T, B, 1): step t of sequence b is real (t < sequence_lens[b])
        steps = make(
            "Cast",
            [make("Squeeze", [make("Slice", [shape, axes0, axes1, axes0], "t1"), axes0], "t")],
            "t32",
            to=TensorProto.INT32,
        )
        t_idx = make(
            "Range", [const("zero", np.array(0, np.int32)), steps, const("one", np.array(1, np.int32))], "range"
        )
        lens = make("Cast", [seq_name], "lens", to=TensorProto.INT32)
        tcol, lrow = make("Unsqueeze", [t_idx, axes1], "tcol"), make("Unsqueeze", [lens, axes0], "lrow")
        mask = make("Unsqueeze", [make("Less", [tcol, lrow], "less"), axes2], "mask")
    h_outs, y_outs = [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        wt = const(f"W{d}_T", W[d].T)
        rt = const(f"R{d}_T", R[d].T)
        xw = make("Add", [make("MatMul", [x, wt], f"xw{d}_mm"), const(f"Wb{d}", B[d, :gh])], f"xw{d}")
        if h0_name:
            first, last = const(f"d{d}", np.array([d])), const(f"d{d}e", np.array([d + 1]))
            h_init = make("Squeeze", [make("Slice", [h0_name, first, last, axes0], f"h0_{d}s"), axes0], f"h0_{d}")
        else:
            h_shape = make("Concat", [batch, const("hidden", np.array([hidden]))], f"h0_{d}_shape", axis=0)
            zero = numpy_helper.from_array(np.zeros(1, np.float32))
            h_init = make("ConstantOfShape", [h_shape], f"h0_{d}", value=zero)
        extra = None
        if op == "GRU" and not lbr:  # the reset gate scales h before its product with R_h: that product apart
            extra = (const(f"R{d}_T_h", R[d].T[:, 2 * hidden :]), const(f"Rb{d}_h", B[d, gh + 2 * hidden :]))
        body = _body(op, per_dir[d], hidden, rt, const(f"Rb{d}", B[d, gh:]), extra, mask is not None, f"{tag}_d{d}")
        scan_ins = [h_init, xw] + ([mask] if mask else [])
        h_last, y = fresh(f"{tag}_h{d}"), fresh(f"{tag}_y{d}")
        n_scan = len(scan_ins) - 1
        nodes.append(
            helper.make_node(
                "Scan",
                scan_ins,
                [h_last, y],
                name=fresh(f"{tag}_scan{d}"),
                body=body,
                num_scan_inputs=n_scan,
                scan_input_directions=[int(reverse)] * n_scan,
                scan_output_directions=[int(reverse)],
            )
        )
        h_outs.append(make("Unsqueeze", [h_last, axes0], f"yh{d}"))
        y_outs.append(make("Unsqueeze", [y, axes1], f"yd{d}"))
    outs = list(node.output) + [""] * (2 - len(node.output))
    if outs[0]:
        nodes.append(helper.make_node("Concat", y_outs, [outs[0]], name=fresh(f"{tag}_Y"), axis=1))
    if outs[1]:
        nodes.append(helper.make_node("Concat", h_outs, [outs[1]], name=fresh(f"{tag}_Y_h"), axis=0))
    return nodes


def _body(
    op: str, acts: list[str], hidden: int, rt: str, rb: str, reset_h: tuple[str, str] | None, masked: bool, tag: str
) -> Any:
    """The Scan body: state h (B, H), scan inputs xw (B, G*H) [and mask (B, 1)] -> new h, output y. ``rt``/``rb``
    are R transposed and its bias (outer initializers); ``reset_h`` the h gate's part of them when the reset gate
    applies before the product (GRU linear_before_reset=0)."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes: list[Any] = []
    inits: list[Any] = []

    def make(op_type: str, inputs: list[str], out: str, **attrs: Any) -> str:
        out = f"{tag}_{out}"  # body names are prefixed: they must not clash with the outer graph's
        nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(name: str, value: np.ndarray) -> str:
        if not any(i.name == f"{tag}_{name}" for i in inits):
            inits.append(numpy_helper.from_array(value, f"{tag}_{name}"))
        return f"{tag}_{name}"

    def gate(src: str, k: int, out: str) -> str:
        lo, hi = const(f"s{k}", np.array([k * hidden])), const(f"e{k}", np.array([(k + 1) * hidden]))
        return make("Slice", [src, lo, hi, const("ax", np.array([1]))], out)

    h, xw, m = f"{tag}_h", f"{tag}_xw", f"{tag}_m"
    hr = make("Add", [make("MatMul", [h, rt], "hr_mm"), rb], "hr")
    if op == "RNN":
        h_new = make(acts[0], [make("Add", [xw, hr], "pre")], "h_new")
    else:
        z = make("Sigmoid", [make("Add", [gate(xw, 0, "xz"), gate(hr, 0, "hz")], "az")], "z")
        r = make("Sigmoid", [make("Add", [gate(xw, 1, "xr"), gate(hr, 1, "hrr")], "ar")], "r")
        if reset_h is None:  # linear_before_reset=1: r scales (h R_h^T + Rb_h)
            hh = make("Mul", [r, gate(hr, 2, "hh_lin")], "hh")
        else:
            rt_h, rb_h = reset_h
            hh = make("Add", [make("MatMul", [make("Mul", [r, h], "rh"), rt_h], "rh_mm"), rb_h], "hh")
        n = make("Tanh", [make("Add", [gate(xw, 2, "xh"), hh], "an")], "n")
        one_minus_z = make("Sub", [const("one", np.array(1.0, np.float32)), z], "omz")
        h_new = make("Add", [make("Mul", [one_minus_z, n], "zn"), make("Mul", [z, h], "zh")], "h_new")
    if masked:
        h_out = make("Where", [m, h_new, h], "h_out")
        y = make("Where", [m, h_new, const("zero", np.array(0.0, np.float32))], "y")
    else:
        h_out = make("Identity", [h_new], "h_out")
        y = make("Identity", [h_new], "y")
    gh = (1 if op == "RNN" else 3) * hidden
    inputs = [helper.make_tensor_value_info(h, f, [None, hidden]), helper.make_tensor_value_info(xw, f, [None, gh])]
    if masked:
        inputs.append(helper.make_tensor_value_info(m, TensorProto.BOOL, [None, 1]))
    outputs = [
        helper.make_tensor_value_info(h_out, f, [None, hidden]),
        helper.make_tensor_value_info(y, f, [None, hidden]),
    ]
    return helper.make_graph(nodes, f"{tag}_body", inputs, outputs, inits)
