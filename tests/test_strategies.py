"""The export strategies against eager torch: every cell kind x strategy x variant it supports x shapes.

Each exported model is built once per module (``_export`` caches it) and reused across shapes. Dynamic-length
strategies are traced at (batch 2, length 5) by ``export_model`` and checked at other shapes; ``unroll`` is
traced and checked at its fixed length; ``step`` is checked by chaining calls through onnxruntime against one
eager call on the whole sequence. Tolerances come from ``edgernn.verify.parity.TOLERANCES``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgernn.errors import ConfigError, ExportError
from edgernn.export import ExportResult, export_model, get_strategy_class, strategy_names
from edgernn.model.cells import cell_names
from edgernn.model.nn import LSTM
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.verify import reference
from edgernn.verify.parity import TOLERANCES, compare

TOL = TOLERANCES["fp32"]
ROOT = Path(__file__).resolve().parents[1]

# The matrix. The meta-test below fails when the registries hold a strategy or cell kind that is not here.
STRATEGIES = ("native", "loop", "unroll", "step")
CELLS = ("rnn-tanh", "rnn-relu", "lstm", "gru")
BATCHES = (1, 3)
LENGTHS = (1, 17, 64)


@dataclass(frozen=True)
class Variant:
    layers: int
    bidirectional: bool = False
    peephole: bool = False
    proj_size: int = 0
    readout: str = "last"  # "all" checks every step's output, "last" the final state

    @property
    def needs(self) -> frozenset[str]:
        """LSTM variants (Capabilities.variants names) this variant needs."""
        return frozenset({"peephole"} if self.peephole else set()) | frozenset(
            {"projection"} if self.proj_size else set()
        )


# Layers are kept low where a variant does not need two: every export traces each layer and direction.
VARIANTS: dict[str, Variant] = {
    "uni": Variant(layers=2),
    "bi": Variant(layers=1, bidirectional=True, readout="all"),
    "peephole": Variant(layers=1, peephole=True, readout="all"),
    "projection": Variant(layers=1, proj_size=3),
    "bi-peephole-projection": Variant(layers=2, bidirectional=True, peephole=True, proj_size=3, readout="all"),
}
LSTM_ONLY = {"peephole", "projection", "bi-peephole-projection"}
UNROLL_LEN = 17  # the unroll exports of the matrix (and the padding test, which pads to 17)


def _config(cell: str, variant: str) -> ModelConfig:
    v = VARIANTS[variant]
    return ModelConfig(
        cell=cell,
        input_size=3,
        hidden_size=5,
        num_layers=v.layers,
        bidirectional=v.bidirectional,
        peephole=v.peephole,
        proj_size=v.proj_size,
        readout=v.readout,
        output_size=2,
    )


def unsupported(strategy: str, cell: str, variant: str) -> str | None:
    """Why a cell of the matrix does not exist (read from the strategy's Capabilities), or None."""
    caps = get_strategy_class(strategy).caps
    v = VARIANTS[variant]
    if variant in LSTM_ONLY and cell != "lstm":
        return f"{variant} is an LSTM variant"
    missing = v.needs - caps.variants
    if missing:
        return f"{strategy} does not export {', '.join(sorted(missing))} (refusal tested separately)"
    if v.bidirectional and not caps.bidirectional:
        return f"{strategy} is unidirectional only (refusal tested separately)"
    return None


@cache
def _model(cell: str, variant: str) -> RecurrentModel:
    torch.manual_seed(10 * CELLS.index(cell) + list(VARIANTS).index(variant))  # a fixed model per cell
    return build_model(_config(cell, variant)).eval()


def _steps(strategy: str, steps: int | None) -> int | None:
    """The fixed length an export is made at: unroll's seq_len (17 by default), step's chunk (1 by default)."""
    if strategy == "unroll":
        return steps or UNROLL_LEN
    if strategy == "step":
        return steps or 1
    return None


def _export(strategy: str, cell: str, variant: str, steps: int | None = None) -> ExportResult:
    """One export per (strategy, cell, variant[, fixed length]) for the whole module; verified on export too."""
    return _export_at(strategy, cell, variant, _steps(strategy, steps))


def _session(strategy: str, cell: str, variant: str, steps: int | None = None) -> ort.InferenceSession:
    return _session_at(strategy, cell, variant, _steps(strategy, steps))


@cache
def _export_at(strategy: str, cell: str, variant: str, steps: int | None) -> ExportResult:
    options = {"unroll": {"seq_len": steps}, "step": {"chunk": steps}}.get(strategy, {})
    return export_model(_model(cell, variant), None, strategy=strategy, **options)


@cache
def _session_at(strategy: str, cell: str, variant: str, steps: int | None) -> ort.InferenceSession:
    res = _export_at(strategy, cell, variant, steps)
    return ort.InferenceSession(res.model_bytes, providers=["CPUExecutionProvider"])


def _eager(model: RecurrentModel, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        lt = None if lengths is None else torch.from_numpy(lengths)
        return model(torch.from_numpy(x), lt).numpy()


def _eager_state(model: RecurrentModel, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        _, st = model.rnn(torch.from_numpy(x))
    return [s.numpy() for s in (st if isinstance(st, tuple) else (st,))]


def _assert_close(want: np.ndarray, got: np.ndarray, what: str) -> None:
    a, rel, ok = compare(want, got, TOL)
    assert ok, f"{what}: max abs diff {a:.3g} (rel {rel:.3g}) exceeds atol {TOL.atol:g} / rtol {TOL.rtol:g}"


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _all_nodes(a.g)
            for g in a.graphs:
                out += _all_nodes(g)
    return out


def _op_types(res: ExportResult) -> set[str]:
    proto = onnx.load_from_string(res.model_bytes)
    return {n.op_type for n in _all_nodes(proto.graph)} | {n.op_type for f in proto.functions for n in f.node}


def _run_stream(
    sess: ort.InferenceSession, res: ExportResult, x: np.ndarray, state: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """One step-graph call: x (B, K, F) with the given states; returns the data outputs and the next states."""
    m = res.manifest
    outs = sess.run(None, {"x": x, **state})
    by_name = dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))
    data = [by_name[o.name] for o in m.outputs if o.role != "state"]
    return data, {s.input: by_name[s.output] for s in m.states}


def _zero_state(res: ExportResult, batch: int) -> dict[str, np.ndarray]:
    return {s.input: np.zeros([batch if d == "batch" else d for d in s.shape], np.float32) for s in res.manifest.states}


# LSTM variants are crossed with the LSTM only; a strategy that lacks a variant is skipped, saying so
MATRIX = [
    pytest.param(s, c, v, id=f"{s}-{c}-{v}")
    for s in STRATEGIES
    for c in CELLS
    for v in VARIANTS
    if c == "lstm" or v not in LSTM_ONLY
]


# ---------------------------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("strategy", "cell", "variant"), MATRIX)
def test_parity(strategy: str, cell: str, variant: str, batch: int, length: int) -> None:
    why = unsupported(strategy, cell, variant)
    if why:
        pytest.skip(why)
    model = _model(cell, variant)
    rng = np.random.default_rng(batch * 1000 + length)
    x = rng.standard_normal((batch, length, 3)).astype(np.float32)
    want = _eager(model, x)  # the eager model without lengths: a full-length `lengths` input must change nothing
    if strategy == "step":
        res = _export(strategy, cell, variant)  # chunk 1: one call per step
        sess = _session(strategy, cell, variant)
        state = _zero_state(res, batch)
        outs = []
        for t in range(length):
            (y,), state = _run_stream(sess, res, x[:, t : t + 1], state)
            outs.append(y)
        got = np.concatenate(outs, axis=1) if VARIANTS[variant].readout == "all" else outs[-1]
        _assert_close(want, got, f"{length} chained step calls vs one eager call")
        for s, w in zip(res.manifest.states, _eager_state(model, x), strict=True):
            _assert_close(w, state[s.input], f"state {s.output} after {length} steps")
        return
    steps = length if strategy == "unroll" else None
    res = _export(strategy, cell, variant, steps)
    sess = _session(strategy, cell, variant, steps)
    feed: dict[str, np.ndarray] = {"x": x}
    if res.manifest.input("lengths") is not None:
        feed["lengths"] = np.full(batch, length, np.int64)
    (got,) = sess.run(None, feed)
    _assert_close(want, got, f"{strategy} at batch {batch}, length {length}")


def test_matrix_covers_every_registered_strategy_and_cell() -> None:
    assert set(strategy_names()) == set(STRATEGIES), "a registered strategy is missing from the test matrix"
    assert set(cell_names()) == set(CELLS), "a registered cell kind is missing from the test matrix"
    for s in STRATEGIES:
        caps = get_strategy_class(s).caps
        for c in CELLS:
            assert any(unsupported(s, c, v) is None for v in VARIANTS), f"{s} x {c} has no variant in the matrix"
        # every variant a strategy claims is exercised on the LSTM, and bidirectional when it claims it
        claimed = {v for v in VARIANTS if unsupported(s, "lstm", v) is None}
        assert caps.variants <= set().union(*(VARIANTS[v].needs for v in claimed))
        assert caps.bidirectional == any(VARIANTS[v].bidirectional for v in claimed)


# ---------------------------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("cell", CELLS)
def test_unroll_graph_has_no_control_flow_or_recurrent_ops(cell: str) -> None:
    banned = {"Loop", "Scan", "If", "RNN", "LSTM", "GRU"}
    for variant in VARIANTS:
        if unsupported("unroll", cell, variant) is None:
            found = _op_types(_export("unroll", cell, variant)) & banned
            assert not found, f"unroll {cell}/{variant} graph holds {found}"


@pytest.mark.parametrize("cell", CELLS)
def test_loop_graph_is_a_scan_without_recurrent_ops(cell: str) -> None:
    ops = _op_types(_export("loop", cell, "uni"))
    assert "Scan" in ops
    assert not ops & {"RNN", "LSTM", "GRU"}
    x = _export("loop", cell, "uni").manifest.inputs[0]
    assert x.shape == ["batch", "time", 3]


def test_unroll_refuses_a_graph_left_with_control_flow() -> None:
    """The no-control-flow contract is checked on every export: an If that no Scan unrolling removes is an error."""
    from onnx import TensorProto, helper

    def branch(name: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])
        return helper.make_graph([helper.make_node("Identity", ["x"], [f"{name}_y"])], name, [], [out])

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ExportError, match="still holds If"):
        get_strategy_class("unroll")(seq_len=3).postprocess(model)


