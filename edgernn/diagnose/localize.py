"""Where it drifts: the recurrent layer, direction and time step at which an exported model first leaves the
tolerance, and its error against time step.

``localize`` runs the eager torch module once with forward hooks on its recurrent layers (``torch.nn.RNN/LSTM/GRU``
and edgernn's subclasses of them) and replays every captured call one stacked layer at a time, on a single-layer
copy of the layer holding that layer's weights: this gives each layer's and direction's hidden state at every step,
h_t (T, B, H or proj_size), as torch computes it. The replayed last layer must reproduce the layer's own output.

On the ONNX side a copy of the graph gets the same sequences as extra graph outputs and runs on onnxruntime:

- ``native`` (and ``step`` with ``fused=True``): output Y (T, D, B, H) of each RNN/LSTM/GRU node, one node per
  stacked layer, both directions in one node;
- ``loop``: the scan output of each ``Scan``, one per layer and direction; the reverse direction's Scan reads
  reversed inputs (a whole-axis ``Slice`` with step -1, or ``scan_input_directions``) and its output is read back
  into time order;
- ``unroll``: where each Scan was, the ``Concat`` that edgernn's unroller writes to stack the steps' outputs (nodes
  named ``Concat_unrolled...`` whose inputs are its ``Unsqueeze_unrolled...`` nodes; at one step, the Unsqueeze
  alone). The direction is read from the constant ``Gather`` index at which successive steps read their input
  (rising forward, falling reverse), and the stacked output is read back into time order where it runs backwards;
- ``step`` (default, unfused): the chunk's K steps are plain ops. Every step's recurrent product
  ``h_{t-1} R^T + c`` (c: the step's input projection, or GRU's recurrent bias) is a ``Gemm`` with the same weight
  R^T as the layer's other steps, so h_0 .. h_{K-2} are the first inputs of steps 1 .. K-1's Gemms, and h_{K-1} is
  the layer's row of its ``h`` state output.

A streaming (``step``) model is localized over the whole sequence: chunks are chained from zero states, as a
stream runs, and each chunk's per-layer steps are compared with the eager run on the whole sequence.

ONNX recurrences are matched to torch's layer calls in execution order (the order the hooks fired; each call is
num_layers x directions recurrences). When the counts, the directions or the shapes disagree,
``ModelFormatError`` says so; nothing is guessed.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ModelFormatError, ParityError
from ..graphs import constant_value
from ..manifest import Manifest, TensorSpec, read_manifest
from ..verify.parity import Tolerance, align_chunk, compare, flat_outputs

if TYPE_CHECKING:
    import onnx
    from torch import Tensor, nn

__all__ = ["Failure", "LayerTrace", "Localization", "OutputCheck", "localize", "plot_errors"]

RECURRENT_OPS = ("RNN", "LSTM", "GRU")
_DEFAULT_DOMAINS = ("", "ai.onnx")
# how closely the layer-by-layer replay must reproduce a torch layer's own output (both are torch, in its dtype)
REPLAY_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)

# ------------------------------------------------------------------------------------------------ the results


@dataclass(frozen=True)
class Failure:
    """The first element of one layer/direction's hidden state that exceeds the tolerance."""

    step: int  # time index t (0-based)
    batch: int  # batch item
    unit: int  # hidden unit
    onnx: float
    torch: float
    diff: float  # |onnx - torch| (inf when onnx is not finite)
    bound: float  # atol + rtol * |torch|
    order: int  # how many steps of this sequence the direction had run before it (t forward, L-1-t reverse)


@dataclass
class LayerTrace:
    """One recurrent layer and direction of one call of a torch recurrent module, compared step by step."""

    module: str  # the torch module's qualified name (its class name at the top)
    call: int  # which call of that module (0: its first)
    layer: int  # stacked layer index k (0-based)
    direction: int  # 0 forward, 1 reverse
    num_layers: int
    tensor: str  # the graph tensor read
    errors: np.ndarray  # (T,): max |onnx - torch| over the valid batch items and units; NaN where none is valid
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def first_step(self) -> int | None:
        """The time step of the first element over the tolerance (in the direction's own order), or None."""
        return None if self.failure is None else self.failure.step

    @property
    def steps(self) -> int:
        return int(self.errors.shape[0])

    @property
    def worst(self) -> float:
        finite = self.errors[~np.isnan(self.errors)]
        return float(finite.max()) if finite.size else 0.0

    @property
    def label(self) -> str:
        call = f" (its {_ordinal(self.call + 1)} call)" if self.call else ""
        way = "reverse" if self.direction else "forward"
        return f"layer {self.module!r}{call} layer {self.layer} {way}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "call": self.call,
            "layer": self.layer,
            "direction": "reverse" if self.direction else "forward",
            "num_layers": self.num_layers,
            "tensor": self.tensor,
            "passed": self.passed,
            "first_step": self.first_step,
            "worst": self.worst,
            "errors": [None if math.isnan(e) else float(e) for e in self.errors.tolist()],
            "failure": None if self.failure is None else _failure_dict(self.failure),
        }


