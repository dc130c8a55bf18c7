"""Stateful ONNX models built with plain ``onnx.helper`` for the runtime tests (this module holds no tests).

They stand in for what the ``step`` strategy exports (state in -> state out, an edgernn manifest) and for a
third-party model (no manifest, time-major, ONNX op names for inputs and outputs), so the runtime's streaming
is tested without depending on any exporter.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgernn.manifest import MANIFEST_KEY, Manifest, StateSpec, TensorSpec

OPSET = 17
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def random_weights(cell: str, input_size: int, hidden: int, layers: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per layer W (1, G*H, I), R (1, G*H, H), B (1, 2*G*H) in ONNX layout, small enough to keep tanh unsaturated."""
    rng = np.random.default_rng(seed)
    g = GATES[cell]
    out = []
    for k in range(layers):
        i = input_size if k == 0 else hidden
        out.append(
            {
                "W": rng.uniform(-0.4, 0.4, (1, g * hidden, i)).astype(np.float32),
                "R": rng.uniform(-0.4, 0.4, (1, g * hidden, hidden)).astype(np.float32),
                "B": rng.uniform(-0.2, 0.2, (1, 2 * g * hidden)).astype(np.float32),
            }
        )
    return out


def _rnn_attrs(cell: str, hidden: int) -> dict[str, object]:
    attrs: dict[str, object] = {"hidden_size": hidden}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    return attrs


