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
    # layers the module hands an all-zeros hx (flair's API wants one): the stream's start state, so the state
    # fed in takes its place (``probe`` finds them)
    zero_start: set[int] = field(default_factory=set)

    def take(self, layer: Any, hx: Any, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The state a layer starts the chunk from; ExportError for calls a stream cannot carry."""
        name = getattr(layer, "edgernn_name", type(layer).__name__)
        if hx is not None and layer_slot(layer) not in self.zero_start:
            raise ExportError(
                f"the step strategy carries each recurrent layer's state from call to call, but this module gives "
                f"layer {name!r} a state of its own (hx: a learned initial state, an encoder's state, a decoder "
                "feeding itself). Export it with native, loop or unroll (the whole sequence in one call), or call "
                "the layer without hx (an all-zeros hx is taken as the stream's start state)"
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

    def __init__(
        self,
        module: nn.Module,
        layers: Sequence[tuple[str, Any]],
        n_data: int,
        io: StateIO,
        drop: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.module = module
        self.layers = [layer for _, layer in layers]
        self.n_data = n_data
        self.io = io
        self.drop = frozenset(drop)  # the module's outputs that are its layers' final states (``probe``)

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        it = iter(args[self.n_data :])
        self.io.inputs.clear()
        self.io.outputs.clear()
        for layer in self.layers:
            h = next(it)
            self.io.inputs[layer_slot(layer)] = (h, next(it) if layer.cell_kind.has_cell_state else None)
        out = self.module(*args[: self.n_data])
        outs = [o for i, o in enumerate(flat_outputs(out)) if i not in self.drop]
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


@dataclass
class Probe:
    """What one eager run of the user's module tells a step export before it traces: the layers (by slot) the
    module hands an all-zeros initial state, and the module's outputs (flattened, by index) that are a layer's
    own final state (speechbrain's wrappers return ``(output, hidden)``): the step's state outputs stand for
    those."""

    zero_start: set[int] = field(default_factory=set)
    state_outputs: list[int] = field(default_factory=list)


def probe(module: nn.Module, example: Sequence[Tensor]) -> Probe:
    """Run ``module`` eagerly on ``example`` with its float inputs drawn at random (a zero input could give an
    encoder's state as zeros too), watching its torch recurrent layers (in ``named_modules`` order, the export's
    slots). A module that fails here is left to the export to report."""
    layers = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    seen: dict[int, tuple[Any, Any]] = {}

    def watch(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        seen.setdefault(id(layer), (hx, out[1]))

    gen = torch.Generator().manual_seed(0)
    feed = [torch.randn(t.shape, generator=gen, dtype=t.dtype) if t.is_floating_point() else t for t in example]
    handles = [m.register_forward_hook(watch, with_kwargs=True) for m in layers]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*feed)
    except Exception:
        return Probe()
    finally:
        module.train(was_training)
        for hnd in handles:
            hnd.remove()
    found = Probe()
    finals: set[int] = set()
    for slot, layer in enumerate(layers):
        if id(layer) not in seen:
            continue
        hx, final = seen[id(layer)]
        parts = hx if isinstance(hx, tuple) else (hx,)
        if hx is not None and all(isinstance(p, Tensor) and not bool(p.any()) for p in parts):
            found.zero_start.add(slot)
        finals.update(id(t) for t in (final if isinstance(final, tuple) else (final,)))
    found.state_outputs = [i for i, o in enumerate(flat_outputs(out)) if id(o) in finals]
    return found