@dataclass(frozen=True)
class OutputCheck:
    """One graph output against the torch module's (for a stream: its worst chunk)."""

    name: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class Localization:
    """Per layer/direction error against time step, the first failure, and the outputs' comparison."""

    strategy: str
    atol: float
    rtol: float
    layers: list[LayerTrace]
    outputs: list[OutputCheck]
    chunk: int | None = None  # step models: the steps per call (the sequence ran as chained calls)
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> LayerTrace | None:
        """The first layer/direction, in execution order, with a step over the tolerance; None when all pass."""
        return next((t for t in self.layers if not t.passed), None)

    @property
    def passed(self) -> bool:
        return self.first is None and all(o.passed for o in self.outputs)

    def describe(self) -> str:
        """One line: where the export first exceeds the tolerance, or that it does not."""
        tol = f"{_num(self.atol)} + {_num(self.rtol)}*|torch|"
        first = self.first
        if first is not None and first.failure is not None:
            f = first.failure
            way = "reverse" if first.direction else "forward"
            call = f" (its {_ordinal(first.call + 1)} call)" if first.call else ""
            order = f", the direction's {_ordinal(f.order + 1)} step" if first.direction else ""
            return (
                f"first exceeds tolerance at layer {first.module!r}{call} layer {first.layer} (0-based: the "
                f"{_ordinal(first.layer + 1)}) {way} direction, step {f.step} of {first.steps}{order} (batch item "
                f"{f.batch}, unit {f.unit}): onnx {f.onnx:.4f}, torch {f.torch:.4f}, |diff| {_num(f.diff)} > "
                f"{_num(f.bound)}"
            )
        worst = max(self.layers, key=lambda t: t.worst, default=None)
        where = ""
        if worst is not None:
            at = int(np.nanargmax(np.where(np.isnan(worst.errors), -1.0, worst.errors))) if worst.steps else 0
            where = f" (worst {_num(worst.worst)}, {worst.label} step {at})"
        bad = [o for o in self.outputs if not o.passed]
        if bad:
            names = ", ".join(f"{o.name!r} (max abs {_num(o.max_abs)})" for o in bad)
            return (
                f"every recurrent layer is within tolerance ({tol}) at every step{where}, but output(s) {names} "
                "differ: the difference is outside the recurrent layers"
            )
        return f"no recurrent layer exceeds tolerance ({tol}) at any step{where}; outputs match"

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "passed": self.passed,
            "strategy": self.strategy,
            "atol": self.atol,
            "rtol": self.rtol,
            "chunk": self.chunk,
            "describe": self.describe(),
            "first": None
            if first is None
            else {
                "module": first.module,
                "call": first.call,
                "layer": first.layer,
                "direction": "reverse" if first.direction else "forward",
                **(_failure_dict(first.failure) if first.failure is not None else {}),
            },
            "layers": [t.to_dict() for t in self.layers],
            "outputs": [
                {"name": o.name, "max_abs": _finite(o.max_abs), "max_rel": _finite(o.max_rel), "passed": o.passed}
                for o in self.outputs
            ],
            "notes": list(self.notes),
        }


def _failure_dict(f: Failure) -> dict[str, Any]:
    return {
        "step": f.step,
        "batch": f.batch,
        "unit": f.unit,
        "onnx": _finite(f.onnx),
        "torch": f.torch,
        "diff": _finite(f.diff),
        "bound": f.bound,
        "order": f.order,
    }


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON has no inf or NaN


def _num(v: float) -> str:
    return f"{v:.1e}" if math.isfinite(v) else str(v)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ------------------------------------------------------------------------------------------------ torch side


@dataclass
class _Call:
    """One call of a torch recurrent module, time-major, with each layer's and direction's replayed h_t."""

    name: str
    index: int  # the module's position among the module's recurrent modules (named_modules order)
    call: int
    layer: Any
    lengths: np.ndarray | None  # (B,), or None: every step valid
    hidden: list[list[np.ndarray]]  # [k][d] (T, B, P)
    graph_order: np.ndarray | None = None  # a packed call: the graph's batch item of each of torch's (unsorted_indices)


def _recurrent_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch import nn

    return [(n or type(m).__name__, m) for n, m in module.named_modules() if isinstance(m, nn.RNNBase)]


def _own_forward(layer: nn.Module) -> bool:
    """Whether the layer's class defines a forward of its own (not torch's, not edgernn's): its hook would see
    that forward's arguments, not the recurrence's."""
    from torch import nn

    from ..model import nn as enn

    base = next((b for b in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(layer, b)), None)
    fwd = type(layer).forward
    return fwd is not getattr(base, "forward", None) and fwd.__module__ != enn.__name__


def _spy(layer: nn.Module, record: Callable[..., None]) -> Callable[[], None]:
    """Make a layer with its own forward record the call its ``super().forward`` makes: its class becomes
    ``class X(TheClass, Spy)``, where Spy sits just above torch's layer class. Returns the undo."""
    from torch import nn

    cls = type(layer)
    base = next(b for b in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(layer, b))

    class Spy(base):  # type: ignore[valid-type, misc]
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            out = super().forward(*args, **kwargs)
            record(self, args, kwargs, out)
            return out

    try:
        spied = type(cls.__name__, (cls, Spy), {"__module__": cls.__module__})
    except TypeError as e:
        raise ModelFormatError(
            f"cannot follow the recurrent layer {cls.__name__} (its own forward) through its torch base class: {e}"
        ) from None
    layer.__class__ = spied

    def undo() -> None:
        layer.__class__ = cls

    return undo


