"""Triton Inference Server for edgernn's streaming exports: a model repository whose config keeps every stream's
state on the server, a validator of configs against the ONNX graph, and a small gRPC client.

A `step` export made with ``--target triton`` has batch-first states ``(batch, layers*directions, hidden)``
(``edgernn.targets.triton``). ``model_config`` builds its Triton config field by field with Triton's own
config protobuf (``tritonclient.grpc.model_config_pb2``), from the graph and the manifest:

* ``input``/``output``: the graph's inputs and outputs without the states, each without its batch axis (dims of
  the other axes; -1 for a dynamic one), ``max_batch_size`` > 0 (Triton stacks the streams of a call on axis 0);
* ``sequence_batching.state``: one entry per state pair (``h_in`` -> ``h_out``, ``c_in`` -> ``c_out``), with a
  zero ``initial_state``, so Triton starts every sequence (a request with the START flag) from zeros and feeds
  each request the state the sequence's previous request returned;
* no ``control_input``: the onnxruntime backend counts each control (START, END, READY, CORRID) as a model
  input and refuses to load a model that does not take it ("configuration specified sequence control ..., but
  model does not provide that input"); the graph needs none of them, since the zero initial state replaces a
  START-driven reset and each batch row is computed on its own (an empty direct-strategy slot computes rows that
  are thrown away). The client still sends sequence_start and sequence_end: the batcher allocates and frees a
  sequence's slot and state by them;
* ``direct`` (a batch slot per sequence) or ``oldest`` (dynamic batches from up to ``max_candidates`` sequences).

That is ``state="implicit"``, which needs a backend with Triton's state API (the Python backend has none: it
feeds zeros as every state). ``state="control"`` writes a Python-backend config instead: START/END/READY/CORRID
control inputs, the state inputs as optional inputs and the state outputs as outputs, and ``model.py``
(``edgernn.serve.triton_model``) beside ``model.onnx``, which keeps each sequence's state by correlation id.

``validate_config`` reads a config back from its text and checks every name, dtype and dims against the graph the
way the onnxruntime backend does at load; ``write_repository`` writes ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/1/model.onnx``. tritonclient is imported only when a config or a client is made; without it those
raise ``MissingPackageError`` (exit code 10) naming ``pip install 'edgernn[triton]'``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeRNNError, InputError, MissingPackageError, ModelFormatError
from ..manifest import MANIFEST_KEY, Manifest, StateSpec, read_manifest

DEFAULT_MAX_BATCH = 64  # streams per model call, unless told
DEFAULT_IDLE_US = 5_000_000  # a sequence idle this long is ended by Triton (its slot and state are freed)
# bounds of what a user sets (docs/scale-out.md): the sequence batcher keeps a state slot per batch row and instance
MAX_BATCH_LIMIT = 65_536  # streams per model call
MAX_INSTANCES = 256  # model instances
MAX_CANDIDATES_LIMIT = 131_072  # sequences an 'oldest' batcher picks from
MAX_IDLE_US = 86_400_000_000  # one day
MAX_QUEUE_DELAY_US = 10_000_000  # ten seconds
STRATEGIES = ("direct", "oldest")
STATE_MODES = ("implicit", "control")  # who keeps a sequence's state: the backend (implicit) or model.py (control)
MAX_SEQUENCES_LIMIT = 1_048_576  # sequences model.py holds per instance (control)
MAX_HELD_BYTES = 16 * 2**30  # state model.py may hold per instance (control)
MAX_PREFERRED = 16  # preferred batch sizes
MAX_WARMUP = 1_000  # warm-up requests at load
# control inputs of a control-state config, by the name model.py reads them under
CONTROL_KINDS = {
    "START": "CONTROL_SEQUENCE_START",
    "END": "CONTROL_SEQUENCE_END",
    "READY": "CONTROL_SEQUENCE_READY",
    "CORRID": "CONTROL_SEQUENCE_CORRID",
}
KINDS = ("KIND_CPU", "KIND_GPU")
EXPORT_HINT = "export it with `edgernn export CKPT --strategy step --target triton`"

# numpy dtype name -> Triton's config data type
TRITON_DTYPES: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}


def config_pb2() -> Any:
    """Triton's model config protobuf module (``tritonclient.grpc.model_config_pb2``), imported on first use."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise MissingPackageError(
            "Triton's model config is built with tritonclient, which is not installed here: "
            "pip install 'edgernn[triton]'",
            name="tritonclient",
        ) from None
    return model_config_pb2


# ------------------------------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output: numpy dtype name and shape (an int per fixed axis, a name per dynamic one)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class StreamGraph:
    """What Triton sees of an ONNX file: its bytes, inputs, outputs and edgernn manifest (None if it has none)."""

    data: bytes
    inputs: list[GraphTensor]
    outputs: list[GraphTensor]
    manifest: Manifest | None

    def input(self, name: str) -> GraphTensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> GraphTensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def read_graph(model: str | os.PathLike[str] | bytes | Any) -> StreamGraph:
    """The inputs, outputs and manifest of ``model`` (a path, the file's bytes, or an onnx.ModelProto)."""
    import onnx
    from onnx import helper

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelFormatError(f"no model file at {str(path)!r}")
        data = path.read_bytes()
    elif isinstance(model, bytes):
        data = model
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise ConfigError(f"a model is a path, bytes or an onnx.ModelProto; got {type(model).__name__}")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # onnx's parser raises its own DecodeError types
        raise ModelFormatError(f"this is not an ONNX model: {e}") from None
    initializers = {i.name for i in proto.graph.initializer}

    def tensor(vi: Any) -> GraphTensor:
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = f"onnx-type-{tt.elem_type}"
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
        return GraphTensor(vi.name, dtype, dims)

    meta = {p.key: p.value for p in proto.metadata_props}
    return StreamGraph(
        data,
        [tensor(i) for i in proto.graph.input if i.name not in initializers],
        [tensor(o) for o in proto.graph.output],
        read_manifest(meta) if MANIFEST_KEY in meta else None,
    )