def step_model(
    cell: str = "lstm",
    input_size: int = 3,
    hidden: int = 8,
    layers: int = 2,
    *,
    time: int | str = 1,
    head: int | None = 2,
    seed: int = 0,
    weights: list[dict[str, np.ndarray]] | None = None,
    manifest: bool = True,
) -> bytes:
    """A batch-first stacked recurrent model with explicit state, like the ``step`` strategy's.

    Inputs ``x`` (batch, time, input_size), ``h_in`` (layers, batch, hidden) [and ``c_in`` for LSTM]; outputs
    ``y`` (batch, time, head or hidden), ``h_out`` [and ``c_out``]. ``time`` is the fixed chunk (an int) or a
    dynamic axis name; the same weights with ``time="time"`` give the full-sequence reference.
    """
    weights = weights or random_weights(cell, input_size, hidden, layers, seed)
    has_c = cell == "lstm"
    nodes = [helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2])]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    prev = "x_tbf"
    hs, cs = [], []
    for k, w in enumerate(weights):
        for n in ("W", "R", "B"):
            inits.append(numpy_helper.from_array(w[n], f"{n}{k}"))
        inits.append(numpy_helper.from_array(np.array([k], np.int64), f"lo{k}"))
        inits.append(numpy_helper.from_array(np.array([k + 1], np.int64), f"hi{k}"))
        nodes.append(helper.make_node("Slice", ["h_in", f"lo{k}", f"hi{k}", "axis0"], [f"h0_{k}"]))
        ins = [prev, f"W{k}", f"R{k}", f"B{k}", "", f"h0_{k}"]
        outs = [f"Y{k}", f"Yh{k}"]
        if has_c:
            nodes.append(helper.make_node("Slice", ["c_in", f"lo{k}", f"hi{k}", "axis0"], [f"c0_{k}"]))
            ins.append(f"c0_{k}")
            outs.append(f"Yc{k}")
            cs.append(f"Yc{k}")
        nodes.append(helper.make_node(OPS[cell], ins, outs, **_rnn_attrs(cell, hidden)))
        nodes.append(helper.make_node("Squeeze", [f"Y{k}", "axis1"], [f"X{k + 1}"]))
        hs.append(f"Yh{k}")
        prev = f"X{k + 1}"
    nodes.append(helper.make_node("Concat", hs, ["h_out"], axis=0))
    if has_c:
        nodes.append(helper.make_node("Concat", cs, ["c_out"], axis=0))
    out_size = hidden
    if head:
        rng = np.random.default_rng(seed + 1000)
        inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.5, (hidden, head)).astype(np.float32), "Wy"))
        inits.append(numpy_helper.from_array(rng.uniform(-0.1, 0.1, (head,)).astype(np.float32), "by"))
        nodes.append(helper.make_node("MatMul", [prev, "Wy"], ["ym"]))
        nodes.append(helper.make_node("Add", ["ym", "by"], ["y_tbf"]))
        prev, out_size = "y_tbf", head
    nodes.append(helper.make_node("Transpose", [prev], ["y"], perm=[1, 0, 2]))

    F = TensorProto.FLOAT
    state_shape: list[int | str] = [layers, "batch", hidden]
    inputs = [
        helper.make_tensor_value_info("x", F, ["batch", time, input_size]),
        helper.make_tensor_value_info("h_in", F, state_shape),
    ]
    outputs = [
        helper.make_tensor_value_info("y", F, ["batch", time, out_size]),
        helper.make_tensor_value_info("h_out", F, state_shape),
    ]
    if has_c:
        inputs.append(helper.make_tensor_value_info("c_in", F, state_shape))
        outputs.append(helper.make_tensor_value_info("c_out", F, state_shape))
    graph = helper.make_graph(nodes, f"{cell}_step", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgernn-tests")
    if manifest:
        names = ["h"] + (["c"] if has_c else [])
        m = Manifest(
            strategy="step",
            cell=cell,
            num_layers=layers,
            hidden_size=hidden,
            bidirectional=False,
            opset=OPSET,
            inputs=[TensorSpec("x", "float32", ["batch", time, input_size])]
            + [TensorSpec(f"{n}_in", "float32", list(state_shape), role="state") for n in names],
            outputs=[TensorSpec("y", "float32", ["batch", time, out_size])]
            + [TensorSpec(f"{n}_out", "float32", list(state_shape), role="state") for n in names],
            states=[StateSpec(f"{n}_in", f"{n}_out", list(state_shape)) for n in names],
            chunk=time if isinstance(time, int) else None,
        )
        helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def third_party_model(cell: str = "gru", input_size: int = 4, hidden: int = 6, seed: int = 3) -> bytes:
    """One ONNX recurrent node as the whole graph, no manifest: time-major ``X`` (T, B, F), state in
    ``initial_h`` [``initial_c``], out ``Y`` (T, 1, B, H), ``Y_h`` [``Y_c``] -- what other tools emit."""
    w = random_weights(cell, input_size, hidden, 1, seed)[0]
    has_c = cell == "lstm"
    F = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("X", F, ["T", "B", input_size]),
        helper.make_tensor_value_info("initial_h", F, [1, "B", hidden]),
    ]
    outputs = [
        helper.make_tensor_value_info("Y", F, ["T", 1, "B", hidden]),
        helper.make_tensor_value_info("Y_h", F, [1, "B", hidden]),
    ]
    ins = ["X", "W", "R", "B_", "", "initial_h"]
    outs = ["Y", "Y_h"]
    if has_c:
        inputs.append(helper.make_tensor_value_info("initial_c", F, [1, "B", hidden]))
        outputs.append(helper.make_tensor_value_info("Y_c", F, [1, "B", hidden]))
        ins.append("initial_c")
        outs.append("Y_c")
    node = helper.make_node(OPS[cell], ins, outs, **_rnn_attrs(cell, hidden))
    inits = [
        numpy_helper.from_array(w["W"], "W"),
        numpy_helper.from_array(w["R"], "R"),
        numpy_helper.from_array(w["B"], "B_"),
    ]
    graph = helper.make_graph([node], "third_party", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="someone-else")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def stateless_model(input_size: int = 3, out: int = 2) -> bytes:
    """A model with no state at all (x (batch, time, F) -> y = x @ W), with an edgernn-style manifest."""
    w = np.arange(input_size * out, dtype=np.float32).reshape(input_size, out) / 10
    F = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "stateless",
        [helper.make_tensor_value_info("x", F, ["batch", "time", input_size])],
        [helper.make_tensor_value_info("y", F, ["batch", "time", out])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m = Manifest(
        strategy="native",
        cell=None,
        num_layers=0,
        hidden_size=0,
        bidirectional=False,
        opset=OPSET,
        inputs=[TensorSpec("x", "float32", ["batch", "time", input_size])],
        outputs=[TensorSpec("y", "float32", ["batch", "time", out])],
    )
    helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    return model.SerializeToString()


def lengths_model(input_size: int = 3) -> bytes:
    """x (batch, time, F) and lengths (batch,) -> y = x * 2 and n = lengths, with a manifest naming the lengths."""
    F = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Identity", ["lengths"], ["n"])],
        "with_lengths",
        [
            helper.make_tensor_value_info("x", F, ["batch", "time", input_size]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("y", F, ["batch", "time", input_size]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m = Manifest(
        strategy="native",
        cell=None,
        num_layers=0,
        hidden_size=0,
        bidirectional=False,
        opset=OPSET,
        inputs=[
            TensorSpec("x", "float32", ["batch", "time", input_size]),
            TensorSpec("lengths", "int64", ["batch"], role="lengths"),
        ],
        outputs=[TensorSpec("y", "float32", ["batch", "time", input_size]), TensorSpec("n", "int64", ["batch"])],
    )
    helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    return model.SerializeToString()


def from_zoo_model(model: object, *, time: int | str = 1) -> bytes:
    """``step_model`` with the weights of an edgernn zoo model (unidirectional LSTM/GRU, ``readout='all'``): the
    same function as the torch model, so a benchmark or test can hold the two side by side."""
    from edgernn.model.layout import onnx_weights

    cfg = model.config  # type: ignore[attr-defined]
    layers = [{"W": w.W.numpy(), "R": w.R.numpy(), "B": w.B.numpy()} for w in onnx_weights(model.rnn)]  # type: ignore[attr-defined]
    onnx_bytes = step_model(
        cfg.cell, cfg.input_size, cfg.hidden_size, cfg.num_layers, time=time, head=None, weights=layers
    )
    # put the zoo model's linear head on top: y = h @ W.T + b
    proto = onnx.load_from_string(onnx_bytes)
    head = model.head  # type: ignore[attr-defined]
    g = proto.graph
    y = next(o for o in g.output if o.name == "y")
    for node in g.node:
        if node.output[0] == "y":
            node.output[0] = "h_seq"
    g.initializer.extend(
        [
            numpy_helper.from_array(head.weight.detach().numpy().T.copy(), "Wy"),
            numpy_helper.from_array(head.bias.detach().numpy().copy(), "by"),
        ]
    )
    g.node.extend([helper.make_node("MatMul", ["h_seq", "Wy"], ["ym"]), helper.make_node("Add", ["ym", "by"], ["y"])])
    y.type.tensor_type.shape.dim[2].dim_value = cfg.output_size
    meta = {p.key: p.value for p in proto.metadata_props}
    man = Manifest.from_json(meta[MANIFEST_KEY])
    out0 = TensorSpec("y", "float32", ["batch", time, cfg.output_size])
    man = Manifest(**{**man.to_dict(), "inputs": man.inputs, "outputs": [out0, *man.outputs[1:]], "states": man.states})
    del proto.metadata_props[:]
    helper.set_model_props(proto, {MANIFEST_KEY: man.to_json()})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def accumulator_model(features: int = 4) -> bytes:
    """A stream that sums its frames: s_out = s_in + x[:, 0], y = s_out. Order-free, so concurrent callers can
    be checked exactly: a lost or doubled update shows in the final sum."""
    F = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["x", "axis1"], ["x0"]),
            helper.make_node("Add", ["s_in", "x0"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("x", F, ["batch", 1, features]),
            helper.make_tensor_value_info("s_in", F, ["batch", features]),
        ],
        [
            helper.make_tensor_value_info("y", F, ["batch", features]),
            helper.make_tensor_value_info("s_out", F, ["batch", features]),
        ],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    state = [StateSpec("s_in", "s_out", ["batch", features])]
    m = Manifest(
        strategy="step",
        cell=None,
        num_layers=1,
        hidden_size=features,
        bidirectional=False,
        opset=OPSET,
        inputs=[
            TensorSpec("x", "float32", ["batch", 1, features]),
            TensorSpec("s_in", "float32", ["batch", features], role="state"),
        ],
        outputs=[
            TensorSpec("y", "float32", ["batch", features]),
            TensorSpec("s_out", "float32", ["batch", features], role="state"),
        ],
        states=state,
        chunk=1,
    )
    helper.set_model_props(model, {MANIFEST_KEY: m.to_json()})
    return model.SerializeToString()