def _capture(module: nn.Module, args: Sequence[Tensor]) -> tuple[list[tuple[str, int, Any, tuple, dict, Any]], Any]:
    """Run ``module(*args)`` once, without grad; every recurrent call (name, index, layer, args, kwargs, output)
    in the order the calls returned, and the module's output."""
    import torch

    calls: list[tuple[str, int, Any, tuple, dict, Any]] = []
    layers = _recurrent_modules(module)
    index = {id(m): i for i, (_, m) in enumerate(layers)}
    names = {id(m): n for n, m in layers}

    def record(layer: Any, a: tuple, kw: dict, out: Any) -> None:
        calls.append((names[id(layer)], index[id(layer)], layer, a, kw, out))

    undo: list[Callable[[], None]] = []
    try:
        for _, m in layers:
            if _own_forward(m):
                undo.append(_spy(m, record))
            else:
                hnd = m.register_forward_hook(record, with_kwargs=True)
                undo.append(hnd.remove)
        with torch.no_grad():
            out = module(*args)
    finally:
        for u in reversed(undo):
            u()
    return calls, out


def _twin(layer: Any, k: int, input_size: int) -> Any:
    """A single-layer copy of stacked layer ``k`` of ``layer`` (both directions when it has two), time-major,
    edgernn's class (it takes ``lengths`` and runs peepholes)."""
    from torch import nn

    from ..model import nn as enn

    p = next(layer.parameters())
    kw: dict[str, Any] = {
        "num_layers": 1,
        "bias": layer.bias,
        "batch_first": False,
        "bidirectional": layer.bidirectional,
    }
    if isinstance(layer, nn.LSTM):
        cls: Any = enn.LSTM
        kw.update(proj_size=layer.proj_size, peephole=bool(getattr(layer, "peephole", False)))
    elif isinstance(layer, nn.GRU):
        cls = enn.GRU
    else:
        cls = enn.RNN
        kw["nonlinearity"] = layer.nonlinearity
    twin = cls(input_size, layer.hidden_size, device=p.device, dtype=p.dtype, **kw)
    state = {n: getattr(layer, n.replace("_l0", f"_l{k}")).detach() for n in twin.state_dict()}
    twin.load_state_dict(state)
    return twin.eval()