def servable_states(graph: StreamGraph) -> list[StateSpec]:
    """The state pairs of a step export Triton can serve: ModelFormatError, saying how to export one, for a model
    without an edgernn manifest, of another strategy, with a fixed batch, or whose states, inputs or outputs do
    not have their batch axis first."""
    m = graph.manifest
    if m is None:
        raise ModelFormatError(f"this model has no edgernn manifest, so its states are unknown; {EXPORT_HINT}")
    if m.strategy != "step" or not m.states:
        raise ModelFormatError(
            f"this is a {m.strategy} export; Triton's sequence batcher carries a stream's state from request to "
            f"request, which needs a step export (state in, state out): {EXPORT_HINT}"
        )
    if m.batch is not None:
        raise ModelFormatError(
            f"this model's batch is fixed to {m.batch}; Triton stacks the streams of a call along a dynamic batch "
            f"axis: {EXPORT_HINT} (without --batch)"
        )
    bad = {s.input: list(s.shape) for s in m.states if not s.shape or s.shape[0] != "batch"}
    state_names = {n for s in m.states for n in (s.input, s.output)}
    for t in [*graph.inputs, *graph.outputs]:
        if (not t.shape or not isinstance(t.shape[0], str)) and t.name not in state_names:
            bad[t.name] = list(t.shape)
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ModelFormatError(
            f"Triton batches along the first axis of every input, output and state, and this model's {what} "
            f"do(es) not have the batch axis first (a step export for onnxruntime keeps torch's (layers, batch, "
            f"hidden) states): {EXPORT_HINT}"
        )
    missing = [n for n in state_names if graph.input(n) is None and graph.output(n) is None]
    if missing:
        raise ModelFormatError(f"the manifest's state tensor(s) {', '.join(sorted(missing))} are not in the graph")
    return list(m.states)


# ------------------------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class _Batcher:
    """The sequence batcher's settings, once ``model_config`` has checked them."""

    max_batch_size: int
    idle_us: int
    strategy: str  # direct or oldest
    max_candidates: int | None  # oldest: None for twice max_batch_size
    max_queue_delay_us: int
    preserve_ordering: bool  # oldest
    preferred: list[int]  # oldest
    minimum_slot_utilization: float | None  # direct


def model_config(
    model: str | os.PathLike[str] | bytes | Any,
    *,
    name: str,
    max_batch_size: int | None = None,
    instances: int = 1,
    kind: str = "KIND_CPU",
    idle_us: int = DEFAULT_IDLE_US,
    strategy: str = "direct",
    max_candidates: int | None = None,
    max_queue_delay_us: int = 0,
    state: str = "implicit",
    max_sequences: int | None = None,
    preserve_ordering: bool = False,
    preferred_batch_sizes: Sequence[int] = (),
    minimum_slot_utilization: float | None = None,
    warmup: int = 0,
) -> Any:
    """The Triton config (a ``ModelConfig`` protobuf) that serves step export ``model`` with implicit state.

    ``max_batch_size``: the streams one model call takes (default 64). ``instances``
    copies of the model run on ``kind`` (``KIND_CPU`` or ``KIND_GPU``). ``strategy``: ``direct`` gives each
    sequence a batch slot of one instance until it ends; ``oldest`` forms batches from up to ``max_candidates``
    sequences (default 2 x max_batch_size) per instance. A sequence idle ``idle_us`` microseconds is ended by
    Triton; a batch waits up to ``max_queue_delay_us`` for more streams' requests (0: runs what is there).

    ``state``: ``implicit`` (the backend keeps the states: the onnxruntime backend) or ``control`` (the Python
    backend runs ``model.py``, which keeps the states by correlation id, at most ``max_sequences`` per instance,
    default twice the sequences the batcher holds; see ``edgernn.serve.triton_model``). The batcher's knobs:
    ``preserve_ordering`` and ``preferred_batch_sizes`` (``oldest``), ``minimum_slot_utilization`` (``direct``,
    0..1), and ``warmup`` zero-data requests run when the model loads (0: none).
    """
    pb = config_pb2()
    graph = model if isinstance(model, StreamGraph) else read_graph(model)
    states = servable_states(graph)
    _check_name(name)
    mbs = _positive("max_batch_size", max_batch_size if max_batch_size is not None else DEFAULT_MAX_BATCH)
    per_row = _state_bytes(graph, states)
    _at_most("max_batch_size", mbs, MAX_BATCH_LIMIT, f"{per_row:,} bytes of state per stream", per_row)
    _check_scheduling(instances, kind, strategy, max_candidates, idle_us, max_queue_delay_us, state)
    preferred = _check_knobs(mbs, strategy, preserve_ordering, preferred_batch_sizes, minimum_slot_utilization, warmup)
    held = _held_sequences(mbs, strategy, max_candidates, state, max_sequences, per_row)
    control = state == "control"
    cfg = pb.ModelConfig()
    cfg.name = name
    if control:  # the Python backend runs model.py, which runs model.onnx and keeps the states
        cfg.backend = "python"
    else:
        cfg.backend = "onnxruntime"
        cfg.platform = "onnxruntime_onnx"
    cfg.default_model_filename = "model.py" if control else "model.onnx"  # control: model.py runs model.onnx
    cfg.max_batch_size = mbs
    _add_tensors(pb, cfg, graph, states, control)
    group = cfg.instance_group.add()
    group.count = instances
    group.kind = pb.ModelInstanceGroup.Kind.Value(kind)
    batcher = _Batcher(
        max_batch_size=mbs,
        idle_us=idle_us,
        strategy=strategy,
        max_candidates=max_candidates,
        max_queue_delay_us=max_queue_delay_us,
        preserve_ordering=preserve_ordering,
        preferred=preferred,
        minimum_slot_utilization=minimum_slot_utilization,
    )
    _add_batcher(cfg.sequence_batching, batcher)
    if control:
        _add_control(pb, cfg, graph, states, held, idle_us)
    else:
        _add_implicit_states(pb, cfg.sequence_batching, graph, states)
    if warmup:
        _add_warmup(pb, cfg, warmup)
    return cfg


