"""What a streaming (`step`) export adds to the common path: the recurrent state as named graph inputs and
outputs, and the chained-call parity check.

Each recurrent layer module of the model carries its whole stack's state, shaped like torch's ``hx``:
``h_in``/``h_out`` (layers*directions, batch, hidden or proj_size) and, for an LSTM, ``c_in``/``c_out``
(layers*directions, batch, hidden). With several recurrent modules the names get the module's index in
``named_modules`` order: ``h_in_0``, ``c_in_0``, ``h_in_1``, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..manifest import StateSpec, TensorSpec
from ..model.nn import layer_slot
from ..verify.parity import flat_outputs


@dataclass
class StateIO:
    """The states of one traced forward: fed in per layer before it runs, collected from each layer after."""

    inputs: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    outputs: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)

    def take(self, layer: Any, hx: Any, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The state a layer starts the chunk from; ExportError for calls a stream cannot carry."""
        name = getattr(layer, "edgernn_name", type(layer).__name__)
        if hx is not None:
            raise ExportError(
                f"the step strategy carries each recurrent layer's state from call to call, but this module gives "
                f"layer {name!r} a state of its own (hx: a learned initial state, an encoder's state, a decoder "
                "feeding itself). Export it with native, loop or unroll (the whole sequence in one call), or call "
                "the layer without hx"
            )
        if lengths is not None:
            raise ExportError("the step strategy takes no lengths: every stream advances by the same chunk")
        if layer_slot(layer) in self.outputs:
            raise ExportError(
                f"layer {name!r} runs more than once in one forward (a decoder loop?); a stream carries one state "
                "per layer from call to call. Export it with native, loop or unroll"
            )
        return self.inputs[layer_slot(layer)]

    def give(self, layer: Any, h: Tensor, c: Tensor | None) -> None:
        self.outputs[layer_slot(layer)] = (h, c)


def state_specs(
    layers: Sequence[tuple[str, Any]], dtype: str = "float32", batch: int | None = None
) -> tuple[list[TensorSpec], list[TensorSpec], list[StateSpec]]:
    """Graph inputs, graph outputs and manifest entries of every layer's state, in layer order (h before c);
    ``batch`` fixes the batch axis (static-batch targets), else it is named "batch"."""
    ins: list[TensorSpec] = []
    outs: list[TensorSpec] = []
    states: list[StateSpec] = []
    for i, (_, layer) in enumerate(layers):
        sfx = f"_{i}" if len(layers) > 1 else ""
        rows = layer.num_layers * layer.num_directions
        parts = [("h", layer.state_size)] + ([("c", layer.hidden_size)] if layer.cell_kind.has_cell_state else [])
        for name, width in parts:
            shape: list[int | str] = [rows, batch or "batch", int(width)]
            axes: list[str | None] = [None, "batch", None]
            ins.append(TensorSpec(f"{name}_in{sfx}", dtype, shape, role="state", axes=axes))
            outs.append(TensorSpec(f"{name}_out{sfx}", dtype, shape, role="state", axes=axes))
            # one stream's state, with its batch axis named (the graph may fix it: manifest.batch)
            states.append(StateSpec(f"{name}_in{sfx}", f"{name}_out{sfx}", [rows, "batch", int(width)], init="zeros"))
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
            self.io.inputs[layer_slot(layer)] = (h, next(it) if layer.cell_kind.has_cell_state else None)
        out = self.module(*args[: self.n_data])
        outs = flat_outputs(out)
        for layer in self.layers:
            if layer_slot(layer) not in self.io.outputs:
                raise ExportError("a recurrent layer of this module does not run in its forward; it cannot be streamed")
            h, c = self.io.outputs[layer_slot(layer)]
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
