"""Write ONNX ``Scan`` nodes out as straight-line graphs: the body copied once per iteration.

``unroll_scans`` replaces every ``Scan`` (opset 9 and later) of a model by ``trip_count`` copies of its body:

- scan input j of step t is ``Gather(input, index, axis=scan_input_axes[j])`` with a constant index (t, or
  trip_count-1-t for a reverse direction): a scalar index drops the axis, which is what the body sees;
- the states are threaded: step t's state inputs are step t-1's state outputs (step 0: the Scan's own state
  inputs), and the last step's are the Scan's final-state outputs;
- scan output k is every step's value ``Unsqueeze``d at ``scan_output_axes[k]`` and ``Concat``ed in step order
  (reversed for a reverse direction, whose first element is the last step's value).

Every value the body defines, including those inside nested subgraphs (an ``If`` in the body), gets a fresh name
per step; names from outer scope (weights, values computed before the Scan) are referenced as they are. Body
initializers are constants, so they are moved out once per Scan and shared by the steps. The body's ``Identity``
nodes (a body needs them to output one value twice, or an input) are not copied: their consumers read the value
itself. A Scan inside another Scan's body is unrolled first, so the copies carry no Scan; Scans inside other
subgraphs (``If``, ``Loop`` bodies) are unrolled where they are. Scans inside model-local functions are left as
they are (inline the functions first).

A full reversal of a scan input or output along its scan axis (``Slice`` with step -1 over the whole axis, which
is how torch's exporter writes ``flip`` around a scan) is absorbed into the direction of the scan: the steps read
the unreversed tensor in reverse and the reversed output is stacked in reverse order. The result holds no
negative-step ``Slice``, which some NPU runtimes (the targets of an unrolled graph) cannot run.

Trip counts come from the scan inputs' static shapes (after onnx shape inference); ``trip_count`` states it for
every Scan, and contradicting a static shape is an error. A scan input whose length is symbolic is unrolled at
``trip_count`` steps: the graph is then only right for inputs of that length, which the caller must fix.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ExportError
from ..graphs import constant_value

_DEFAULT_DOMAINS = ("", "ai.onnx")


def unroll_scans(model: onnx.ModelProto, trip_count: int | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with every ``Scan`` node written out step by step (see the module's docstring).

    Each Scan runs as many steps as its scanned inputs' static length; ``trip_count`` is the length of those
    whose length shape inference cannot tell. Raises ``ExportError`` for a Scan it cannot unroll (opset 8's form
    with sequence_lens, inconsistent attributes, an unknown trip count) and when the result fails onnx's checker.
    """
    if trip_count is not None:
        try:
            count = operator.index(trip_count)  # ints and numpy ints; not floats, strings or bools
        except TypeError:
            count = 0
        if isinstance(trip_count, bool) or count < 1:
            raise ExportError(f"unroll_scans: trip_count must be an integer >= 1; got {trip_count!r}")
        trip_count = count
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is None:
        raise ExportError("unroll_scans: the model imports no default-domain opset")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if opset < 9 and any(n.op_type == "Scan" for n in _all_nodes(out.graph)):
        raise ExportError(f"unroll_scans: Scan of opset {opset} (sequence_lens, batch axis) is not supported; use 9+")
    if not any(n.op_type == "Scan" and n.domain in _DEFAULT_DOMAINS for n in _all_nodes(out.graph)):
        return out
    try:  # static shapes give each Scan's trip count and each tensor's rank; non-strict: missing shapes are fine
        types = _value_types(onnx.shape_inference.infer_shapes(model))
    except Exception:  # inference gives up on graphs it does not understand; trip_count then has to be given
        types = {}
    unroller = _Unroller(out, opset, types, trip_count)
    unroller.graph(out.graph)
    unroller.prune_orphans()
    if out.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:  # beyond 2 GiB the checker wants a file
        try:
            onnx.checker.check_model(out)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"unroll_scans produced an invalid graph (a bug to report): {e}") from e
    return out


# ------------------------------------------------------------------------------------------------ graph walks


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for g in _subgraphs(node):
            yield from _all_nodes(g)