def _check_scheduling(
    instances: Any,
    kind: Any,
    strategy: Any,
    max_candidates: Any,
    idle_us: Any,
    max_queue_delay_us: Any,
    state: Any,
) -> None:
    """ConfigError for an instance count, kind, strategy, idle time, queue delay or state mode that Triton does
    not take or that is over its bound."""
    _at_most("instances", _positive("instances", instances), MAX_INSTANCES, "a copy of the model each")
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if max_candidates is not None and strategy != "oldest":
        raise ConfigError("max_candidates goes with strategy 'oldest' (direct gives each sequence its own slot)")
    _at_most("idle_us", _positive("idle_us", idle_us), MAX_IDLE_US, "one day")
    if isinstance(max_queue_delay_us, bool) or not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must be an integer >= 0; got {max_queue_delay_us!r}")
    _at_most("max_queue_delay_us", max_queue_delay_us, MAX_QUEUE_DELAY_US, "ten seconds")
    if max_candidates is not None:
        _at_most("max_candidates", _positive("max_candidates", max_candidates), MAX_CANDIDATES_LIMIT, "sequences")
    if state not in STATE_MODES:
        raise ConfigError(f"state must be one of {', '.join(STATE_MODES)}; got {state!r}")


def _check_knobs(
    mbs: int,
    strategy: str,
    preserve_ordering: Any,
    preferred_batch_sizes: Sequence[Any],
    minimum_slot_utilization: Any,
    warmup: Any,
) -> list[int]:
    """The preferred batch sizes as a list, once the batcher's knobs are checked against ``strategy``, their
    types and their bounds (ConfigError otherwise)."""
    if strategy != "oldest" and (preserve_ordering or preferred_batch_sizes):
        raise ConfigError("preserve_ordering and preferred_batch_sizes go with strategy 'oldest'")
    if strategy != "direct" and minimum_slot_utilization is not None:
        raise ConfigError("minimum_slot_utilization goes with strategy 'direct'")
    if not isinstance(preserve_ordering, bool):
        raise ConfigError(f"preserve_ordering is True or False; got {preserve_ordering!r}")
    preferred = list(preferred_batch_sizes)
    _at_most("the number of preferred batch sizes", len(preferred), MAX_PREFERRED, "sizes")
    for size in preferred:
        _at_most("a preferred batch size", _positive("a preferred batch size", size), mbs, "max_batch_size")
    if len(set(preferred)) != len(preferred):
        raise ConfigError(f"preferred batch sizes are distinct; got {preferred}")
    if minimum_slot_utilization is not None and (
        isinstance(minimum_slot_utilization, bool)
        or not isinstance(minimum_slot_utilization, (int, float))
        or not 0.0 <= minimum_slot_utilization <= 1.0
    ):
        raise ConfigError(f"minimum_slot_utilization is a fraction from 0 to 1; got {minimum_slot_utilization!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup is an integer >= 0 (requests run at load); got {warmup!r}")
    _at_most("warmup", warmup, MAX_WARMUP, "requests run at load")
    return preferred


def _held_sequences(
    mbs: int, strategy: str, max_candidates: int | None, state: str, max_sequences: Any, per_row: int
) -> int | None:
    """The sequences model.py holds per instance (state "control": ``max_sequences``, by default twice the
    sequences the batcher holds, within the count and memory bounds); None for implicit state, which takes no
    ``max_sequences``."""
    if state != "control":
        if max_sequences is not None:
            raise ConfigError(
                "max_sequences goes with state 'control' (with implicit state Triton holds the sequences)"
            )
        return None
    slots = mbs if strategy == "direct" else (max_candidates or 2 * mbs)
    held = _positive("max_sequences", max_sequences if max_sequences is not None else 2 * slots)
    _at_most("max_sequences", held, MAX_SEQUENCES_LIMIT, "sequences held per instance", per_row)
    if held * per_row > MAX_HELD_BYTES:
        raise ConfigError(
            f"max_sequences {held:,} would hold {held * per_row:,} bytes of state per instance ({per_row:,} per "
            f"sequence); at most {MAX_HELD_BYTES:,}: give a smaller max_sequences"
        )
    return held


def _add_tensors(pb: Any, cfg: Any, graph: StreamGraph, states: Sequence[StateSpec], control: bool) -> None:
    """The config's inputs and outputs: the graph's, without the batch axis; with implicit state, without the
    states (Triton feeds them), with control state, the states too (a state input is optional: it is sent only
    to resume a sequence)."""
    state_in = {s.input for s in states}
    state_out = {s.output for s in states}
    for t in graph.inputs:
        if t.name not in state_in or control:
            entry = cfg.input.add()
            entry.name = t.name
            entry.data_type = pb.DataType.Value(_triton_type(t))
            entry.dims.extend(_dims(t))
            entry.optional = t.name in state_in  # control: a state is sent only to resume a sequence
    for t in graph.outputs:
        if t.name not in state_out or control:
            entry = cfg.output.add()
            entry.name = t.name
            entry.data_type = pb.DataType.Value(_triton_type(t))
            entry.dims.extend(_dims(t))


def _add_batcher(seq: Any, b: _Batcher) -> None:
    """The sequence batcher's idle time and its strategy, ``direct`` or ``oldest``, with that strategy's knobs."""
    seq.max_sequence_idle_microseconds = b.idle_us
    if b.strategy == "direct":
        seq.direct.max_queue_delay_microseconds = b.max_queue_delay_us
        if b.minimum_slot_utilization is not None:
            seq.direct.minimum_slot_utilization = float(b.minimum_slot_utilization)
    else:
        seq.oldest.max_candidate_sequences = _positive("max_candidates", b.max_candidates or 2 * b.max_batch_size)
        seq.oldest.max_queue_delay_microseconds = b.max_queue_delay_us
        seq.oldest.preserve_ordering = b.preserve_ordering
        seq.oldest.preferred_batch_size.extend(b.preferred)


def _state_input(graph: StreamGraph, s: StateSpec) -> GraphTensor:
    t_in = graph.input(s.input)
    if t_in is None:
        raise ModelFormatError(f"state input {s.input!r} is not an input of the graph")
    return t_in