def _replay(name: str, index: int, call: int, layer: Any, args: tuple, kwargs: dict, out: Any) -> _Call:
    """Each stacked layer of one captured call, run alone on the previous one's output."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    x: Any = args[0] if args else kwargs["input"]
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    lengths = args[2] if len(args) > 2 else kwargs.get("lengths")
    y = out[0]
    graph_order = None
    if isinstance(x, PackedSequence):  # padded, time-major, in the caller's batch order (as hx is)
        if x.unsorted_indices is not None:  # the exported layer runs the batch in the pack's sorted order
            graph_order = x.unsorted_indices.detach().cpu().numpy()
        x, lengths = pad_packed_sequence(x)
        y, _ = pad_packed_sequence(y, total_length=x.shape[0])
    elif x.dim() == 2:  # unbatched (T, I): a batch of one
        x, y = x.unsqueeze(1), y.unsqueeze(1)
        if hx is not None:
            hx = tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    elif layer.batch_first:
        x, y = x.transpose(0, 1), y.transpose(0, 1)
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
    lens = None if lengths is None else torch.as_tensor(lengths).detach().cpu().to(torch.int64)
    dirs = 2 if layer.bidirectional else 1
    hidden: list[list[np.ndarray]] = []
    inp: Any = x
    with torch.no_grad():
        for k in range(layer.num_layers):
            twin = _twin(layer, k, inp.shape[-1])
            rows = slice(k * dirs, (k + 1) * dirs)
            state = None
            if h0 is not None:
                state = (h0[rows], c0[rows]) if c0 is not None else h0[rows]
            inp = twin(inp, state, lens)[0] if lens is not None else twin(inp, state)[0]
            width = inp.shape[-1] // dirs
            hidden.append([_np(inp[..., d * width : (d + 1) * width]) for d in range(dirs)])
    lengths_np = None if lens is None else lens.numpy()
    valid = _valid(inp.shape[0], inp.shape[1], lengths_np)[..., None]
    want, got = _np(y), _np(inp)
    if want.shape != got.shape or not np.all(
        ~valid | (np.abs(got - want) <= REPLAY_TOLERANCE.atol + REPLAY_TOLERANCE.rtol * np.abs(want))
    ):
        worst = float(np.max(np.abs(got - want) * valid)) if want.shape == got.shape else float("inf")
        raise ParityError(
            f"cannot localize layer {name!r}: replaying it one stacked layer at a time does not reproduce its own "
            f"output (max abs {_num(worst)}); localize follows torch.nn.RNN/LSTM/GRU's recurrence, which this "
            "layer does not compute"
        )
    return _Call(name, index, call, layer, lengths_np, hidden, graph_order)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _valid(steps: int, batch: int, lengths: np.ndarray | None) -> np.ndarray:
    """(T, B): step t of sequence b is real, not padding."""
    if lengths is None:
        return np.ones((steps, batch), dtype=bool)
    return np.arange(steps)[:, None] < np.asarray(lengths).reshape(1, -1)


def _torch_run(module: nn.Module, specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    import torch

    args = [torch.from_numpy(np.array(feed[s.name])) for s in specs if s.name in feed]
    try:
        return _capture(module, args)
    except (ParityError, ModelFormatError):
        raise
    except Exception as e:
        from ..verify.parity import module_failed

        raise module_failed(e, args) from None


def _torch_outputs(out: Any) -> list[np.ndarray]:
    outs = flat_outputs(out)
    return [o.detach().cpu().numpy() for o in outs]


# ------------------------------------------------------------------------------------------------ graph side


@dataclass
class _Tap:
    """Where one recurrence's hidden states are in the graph.

    kind "op": ``tensors[0]`` is an RNN/LSTM/GRU node's Y (T, D, B, H), ``directions`` (0,) or (0, 1);
    kind "seq": ``tensors[0]`` is (T, B, P) of one direction (None when the graph does not tell which), read
    backwards when ``flip``; kind "steps": each of ``tensors`` is one step (B, P) and the last step is row
    ``state[1]`` of state output ``state[0]`` (set when matched to a layer).
    """

    kind: str
    tensors: list[str]
    directions: tuple[int | None, ...]
    where: str
    flip: bool = False
    state: tuple[str, int] | None = None

    def read(self, values: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        if self.kind == "op":
            return np.asarray(values[self.tensors[0]])[:, d]
        if self.kind == "seq":
            y = np.asarray(values[self.tensors[0]])
            return y[::-1] if self.flip else y
        if self.state is None:
            raise ModelFormatError(f"{self.where}: no state output holds its last step (an edgernn bug)")
        parts = [np.asarray(values[n]) for n in self.tensors] + [np.asarray(values[self.state[0]])[self.state[1]]]
        return np.stack(parts)


class _Graph:
    """Producers, positions and constants of a graph's top level."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.initializers = {t.name: t for t in graph.initializer}
        self.used = {v.name for v in (*graph.input, *graph.output, *graph.value_info)} | set(self.initializers)
        self.used |= {o for n in self.nodes for o in (*n.input, *n.output)}

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def constant(self, name: str) -> np.ndarray | None:
        return constant_value(name, self.initializers, self.producer)

    def reversal(self, name: str) -> bool:
        """Whether ``name`` is a Slice with step -1 along axis 0 (torch's ``flip`` of the time axis)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Slice" or len(node.input) < 5:
            return False
        axes, steps = self.constant(node.input[3]), self.constant(node.input[4])
        return (
            axes is not None
            and steps is not None
            and axes.size == steps.size == 1
            and int(steps.item()) == -1
            and (int(axes.item()) == 0)
        )

    def ancestors(self, value: str) -> set[int]:
        """The ids of the nodes ``value`` is computed from."""
        seen: set[str] = set()
        nodes: set[int] = set()
        todo = [value]
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            node = self.producer.get(v)
            if node is not None and id(node) not in nodes:
                nodes.add(id(node))
                todo.extend(i for i in node.input if i)
        return nodes

    def depends(self, value: str, on: str) -> bool:
        """Whether computing ``value`` reads ``on``."""
        seen: set[str] = set()
        todo = [value]
        while todo:
            v = todo.pop()
            if v == on:
                return True
            if v in seen:
                continue
            seen.add(v)
            node = self.producer.get(v)
            if node is not None:
                todo.extend(i for i in node.input if i)
        return False


def _attr(node: onnx.NodeProto, name: str) -> Any:
    import onnx

    a = next((a for a in node.attribute if a.name == name), None)
    return None if a is None else onnx.helper.get_attribute_value(a)


def _op_taps(g: _Graph) -> list[tuple[int, _Tap]]:
    out = []
    for node in g.nodes:
        if node.op_type not in RECURRENT_OPS or node.domain not in _DEFAULT_DOMAINS:
            continue
        direction = _attr(node, "direction")
        direction = direction.decode() if isinstance(direction, bytes) else (direction or "forward")
        dirs: tuple[int | None, ...] = {"forward": (0,), "reverse": (1,), "bidirectional": (0, 1)}[direction]
        if not node.output or not node.output[0]:  # Y not asked for: ask for it
            if not node.output:
                node.output.append("")
            node.output[0] = g.fresh(f"{node.name or node.op_type}_Y")
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        out.append((g.position[id(node)], _Tap("op", [node.output[0]], dirs, where)))
    return out


def _scan_taps(g: _Graph) -> list[tuple[int, _Tap]]:
    out = []
    for node in g.nodes:
        if node.op_type != "Scan" or node.domain not in _DEFAULT_DOMAINS:
            continue
        where = f"Scan node {node.name or node.output[0]!r}"
        m = int(_attr(node, "num_scan_inputs"))
        n = len(node.input) - m
        body = _attr(node, "body")
        if len(body.output) - n != 1:
            raise ModelFormatError(f"{where} has {len(body.output) - n} scan outputs; a recurrence has one (h_t)")
        while len(node.output) <= n:
            node.output.append("")
        if not node.output[n]:
            node.output[n] = g.fresh(f"{node.name or 'scan'}_y")
        in_dirs = list(_attr(node, "scan_input_directions") or [0] * m)
        out_dirs = list(_attr(node, "scan_output_directions") or [0])
        reverse = bool(in_dirs[0]) != g.reversal(node.input[n])
        flip = reverse != bool(out_dirs[0])
        out.append((g.position[id(node)], _Tap("seq", [node.output[n]], (int(reverse),), where, flip=flip)))
    return out


def _unrolled_taps(g: _Graph) -> list[tuple[int, _Tap]]:
    """edgernn's unroller stacks a Scan's per-step outputs with Unsqueeze_unrolled.. + Concat_unrolled.. nodes."""

    def unsqueeze(name: str) -> onnx.NodeProto | None:
        node = g.producer.get(name)
        ok = node is not None and node.op_type == "Unsqueeze" and node.name.startswith("Unsqueeze_unrolled")
        return node if ok else None

    out = []
    stacked: set[str] = set()
    for node in g.nodes:
        if node.op_type != "Concat" or not node.name.startswith("Concat_unrolled"):
            continue
        parts = [unsqueeze(i) for i in node.input]
        if not parts or any(p is None for p in parts):
            continue
        stacked.update(node.input)
        where = f"unrolled scan output {node.output[0]!r}"
        direction, flip = _unrolled_direction(g, [p for p in parts if p is not None], where)
        out.append((g.position[id(node)], _Tap("seq", [node.output[0]], (direction,), where, flip=flip)))
    for node in g.nodes:  # one step: the Unsqueeze is the whole output
        if node.op_type == "Unsqueeze" and node.name.startswith("Unsqueeze_unrolled") and node.output[0] not in stacked:
            where = f"unrolled scan output {node.output[0]!r}"
            out.append((g.position[id(node)], _Tap("seq", [node.output[0]], (None,), where)))
    return sorted(out, key=lambda t: t[0])


def _unrolled_direction(g: _Graph, parts: list[onnx.NodeProto], where: str) -> tuple[int | None, bool]:
    """The direction of an unrolled Scan, from the steps its Concat stacks, and whether the stacked output runs
    backwards in time.

    Steps are computed one after the other, so the graph's order of the step outputs is the order of computation.
    Step s reads its inputs with a Gather at a constant index: s for a forward Scan, T-1-s for one that reads its
    input reversed. The Gathers step s adds to what step s-1 read are that step's own. The Concat stacks the
    steps in computation order, or the other way round where the unroller absorbed a flip of the output.
    """
    if len(parts) < 2:
        return None, False
    computed = sorted(parts, key=lambda p: g.position[id(p)])
    stacked_backwards = computed[0] is not parts[0]
    ahead = [computed[s].input[0] for s in range(min(3, len(computed)))]
    index = [_step_index(g, ahead[s], ahead[s - 1], where) for s in range(1, len(ahead))]
    reads_backwards = index[0] != 1 if len(index) == 1 else index[1] < index[0]
    return int(reads_backwards), reads_backwards != stacked_backwards


def _step_index(g: _Graph, value: str, before: str, where: str) -> int:
    """The Gather index of the step computing ``value`` (the inputs it reads that the step before did not)."""
    new = g.ancestors(value) - g.ancestors(before)
    found = set()
    for node in g.nodes:
        if id(node) in new and node.op_type == "Gather" and len(node.input) == 2:
            index = g.constant(node.input[1])
            if index is not None and index.size == 1:
                found.add(int(index.item()))
    if len(found) != 1:
        raise ModelFormatError(f"{where}: cannot tell which step reads which input step (indices {sorted(found)})")
    return found.pop()


def _step_taps(g: _Graph, chunk: int) -> list[_Tap] | None:
    """A step chunk in plain ops: each layer's K recurrent Gemms (same weight inputs, each reading the state the
    previous one's step made). None for a one-step chunk, which reads each layer from its state output alone."""
    if chunk == 1:
        return None
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in g.nodes:
        if node.op_type == "Gemm" and len(node.input) >= 2:
            groups.setdefault(node.input[1], []).append(node)  # by R^T; the added term is each step's own for LSTM/RNN
    out = []
    for nodes in groups.values():
        if len(nodes) != chunk:
            continue
        if not all(g.depends(nodes[t].input[0], nodes[t - 1].output[0]) for t in range(1, chunk)):
            continue
        where = f"recurrent Gemm chain {nodes[0].name or nodes[0].output[0]!r}"
        out.append(_Tap("steps", [n.input[0] for n in nodes[1:]], (0,), where))
    return out


