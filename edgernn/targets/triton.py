"""Target `triton`: NVIDIA Triton Inference Server's onnxruntime backend, which keeps every stream's state on the
server (the sequence batcher's implicit state) and batches the streams' steps.

What Triton needs of the graph: with ``max_batch_size > 0`` every input, output and state is batch-first (the
batch axis is the first one, and the config lists the other axes only), so the `step` export's states, shaped
like torch's ``hx`` ``(layers*directions, batch, hidden)``, become ``(batch, layers*directions, hidden)``: a
Transpose after each state input and before each state output, under the same names (``h_in``/``h_out``,
``c_in``/``c_out``, which Triton pairs correctly even where it pairs states by sorted name, server issue #8586).
The manifest's states say ``["batch", L, H]``, so ``edgernn.runtime``'s streams run the file unchanged.

Only `step` (a stream's state goes from call to call); the batch stays dynamic (Triton stacks the streams of a
call along it). The check on every export: parity of the batch-first graph against torch (chained calls, its
states transposed back to torch's layout for the comparison), onnxruntime loads it, and the Triton config
generated for it (``edgernn.serve.triton``) validates against the graph (``triton_report``, which
``edgernn check --target triton`` runs on any file). Triton itself is not run: its
onnxruntime backend ships only in the server container.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, ExportError, MissingPackageError, ModelFormatError
from ..manifest import Manifest, StateSpec, TensorSpec
from . import Target, register_target

if TYPE_CHECKING:
    from ..verify.check import TargetReport

_STEP_ONLY = (
    "Triton's sequence batcher carries each stream's state from call to call, which only a step export takes as "
    "inputs and returns as outputs (export with --strategy step)"
)

SUFFIX = "__torch_layout"  # the state tensors inside the graph, in torch's (layers*directions, batch, hidden)


@dataclass(frozen=True)
class TritonTarget(Target):
    """A target whose export changes the graph's interface after the strategy built it (``rewrite``)."""

    def batch(self, requested: int | None) -> int | None:
        """Always dynamic: Triton stacks the streams of a call along the batch axis; ExportError for ``--batch``."""
        if requested is not None:
            raise ExportError(
                f"target {self.name!r} needs a dynamic batch (Triton stacks the streams of a call along it); export "
                f"without --batch (got {requested!r})"
            )
        return None

    def validate(self, strategy: str, *, lengths: bool, fused: bool = False) -> None:
        """As every target, and tritonclient must be installed (the check builds Triton's config with it): a
        MissingPackageError (exit code 10) naming the extra before any work."""
        super().validate(strategy, lengths=lengths, fused=fused)
        from ..serve.triton import config_pb2

        config_pb2()

    def structure_report(self, model: Any) -> TargetReport:
        """``triton_report``: a step export with batch-first states whose Triton config validates."""
        from ..verify.check import as_bytes

        return triton_report(as_bytes(model))

    def rewrite(self, proto: Any, manifest: Manifest) -> tuple[Any, Manifest, Any, dict[str, Any]]:
        """The step graph ``proto`` with batch-first states, its manifest, the target's report (onnxruntime loads
        the graph; the Triton config made for it validates) and the parity runners that check the new graph
        against torch (fed torch's state layout, they transpose on the way in and out)."""
        from ..verify.check import TargetReport

        if manifest.strategy != "step" or not manifest.states:
            raise ExportError(f"target {self.name!r} takes step exports only: {_STEP_ONLY}")
        if manifest.batch is not None:
            raise ExportError(
                f"target {self.name!r} needs a dynamic batch (Triton stacks the streams of a call along it); "
                f"export without --batch (got --batch {manifest.batch})"
            )
        out, new_manifest, axes = batch_first(proto, manifest)
        data = out.SerializeToString()
        try:
            session = _session(data)
        except Exception as e:  # onnxruntime's own refusal, whatever its type
            line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            return out, new_manifest, TargetReport(self.name, False, f"onnxruntime cannot load it: {line}"), {}
        from ..manifest import write_manifest

        with_manifest = type(out)()
        with_manifest.CopyFrom(out)
        write_manifest(with_manifest, new_manifest)
        report = triton_report(with_manifest)
        report.summary = "onnxruntime loads the model; " + report.summary
        if not report.passed:
            return out, new_manifest, report, {}
        return out, new_manifest, report, {"triton-layout:onnxruntime:cpu": _torch_layout_runner(session, axes)}


def triton_report(model: str | os.PathLike[str] | bytes | Any) -> TargetReport:
    """What the `triton` target's check says of ``model``: passed when it is a step export with batch-first states
    and the Triton config made for it (``edgernn.serve.triton``) validates against its graph; failed, saying why,
    otherwise; not checked (passed None) where tritonclient is not installed."""
    from ..serve.triton import config_problems, model_config, read_graph, servable_states
    from ..verify.check import TargetReport

    try:
        graph = read_graph(model)
        states = servable_states(graph)
        problems = config_problems(model_config(graph, name="model"), graph)
    except MissingPackageError as e:
        return TargetReport("triton", None, str(e))
    except (ModelFormatError, ConfigError) as e:
        return TargetReport("triton", False, str(e))
    if problems:
        return TargetReport("triton", False, "the Triton config made for it does not fit: " + "; ".join(problems))
    pairs = ", ".join(f"{s.input}/{s.output} {s.shape}" for s in states)
    return TargetReport(
        "triton",
        True,
        f"its Triton config (sequence batcher, implicit state) validates; states batch-first: {pairs}",
    )