def _add_control(
    pb: Any, cfg: Any, graph: StreamGraph, states: Sequence[StateSpec], held: int | None, idle_us: int
) -> None:
    """Control state: the START/END/READY/CORRID control inputs model.py reads, and the parameters that tell it
    the states, how many sequences to hold and how long an idle one lives."""
    for cname, ckind in CONTROL_KINDS.items():
        ci = cfg.sequence_batching.control_input.add()
        ci.name = cname
        c = ci.control.add()
        c.kind = pb.ModelSequenceBatching.Control.Kind.Value(ckind)
        if ckind == "CONTROL_SEQUENCE_CORRID":
            c.data_type = pb.DataType.Value("TYPE_UINT64")
        else:
            c.int32_false_true.extend([0, 1])
    described = []
    for s in states:
        t_in = _state_input(graph, s)
        described.append({"input": s.input, "output": s.output, "dims": _dims(t_in, 1), "dtype": t_in.dtype})
    for key, value in (
        ("edgernn_states", json.dumps(described)),
        ("edgernn_max_sequences", str(held)),
        ("edgernn_idle_us", str(idle_us)),
    ):
        cfg.parameters[key].string_value = value


def _add_implicit_states(pb: Any, seq: Any, graph: StreamGraph, states: Sequence[StateSpec]) -> None:
    """Implicit state: one batcher state per state pair, starting every sequence from zeros."""
    for s in states:
        t_in = _state_input(graph, s)
        st = seq.state.add()
        st.input_name = s.input
        st.output_name = s.output
        st.data_type = pb.DataType.Value(_triton_type(t_in))
        st.dims.extend(_dims(t_in))
        init = st.initial_state.add()
        init.data_type = st.data_type
        init.dims.extend(_dims(t_in))
        init.zero_data = True
        init.name = f"{s.input} zeros"


def _add_warmup(pb: Any, cfg: Any, warmup: int) -> None:
    """``warmup`` zero-data requests of batch 1 that Triton runs when the model loads: every required input,
    and every control input (CORRID 0: a request of no sequence, which model.py runs from zeros)."""
    w = cfg.model_warmup.add()
    w.name = "edgernn zero frames"
    w.batch_size = 1
    w.count = warmup
    for entry in cfg.input:
        if entry.optional:
            continue
        wi = w.inputs[entry.name]
        wi.data_type = entry.data_type
        wi.dims.extend([max(d, 1) for d in entry.dims])
        wi.zero_data = True
    for ci in cfg.sequence_batching.control_input:  # CORRID 0: a request of no sequence (model.py runs it from zeros)
        wi = w.inputs[ci.name]
        wi.data_type = ci.control[0].data_type or pb.DataType.Value("TYPE_INT32")
        wi.dims.append(1)
        wi.zero_data = True