def _taps(g: _Graph, manifest: Manifest) -> list[_Tap] | None:
    """The graph's recurrences in graph order; None for a one-step stream (read from its state outputs)."""
    found = _op_taps(g) + _scan_taps(g) + _unrolled_taps(g)
    if found:
        return [t for _, t in sorted(found, key=lambda t: t[0])]
    if manifest.states:
        return _step_taps(g, int(manifest.chunk or 1))
    raise ModelFormatError(
        f"found no recurrence in this {manifest.strategy!r} graph (no RNN/LSTM/GRU node, Scan, or edgernn-unrolled "
        "Scan): localize reads the graphs edgernn's strategies write"
    )


def _match(
    taps: list[_Tap] | None, calls: list[_Call], h_states: Mapping[int, str]
) -> list[tuple[_Call, int, int, _Tap]]:
    """Pair each torch (call, layer, direction) with the graph's recurrence holding it, in execution order."""
    want = sum(c.layer.num_layers * len(c.hidden[0]) for c in calls)
    summary = (
        ", ".join(f"{c.name!r} {c.layer.num_layers} layer(s) x {len(c.hidden[0])} direction(s)" for c in calls)
        or "no recurrent layer call"
    )
    queue = list(taps) if taps is not None else None
    have = (
        sum(len(t.directions) for t in queue) if queue is not None else want
    )  # a one-step stream: one per layer by construction
    mismatch = ModelFormatError(
        f"the graph holds {have} recurrence(s) (layer x direction) where the torch module ran {want} ({summary}); "
        "is this the export of this module?"
    )
    out: list[tuple[_Call, int, int, _Tap]] = []
    for call in calls:
        dirs = len(call.hidden[0])
        for k in range(call.layer.num_layers):
            if queue is None:  # one-step stream: each layer's step is its row of the h state output
                for d in range(dirs):
                    tap = _Tap("steps", [], (d,), f"state output {h_states[call.index]!r}")
                    tap.state = (h_states[call.index], k * dirs + d)
                    out.append((call, k, d, tap))
                continue
            if not queue:
                raise mismatch
            if queue[0].kind == "op":
                tap = queue.pop(0)
                if len(tap.directions) != dirs:
                    raise ModelFormatError(
                        f"{tap.where} runs {len(tap.directions)} direction(s) where layer {call.name!r} layer {k} has "
                        f"{dirs}; is this the export of this module?"
                    )
                out.extend((call, k, d, tap) for d in range(dirs))
                continue
            group = [queue.pop(0) for _ in range(min(dirs, len(queue)))]
            if len(group) != dirs or any(t.kind == "op" for t in group):
                raise mismatch
            known = [t.directions[0] for t in group]
            if all(d is not None for d in known):
                group = sorted(group, key=lambda t: t.directions[0] or 0)
                if [t.directions[0] for t in group] != list(range(dirs)):
                    raise ModelFormatError(
                        f"layer {call.name!r} layer {k} has {dirs} direction(s); the graph's recurrences there run "
                        f"{', '.join('reverse' if d else 'forward' for d in known)}"
                    )
            for d, tap in enumerate(group):
                if tap.kind == "steps":
                    tap.state = (h_states[call.index], k * dirs + d)
                out.append((call, k, d, tap))
    if queue:
        raise mismatch
    return out