def batch_first(proto: Any, manifest: Manifest) -> tuple[Any, Manifest, dict[str, int]]:
    """A copy of the step graph ``proto`` whose state inputs and outputs are batch-first, keeping their names, and
    the manifest that says so; also each state tensor's batch axis in the original graph (by name).

    Inside the graph the old tensors are renamed ``NAME__torch_layout``: a Transpose makes each from the new
    batch-first input, and one makes each new output from it. The rest of the graph is not touched."""
    import onnx
    from onnx import helper

    axes: dict[str, int] = {}
    for s in manifest.states:
        if "batch" not in s.shape:
            raise ExportError(f"state {s.input!r} has no batch axis ({s.shape}); Triton batches streams along it")
        axes[s.input] = axes[s.output] = s.shape.index("batch")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    ins = {i.name: i for i in g.input}
    outs = {o.name: o for o in g.output}
    missing = [n for n in axes if n not in ins and n not in outs]
    if missing:
        raise ExportError(f"state tensor(s) {', '.join(missing)} of the manifest are not in the graph")
    renames = {n: n + SUFFIX for n in axes}
    taken = {v for n in g.node for v in (*n.input, *n.output)} | set(ins) | set(outs)
    clash = [v for v in renames.values() if v in taken]
    if clash:
        raise ExportError(f"the graph already has tensor(s) named {', '.join(clash)}")
    for node in g.node:
        _rename_node(node, renames)
    for vi in g.value_info:
        if vi.name in renames:
            vi.name = renames[vi.name]
    front, back = [], []
    for s in manifest.states:
        b = axes[s.input]
        rank = len(s.shape)
        to_torch = [i + 1 if i < b else (0 if i == b else i) for i in range(rank)]  # (B, ...) -> torch's order
        to_batch_first = [b] + [i for i in range(rank) if i != b]
        front.append(helper.make_node("Transpose", [s.input], [renames[s.input]], f"triton/{s.input}", perm=to_torch))
        back.append(
            helper.make_node("Transpose", [renames[s.output]], [s.output], f"triton/{s.output}", perm=to_batch_first)
        )
        _permute_dims(ins[s.input], to_batch_first)
        _permute_dims(outs[s.output], to_batch_first)
    nodes = [*front, *g.node, *back]
    del g.node[:]
    g.node.extend(nodes)

    def first(spec: TensorSpec) -> TensorSpec:
        if spec.name not in axes:
            return spec
        order = [axes[spec.name]] + [i for i in range(len(spec.shape)) if i != axes[spec.name]]
        shape = [spec.shape[i] for i in order]
        named = [spec.axes[i] for i in order] if spec.axes is not None and len(spec.axes) == len(order) else None
        return replace(spec, shape=shape, axes=named)

    states = [
        StateSpec(s.input, s.output, ["batch", *(d for i, d in enumerate(s.shape) if i != axes[s.input])], s.init)
        for s in manifest.states
    ]
    new = replace(
        manifest,
        inputs=[first(t) for t in manifest.inputs],
        outputs=[first(t) for t in manifest.outputs],
        states=states,
    )
    return out, new, axes


def _rename_node(node: Any, renames: Mapping[str, str]) -> None:
    """Every use of a renamed tensor by ``node``, and by the subgraphs in its attributes (outer-scope names)."""
    for i, v in enumerate(node.input):
        if v in renames:
            node.input[i] = renames[v]
    for i, v in enumerate(node.output):
        if v in renames:
            node.output[i] = renames[v]
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs):
            own = {v.name for v in (*sub.input, *sub.initializer)} | {o for n in sub.node for o in n.output}
            inner = {k: v for k, v in renames.items() if k not in own}
            for n in sub.node:
                _rename_node(n, inner)


def _permute_dims(value_info: Any, order: Sequence[int]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    copies = [type(d)() for d in dims]
    for c, d in zip(copies, dims, strict=True):
        c.CopyFrom(d)
    del dims[:]
    for i in order:
        dims.add().CopyFrom(copies[i])


def _session(data: bytes) -> Any:
    from ..runtime.providers import make_session

    session, _ = make_session(data, "cpu", threads=None)
    return session


def _torch_layout_runner(session: Any, axes: Mapping[str, int]) -> Any:
    """A parity runner for the batch-first graph that takes and returns states in torch's layout (the layout of the
    torch reference and of the feed the chained-call check builds): a transpose in numpy each way, which moves
    values and computes nothing, so what is compared is the graph's arithmetic."""
    names_in = {i.name for i in session.get_inputs()}
    names_out = [o.name for o in session.get_outputs()]

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        given = {}
        for k, v in feed.items():
            if k not in names_in:
                continue
            given[k] = np.ascontiguousarray(np.moveaxis(v, axes[k], 0)) if k in axes else v
        results = session.run(names_out, given)
        return [np.moveaxis(r, 0, axes[n]) if n in axes else r for n, r in zip(names_out, results, strict=True)]

    return run


TARGET = register_target(
    TritonTarget(
        name="triton",
        summary="Triton Inference Server (onnxruntime backend): step only, batch-first states for its sequence "
        "batcher's implicit state, dynamic batch",
        strategies=("step",),
        padding="masking",
        check="ort",
        needs="triton",
    ),
    why_not={s: _STEP_ONLY for s in ("native", "loop", "unroll")},
)