@pytest.mark.slow
def test_unroll_rejects_other_lengths() -> None:
    sess = _session("unroll", "gru", "uni")
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        sess.run(None, {"x": np.zeros((1, UNROLL_LEN + 1, 3), np.float32), "lengths": np.array([UNROLL_LEN + 1])})


# ---------------------------------------------------------------------------------------------- padding


PADDED = (1, 9, 17)


@pytest.mark.parametrize(
    ("strategy", "cell", "variant"),
    [p for p in MATRIX if get_strategy_class(p.values[0]).caps.lengths],
)
def test_padded_batch_equals_each_sequence_alone(strategy: str, cell: str, variant: str) -> None:
    why = unsupported(strategy, cell, variant)
    if why:
        pytest.skip(why)
    model = _model(cell, variant)
    sess = _session(strategy, cell, variant)  # unroll: at UNROLL_LEN, the padded length
    rng = np.random.default_rng(7)
    lengths = np.array(PADDED, np.int64)
    x = rng.standard_normal((len(PADDED), max(PADDED), 3)).astype(np.float32)
    for b, n in enumerate(PADDED):
        x[b, n:] = 1e3  # padding must not leak, whatever it holds
    (got,) = sess.run(None, {"x": x, "lengths": lengths})
    all_steps = VARIANTS[variant].readout == "all"
    head_bias = model.head.bias.detach().numpy()
    for b, n in enumerate(PADDED):
        alone = _eager(model, x[b : b + 1, :n])  # the sequence on its own, unpadded
        row = got[b : b + 1, :n] if all_steps else got[b : b + 1]
        _assert_close(alone, row, f"padded row {b} (length {n}) vs the sequence alone")
        if all_steps and n < max(PADDED):  # padded steps output zero, so the head gives its bias there
            _assert_close(np.broadcast_to(head_bias, got[b, n:].shape), got[b, n:], f"padded steps of row {b}")
        if strategy != "unroll":  # dynamic length: the exported model itself on the sequence alone
            (own,) = sess.run(None, {"x": x[b : b + 1, :n], "lengths": lengths[b : b + 1]})
            _assert_close(own, row, f"padded row {b} vs the exported model on the sequence alone")


