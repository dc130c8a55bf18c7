"""ONNX ``GRU``, ``RNN`` and ``LSTM`` nodes rewritten as a ``Scan`` around the cell, in plain MatMul and activations.

onnxruntime's dynamic quantiser has an integer form of ONNX's ``LSTM`` (``DynamicQuantizeLSTM``, whose weights it
always stores as int8) but none of ``GRU`` or ``RNN``: it leaves their weights in fp32. Written as a Scan, the
input projection is one MatMul over every step and the recurrent product one MatMul per step, both of which it
quantises, in the weight type asked. The rewrite follows the operator specification: gate order z, r, h (GRU,
``linear_before_reset`` 0 or 1) and i, o, f, c (LSTM, with the peepholes ``P`` in order i, o, f: the input and
forget gates' see the previous cell state, the output gate's the new one); ``initial_h`` (and ``initial_c``);
``sequence_lens`` by masking: a padded step keeps the states and outputs zeros; the reverse direction scans
backwards, so a sequence's padding is met first and leaves its initial states alone. Default activations only
(GRU: Sigmoid, Tanh; LSTM: Sigmoid, Tanh, Tanh; RNN: Tanh or Relu), no ``clip``, no LSTM ``input_forget``,
time-major ``layout`` 0: anything else is refused. Imports onnx and numpy, not torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..graphs import all_graphs

_DEFAULT = ("", "ai.onnx")
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# the names (before a fresh-name suffix) of a Scan body's recurrent products: the carried h (or, for a GRU with
# linear_before_reset=0, r * h) times R; every other MatMul the rewrite writes is an input projection, outside
RECURRENT = ("hr_mm", "rh_mm")


def rewrite(model: Any, ops: tuple[str, ...] = ("GRU", "RNN")) -> dict[str, int]:
    """Rewrite, in place, every top-level node of ``ops`` (GRU, RNN, LSTM) in ``model`` (an onnx.ModelProto) as a
    Scan; returns how many of each op were rewritten (empty when none)."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    out_nodes: list[Any] = []
    counts: dict[str, int] = {}
    names = _Names(model)
    for node in graph.node:
        if node.op_type in ops and node.op_type in _GATES and node.domain in _DEFAULT:
            out_nodes.extend(_rewrite_node(node, weights, graph, names))
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        else:
            out_nodes.append(node)
    if counts:
        del graph.node[:]
        graph.node.extend(out_nodes)
        _drop_unread(graph)
    return counts


def recurrent_products(model: Any) -> list[str]:
    """The names of the recurrent MatMul nodes (h times R, one per step) in the Scan bodies ``rewrite`` wrote into
    ``model`` (an onnx.ModelProto), for a quantiser to leave in fp32 (``nodes_to_exclude``). Found by the names the
    rewrite gives the Scan and its products: give it a model whose own nodes are named otherwise (the quantiser
    renames every node ``n{i}`` before the rewrite)."""
    import re

    scan, product = re.compile(r"_scan\d(_\d+)?$"), re.compile(rf"_d\d_({'|'.join(RECURRENT)})(_\d+)?$")
    names: list[str] = []
    for g in all_graphs(model.graph):
        for node in g.node:
            if node.op_type != "Scan" or not scan.search(node.name):
                continue
            body = next(a.g for a in node.attribute if a.name == "body")
            names += [n.name for n in body.node if n.op_type == "MatMul" and product.search(n.name)]
    return names


def _drop_unread(graph: Any) -> None:
    """Initializers nothing reads any more: the rewritten nodes' own W, R, B, P (now stored transposed or split)."""
    read: set[str] = {o.name for o in graph.output}
    for g in all_graphs(graph):
        for node in g.node:
            read.update(node.input)
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


class _Names:
    """Fresh names, unused anywhere in the model (its subgraphs included): a Scan body's names must not shadow
    the outer graph's."""

    def __init__(self, model: Any) -> None:
        self.used: set[str] = {i.name for i in model.graph.input}
        for g in all_graphs(model.graph):
            self.used.update(t.name for t in g.initializer)
            self.used.update(i.name for i in g.input)
            for node in g.node:
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