def config_text(config: Any) -> str:
    """``config`` (a ModelConfig) as Triton reads it from ``config.pbtxt``: protobuf text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(config: Any) -> Any:
    """A ModelConfig from pbtxt text, a path to a config.pbtxt, or a ModelConfig (read back from its text, so
    what is checked is what Triton would read)."""
    from google.protobuf import text_format

    pb = config_pb2()
    if isinstance(config, os.PathLike) or (
        isinstance(config, str) and "\n" not in config and config.endswith(".pbtxt")
    ):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"no Triton config at {str(path)!r}")
        text = path.read_text()
    elif isinstance(config, str):
        text = config
    elif isinstance(config, pb.ModelConfig):
        text = config_text(config)
    else:
        raise ConfigError(f"a Triton config is pbtxt text, a path or a ModelConfig; got {type(config).__name__}")
    out = pb.ModelConfig()
    try:
        text_format.Parse(text, out)
    except text_format.ParseError as e:
        raise ConfigError(f"the Triton config does not parse: {e}") from None
    return out


def config_problems(config: Any, model: str | os.PathLike[str] | bytes | Any) -> list[str]:
    """Every way ``config`` does not fit ``model``'s graph, as the onnxruntime backend checks at load (and the
    sequence batcher's state pairing): an empty list when it fits."""
    pb = config_pb2()
    cfg = parse_config(config)
    graph = model if isinstance(model, StreamGraph) else read_graph(model)
    problems: list[str] = []
    control = cfg.backend == "python"  # state 'control': model.py keeps the states
    if control:
        if cfg.platform:
            problems.append(f"a Python-backend model has no platform; got {cfg.platform!r}")
    elif cfg.backend not in ("", "onnxruntime") or cfg.platform not in ("", "onnxruntime_onnx"):
        problems.append(f"backend {cfg.backend!r} / platform {cfg.platform!r} is neither onnxruntime nor python")
    batching = cfg.max_batch_size > 0
    seq = cfg.sequence_batching
    if not batching and seq.state:
        problems.append("max_batch_size is 0: states would not be batch-first; give max_batch_size > 0")
    skip = 1 if batching else 0
    dtype_name = pb.DataType.Name

    def compare(kind: str, name: str, t: GraphTensor | None, data_type: int, dims: Sequence[int]) -> None:
        if t is None:
            problems.append(f"{kind} {name!r} is not a graph {'output' if 'output' in kind else 'input'}")
            return
        want_type = TRITON_DTYPES.get(t.dtype)
        if want_type != dtype_name(data_type):
            problems.append(f"{kind} {name!r} is {dtype_name(data_type)} in the config, {t.dtype} in the graph")
        if batching and (not t.shape or not isinstance(t.shape[0], str)):
            problems.append(f"{kind} {name!r} has shape {list(t.shape)} in the graph: no dynamic batch axis first")
            return
        want = _dims(t, skip)
        if list(dims) != want:
            problems.append(
                f"{kind} {name!r} has dims {list(dims)} in the config, {want} in the graph {list(t.shape)}"
                + (" (without its batch axis)" if batching else "")
            )

    inputs = [i.name for i in cfg.input]
    outputs = [o.name for o in cfg.output]
    for what, names in (("input", inputs), ("output", outputs)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"{what}(s) {', '.join(dup)} listed twice")
    for i in cfg.input:
        compare("input", i.name, graph.input(i.name), i.data_type, i.dims)
    for o in cfg.output:
        compare("output", o.name, graph.output(o.name), o.data_type, o.dims)
    problems.extend(_batcher_problems(cfg))
    if control:
        problems.extend(_control_problems(cfg, graph))
        return problems
    controls: list[str] = []
    for c in seq.control_input:
        controls.append(c.name)
        t = graph.input(c.name)
        if t is None:
            problems.append(
                f"control input {c.name!r} is not a graph input (the onnxruntime backend refuses a control the model "
                "does not take)"
            )
        elif list(_dims(t, skip)) != [1]:
            problems.append(f"control input {c.name!r} has dims {_dims(t, skip)} in the graph; a control takes [1]")
    state_inputs = [s.input_name for s in seq.state]
    state_outputs = [s.output_name for s in seq.state]
    for s in seq.state:
        compare("state input", s.input_name, graph.input(s.input_name), s.data_type, s.dims)
        compare("state output", s.output_name, graph.output(s.output_name), s.data_type, s.dims)
        if s.input_name in inputs:
            problems.append(f"state input {s.input_name!r} is also listed under input; Triton feeds it itself")
        if len(s.initial_state) != 1:
            problems.append(
                f"state {s.input_name!r} has {len(s.initial_state)} initial_state entries; give one (without it the "
                "first request of a sequence carries uninitialised data)"
            )
            continue
        init = s.initial_state[0]
        if init.WhichOneof("state_data") is None:
            problems.append(f"state {s.input_name!r}: its initial_state has neither zero_data nor data_file")
        if init.data_type != s.data_type:
            problems.append(f"state {s.input_name!r}: its initial_state's data_type differs from the state's")
        if list(init.dims) != list(s.dims) or any(d < 0 for d in init.dims):
            problems.append(
                f"state {s.input_name!r}: initial_state dims {list(init.dims)} must be the state's fixed dims "
                f"{list(s.dims)}"
            )
    # Triton pairs each output state with an input state by their positions in two name-sorted maps (server issue
    # #8586), not by the configured pairs: the pairs are only honoured where both sorts agree
    by_in, by_out = sorted(state_inputs), sorted(state_outputs)
    for s in seq.state:
        if by_in.index(s.input_name) != by_out.index(s.output_name):
            problems.append(
                f"state {s.input_name!r} -> {s.output_name!r}: Triton pairs states by their sorted names (server "
                f"issue #8586) and would feed {s.output_name!r} to {by_in[by_out.index(s.output_name)]!r}; name "
                "the states so that inputs and outputs sort alike (h_in/h_out, c_in/c_out)"
            )
    m = graph.manifest
    if m is not None and m.states:
        want_pairs = {(s.input, s.output) for s in m.states}
        got_pairs = set(zip(state_inputs, state_outputs, strict=True))
        if want_pairs != got_pairs:
            problems.append(
                f"the config's state pairs {sorted(got_pairs)} are not the model's {sorted(want_pairs)} (manifest)"
            )
    covered = [*inputs, *controls, *state_inputs]
    graph_inputs = [t.name for t in graph.inputs]
    left = [n for n in graph_inputs if n not in covered]
    if left:
        problems.append(f"graph input(s) {', '.join(left)} are neither inputs, states nor controls in the config")
    if len(graph_inputs) != len(covered) and not left:
        problems.append(
            f"the config names {len(covered)} inputs (inputs, controls and states) and the model takes "
            f"{len(graph_inputs)}"
        )
    return problems


def _batcher_problems(cfg: Any) -> list[str]:
    """The sequence batcher's knobs and the warm-up requests, against the rest of ``cfg``."""
    pb = config_pb2()
    problems: list[str] = []
    seq = cfg.sequence_batching
    if seq.WhichOneof("strategy_choice") == "oldest":
        sizes = list(seq.oldest.preferred_batch_size)
        if any(n < 1 or n > cfg.max_batch_size for n in sizes):
            problems.append(f"preferred_batch_size {sizes} must lie in 1..max_batch_size ({cfg.max_batch_size})")
    elif seq.WhichOneof("strategy_choice") == "direct":
        u = seq.direct.minimum_slot_utilization
        if not 0.0 <= u <= 1.0:
            problems.append(f"minimum_slot_utilization {u} is not a fraction from 0 to 1")
    inputs = {i.name: i for i in cfg.input}
    controls = {c.name for c in seq.control_input}
    for w in cfg.model_warmup:
        need = {n for n, i in inputs.items() if not i.optional} | controls
        got = set(w.inputs)
        if not need <= got or not got <= set(inputs) | controls:
            problems.append(
                f"warm-up {w.name!r} gives {sorted(got)}; it gives the inputs {sorted(need)} (optional ones may be "
                "left out)"
            )
        if cfg.max_batch_size > 0 and not 1 <= w.batch_size <= cfg.max_batch_size:
            problems.append(f"warm-up {w.name!r} has batch_size {w.batch_size}; 1..max_batch_size")
        for n, wi in w.inputs.items():
            want = inputs.get(n)
            dims = list(wi.dims)
            if any(d < 1 for d in dims):
                problems.append(f"warm-up {w.name!r} input {n!r} has dims {dims}; a warm-up gives fixed dims")
            elif want is not None and (
                len(dims) != len(want.dims) or any(d >= 0 and d != g for d, g in zip(want.dims, dims, strict=False))
            ):
                problems.append(f"warm-up {w.name!r} input {n!r} has dims {dims}, the input {list(want.dims)}")
            if want is not None and wi.data_type != want.data_type:
                problems.append(
                    f"warm-up {w.name!r} input {n!r} is {pb.DataType.Name(wi.data_type)}, the input "
                    f"{pb.DataType.Name(want.data_type)}"
                )
    return problems