def _h_states(manifest: Manifest, layers: Sequence[tuple[str, Any]]) -> dict[int, str]:
    """A stream's h state output of each recurrent module (named_modules order; h then c for an LSTM)."""
    from torch import nn

    if not manifest.states:
        return {}
    out: dict[int, str] = {}
    it = iter(manifest.states)
    try:
        for i, (_, layer) in enumerate(layers):
            out[i] = next(it).output
            if isinstance(layer, nn.LSTM):
                next(it)
    except StopIteration:
        raise ModelFormatError(
            f"the model's {len(manifest.states)} state(s) do not cover the module's {len(layers)} recurrent "
            "layer(s); is this the export of this module?"
        ) from None
    return out


def _with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """The model with ``names`` added to its graph outputs (their element type from shape inference)."""
    import onnx

    have = {o.name for o in proto.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in have]
    if not extra:
        return proto.SerializeToString()
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.value_info, *proto.graph.input)}
    if any(n not in types for n in extra):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
        except Exception:  # inference gives up on some graphs; fall back to the data's type
            pass
    default = next(
        (i.type.tensor_type.elem_type for i in proto.graph.input if i.type.tensor_type.elem_type in (1, 10, 11)),
        onnx.TensorProto.FLOAT,
    )
    for n in extra:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(n, types.get(n) or default, None))
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------------------ comparison


def _trace(call: _Call, k: int, d: int, tap: _Tap, got: np.ndarray, tol: Tolerance) -> LayerTrace:
    ref = call.hidden[k][d]
    steps, batch, width = ref.shape
    got = np.asarray(got, dtype=np.float64)
    if got.ndim != 3 or got.shape[1:] != (batch, width) or got.shape[0] < steps:
        raise ModelFormatError(
            f"{tap.where} holds shape {got.shape} where layer {call.name!r} layer {k} computes {ref.shape} "
            "(time, batch, units); is this the export of this module?"
        )
    got = got[:steps]  # a graph padded further than torch's packed output: the rest is padding
    if call.graph_order is not None:
        got = got[:, call.graph_order]
    valid = _valid(steps, batch, call.lengths)
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isfinite(got), np.abs(got - ref), np.inf)
    bound = tol.atol + tol.rtol * np.abs(ref)
    mask = valid[..., None]
    masked = np.where(mask, diff, -1.0)
    per_step = masked.max(axis=(1, 2)) if width else np.full(steps, -1.0)
    errors = np.where(per_step < 0, np.nan, per_step)
    bad = (diff > bound) & mask
    failure = None
    if bad.any():
        ts, bs, us = np.nonzero(bad)
        lengths = np.full(batch, steps) if call.lengths is None else np.asarray(call.lengths)
        order = ts if d == 0 else lengths[bs] - 1 - ts
        at = order == order.min()
        pick = np.flatnonzero(at)[np.argmax(diff[ts[at], bs[at], us[at]])]
        t, b, u = int(ts[pick]), int(bs[pick]), int(us[pick])
        failure = Failure(
            t,
            b,
            u,
            float(got[t, b, u]),
            float(ref[t, b, u]),
            float(diff[t, b, u]),
            float(bound[t, b, u]),
            int(order[pick]),
        )
    tensor = tap.tensors[0] if tap.kind != "steps" else f"{tap.state[0] if tap.state else ''} (last step)"
    if tap.kind == "steps" and tap.tensors:
        tensor = f"{tap.tensors[0]} .. {tensor}"
    return LayerTrace(call.name, call.call, k, d, call.layer.num_layers, tensor, errors, failure)


def _output_checks(
    names: Sequence[str], want: Sequence[np.ndarray], got: Sequence[np.ndarray], tol: Tolerance
) -> list[OutputCheck]:
    out = []
    for name, w, g in zip(names, want, got, strict=False):
        a, rel, ok = compare(align_chunk(np.asarray(w), np.asarray(g)), g, tol)
        out.append(OutputCheck(name, a, rel, ok))
    return out