def _all_names(graph: onnx.GraphProto, into: set[str]) -> set[str]:
    """Every value and node name used anywhere in ``graph`` and its subgraphs."""
    into.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    into.update(t.name for t in graph.initializer)
    into.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        into.add(node.name)
        into.update(node.input)
        into.update(node.output)
        for g in _subgraphs(node):
            _all_names(g, into)
    return into


def _defined_names(graph: onnx.GraphProto, into: set[str], *, top: bool = True) -> set[str]:
    """Names a graph defines: node outputs, and inside nested subgraphs also their inputs and initializers. The
    top graph's own inputs and initializers are left out: the unroller binds those itself."""
    if not top:
        into.update(v.name for v in graph.input)
        into.update(t.name for t in graph.initializer)
        into.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        into.update(n for n in node.output if n)
        for g in _subgraphs(node):
            _defined_names(g, into, top=False)
    return into


def _referenced_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for g in _subgraphs(node):
            _all_names(g, names)
    return names


def _rename_graph(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for v in (*graph.input, *graph.output, *graph.value_info):
        v.name = rename.get(v.name, v.name)
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for s in graph.sparse_initializer:
        s.values.name = rename.get(s.values.name, s.values.name)
    for node in graph.node:
        _rename_node(node, rename)


def _rename_node(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    node.input[:] = [rename.get(n, n) for n in node.input]
    node.output[:] = [rename.get(n, n) for n in node.output]
    for g in _subgraphs(node):
        _rename_graph(g, rename)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    types: dict[str, onnx.TypeProto] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for v in (*graph.input, *graph.output, *graph.value_info):
            types.setdefault(v.name, v.type)
        for t in graph.initializer:
            types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        for node in graph.node:
            for g in _subgraphs(node):
                walk(g)

    walk(model.graph)
    return types


def _is_identity(node: onnx.NodeProto) -> bool:
    return node.op_type == "Identity" and node.domain in _DEFAULT_DOMAINS and len(node.input) == len(node.output) == 1


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


# ------------------------------------------------------------------------------------------------ the unroller


class _Unroller:
    def __init__(self, model: onnx.ModelProto, opset: int, types: dict[str, onnx.TypeProto], trips: int | None):
        self.model = model
        self.opset = opset
        self.types = types
        self.trips = trips
        self.used = _all_names(model.graph, set())
        self.consts: dict[tuple[str, bool, tuple[int, ...]], str] = {}
        self.suffix: dict[str, int] = {}
        self.orphans: set[str] = set()  # inputs of the Slices removed, to drop where nothing else reads them

    # -- names and constants

    def fresh(self, base: str) -> str:
        name, n = base, self.suffix.get(base, 0)
        while name in self.used or not name:
            n += 1
            name = f"{base}_{n}"
        self.suffix[base] = n  # the next call with this base starts here: thousands of steps share a base
        self.used.add(name)
        return name

    def const(self, value: int | list[int], stem: str) -> str:
        """An int64 initializer (a scalar for an int, a vector for a list) in the main graph, where every
        subgraph can see it; one per value for the whole model."""
        scalar = isinstance(value, int)
        values = (value,) if isinstance(value, int) else tuple(value)
        key = (stem, scalar, values)
        if key not in self.consts:
            name = self.fresh(f"{stem}_{'_'.join(map(str, values))}")
            self.model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
            self.consts[key] = name
        return self.consts[key]

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
        return onnx.helper.make_node(op, inputs, outputs, name=self.fresh(f"{op}_unrolled"), **attrs)

    # -- shapes

    def dim(self, name: str, axis: int) -> int | None:
        """The static size of ``name`` along ``axis``, or None."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        dims = t.tensor_type.shape.dim
        if not -len(dims) <= axis < len(dims):
            return None
        d = dims[axis]
        return int(d.dim_value) if d.HasField("dim_value") else None

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    # -- graphs

    def graph(self, graph: onnx.GraphProto) -> None:
        """Unroll every Scan in ``graph``: nested ones first, so that the copies carry no Scan."""
        for node in graph.node:
            for g in _subgraphs(node):
                self.graph(g)
        if not any(n.op_type == "Scan" and n.domain in _DEFAULT_DOMAINS for n in graph.node):
            return
        ctx = _GraphContext(self, graph)
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type == "Scan" and node.domain in _DEFAULT_DOMAINS:
                nodes += self.scan(node, ctx)
            else:
                nodes.append(node)
        kept = []
        for n in nodes:
            if n.op_type == "Slice" and n.output[0] in ctx.dropped:
                self.orphans.update(n.input[1:])
            else:
                kept.append(n)
        del graph.node[:]
        graph.node.extend(kept)
        ctx.remove_dead_reversals()

    def prune_orphans(self) -> None:
        """Remove the initializers that only the removed reversal Slices read (their bounds and steps): onnxruntime
        warns about every unused initializer."""
        if not self.orphans:
            return
        read: set[str] = set()

        def reads(graph: onnx.GraphProto) -> None:
            read.update(o.name for o in graph.output)
            for node in graph.node:
                read.update(node.input)
                for g in _subgraphs(node):
                    reads(g)

        def prune(graph: onnx.GraphProto) -> None:
            unread = self.orphans - read - {i.name for i in graph.input}
            dead = [t for t in graph.initializer if t.name in unread]
            for t in dead:
                graph.initializer.remove(t)
            for node in graph.node:
                for g in _subgraphs(node):
                    prune(g)

        reads(self.model.graph)
        if self.orphans - read:
            prune(self.model.graph)

    def scan(self, node: onnx.NodeProto, ctx: _GraphContext) -> list[onnx.NodeProto]:
        where = f"Scan node {node.name or node.output[0]!r}"
        body_attr = _attr(node, "body")
        n_scan_attr = _attr(node, "num_scan_inputs")
        if body_attr is None or n_scan_attr is None:
            raise ExportError(f"{where} lacks its body or num_scan_inputs attribute")
        body = body_attr.g
        m = int(n_scan_attr.i)
        n = len(node.input) - m
        k = len(body.output) - n
        if m < 1 or n < 0 or len(body.input) != n + m or k < 0 or len(node.output) > n + k:
            raise ExportError(
                f"{where}: {len(node.input)} inputs, {m} scan inputs, body with {len(body.input)} inputs and "
                f"{len(body.output)} outputs, {len(node.output)} outputs do not fit together"
            )

        def ints(name: str, count: int) -> list[int]:
            a = _attr(node, name)
            values = [int(v) for v in a.ints] if a is not None else [0] * count
            if len(values) != count:
                raise ExportError(f"{where}: {name} has {len(values)} entries for {count} tensors")
            return values

        in_axes, in_dirs = ints("scan_input_axes", m), ints("scan_input_directions", m)
        out_axes, out_dirs = ints("scan_output_axes", k), ints("scan_output_directions", k)
        for what, dirs in (("scan_input_directions", in_dirs), ("scan_output_directions", out_dirs)):
            if any(d not in (0, 1) for d in dirs):
                raise ExportError(f"{where}: {what} must be 0 or 1; got {dirs}")
        trips = self.trip_count(node, n, in_axes, where)

        # where a scan input is a full reversal of another tensor, read that tensor in the other direction
        sources = list(node.input[n:])
        for j, name in enumerate(sources):
            src = ctx.reversed_source(name, in_axes[j], trips)
            if src is not None:
                sources[j], in_dirs[j] = src, 1 - in_dirs[j]
        # where a scan output's only use is its reversal, stack it in the other order under the reversal's name
        targets = [node.output[n + i] if n + i < len(node.output) else "" for i in range(k)]
        for i, name in enumerate(targets):
            rank = self.rank(name) if name else None
            absorbed = ctx.reversal_consumer(name, out_axes[i], trips, rank or self.rank_of_output(body, n + i))
            if absorbed is not None:
                ctx.dropped.add(absorbed.output[0])
                targets[i], out_dirs[i] = absorbed.output[0], 1 - out_dirs[i]

        hoisted = {}  # body initializers are constants: one copy for all steps
        for t in body.initializer:
            hoisted[t.name] = new = self.fresh(t.name)
            init = ctx.graph.initializer.add()
            init.CopyFrom(t)
            init.name = new
        for s in body.sparse_initializer:
            hoisted[s.values.name] = new = self.fresh(s.values.name)
            sparse = ctx.graph.sparse_initializer.add()
            sparse.CopyFrom(s)
            sparse.values.name = new
        local = sorted(_defined_names(body, set()))
        produced = {o for b in body.node for o in b.output if o}
        finals = [node.output[i] if i < len(node.output) else "" for i in range(n)]

        # on the last step, a state output computed by the body is written straight to the Scan's output name
        last_names: dict[str, str] = {}
        for i, final in enumerate(finals):
            out = body.output[i].name
            if final and out in produced and out not in last_names:
                last_names[out] = final

        emitted: list[onnx.NodeProto] = []
        state = list(node.input[:n])
        stacked: list[list[str]] = [[] for _ in range(k)]
        for step in range(trips):
            rename = dict(hoisted)
            for name in local:
                rename[name] = self.fresh(f"{name}_{step}")
            if step == trips - 1:
                rename.update(last_names)
            for i in range(n):
                rename[body.input[i].name] = state[i]
            for j in range(m):
                index = step if in_dirs[j] == 0 else trips - 1 - step
                value, gather = ctx.gather(sources[j], in_axes[j], index)
                if gather is not None:
                    emitted.append(gather)
                rename[body.input[n + j].name] = value
            for b in body.node:
                if _is_identity(b) and not (step == trips - 1 and b.output[0] in last_names):
                    # a body needs Identity to output a value twice or to output an input; a copy does not
                    rename[b.output[0]] = rename.get(b.input[0], b.input[0])
                    continue
                copy = onnx.NodeProto()
                copy.CopyFrom(b)
                copy.name = self.fresh(f"{b.name or b.op_type}_{step}")
                _rename_node(copy, rename)
                emitted.append(copy)
            outs = [rename.get(o.name, o.name) for o in body.output]
            state = outs[:n]
            for i in range(k):
                if not targets[i]:
                    continue
                y = outs[n + i]
                axes = [out_axes[i]]
                # one step: the Unsqueeze is the whole output
                dest = targets[i] if trips == 1 else self.fresh(f"{y}_unsqueezed")
                if self.opset >= 13:
                    emitted.append(self.node("Unsqueeze", [y, self.const(axes, "unroll_axes")], [dest]))
                else:
                    emitted.append(self.node("Unsqueeze", [y], [dest], axes=axes))
                stacked[i].append(dest)
        for i in range(k):
            if targets[i] and trips > 1:
                parts = stacked[i] if out_dirs[i] == 0 else stacked[i][::-1]
                emitted.append(self.node("Concat", parts, [targets[i]], axis=out_axes[i]))
        for final, value in zip(finals, state, strict=True):
            if final and value != final:  # a state the body passes through or takes from outer scope
                emitted.append(self.node("Identity", [value], [final]))
        return emitted

    def rank_of_output(self, body: onnx.GraphProto, index: int) -> int | None:
        """The rank of a Scan's scan output: its body output's rank plus the scan axis."""
        t = body.output[index].type
        if not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim) + 1

    def trip_count(self, node: onnx.NodeProto, n: int, axes: list[int], where: str) -> int:
        found = (self.dim(name, axis) for name, axis in zip(node.input[n:], axes, strict=True))
        sizes = {d for d in found if d is not None}
        if len(sizes) > 1:
            raise ExportError(f"{where}: its scan inputs have different lengths {sorted(sizes)}")
        static = sizes.pop() if sizes else None
        # a Scan whose length the trace fixed runs that many steps: a decoder stepping its own output, a layer
        # reading blocks of several input steps, run at another length than the export's seq_len
        trips = static if static is not None else self.trips
        if trips is None:
            raise ExportError(f"{where}: its inputs' length is not static; give the trip count to unroll it at")
        return trips


class _GraphContext:
    """What the unroller knows of the graph it is rewriting: producers, consumers, constants, shared Gathers."""

    def __init__(self, unroller: _Unroller, graph: onnx.GraphProto) -> None:
        self.u = unroller
        self.graph = graph
        self.producer = {o: node for node in graph.node for o in node.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for i in node.input:
                self.consumers[i].append(node)
        self.in_subgraphs = _referenced_in_subgraphs(graph)
        self.outputs = {o.name for o in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.gathers: dict[tuple[str, int, int], str] = {}  # the same step of the same tensor is read once
        self.dropped: set[str] = set()  # outputs of reversal Slices that the unrolled Scans now write
        self.reversal_inputs: list[onnx.NodeProto] = []  # reversal Slices the Scans no longer read

    def gather(self, data: str, axis: int, index: int) -> tuple[str, onnx.NodeProto | None]:
        key = (data, axis, index)
        if key in self.gathers:
            return self.gathers[key], None
        out = self.u.fresh(f"{data}_at_{index}")
        self.gathers[key] = out
        node = self.u.node("Gather", [data, self.u.const(index, "unroll_index")], [out], axis=axis)
        return out, node

    def constant(self, name: str) -> np.ndarray | None:
        return constant_value(name, self.initializers, self.producer)

    def is_reversal(self, node: onnx.NodeProto, axis: int, length: int, rank: int | None) -> bool:
        """Whether ``node`` is a Slice that reverses its whole input along ``axis`` (of size ``length``) and
        touches no other axis."""
        if node.op_type != "Slice" or node.domain not in _DEFAULT_DOMAINS or len(node.input) < 5:
            return False
        starts, ends, axes, steps = (self.constant(i) for i in node.input[1:5])
        if starts is None or ends is None or axes is None or steps is None:
            return False
        if starts.size != 1 or ends.size != 1 or axes.size != 1 or steps.size != 1 or int(steps.item()) != -1:
            return False
        a, b = int(axes.item()), axis
        if (a < 0) != (b < 0):  # compare a negative axis with a positive one through the rank
            if rank is None:
                return False
            a, b = a % rank, b % rank
        if a != b:
            return False
        # ONNX Slice with a negative step: negative bounds count from the end, then start is clamped to
        # [0, length-1] and end to [-1, length-1]; the whole axis is start length-1, end -1
        start, end = int(starts.item()), int(ends.item())
        start = start + length if start < 0 else start
        end = end + length if end < 0 else end
        return min(max(start, 0), length - 1) == length - 1 and max(end, -1) == -1

    def reversed_source(self, name: str, axis: int, length: int) -> str | None:
        node = self.producer.get(name)
        if node is None or not self.is_reversal(node, axis, length, self.u.rank(name)):
            return None
        self.reversal_inputs.append(node)
        return node.input[0]

    def reversal_consumer(self, name: str, axis: int, length: int, rank: int | None) -> onnx.NodeProto | None:
        """The one Slice that reverses Scan output ``name``, when nothing else reads ``name``."""
        if not name or name in self.outputs or name in self.in_subgraphs:
            return None
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].input[0] != name or list(users[0].input[1:]).count(name):
            return None
        return users[0] if self.is_reversal(users[0], axis, length, rank) else None

    def remove_dead_reversals(self) -> None:
        """Drop the input reversals that nothing reads any more, and value_info of values no longer produced."""
        if self.reversal_inputs:
            used = (
                {i for node in self.graph.node for i in node.input}
                | self.outputs
                | _referenced_in_subgraphs(self.graph)
            )
            dead = {node.output[0] for node in self.reversal_inputs if node.output[0] not in used}
            if dead:
                kept = [node for node in self.graph.node if not (node.op_type == "Slice" and node.output[0] in dead)]
                for node in self.reversal_inputs:
                    if node.output[0] in dead:
                        self.u.orphans.update(node.input[1:])
                del self.graph.node[:]
                self.graph.node.extend(kept)
        produced = {o for node in self.graph.node for o in node.output}
        produced |= {v.name for v in self.graph.input} | {t.name for t in self.graph.initializer}
        stale = [v for v in self.graph.value_info if v.name not in produced]
        for v in stale:
            self.graph.value_info.remove(v)