def _control_problems(cfg: Any, graph: StreamGraph) -> list[str]:
    """A control-state config (Python backend, ``model.py``): its control inputs, every graph input and output
    listed (state inputs optional), and the states model.py keeps (``edgernn_states``) the model's."""
    pb = config_pb2()
    problems: list[str] = []
    seq = cfg.sequence_batching
    if cfg.max_batch_size < 1:
        problems.append("max_batch_size is 0: model.py takes batch-first requests; give max_batch_size > 0")
    if seq.state:
        problems.append(
            "a control-state config keeps no implicit state (model.py keeps it); drop sequence_batching.state"
        )
    kinds = {c.name: [pb.ModelSequenceBatching.Control.Kind.Name(k.kind) for k in c.control] for c in seq.control_input}
    want_kinds = {n: [k] for n, k in CONTROL_KINDS.items()}
    if kinds != want_kinds:
        problems.append(f"control inputs {kinds} must be {want_kinds} (model.py reads them by these names)")
    for c in seq.control_input:
        for k in c.control:
            if k.kind == pb.ModelSequenceBatching.Control.Kind.Value("CONTROL_SEQUENCE_CORRID"):
                if pb.DataType.Name(k.data_type) != "TYPE_UINT64":
                    problems.append(f"control {c.name!r} carries the correlation id as TYPE_UINT64 (model.py)")
            elif list(k.int32_false_true) != [0, 1]:
                problems.append(
                    f"control {c.name!r} gives int32_false_true [0, 1] (model.py); got {list(k.int32_false_true)}"
                )
        if graph.input(c.name) is not None:
            problems.append(f"control input {c.name!r} is also a graph input; model.py keeps the controls")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    try:
        described = json.loads(params["edgernn_states"])
        pairs = {(d["input"], d["output"]) for d in described}
        held = int(params["edgernn_max_sequences"])
        idle = int(params["edgernn_idle_us"])
    except (KeyError, TypeError, ValueError) as e:
        return [*problems, f"parameters edgernn_states, edgernn_max_sequences and edgernn_idle_us are model.py's ({e})"]
    if not 1 <= held <= MAX_SEQUENCES_LIMIT:
        problems.append(f"edgernn_max_sequences {held} is not in 1..{MAX_SEQUENCES_LIMIT:,}")
    if idle != seq.max_sequence_idle_microseconds:
        problems.append(
            f"edgernn_idle_us {idle} differs from max_sequence_idle_microseconds {seq.max_sequence_idle_microseconds}"
        )
    m = graph.manifest
    if m is not None and m.states and pairs != {(s.input, s.output) for s in m.states}:
        problems.append(
            f"edgernn_states pairs {sorted(pairs)} are not the model's {sorted((s.input, s.output) for s in m.states)}"
        )
    for d in described:
        t = graph.input(d["input"])
        if t is None:
            problems.append(f"state {d['input']!r} (edgernn_states) is not a graph input")
        elif d.get("dims") != _dims(t) or d.get("dtype") != t.dtype:
            problems.append(
                f"state {d['input']!r} is {d.get('dtype')} {d.get('dims')} in edgernn_states, {t.dtype} "
                f"{_dims(t)} in the graph"
            )
    state_in = {d["input"] for d in described}
    for i in cfg.input:
        if i.optional != (i.name in state_in):
            problems.append(
                f"input {i.name!r} is {'optional' if i.optional else 'required'}; the state inputs are optional (sent "
                "to resume a sequence) and the others required"
            )
    listed = {i.name for i in cfg.input}
    left = [t.name for t in graph.inputs if t.name not in listed]
    if left:
        problems.append(f"graph input(s) {', '.join(left)} are not inputs in the config (model.py feeds all)")
    out_listed = {o.name for o in cfg.output}
    missing = [t.name for t in graph.outputs if t.name not in out_listed]
    if missing:
        problems.append(f"graph output(s) {', '.join(missing)} are not outputs in the config (model.py returns all)")
    return problems


def validate_config(config: Any, model: str | os.PathLike[str] | bytes | Any) -> Any:
    """``config`` (pbtxt text, a path or a ModelConfig) read back and checked against ``model``'s graph; returns
    the parsed ModelConfig, or raises ConfigError naming every mismatch."""
    problems = config_problems(config, model)
    if problems:
        raise ConfigError("the Triton config does not fit the model: " + "; ".join(problems))
    return parse_config(config)


# ------------------------------------------------------------------------------------------------ the repository


@dataclass(frozen=True)
class TritonRepository:
    """A model written into a Triton model repository."""

    repository: Path
    name: str
    config_path: Path
    model_path: Path
    config: Any  # the ModelConfig written
    text: str  # config.pbtxt

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        pb = config_pb2()
        seq = cfg.sequence_batching
        return {
            "repository": str(self.repository),
            "name": self.name,
            "config": str(self.config_path),
            "model": str(self.model_path),
            "max_batch_size": cfg.max_batch_size,
            "instances": sum(g.count for g in cfg.instance_group),
            "kind": pb.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) if cfg.instance_group else None,
            "strategy": seq.WhichOneof("strategy_choice"),
            "state": "control" if cfg.backend == "python" else "implicit",
            "backend": cfg.backend,
            "idle_us": seq.max_sequence_idle_microseconds,
            "inputs": [
                {"name": i.name, "data_type": pb.DataType.Name(i.data_type), "dims": list(i.dims)} for i in cfg.input
            ],
            "outputs": [
                {"name": o.name, "data_type": pb.DataType.Name(o.data_type), "dims": list(o.dims)} for o in cfg.output
            ],
            "states": [
                {
                    "input": s.input_name,
                    "output": s.output_name,
                    "data_type": pb.DataType.Name(s.data_type),
                    "dims": list(s.dims),
                }
                for s in seq.state
            ],
            "config_pbtxt": self.text,
        }


