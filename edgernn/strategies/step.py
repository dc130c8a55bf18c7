"""Strategy `step`: one step, or a fixed chunk of K steps, with the recurrent state as graph inputs and outputs.

For streams (audio frames, sensor samples, tokens): the caller keeps the state between calls, starting from
zeros. Each recurrent layer module contributes its whole stack's state, shaped as torch's ``hx``:

    h_in  -> h_out   (num_layers, batch, hidden_size or proj_size)
    c_in  -> c_out   (num_layers, batch, hidden_size)              LSTM only

A module holding several recurrent layer modules gets the same names suffixed with the layer's index in
``named_modules`` order: ``h_in_0``, ``h_in_1``, ... The manifest's ``states`` lists every pair with its shape,
and ``chunk`` records K. The data inputs' time axis is fixed to K; the chunk is computed like `unroll` (no
control flow). Unidirectional only: the reverse direction of a bidirectional layer needs the samples that have
not arrived yet. No ``lengths`` input: in a stream every sequence advances by the same K steps.

Two forms of the chunk. Plain MatMul + activations, which every runtime can partition (NNAPI, CoreML, NPUs) and
engines without recurrent operators run; and ONNX's RNN/LSTM/GRU operators, with the state as their
initial_h/initial_c inputs and Y_h/Y_c outputs: fewer nodes, so faster on onnxruntime's CPU and CUDA providers
(a step of a small model costs more in per-node dispatch than in arithmetic; see docs/benchmarks.md), not
partitionable by the mobile providers, and without LSTM projections. ``fused=True`` (``--fused``) asks for the
operators and ``fused=False`` (``--no-fused``) for the plain form; not given, the target decides
(``for_target``): the operators for onnxruntime (target ``ort``) wherever the layer has them (a projected LSTM
stays plain), the plain form for every other target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from .native import Native
from .registry import Capabilities, Stack, Strategy, layer_variants, register_strategy

if TYPE_CHECKING:
    from torch import Tensor


@register_strategy
class Step(Strategy):
    name = "step"
    summary = "one step or a chunk of K steps with explicit state inputs/outputs: live streams"
    caps = Capabilities(
        dynamic_length=False,
        lengths=False,
        bidirectional=False,
        variants=frozenset({"peephole", "projection"}),
        streaming=True,
        opset_min=14,  # tested down to opset 14
    )
    rewrite_graph = False  # the graph grows with the steps; see Strategy.rewrite_graph
    option_names = frozenset({"chunk", "fused"})

    # targets whose runtime runs the recurrent operators fastest: their step is fused unless told otherwise
    FUSED_BY_DEFAULT = frozenset({"ort"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.chunk = self.positive_int_option("chunk", default=1)
        given = self.options.get("fused")
        self.fused: bool | None = None if given is None else bool(given)  # None: the target decides
        self.prefer_fused = False  # the form of a layer when fused is not given (for_target)

    def for_target(self, target: Any) -> None:
        """The form for ``target``'s runtime when ``fused`` was not given (``FUSED_BY_DEFAULT``)."""
        self.prefer_fused = target.name in self.FUSED_BY_DEFAULT

    def fuses(self, layer: Any) -> bool:
        """Whether ``layer``'s chunk is emitted as ONNX's recurrent operator."""
        if self.fused is not None:
            return self.fused
        return self.prefer_fused and not layer_variants(layer) - Native.caps.variants

    def check_layer(self, layer: Any) -> None:
        super().check_layer(layer)
        unfusable = layer_variants(layer) - Native.caps.variants
        if self.fused and unfusable:
            raise ExportError(
                f"step with fused=True emits ONNX's recurrent operators, which have no LSTM "
                f"{', '.join(sorted(unfusable))}; export this model with the default (unfused) step"
            )

    def fixed_length(self) -> int:
        return self.chunk

    def why_not_bidirectional(self) -> str:
        return (
            "the reverse direction reads the sequence from its end, so a step would need samples that have not "
            "arrived yet"
        )

    def run_stack(self, s: Stack) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.fuses(s.layer):
            return Native().run_stack(s)
        from ..model.cell_ops import run_stack

        return run_stack(*s.cell_args())

    def postprocess(self, model: Any) -> Any:
        squeeze_one_direction(model)
        return model

    def translation_table(self) -> dict[Any, Any]:
        # the operators' translation whenever a layer may use them (it translates only the ops the trace holds)
        return Native().translation_table() if self.fused or (self.fused is None and self.prefer_fused) else {}


def squeeze_one_direction(model: Any) -> int:
    """Each forward RNN/LSTM/GRU node's output regrouped as Transpose(perm 0,2,1,3) + Reshape(0,0,-1) (from
    (T, 1, B, H) to (T, B, H), as the `native` translation writes it for both directions) becomes one Squeeze of
    axis 1: the same values, one node instead of two (a step pays onnxruntime's dispatch for every node). Returns
    how many were rewritten; ``model`` (an onnx.ModelProto) is changed in place."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    made = {o: n for n in g.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    drop: set[int] = set()
    replace: dict[int, Any] = {}
    for n in g.node:
        if n.op_type != "Transpose" or [list(a.ints) for a in n.attribute if a.name == "perm"] != [[0, 2, 1, 3]]:
            continue
        src = made.get(n.input[0])
        if src is None or src.op_type not in ("RNN", "LSTM", "GRU") or src.output[0] != n.input[0]:
            continue
        if any(a.name == "direction" and a.s != b"forward" for a in src.attribute):
            continue
        after = users.get(n.output[0], [])
        if len(after) != 1 or n.output[0] in outputs or after[0].op_type != "Reshape":
            continue
        reshape = after[0]
        shape = consts.get(reshape.input[1])
        if shape is None or shape.tolist() != [0, 0, -1]:
            continue
        axes = f"{n.output[0]}_squeezed_axis"
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        replace[id(n)] = helper.make_node("Squeeze", [n.input[0], axes], [reshape.output[0]], name=f"{n.name}_squeeze")
        drop.add(id(reshape))
    if replace:
        nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(nodes)
    return len(replace)