def _merge(checks: list[OutputCheck], more: list[OutputCheck]) -> list[OutputCheck]:
    if not checks:
        return more
    return [
        OutputCheck(a.name, max(a.max_abs, b.max_abs), max(a.max_rel, b.max_rel), a.passed and b.passed)
        for a, b in zip(checks, more, strict=True)
    ]


# ------------------------------------------------------------------------------------------------ feeds


def _time_size(specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray]) -> int | None:
    for s in specs:
        named = s.named_shape()
        if s.name in feed and "time" in named and np.ndim(feed[s.name]) == len(named):
            return int(np.shape(feed[s.name])[named.index("time")])
    return None


def _batch_size(specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray]) -> int:
    for s in specs:
        named = s.named_shape()
        if s.name in feed and "batch" in named and np.ndim(feed[s.name]) == len(named):
            return int(np.shape(feed[s.name])[named.index("batch")])
    return 1


def _graph_feed(
    manifest: Manifest, specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray], states: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The graph's inputs from the torch module's feed: a float mask made from the lengths, the lengths under the
    graph's name, the states given (a stream's), then the runtime's input checks."""
    from ..runtime.validate import check_feed, lengths_to_mask

    torch_lengths = next((s for s in specs if s.role == "lengths" and s.name in feed), None)
    out: dict[str, np.ndarray] = {}
    for s in manifest.inputs:
        if s.name in feed and s.role != "state":
            out[s.name] = np.asarray(feed[s.name])
        elif s.role == "state":
            if s.name not in states:
                raise ModelFormatError(f"the graph's state input {s.name!r} is not among the manifest's states")
            out[s.name] = states[s.name]
        elif s.role == "mask" and torch_lengths is not None:
            steps = s.shape[1] if isinstance(s.shape[1], int) else _time_size(specs, feed)
            if steps is None:
                raise InputError(f"cannot make the graph's mask {s.name!r}: no input of the feed has a time axis")
            out[s.name] = lengths_to_mask(feed[torch_lengths.name], steps, np.dtype(s.dtype))
        elif s.role == "lengths" and torch_lengths is not None:
            out[s.name] = np.asarray(feed[torch_lengths.name])
    return check_feed(manifest.inputs, out)


def _slice_time(specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray], start: int, stop: int) -> dict:
    out = {}
    for s in specs:
        if s.name not in feed:
            continue
        a = np.asarray(feed[s.name])
        named = s.named_shape()
        if "time" in named and a.ndim == len(named):
            a = np.take(a, np.arange(start, stop), axis=named.index("time"))
        out[s.name] = a
    return out


def _load(model: str | os.PathLike[str] | bytes) -> Any:
    """The model's proto; a file is read by path, so its external data (weights beside it) comes with it."""
    import onnx

    from ..runtime.model import check_protobuf_size

    try:
        if isinstance(model, (bytes, bytearray)):
            check_protobuf_size(bytes(model))
            return onnx.load_from_string(bytes(model))
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelFormatError(f"no model file at {path!r}")
        check_protobuf_size(path)
        return onnx.load(path)
    except ModelFormatError:
        raise
    except Exception as e:  # onnx raises many kinds on a damaged file
        raise ModelFormatError(f"not a readable ONNX model: {e}") from None


# ------------------------------------------------------------------------------------------------ localize


def localize(
    module: nn.Module,
    model: str | os.PathLike[str] | bytes,
    feed: Mapping[str, np.ndarray],
    *,
    torch_specs: Sequence[TensorSpec],
    atol: float = 1e-5,
    rtol: float = 1e-5,
    provider: str = "cpu",
    optimization: str = "all",
) -> Localization:
    """Where the export ``model`` (ONNX bytes or a path; any strategy) first leaves |onnx - torch| <= atol +
    rtol * |torch| against the eager ``module`` on ``feed``, layer by layer, direction by direction, step by step.

    ``feed`` holds the module's inputs by name; ``torch_specs`` lists them in ``forward``'s order, with their
    "batch" and "time" axes named. The graph's feed is made from it: a float mask from the lengths, a stream's
    states from zeros. A step model runs the sequence as chained chunks (whole chunks only; a note says when the
    end was cut). ``provider`` and ``optimization`` choose onnxruntime's execution provider and graph
    optimisation level (the extra outputs keep the tensors read). Padded steps (t >= length) are not compared.
    Raises ``ModelFormatError`` when the graph's recurrences do not match the module's layer calls.
    """
    import onnx

    from ..runtime.providers import make_session

    tol = Tolerance(float(atol), float(rtol))
    proto = _load(model)
    manifest = read_manifest({p.key: p.value for p in proto.metadata_props})
    specs = list(torch_specs)
    missing = [s.name for s in specs if s.name not in feed and s.role not in ("lengths", "mask")]
    if missing:
        raise InputError(f"the feed lacks the module's input(s) {', '.join(missing)}")
    streaming = bool(manifest.states)
    chunk = int(manifest.chunk or 1) if streaming else None
    notes: list[str] = []
    feed = {k: np.asarray(v) for k, v in feed.items()}
    if chunk is not None:
        total = _time_size(specs, feed)
        if total is None:
            raise InputError("a step model is localized over a sequence: give torch_specs a named 'time' axis")
        if total < chunk:
            raise InputError(f"this step model takes chunks of {chunk} steps; the feed has {total}")
        if total % chunk:
            notes.append(f"the last {total % chunk} step(s) were left out: the stream runs whole chunks of {chunk}")
            feed = _slice_time(specs, feed, 0, total - total % chunk) | {
                k: v for k, v in feed.items() if k not in {s.name for s in specs}
            }

    was_training = module.training
    module.eval()
    try:
        raw, out = _torch_run(module, specs, feed)
        seen: dict[int, int] = {}
        calls = []
        for name, index, layer, a, kw, result in raw:
            calls.append(_replay(name, index, seen.get(index, 0), layer, a, kw, result))
            seen[index] = seen.get(index, 0) + 1
        want_outputs = _torch_outputs(out)
        layers = _recurrent_modules(module)

        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        g = _Graph(copy.graph)
        taps = _taps(g, manifest)
        matched = _match(taps, calls, _h_states(manifest, layers))
        names = [n for _, _, _, tap in matched for n in tap.tensors]
        session, _ = make_session(_with_outputs(copy, names), provider, threads=None, optimization=optimization)
        graph_outputs = [o.name for o in session.get_outputs()]
        data_outputs = [o.name for o in manifest.outputs if o.role != "state"]

        if chunk is None:
            values = dict(zip(graph_outputs, session.run(None, _graph_feed(manifest, specs, feed, {})), strict=True))
            got = {(id(c), k, d): tap.read(values, d) for c, k, d, tap in matched}
            outputs = _output_checks(data_outputs, want_outputs, [values[n] for n in data_outputs], tol)
        else:
            got, outputs = _chained(module, session, manifest, specs, feed, matched, data_outputs, chunk, tol)
    finally:
        module.train(was_training)
    if len(want_outputs) != len(data_outputs):
        notes.append(
            f"the module returns {len(want_outputs)} output(s), the graph {len(data_outputs)}; compared in order"
        )
    traces = [_trace(c, k, d, tap, got[(id(c), k, d)], tol) for c, k, d, tap in matched]
    return Localization(manifest.strategy, tol.atol, tol.rtol, traces, outputs, chunk, notes)