def write_repository(
    model: str | os.PathLike[str] | bytes,
    repo_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int = 1,
    force: bool = False,
    **options: Any,
) -> TritonRepository:
    """Write ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/model.onnx`` for step export ``model`` (made with
    ``--target triton``); ``options`` are ``model_config``'s. The config is validated against the model before
    anything is written; each file is written atomically, the model first, so a server polling the repository
    never finds a config without its model. ``name`` defaults to the model file's name without ``.onnx``. A model
    of that name already in the repository is refused (ConfigError) unless ``force`` (then its config and this
    version's model are replaced)."""
    from ..files import write_atomic

    graph = read_graph(model)
    if name is None:
        if isinstance(model, bytes):
            raise ConfigError("give the model a name (name=...) when it is passed as bytes")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(model).stem)
    _positive("version", version)
    config = model_config(graph, name=name, **options)
    text = config_text(config)
    validate_config(text, graph)
    base = Path(repo_dir) / name
    if base.exists() and not force:
        raise ConfigError(
            f"{os.fspath(repo_dir)!r} already holds a model {name!r} ({os.fspath(base)}); give another --name, or add "
            "--force (force=True) to replace it"
        )
    model_path = base / str(version) / "model.onnx"
    config_path = base / "config.pbtxt"
    write_atomic(model_path, graph.data)
    if config.backend == "python":  # control state: the Python backend runs model.py beside model.onnx
        write_atomic(base / str(version) / "model.py", Path(__file__).with_name("triton_model.py").read_bytes())
    write_atomic(config_path, text.encode())
    return TritonRepository(Path(repo_dir), name, config_path, model_path, config, text)


# ------------------------------------------------------------------------------------------------ the client


@dataclass
class TritonStreamClient:
    """Streams over a model that Triton serves from a repository ``write_repository`` wrote: each stream is a
    sequence id, its first request carries sequence_start and its last sequence_end; the server keeps the state.

    >>> client = TritonStreamClient("sine", url="localhost:8001")
    >>> y = client.step(7, frame, start=True)["y"]    # sequence 7 starts from zero state
    >>> y = client.step(7, frame)["y"]
    >>> y = client.step(7, frame, end=True)["y"]      # the server frees sequence 7's slot and state

    ``config`` (pbtxt text, a path or a ModelConfig) tells the inputs' names, dtypes and dims; without it they are
    asked of the server. ``constants`` are the values of inputs other than the frames (by name), sent with every
    request. ``client`` is any object with tritonclient.grpc's ``infer`` (made from ``url`` on first use).

    With a ``--state control`` model the server returns each step's state too, and the client holds the last one
    of every open sequence (its state bytes per sequence, freed by ``end`` or ``forget``): when the server has
    forgotten a sequence (it idled out), the step is sent again with START and the held state, and the stream goes
    on as if never interrupted. With implicit state the state is the server's alone: such a step raises
    InputError. The server's errors come as edgernn's: InputError (exit 7) for a refused request, EdgeRNNError
    (exit 1) for an unreachable or failing server; never tritonclient's own exception.
    """

    model_name: str
    url: str = "localhost:8001"
    config: Any = None
    constants: Mapping[str, Any] = field(default_factory=dict)
    client: Any = None
    held: dict[int | str, dict[str, np.ndarray]] = field(default_factory=dict, init=False, repr=False)
    restarts: int = field(default=0, init=False)  # sequences resumed with their held state

    def __post_init__(self) -> None:
        if self.config is not None:
            self.config = parse_config(self.config)

    def _client(self) -> Any:
        if self.client is None:
            try:
                import tritonclient.grpc as grpcclient
            except ImportError:
                raise MissingPackageError(
                    "the Triton client needs tritonclient, which is not installed here: pip install 'edgernn[triton]'",
                    name="tritonclient",
                ) from None
            self.client = grpcclient.InferenceServerClient(self.url)
        return self.client

    def _config(self) -> Any:
        if self.config is None:
            self.config = self._call(lambda c: c.get_model_config(self.model_name).config)
        return self.config

    def _call(self, fn: Any) -> Any:
        """``fn(client)``, tritonclient's exception turned into edgernn's."""
        try:
            from tritonclient.utils import InferenceServerException
        except ImportError:  # a stand-in client without tritonclient installed
            InferenceServerException = ()
        try:
            return fn(self._client())
        except InferenceServerException as e:  # type: ignore[misc]
            status = str(e.status() or "")
            msg = e.message() if callable(getattr(e, "message", None)) else str(e)
            if "INVALID_ARGUMENT" in status or "INVALID_ARG" in status:
                raise InputError(f"Triton refused the request for {self.model_name!r}: {msg}") from None
            raise EdgeRNNError(
                f"Triton at {self.url} failed for {self.model_name!r} ({status or 'no status'}): {msg}"
            ) from None

    def _state_pairs(self) -> list[tuple[str, str]]:
        """(state input, state output) of a control-state model, from its config; empty for implicit state."""
        cfg = self._config()
        if "edgernn_states" not in cfg.parameters:
            return []
        try:
            return [(d["input"], d["output"]) for d in json.loads(cfg.parameters["edgernn_states"].string_value)]
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"the config's edgernn_states parameter does not parse: {e}") from None

    def request(
        self,
        sequence_id: int | str,
        frame: Any,
        *,
        start: bool = False,
        end: bool = False,
        state: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of ``InferenceServerClient.infer`` for one step of sequence ``sequence_id``: the
        frame (the data input's dims, batch 1 added) and the constants as ``InferInput`` objects, every output
        requested, and the sequence flags. ``state`` (a control-state model, with ``start``): the state, by state
        input name, the sequence starts from instead of zeros."""
        pb = config_pb2()  # first: it says which extra to install when tritonclient is missing
        import tritonclient.grpc as grpcclient

        if isinstance(sequence_id, bool) or not (
            (isinstance(sequence_id, int) and sequence_id > 0) or (isinstance(sequence_id, str) and sequence_id)
        ):
            raise ConfigError(f"a sequence id is an integer >= 1 or a non-empty string; got {sequence_id!r}")
        cfg = self._config()
        pairs = self._state_pairs()
        if pairs and not isinstance(sequence_id, int):
            raise ConfigError("a --state control model takes integer sequence ids (its CORRID control is UINT64)")
        if state is not None and (not pairs or not start):
            raise ConfigError("a state is sent with start=True to a --state control model only")
        state_names = {i for i, _ in pairs}
        if state is not None and set(state) != state_names:
            raise InputError(f"a state gives {', '.join(sorted(state_names))}; got {', '.join(sorted(state))}")
        unknown = [k for k in self.constants if k not in {i.name for i in cfg.input}]
        if unknown:
            raise ConfigError(f"constant(s) {', '.join(unknown)} are not inputs of {self.model_name!r}")
        data = [i for i in cfg.input if i.name not in self.constants and not i.optional]
        if len(data) != 1:
            raise ConfigError(
                f"{self.model_name!r} takes {', '.join(i.name for i in cfg.input)}; give all but the frames' input "
                "as constants"
            )
        inputs = []
        for entry in cfg.input:
            if entry.name == data[0].name:
                value = frame
            elif entry.name in self.constants:
                value = self.constants[entry.name]
            elif state is not None and entry.name in state:
                value = state[entry.name]
            else:
                continue  # an optional input left out
            dtype = np.dtype(TRITON_TO_NUMPY[pb.DataType.Name(entry.data_type)])
            a = _as_request(entry.name, value, dtype, list(entry.dims), cfg.max_batch_size > 0)
            item = grpcclient.InferInput(entry.name, list(a.shape), pb.DataType.Name(entry.data_type)[len("TYPE_") :])
            item.set_data_from_numpy(a)
            inputs.append(item)
        return {
            "model_name": self.model_name,
            "inputs": inputs,
            "outputs": [grpcclient.InferRequestedOutput(o.name) for o in cfg.output],
            "sequence_id": sequence_id,
            "sequence_start": bool(start),
            "sequence_end": bool(end),
        }

    def step(self, sequence_id: int | str, frame: Any, *, start: bool = False, end: bool = False) -> dict[str, Any]:
        """One step of sequence ``sequence_id``; every output by name (a control-state model's state outputs
        left out), without its batch axis."""
        cfg = self._config()
        pairs = self._state_pairs()
        if start:
            self.held.pop(sequence_id, None)
        kwargs = self.request(sequence_id, frame, start=start, end=end)
        try:
            result = self._call(lambda c: c.infer(**kwargs))
        except InputError as e:
            forgotten = "START flag" in str(e) or "has no state here" in str(e)
            if not forgotten or start:
                raise
            if sequence_id not in self.held:
                how = (
                    "START it again (its state is lost: with implicit state the server alone holds it; serve with "
                    "--state control to let the client resume it)"
                    if not pairs
                    else "START it again (this client holds no state of it)"
                )
                raise InputError(
                    f"Triton has no sequence {sequence_id} of {self.model_name!r} (it idled out, ended or never "
                    f"started): {how}"
                ) from None
            kwargs = self.request(sequence_id, frame, start=True, end=end, state=self.held[sequence_id])
            result = self._call(lambda c: c.infer(**kwargs))
            self.restarts += 1
        batched = cfg.max_batch_size > 0
        outs = {o.name: result.as_numpy(o.name) for o in cfg.output}
        outs = {k: v[0] if batched else v for k, v in outs.items()}
        if pairs:
            if end:
                self.held.pop(sequence_id, None)
            else:
                self.held[sequence_id] = {i: np.array(outs[o]) for i, o in pairs}
            for _, o in pairs:
                outs.pop(o, None)
        return outs

    def forget(self, sequence_id: int | str) -> None:
        """Drop the state this client holds for ``sequence_id`` (a control-state model)."""
        self.held.pop(sequence_id, None)

    def close(self) -> None:
        if self.client is not None and hasattr(self.client, "close"):
            self.client.close()


TRITON_TO_NUMPY = {v: k for k, v in TRITON_DTYPES.items()}


def _as_request(name: str, value: Any, dtype: np.dtype[Any], dims: list[int], batched: bool) -> np.ndarray:
    """``value`` as one request's tensor: the config's dims (size-1 axes may be left out, as for one frame of a
    chunk-1 model: (features,) for dims [1, features]), the batch axis of 1 added for a batching model."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise InputError(f"input {name!r} takes numbers ({dtype}); got {a.dtype}")
    if dtype.kind in "iu" and a.dtype.kind == "f":
        raise InputError(f"input {name!r} takes integers ({dtype}); edgernn does not round floats into them")
    if dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"input {name!r} has non-finite values (NaN or inf)")
    if any(d < 0 for d in dims):
        shape = tuple(a.shape)
        if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape, strict=True)):
            raise InputError(f"input {name!r} takes dims {dims}; got shape {a.shape}")
    else:
        if a.size != math.prod(dims) or [d for d in a.shape if d != 1] != [d for d in dims if d != 1]:
            raise InputError(f"input {name!r} takes dims {dims} (size-1 axes may be left out); got shape {a.shape}")
        a = a.reshape(dims)
    a = a.astype(dtype, copy=False)
    return np.ascontiguousarray(a[None] if batched else a)


