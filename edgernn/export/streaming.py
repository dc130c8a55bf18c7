"""What a streaming (`step`) export adds to the common path: the recurrent state as named graph inputs and
outputs, and the chained-call parity check.

Each recurrent layer module of the model carries its whole stack's state, shaped like torch's ``hx``:
``h_in``/``h_out`` (layers*directions, batch, hidden or proj_size) and, for an LSTM, ``c_in``/``c_out``
(layers*directions, batch, hidden). With several recurrent modules the names get the module's index in
``named_modules`` order: ``h_in_0``, ``c_in_0``, ``h_in_1``, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..manifest import StateSpec, TensorSpec
from ..parity import Case, ParityReport, Runner, check_chained, session_runner

# stream lengths the chained check runs by default: one sequence alone and a batch, 50 steps each
STREAM_CASES: tuple[Case, ...] = (Case(1, 50), Case(3, 50))


@dataclass
class StateIO:
    """The states of one traced forward: fed in per layer before it runs, collected from each layer after."""

    inputs: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    outputs: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)

    def take(self, layer: Any, hx: Any, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The state a layer starts the chunk from; ExportError for calls a stream cannot carry."""
        if hx is not None:
            raise ExportError(
                "the step strategy carries the recurrent state between calls itself, but this module passes its "
                "own initial state (hx) to a recurrent layer; call the layer without hx to export it for streaming"
            )
        if lengths is not None:
            raise ExportError("the step strategy takes no lengths: every stream advances by the same chunk")
        if id(layer) in self.outputs:
            raise ExportError("a recurrent layer runs twice in one forward; its state cannot be streamed")
        return self.inputs[id(layer)]

    def give(self, layer: Any, h: Tensor, c: Tensor | None) -> None:
        self.outputs[id(layer)] = (h, c)


def state_specs(
    layers: Sequence[tuple[str, Any]], dtype: str = "float32"
) -> tuple[list[TensorSpec], list[TensorSpec], list[StateSpec]]:
    """Graph inputs, graph outputs and manifest entries of every layer's state, in layer order (h before c)."""
    ins: list[TensorSpec] = []
    outs: list[TensorSpec] = []
    states: list[StateSpec] = []
    for i, (_, layer) in enumerate(layers):
        sfx = f"_{i}" if len(layers) > 1 else ""
        rows = layer.num_layers * layer.num_directions
        parts = [("h", layer.state_size)] + ([("c", layer.hidden_size)] if layer.cell_kind.has_cell_state else [])
        for name, width in parts:
            shape: list[int | str] = [rows, "batch", int(width)]
            ins.append(TensorSpec(f"{name}_in{sfx}", dtype, shape, role="state"))
            outs.append(TensorSpec(f"{name}_out{sfx}", dtype, shape, role="state"))
            states.append(StateSpec(f"{name}_in{sfx}", f"{name}_out{sfx}", list(shape), init="zeros"))
    return ins, outs, states


class StepModule(nn.Module):
    """``module`` with every recurrent layer's state as extra inputs (after the data) and extra outputs."""

    def __init__(self, module: nn.Module, layers: Sequence[tuple[str, Any]], n_data: int, io: StateIO) -> None:
        super().__init__()
        self.module = module
        self.layers = [layer for _, layer in layers]
        self.n_data = n_data
        self.io = io

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        it = iter(args[self.n_data :])
        self.io.inputs.clear()
        self.io.outputs.clear()
        for layer in self.layers:
            h = next(it)
            self.io.inputs[id(layer)] = (h, next(it) if layer.cell_kind.has_cell_state else None)
        out = self.module(*args[: self.n_data])
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for layer in self.layers:
            if id(layer) not in self.io.outputs:
                raise ExportError("a recurrent layer of this module does not run in its forward; it cannot be streamed")
            h, c = self.io.outputs[id(layer)]
            outs.append(h)
            if c is not None:
                outs.append(c)
        return tuple(outs)


def example_states(layers: Sequence[tuple[str, Any]], batch: int, dtype: torch.dtype) -> list[Tensor]:
    out = []
    for _, layer in layers:
        rows = layer.num_layers * layer.num_directions
        out.append(torch.zeros(rows, batch, layer.state_size, dtype=dtype))
        if layer.cell_kind.has_cell_state:
            out.append(torch.zeros(rows, batch, layer.hidden_size, dtype=dtype))
    return out


def stream_reference(module: nn.Module, specs: Sequence[TensorSpec]) -> Runner:
    """Run the eager (unconverted) module on a whole sequence; its outputs, then each recurrent layer's final
    state (read with forward hooks on the module's own torch layers)."""
    layers = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    final: dict[int, Any] = {}

    def grab(layer: nn.Module, _args: Any, out: Any) -> None:
        final[id(layer)] = out[1]

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        final.clear()
        handles = [m.register_forward_hook(grab) for m in layers]
        try:
            with torch.no_grad():
                out = module(*[torch.from_numpy(np.array(feed[s.name])) for s in specs])
        finally:
            for hnd in handles:
                hnd.remove()
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for m in layers:
            st = final[id(m)]
            outs.extend(st if isinstance(st, tuple) else (st,))
        return [o.detach().cpu().numpy() for o in outs]

    return run


def verify_stream(
    module: nn.Module,
    proto: Any,
    specs: Sequence[TensorSpec],
    states: Sequence[StateSpec],
    output_names: Sequence[str],
    chunk: int,
    *,
    cases: Sequence[Case] | None = None,
    oracle: Runner | None = None,
    providers: Sequence[str] = ("cpu",),
    int_high: int = 2,
) -> ParityReport:
    """Chained step calls through onnxruntime (each provider) against the eager module on the whole sequence.

    ``specs`` are the data inputs with their "time" axis still named (the graph fixes it to ``chunk``).
    """
    from ..runtime.providers import make_session

    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    reference = stream_reference(module, specs)
    was_training = module.training
    module.eval()
    report: ParityReport | None = None
    try:
        for i, p in enumerate(providers):
            sess, _ = make_session(data, p, threads=None)
            r = check_chained(
                reference,
                session_runner(sess),
                specs,
                states,
                output_names,
                chunk,
                list(cases or STREAM_CASES),
                oracle=oracle if i == 0 else None,
                candidate=f"onnxruntime:{p}",
                int_high=int_high,
            )
            if report is None:
                report = r
            else:
                report.comparisons.extend(r.comparisons)
    finally:
        module.train(was_training)
    if report is None:
        raise ExportError("no onnxruntime provider to verify the stream on")
    return report