def _chained(
    module: nn.Module,
    session: Any,
    manifest: Manifest,
    specs: Sequence[TensorSpec],
    feed: Mapping[str, np.ndarray],
    matched: list[tuple[_Call, int, int, _Tap]],
    data_outputs: Sequence[str],
    chunk: int,
    tol: Tolerance,
) -> tuple[dict[tuple[int, int, int], np.ndarray], list[OutputCheck]]:
    """A stream from zero states, one chunk per call: each layer's steps, all chunks joined, and each output's
    worst chunk against the module on the steps so far."""
    from ..verify.parity import torch_runner

    total = _time_size(specs, feed) or chunk
    batch = _batch_size(specs, feed)
    dtypes = {s.name: np.dtype(s.dtype) for s in manifest.inputs}
    states = {
        s.input: np.zeros([batch if d == "batch" else int(d) for d in s.shape], dtype=dtypes.get(s.input, np.float32))
        for s in manifest.states
    }
    names = [o.name for o in session.get_outputs()]
    reference = torch_runner(module, specs)
    parts: dict[tuple[int, int, int], list[np.ndarray]] = {}
    outputs: list[OutputCheck] = []
    for j in range(total // chunk):
        piece = _slice_time(specs, feed, j * chunk, (j + 1) * chunk)
        values = dict(zip(names, session.run(None, _graph_feed(manifest, specs, piece, states)), strict=True))
        for c, k, d, tap in matched:
            parts.setdefault((id(c), k, d), []).append(tap.read(values, d))
        want = reference(_slice_time(specs, feed, 0, (j + 1) * chunk))
        outputs = _merge(outputs, _output_checks(data_outputs, want, [values[n] for n in data_outputs], tol))
        states = {s.input: np.asarray(values[s.output]) for s in manifest.states}
    return {key: np.concatenate(v) for key, v in parts.items()}, outputs


# ------------------------------------------------------------------------------------------------ plot


def plot_errors(loc: Localization, path: str | os.PathLike[str]) -> None:
    """One PNG: each layer/direction's max |onnx - torch| against time step (log scale), the tolerance at
    |torch| = 1 as a horizontal line and each first failure marked. Needs matplotlib (``edgernn[plot]``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "plotting the error against time step needs matplotlib, which is not installed here: "
            "pip install 'edgernn[plot]'",
            name="matplotlib",
        ) from None
    from ..files import write_atomic

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positive = [e for t in loc.layers for e in t.errors[~np.isnan(t.errors)] if e > 0]
    floor = min(min(positive, default=loc.atol) / 10, loc.atol / 100) if loc.atol > 0 else 1e-12
    floor = max(floor, 1e-16)
    for t in loc.layers:
        steps = np.arange(t.steps)
        ax.plot(steps, np.maximum(t.errors, floor), label=t.label, linewidth=1.2)
        if t.failure is not None:
            ax.plot([t.failure.step], [max(t.failure.diff if math.isfinite(t.failure.diff) else 1.0, floor)], "x")
    ax.axhline(
        loc.atol + loc.rtol, color="black", linestyle="--", linewidth=1, label="tolerance (atol + rtol at |torch| = 1)"
    )
    ax.set_yscale("log")
    ax.set_xlabel("time step" + (f" (chained chunks of {loc.chunk})" if loc.chunk else ""))
    ax.set_ylabel("max |onnx - torch|")
    ax.set_title(f"where it drifts: {loc.strategy}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())