# ---------------------------------------------------------------------------------------------- streaming


@cache
def _stream_model(cell: str) -> RecurrentModel:
    torch.manual_seed(3)
    lstm = cell == "lstm"
    return build_model(
        ModelConfig(
            cell=cell,
            input_size=3,
            hidden_size=5,
            num_layers=2,
            readout="all",
            output_size=2,
            peephole=lstm,
            proj_size=3 if lstm else 0,
        )
    ).eval()


@cache
def _stream_export(cell: str, chunk: int) -> tuple[ExportResult, ort.InferenceSession]:
    res = export_model(_stream_model(cell), None, strategy="step", chunk=chunk)
    return res, ort.InferenceSession(res.model_bytes, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("cell", CELLS)
def test_step_chained_calls_equal_one_full_sequence_call(cell: str, chunk: int) -> None:
    """50 steps through onnxruntime, K at a time (the last 50 % K through the K=1 graph, whose state layout is
    the same), against one eager torch call on all 50 steps: every step's output and the final states."""
    steps = 50
    model = _stream_model(cell)
    res, sess = _stream_export(cell, chunk)
    one, sess1 = _stream_export(cell, 1)
    rng = np.random.default_rng(chunk)
    x = rng.standard_normal((3, steps, 3)).astype(np.float32)
    state = _zero_state(res, 3)
    outs = []
    t = 0
    while t < steps:
        k = chunk if steps - t >= chunk else 1
        graph, g_res = (sess, res) if k == chunk else (sess1, one)
        (y,), state = _run_stream(graph, g_res, x[:, t : t + k], state)
        assert y.shape == (3, k, 2)
        outs.append(y)
        t += k
    _assert_close(_eager(model, x), np.concatenate(outs, axis=1), f"K={chunk} chained outputs vs one eager call")
    for s, w in zip(res.manifest.states, _eager_state(model, x), strict=True):
        _assert_close(w, state[s.input], f"final {s.output}")
    assert res.report is not None and res.report.passed  # the export's own chained check


@pytest.mark.slow
def test_step_manifest_names_every_state() -> None:
    res, sess = _stream_export("lstm", 4)
    m = res.manifest
    assert m.strategy == "step" and m.chunk == 4 and m.seq_len is None
    assert [(s.input, s.output, s.shape, s.init) for s in m.states] == [
        ("h_in", "h_out", [2, "batch", 3], "zeros"),  # proj_size 3
        ("c_in", "c_out", [2, "batch", 5], "zeros"),
    ]
    assert [i.name for i in sess.get_inputs()] == ["x", "h_in", "c_in"]
    assert [o.name for o in sess.get_outputs()] == ["y", "h_out", "c_out"]
    assert sess.get_inputs()[0].shape == ["batch", 4, 3]
    assert m.input("lengths") is None


@pytest.mark.slow
def test_step_readout_last_gives_the_head_of_the_newest_state() -> None:
    res, sess = _export("step", "gru", "uni", 4), _session("step", "gru", "uni", 4)
    model = _model("gru", "uni")
    x = np.random.default_rng(1).standard_normal((2, 8, 3)).astype(np.float32)
    state = _zero_state(res, 2)
    for j in range(2):
        (y,), state = _run_stream(sess, res, x[:, 4 * j : 4 * j + 4], state)
        _assert_close(_eager(model, x[:, : 4 * j + 4]), y, f"output after chunk {j}")


def test_step_chained_check_can_fail() -> None:
    """The export's chained check must catch a graph that drops its state between calls."""
    from edgernn.manifest import StateSpec, TensorSpec
    from edgernn.verify.against_torch import stream_reference
    from edgernn.verify.parity import Case, check_chained, session_runner

    res, sess = _stream_export("gru", 1)
    specs = [TensorSpec("x", "float32", ["batch", "time", 3])]
    states: list[StateSpec] = res.manifest.states
    honest = session_runner(sess)

    def forgetful(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return honest({**feed, **{s.input: np.zeros_like(feed[s.input]) for s in states}})

    ref = stream_reference(_stream_model("gru"), specs)
    ok = check_chained(ref, honest, specs, states, ["y"], 1, [Case(2, 6)])
    bad = check_chained(ref, forgetful, specs, states, ["y"], 1, [Case(2, 6)])
    assert ok.passed and not bad.passed


# ---------------------------------------------------------------------------------------------- refusals


def test_native_refuses_projection_naming_the_strategies_that_can() -> None:
    with pytest.raises(ExportError, match="projection") as e:
        export_model(_model("lstm", "projection"), None, strategy="native")
    for able in ("loop", "unroll", "step"):
        assert able in str(e.value)


def test_step_refuses_bidirectional_saying_why() -> None:
    with pytest.raises(ExportError, match="not arrived") as e:
        export_model(_model("gru", "bi"), None, strategy="step")
    for able in ("native", "loop", "unroll"):
        assert able in str(e.value)


def test_step_takes_no_lengths() -> None:
    with pytest.raises(ExportError, match="lengths"):
        export_model(_model("gru", "uni"), None, strategy="step", lengths=True)


def test_unroll_needs_seq_len() -> None:
    # a missing or bad option is a configuration error (exit 2), named as the command line spells it
    with pytest.raises(ConfigError, match=r"needs --seq-len \(e.g. --seq-len 100; in Python seq_len=100\)"):
        export_model(_model("gru", "uni"), None, strategy="unroll")
    with pytest.raises(ConfigError, match="--seq-len must be an integer >= 1; got 0"):
        export_model(_model("gru", "uni"), None, strategy="unroll", seq_len=0)


def test_options_a_strategy_does_not_take_are_errors() -> None:
    with pytest.raises(ConfigError, match="'loop' does not take --seq-len; it takes no options"):
        export_model(_model("gru", "uni"), None, strategy="loop", seq_len=5)
    with pytest.raises(ConfigError, match="'unroll' does not take --chunk; it takes --seq-len"):
        export_model(_model("gru", "uni"), None, strategy="unroll", seq_len=5, chunk=2)


# ---------------------------------------------------------------------------------------------- opsets


@pytest.mark.slow
@pytest.mark.parametrize("end", ["opset_min", "opset_max"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_opset_range_ends(strategy: str, end: str) -> None:
    caps = get_strategy_class(strategy).caps
    opset = getattr(caps, end)
    variant = "peephole" if strategy != "unroll" else "uni"
    options = {"seq_len": 3} if strategy == "unroll" else {"chunk": 2} if strategy == "step" else {}
    res = export_model(_model("lstm", variant), None, strategy=strategy, opset=opset, **options)
    assert res.manifest.opset == opset
    proto = onnx.load_from_string(res.model_bytes)
    assert {o.domain: o.version for o in proto.opset_import}.get("") == opset
    assert res.report is not None and res.report.passed
    beyond = opset + (1 if end == "opset_max" else -1)
    with pytest.raises(ExportError, match="opset"):
        export_model(_model("gru", "uni"), None, strategy=strategy, opset=beyond, **options)


# ---------------------------------------------------------------------------------------------- peepholes


def test_peephole_lstm_matches_the_numpy_oracle_and_trains() -> None:
    torch.manual_seed(0)
    layer = LSTM(3, 5, num_layers=2, bidirectional=True, peephole=True, proj_size=3, batch_first=True)
    assert layer.weight_ph_l1_reverse.shape == (15,)
    x = torch.randn(4, 9, 3)
    lengths = torch.tensor([9, 1, 5, 3])
    with torch.no_grad():
        y, (h, c) = layer(x, lengths=lengths)
    state = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    ry, rh, rc = reference.recurrent_forward(
        "lstm", state, x.transpose(0, 1).numpy(), num_layers=2, bidirectional=True, lengths=lengths.numpy()
    )
    _assert_close(ry.swapaxes(0, 1), y.numpy(), "y")
    _assert_close(rh, h.numpy(), "h_n")
    _assert_close(rc, c.numpy(), "c_n")
    layer(x)[0].sum().backward()
    assert layer.weight_ph_l0.grad is not None and layer.weight_ph_l0.grad.abs().sum() > 0


def test_peephole_is_an_lstm_option() -> None:
    with pytest.raises(ConfigError, match="peephole"):
        ModelConfig(cell="gru", peephole=True)
    assert _config("lstm", "peephole").peephole


# ---------------------------------------------------------------------------------------------- exporter state


@pytest.mark.slow
def test_an_earlier_static_export_does_not_freeze_a_later_dynamic_one() -> None:
    """torch's exporter keeps state between exports: after a static export of torch's own GRU, a dynamic one
    freezes T (DESIGN.md). edgernn's exports never let torch trace its recurrent ops; in a fresh process, poison
    the state that way and check that a `loop` export still takes any length."""
    code = textwrap.dedent(
        """
        import warnings, numpy as np, torch, onnxruntime as ort
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.GRU(3, 8, batch_first=True), (torch.randn(2, 5, 3),), dynamo=True)
        from edgernn.model.zoo import ModelConfig, build_model
        from edgernn.export import export_model
        res = export_model(build_model(ModelConfig(cell="gru", input_size=3, hidden_size=5)), None, strategy="loop")
        assert res.manifest.inputs[0].shape == ["batch", "time", 3], res.manifest.inputs
        sess = ort.InferenceSession(res.model_bytes, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((3, 11, 3), np.float32), "lengths": np.full(3, 11)})
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh"])
def test_a_one_step_graph_projects_its_input_with_one_gemm(cell: str) -> None:
    """A chunk of one step (streaming's common case) has no sequence to hoist the input projection over. An LSTM
    or Elman RNN layer's step is one Gemm over the joined input [x, h]; a GRU layer's is Gemm(x, W^T, b) and the
    recurrent Gemm (r scales R_h h alone). No MatMul, no Transpose between batch-first and time-major (the time
    axis has length 1), no Squeeze/Unsqueeze pair that undoes itself."""
    from torch import nn

    from edgernn.export import export

    torch.manual_seed(0)
    layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn-tanh": nn.RNN}[cell](3, 8, num_layers=2, batch_first=True)

    class Out(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    res = export(Out().eval(), (torch.zeros(2, 1, 3),), None, strategy="step", chunk=1, fused=False)  # plain form
    graph = onnx.load_from_string(res.model_bytes).graph
    ops = [n.op_type for n in _all_nodes(graph)]
    assert ops.count("Gemm") == (4 if cell == "gru" else 2), ops
    assert "MatMul" not in ops and "Transpose" not in ops, ops
    made_by = {o: n for n in graph.node for o in n.output}
    consts = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in graph.initializer}
    for n in graph.node:
        src = made_by.get(n.input[0]) if n.input else None
        if src is not None and {n.op_type, src.op_type} == {"Squeeze", "Unsqueeze"}:
            assert consts[n.input[1]] != consts[src.input[1]], (src.name, n.name)
    assert res.report.passed


def test_a_one_step_export_whose_layer_sees_several_steps_still_matches_torch() -> None:
    """A streaming chunk of one input step, which the module turns into three before its LSTM (each frame thrice):
    the layer's time axis is 3, so batch and time are transposed, not squeezed, and the export matches torch."""
    from torch import nn

    from edgernn.export import export

    torch.manual_seed(0)

    class Repeat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.repeat_interleave(3, dim=1))[0]

    module = Repeat().eval()
    res = export(module, (torch.zeros(2, 1, 3),), None, strategy="step", chunk=1)
    assert res.report.passed
    sess = ort.InferenceSession(res.model_bytes, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 1, 3)).astype(np.float32)
    feed = {"x": x, "h_in": np.zeros((1, 4, 8), np.float32), "c_in": np.zeros((1, 4, 8), np.float32)}
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert got.shape == (4, 3, 8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_squeeze_unsqueeze_pairs_that_undo_each_other_are_read_through() -> None:
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x; pairs over other axes, and a pair
    whose result is a graph output, stay. The folded graph computes what the original does."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from edgernn.export.graph import cancel_squeeze_pairs

    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["back"]),  # cancels: back is x
        helper.make_node("Squeeze", ["u", "ax1"], ["other"]),  # different axis: stays
        helper.make_node("Squeeze", ["y", "ax1"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "ax1"], ["y_again"]),  # cancels: y_again is y
        helper.make_node("Add", ["back", "other"], ["sum"]),
        helper.make_node("Add", ["sum", "y_again"], ["out"]),
        helper.make_node("Unsqueeze", ["s", "ax1"], ["kept"]),  # a graph output: stays
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("kept", TensorProto.FLOAT, None),
        ],
        [onnx.numpy_helper.from_array(np.array([0]), "ax0"), onnx.numpy_helper.from_array(np.array([1]), "ax1")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    feed = {"x": np.arange(3, dtype=np.float32).reshape(1, 3), "y": np.ones((1, 1, 3), np.float32)}
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    model = ir.from_proto(proto)
    cancel_squeeze_pairs(model)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    folded = ir.to_proto(model)
    kinds = {n.output[0]: n.op_type for n in folded.graph.node}
    assert "back" not in kinds and "y_again" not in kinds, kinds
    assert kinds.get("other") == "Squeeze" and kinds.get("kept") == "Unsqueeze", kinds
    got = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