class _Emit:
    """The nodes and initializers written into one graph (the outer one, or a Scan body), freshly named after
    the rewritten node (``tag``). A constant of the same ``base`` name is written once."""

    def __init__(self, fresh: Callable[[str], str], tag: str, initializers: Any) -> None:
        self.fresh, self.tag, self.initializers = fresh, tag, initializers
        self.nodes: list[Any] = []
        self.consts: dict[str, str] = {}

    def name(self, base: str) -> str:
        return self.fresh(f"{self.tag}_{base}")

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if base not in self.consts:
            self.consts[base] = self.name(base)
            self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), self.consts[base]))
        return self.consts[base]

    def make(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def gate(self, src: str, k: int, hidden: int, base: str) -> str:
        """Gate ``k``'s block of ``hidden`` columns of ``src`` (B, G*H)."""
        lo, hi = self.const(f"s{k}", np.array([k * hidden])), self.const(f"e{k}", np.array([(k + 1) * hidden]))
        return self.make("Slice", [src, lo, hi, self.const("ax1", np.array([1]))], base)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    value = default if a is None else helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _refuse_unsupported(node: Any, per_dir: list[list[str]]) -> None:
    op = node.op_type
    if _attr(node, "clip", None) is not None or int(_attr(node, "layout", 0)) != 0:
        raise ModelFormatError(f"{op} node {node.name!r}: clip and layout=1 are not supported by the Scan rewrite")
    if op == "LSTM" and int(_attr(node, "input_forget", 0)):
        raise ModelFormatError(f"LSTM node {node.name!r}: input_forget=1 is not supported by the Scan rewrite")
    if op == "RNN":
        if any(a[0] not in ("Tanh", "Relu") for a in per_dir):
            raise ModelFormatError(f"RNN node {node.name!r}: only Tanh or Relu activations are supported")
    elif any(a != _DEFAULT_ACTS[op] for a in per_dir):
        default = ", ".join(_DEFAULT_ACTS[op])
        raise ModelFormatError(f"{op} node {node.name!r}: only the default activations ({default}) are supported")


def _rewrite_node(node: Any, weights: dict[str, Any], graph: Any, fresh: _Names) -> list[Any]:
    from onnx import TensorProto, helper, numpy_helper

    op = node.op_type
    lstm = op == "LSTM"
    hidden = int(_attr(node, "hidden_size", 0))
    direction = _attr(node, "direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    acts, n_acts = _attr(node, "activations", []), len(_DEFAULT_ACTS[op])
    per_dir = [acts[d * n_acts : (d + 1) * n_acts] or _DEFAULT_ACTS[op] for d in range(dirs)]
    _refuse_unsupported(node, per_dir)
    # inputs: X, W, R, B, sequence_lens, initial_h, and for LSTM initial_c, P
    x, w_name, r_name, b_name, seq_name, h0_name, c0_name, p_name = (list(node.input) + [""] * 8)[:8]
    if any(n and n not in weights for n in (w_name, r_name, b_name, p_name)) or not (w_name and r_name):
        raise ModelFormatError(f"{op} node {node.name!r}: its weights must be initializers to be rewritten")
    W = numpy_helper.to_array(weights[w_name])
    R = numpy_helper.to_array(weights[r_name])
    gh = _GATES[op] * hidden
    B = numpy_helper.to_array(weights[b_name]) if b_name else np.zeros((dirs, 2 * gh), W.dtype)
    P = numpy_helper.to_array(weights[p_name]) if p_name else None
    e = _Emit(fresh, node.name or op, graph.initializer)
    axes0, axes1 = e.const("axes0", np.array([0])), e.const("axes1", np.array([1]))
    shape = e.make("Shape", [x], "shape")
    zero_state: list[str] = []  # (B, H) zeros, made once when a state has no initial value

    def initial(name: str, d: int, base: str) -> str:
        if name:  # (D, B, H): direction d's
            return e.make("Gather", [name, e.const(f"i{d}", np.array(d))], f"{base}{d}", axis=0)
        if not zero_state:
            batch = e.make("Slice", [shape, axes1, e.const("two", np.array([2])), axes0], "batch")
            h_shape = e.make("Concat", [batch, e.const("hidden", np.array([hidden]))], "state_shape", axis=0)
            zero = numpy_helper.from_array(np.zeros(1, np.float32))
            zero_state.append(e.make("ConstantOfShape", [h_shape], "zero_state", value=zero))
        return zero_state[0]

    mask = None
    if seq_name:  # (T, B, 1): step t of sequence b is real (t < sequence_lens[b])
        steps = e.make(
            "Cast",
            [e.make("Squeeze", [e.make("Slice", [shape, axes0, axes1, axes0], "t1"), axes0], "t")],
            "t32",
            to=TensorProto.INT32,
        )
        zero_i, one_i = e.const("zero", np.array(0, np.int32)), e.const("one", np.array(1, np.int32))
        t_idx = e.make("Range", [zero_i, steps, one_i], "range")
        lens = e.make("Cast", [seq_name], "lens", to=TensorProto.INT32)
        tcol, lrow = e.make("Unsqueeze", [t_idx, axes1], "tcol"), e.make("Unsqueeze", [lens, axes0], "lrow")
        mask = e.make("Unsqueeze", [e.make("Less", [tcol, lrow], "less"), e.const("axes2", np.array([2]))], "mask")
    finals: list[list[str]] = []  # per direction: the last h (and c), (B, H) each
    ys: list[str] = []  # per direction: every step's h, (T, B, H)
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        wt, rt = e.const(f"W{d}_T", W[d].T), e.const(f"R{d}_T", R[d].T)
        xw = e.make("Add", [e.make("MatMul", [x, wt], f"xw{d}_mm"), e.const(f"Wb{d}", B[d, :gh])], f"xw{d}")
        states = [initial(h0_name, d, "h0_")] + ([initial(c0_name, d, "c0_")] if lstm else [])
        extra: tuple[str, ...] = ()
        if op == "GRU" and not int(_attr(node, "linear_before_reset", 0)):
            # the reset gate scales h before its product with R_h: that product apart
            extra = (e.const(f"R{d}_T_h", R[d].T[:, 2 * hidden :]), e.const(f"Rb{d}_h", B[d, gh + 2 * hidden :]))
        elif lstm and P is not None:  # peepholes p_i, p_o, p_f
            extra = tuple(e.const(f"P{d}_{g}", P[d, k * hidden : (k + 1) * hidden]) for k, g in enumerate("iof"))
        rb = e.const(f"Rb{d}", B[d, gh:])
        body = _body(op, per_dir[d][0], hidden, rt, rb, extra, mask is not None, _Emit(fresh, f"{e.tag}_d{d}", []))
        scan_ins = [*states, xw] + ([mask] if mask else [])
        outs = [e.name(f"{s}{d}_last") for s in ("h", "c")[: len(states)]] + [e.name(f"y{d}")]
        n_scan = len(scan_ins) - len(states)
        e.nodes.append(
            helper.make_node(
                "Scan",
                scan_ins,
                outs,
                name=e.name(f"scan{d}"),
                body=body,
                num_scan_inputs=n_scan,
                scan_input_directions=[int(reverse)] * n_scan,
                scan_output_directions=[int(reverse)],
            )
        )
        finals.append(outs[:-1])
        ys.append(outs[-1])
    y_name, *state_names = (list(node.output) + [""] * 3)[: 2 + lstm]
    if y_name:  # Y (T, D, B, H)
        parts = [e.make("Unsqueeze", [y, axes1], f"y{d}_u") for d, y in enumerate(ys)]
        e.nodes.append(helper.make_node("Concat", parts, [y_name], name=e.name("Y"), axis=1))
    for k, name in enumerate(state_names):  # Y_h, Y_c (D, B, H)
        if name:
            parts = [e.make("Unsqueeze", [last[k], axes0], f"last{k}_{d}") for d, last in enumerate(finals)]
            e.nodes.append(helper.make_node("Concat", parts, [name], name=e.name(f"Y_{'hc'[k]}"), axis=0))
    return e.nodes


def _body(op: str, act: str, hidden: int, rt: str, rb: str, extra: tuple[str, ...], masked: bool, e: _Emit) -> Any:
    """The Scan body: states h [, c] (B, H), scan inputs xw (B, G*H) [and mask (B, 1)] -> new states, output y.
    ``rt``/``rb`` are R transposed and its bias (outer initializers); ``extra`` (outer initializers too) the GRU
    h gate's part of them when the reset gate applies before the product (linear_before_reset=0), or the LSTM's
    peepholes p_i, p_o, p_f; ``act`` the RNN's activation."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    gh = _GATES[op] * hidden
    h, xw, m = e.name("h"), e.name("xw"), e.name("m")
    states = [h] + ([e.name("c")] if op == "LSTM" else [])
    hr = e.make("Add", [e.make("MatMul", [h, rt], RECURRENT[0]), rb], "hr")
    if op == "RNN":
        new = [e.make(act, [e.make("Add", [xw, hr], "pre")], "h_new")]
    elif op == "GRU":
        new = [_gru_cell(e, h, xw, hr, hidden, extra)]
    else:
        new = _lstm_cell(e, states[1], e.make("Add", [xw, hr], "pre"), hidden, extra)
    kinds = ("h", "c")[: len(new)]
    if masked:  # a padded step keeps the states and outputs zeros
        outs = [e.make("Where", [m, n, s], f"{k}_out") for k, n, s in zip(kinds, new, states, strict=True)]
        y = e.make("Where", [m, new[0], e.const("zero", np.array(0.0, np.float32))], "y")
    else:
        outs = [e.make("Identity", [n], f"{k}_out") for k, n in zip(kinds, new, strict=True)]
        y = e.make("Identity", [new[0]], "y")
    inputs = [helper.make_tensor_value_info(s, f, [None, hidden]) for s in states]
    inputs.append(helper.make_tensor_value_info(xw, f, [None, gh]))
    if masked:
        inputs.append(helper.make_tensor_value_info(m, TensorProto.BOOL, [None, 1]))
    outputs = [helper.make_tensor_value_info(o, f, [None, hidden]) for o in [*outs, y]]
    return helper.make_graph(e.nodes, e.name("body"), inputs, outputs, e.initializers)


def _gru_cell(e: _Emit, h: str, xw: str, hr: str, hidden: int, reset_h: tuple[str, ...]) -> str:
    """The new h: z, r = sigmoid, n = tanh(xw_h + r (h R_h^T + Rb_h)) (linear_before_reset=1) or
    tanh(xw_h + (r h) R_h^T + Rb_h) (``reset_h`` = (R_h^T, Rb_h)); (1 - z) n + z h."""
    z = e.make("Sigmoid", [e.make("Add", [e.gate(xw, 0, hidden, "xz"), e.gate(hr, 0, hidden, "hz")], "az")], "z")
    r = e.make("Sigmoid", [e.make("Add", [e.gate(xw, 1, hidden, "xr"), e.gate(hr, 1, hidden, "hrr")], "ar")], "r")
    if reset_h:
        rt_h, rb_h = reset_h
        hh = e.make("Add", [e.make("MatMul", [e.make("Mul", [r, h], "rh"), rt_h], RECURRENT[1]), rb_h], "hh")
    else:
        hh = e.make("Mul", [r, e.gate(hr, 2, hidden, "hh_lin")], "hh")
    n = e.make("Tanh", [e.make("Add", [e.gate(xw, 2, hidden, "xh"), hh], "an")], "n")
    one_minus_z = e.make("Sub", [e.const("one", np.array(1.0, np.float32)), z], "omz")
    return e.make("Add", [e.make("Mul", [one_minus_z, n], "zn"), e.make("Mul", [z, h], "zh")], "h_new")


def _lstm_cell(e: _Emit, c: str, pre: str, hidden: int, peepholes: tuple[str, ...]) -> list[str]:
    """The new h and c from the pre-activations ``pre`` (B, 4H), gates i, o, f, c:
    c' = sigmoid(a_f + p_f c) c + sigmoid(a_i + p_i c) tanh(a_c); h' = sigmoid(a_o + p_o c') tanh(c')."""
    a_i, a_o, a_f, a_c = (e.gate(pre, k, hidden, f"a_{g}") for k, g in enumerate("iofc"))
    if peepholes:
        p_i, p_o, p_f = peepholes
        a_i = e.make("Add", [a_i, e.make("Mul", [p_i, c], "pc_i")], "a_ip")
        a_f = e.make("Add", [a_f, e.make("Mul", [p_f, c], "pc_f")], "a_fp")
    i, f = e.make("Sigmoid", [a_i], "i"), e.make("Sigmoid", [a_f], "f")
    c_new = e.make("Add", [e.make("Mul", [f, c], "fc"), e.make("Mul", [i, e.make("Tanh", [a_c], "g")], "ig")], "c_new")
    if peepholes:
        a_o = e.make("Add", [a_o, e.make("Mul", [p_o, c_new], "pc_o")], "a_op")
    h_new = e.make("Mul", [e.make("Sigmoid", [a_o], "o"), e.make("Tanh", [c_new], "tc")], "h_new")
    return [h_new, c_new]