def _triton_type(t: GraphTensor) -> str:
    if t.dtype not in TRITON_DTYPES:
        raise ModelFormatError(f"{t.name!r} is {t.dtype}, which Triton's onnxruntime backend has no type for")
    return TRITON_DTYPES[t.dtype]


def _dims(t: GraphTensor, skip: int = 1) -> list[int]:
    """The config's dims of ``t``: its shape without the first ``skip`` axes (the batch), -1 for dynamic axes."""
    return [d if isinstance(d, int) else -1 for d in t.shape[skip:]]


def _at_most(what: str, value: int, limit: int, why: str, per_unit: int = 0) -> int:
    """``value`` if it is at most ``limit``, else a ConfigError naming the bound (and, with ``per_unit`` bytes per
    unit, the memory the value would take)."""
    if value > limit:
        estimate = f" ({value * per_unit:,} bytes of state per instance)" if per_unit else ""
        raise ConfigError(f"{what} is at most {limit:,} ({why}); got {value:,}{estimate}")
    return value


def _state_bytes(graph: StreamGraph, states: Sequence[StateSpec]) -> int:
    """Bytes of state one stream holds (dynamic axes counted as 1)."""
    total = 0
    for s in states:
        t = graph.input(s.input)
        if t is not None:
            total += math.prod(max(d, 1) for d in _dims(t)) * np.dtype(t.dtype).itemsize
    return total


def _positive(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}")
    return value


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise ConfigError(f"a Triton model name is a directory name of letters, digits, '_', '-' and '.'; got {name!r}")
