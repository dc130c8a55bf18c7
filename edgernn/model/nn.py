"""Recurrent layers that are drop-in replacements for ``torch.nn.RNN``, ``LSTM`` and ``GRU``.

They subclass torch's layers, so they take the same constructor arguments, hold the same parameters under the
same ``state_dict`` keys (a checkpoint of a torch layer loads unchanged) and run torch's fused kernels (MKL,
cuDNN) in eager mode. Two things are added:

* ``forward(input, hx=None, lengths=None)``: ``lengths`` (one int per sequence) runs a padded batch as if each
  sequence ran alone. Outputs at padded steps are zero and the returned state is each sequence's state at its
  last valid step, which is also what ONNX's recurrent ops do with ``sequence_lens``.
* during an edgernn export, ``forward`` hands the layer to the chosen strategy (see ``edgernn.export``), which
  emits the ONNX form of the recurrence; torch's own tracing of recurrent layers is never used.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError, InputError
from .cells import CellKind, get_cell

# While an export runs, the strategy's hook: (layer, input, hx, lengths) -> what forward returns.
_EXPORT_HOOK: ContextVar[Callable[..., Any] | None] = ContextVar("edgernn_export_hook", default=None)


@contextlib.contextmanager
def export_hook(hook: Callable[..., Any]) -> Iterator[None]:
    """Route every edgernn recurrent layer's forward through ``hook`` inside the block (used by exporters)."""
    token = _EXPORT_HOOK.set(hook)
    try:
        yield
    finally:
        _EXPORT_HOOK.reset(token)


class _Recurrent:
    """Behaviour shared by the three layer classes; mixed in before the torch base class."""

    # set by each subclass / instance
    cell_kind: CellKind

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1  # type: ignore[attr-defined]

    @property
    def state_size(self) -> int:
        """Width of h: proj_size when the LSTM projects, else hidden_size."""
        proj = getattr(self, "proj_size", 0)
        return proj if proj else self.hidden_size  # type: ignore[attr-defined]

    def layer_weights(self, layer: int, direction: int) -> dict[str, Tensor]:
        """torch-layout weights of one layer and direction: w_ih, w_hh, b_ih, b_hh (zeros without bias), w_hr."""
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        g, h = self.cell_kind.gates, self.hidden_size  # type: ignore[attr-defined]
        w_ih = getattr(self, "weight_ih" + sfx)
        out = {"w_ih": w_ih, "w_hh": getattr(self, "weight_hh" + sfx)}
        if self.bias:  # type: ignore[attr-defined]
            out["b_ih"] = getattr(self, "bias_ih" + sfx)
            out["b_hh"] = getattr(self, "bias_hh" + sfx)
        else:
            out["b_ih"] = w_ih.new_zeros(g * h)
            out["b_hh"] = w_ih.new_zeros(g * h)
        if getattr(self, "proj_size", 0):
            out["w_hr"] = getattr(self, "weight_hr" + sfx)
        if getattr(self, "peephole", False):
            out["p_i"], out["p_f"], out["p_o"] = getattr(self, "weight_ph" + sfx).chunk(3)
        return out

    def forward(self, input: Any, hx: Any = None, lengths: Tensor | None = None) -> Any:  # noqa: A002
        hook = _EXPORT_HOOK.get()
        if hook is not None:
            return hook(self, input, hx, lengths)
        if getattr(self, "peephole", False):
            return _forward_unfused(self, input, hx, lengths)
        if lengths is None or isinstance(input, PackedSequence):
            return super().forward(input, hx)  # type: ignore[misc]
        batch_first = self.batch_first  # type: ignore[attr-defined]
        total = input.shape[1 if batch_first else 0]
        lengths = _check_lengths(lengths, input.shape[0 if batch_first else 1], total)
        packed = pack_padded_sequence(input, lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
        out, state = super().forward(packed, hx)  # type: ignore[misc]
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=total)
        return out, state


def _check_lengths(lengths: Tensor, batch: int, total: int) -> Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise InputError(f"lengths must have shape ({batch},), one per sequence; got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise InputError(f"lengths must be integers; got {lengths.dtype}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > total):
        raise InputError(f"every length must be in 1..{total} (the padded length); got {lengths.tolist()}")
    return lengths


def _forward_unfused(layer: Any, input: Any, hx: Any, lengths: Tensor | None) -> Any:  # noqa: A002
    """forward for variants torch has no fused kernel for (LSTM peepholes): the recurrence in plain torch ops,
    differentiable, with torch's conventions for batch_first, unbatched and packed inputs, hx and dropout.

    Written in torch's own weight layout and gate order, apart from ``cell_ops`` (the ONNX-layout code the
    loop/unroll/step strategies trace): this is the reference their exports are checked against, so it must not
    share their code, or a mistake in one would hide in both.
    """
    bf = layer.batch_first
    packed = input if isinstance(input, PackedSequence) else None
    if packed is not None:
        input, lengths = pad_packed_sequence(packed, batch_first=bf)  # noqa: A001  (original batch order)
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(0 if bf else 1)  # noqa: A001
        if hx is not None:
            hx = tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    x = input.transpose(0, 1) if bf else input
    steps, batch = x.shape[0], x.shape[1]
    if lengths is not None:
        lengths = _check_lengths(lengths, batch, steps).to(x.device)
    d = layer.num_directions
    rows = layer.num_layers * d
    if hx is None:
        h0 = x.new_zeros(rows, batch, layer.state_size)
        c0 = x.new_zeros(rows, batch, layer.hidden_size)
    else:
        h0, c0 = hx
    valid = None
    if lengths is not None:
        valid = (torch.arange(steps, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for k in range(layer.num_layers):
        outs = []
        for direction in range(d):
            w = layer.layer_weights(k, direction)
            y_dir, h, c = _peephole_lstm(x, h0[k * d + direction], c0[k * d + direction], w, valid, direction == 1)
            outs.append(y_dir)
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, dim=-1) if d > 1 else outs[0]
        if layer.training and layer.dropout and k < layer.num_layers - 1:
            x = nn.functional.dropout(x, layer.dropout, training=True)
    y = x.transpose(0, 1) if bf else x
    h_n, c_n = torch.stack(hs), torch.stack(cs)
    if unbatched:
        return y.squeeze(0 if bf else 1), (h_n.squeeze(1), c_n.squeeze(1))
    if packed is not None:
        if packed.sorted_indices is not None:  # pack in the input's order, so the output's indices are the input's
            y = y.index_select(0 if bf else 1, packed.sorted_indices)
            lengths = lengths.index_select(0, packed.sorted_indices.to(lengths.device))  # type: ignore[union-attr]
        out = pack_padded_sequence(y, lengths.cpu(), batch_first=bf, enforce_sorted=True)  # type: ignore[union-attr]
        return PackedSequence(out.data, out.batch_sizes, packed.sorted_indices, packed.unsorted_indices), (h_n, c_n)
    return y, (h_n, c_n)


def _peephole_lstm(
    x: Tensor, h: Tensor, c: Tensor, w: dict[str, Tensor], valid: Tensor | None, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one peephole LSTM layer over time-major x (T, B, I), torch's gate order i, f, g, o:

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi + p_i * c_{t-1})
        f = sigmoid(W_if x + b_if + W_hf h + b_hf + p_f * c_{t-1})
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c_t = f * c_{t-1} + i * g
        o = sigmoid(W_io x + b_io + W_ho h + b_ho + p_o * c_t)
        h_t = o * tanh(c_t)                       (then h_t W_hr^T with a projection)

    Padded steps (``valid`` False) keep the state and output zeros, as a packed sequence does.
    """
    ys: list[Tensor] = [h.new_zeros(0)] * x.shape[0]
    xw = x @ w["w_ih"].T + w["b_ih"]
    for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
        a_i, a_f, a_g, a_o = (xw[t] + h @ w["w_hh"].T + w["b_hh"]).chunk(4, dim=-1)
        i = torch.sigmoid(a_i + w["p_i"] * c)
        f = torch.sigmoid(a_f + w["p_f"] * c)
        c_new = f * c + i * torch.tanh(a_g)
        h_new = torch.sigmoid(a_o + w["p_o"] * c_new) * torch.tanh(c_new)
        if "w_hr" in w:
            h_new = h_new @ w["w_hr"].T
        if valid is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            h = torch.where(valid[t], h_new, h)
            c = torch.where(valid[t], c_new, c)
            ys[t] = torch.where(valid[t], h_new, 0.0)
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h.shape[-1])
    return y, h, c


class RNN(_Recurrent, nn.RNN):
    """Elman RNN, ``nonlinearity='tanh'`` or ``'relu'``; same arguments as ``torch.nn.RNN``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cell_kind = get_cell("rnn-" + self.nonlinearity)


class LSTM(_Recurrent, nn.LSTM):
    """LSTM; same arguments as ``torch.nn.LSTM`` (``proj_size`` included), plus ``peephole``.

    ``peephole=True`` adds peephole connections (Gers & Schmidhuber; ONNX LSTM's ``P`` input): the input and forget
    gates see c_{t-1}, the output gate sees c_t. Each layer and direction gets a parameter ``weight_ph_l{k}``
    (``..._reverse``) of shape (3*hidden_size,), holding p_i, p_f, p_o in that order. torch has no fused kernel
    for peepholes, so such a layer runs the recurrence in plain torch ops (slower, still differentiable).
    """

    def __init__(self, *args: Any, peephole: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cell_kind = get_cell("lstm")
        self.peephole = bool(peephole)
        if self.peephole:
            ref = next(self.parameters())
            bound = 1.0 / math.sqrt(self.hidden_size)  # torch's init range for every LSTM weight
            for k in range(self.num_layers):
                for d in range(self.num_directions):
                    p = nn.Parameter(torch.empty(3 * self.hidden_size, device=ref.device, dtype=ref.dtype))
                    nn.init.uniform_(p, -bound, bound)
                    self.register_parameter(f"weight_ph_l{k}" + ("_reverse" if d else ""), p)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", peephole=True" if self.peephole else "")


class GRU(_Recurrent, nn.GRU):
    """GRU; same arguments as ``torch.nn.GRU``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cell_kind = get_cell("gru")


_BY_TORCH_CLASS: dict[type[nn.Module], type[nn.Module]] = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}

Layer = RNN | LSTM | GRU


def make_layer(cell: str, input_size: int, hidden_size: int, **kwargs: Any) -> Layer:
    """Build the edgernn layer for a registered cell kind name."""
    kind = get_cell(cell)
    if kind.torch_class != "LSTM":
        for option in ("proj_size", "peephole"):
            if kwargs.pop(option, None):
                raise ConfigError(f"{option} is an LSTM option; cell {cell!r} does not take it")
    if kind.torch_class == "RNN":
        return RNN(input_size, hidden_size, nonlinearity=kind.nonlinearity, **kwargs)
    if kind.torch_class == "LSTM":
        return LSTM(input_size, hidden_size, **kwargs)
    return GRU(input_size, hidden_size, **kwargs)


def from_torch(layer: nn.Module) -> Layer:
    """The edgernn layer equivalent to a ``torch.nn.RNN/LSTM/GRU``: same arguments, same weights (copied)."""
    if isinstance(layer, _Recurrent):
        return layer  # type: ignore[return-value]
    cls = _BY_TORCH_CLASS.get(type(layer))
    if cls is None:
        raise ConfigError(f"{type(layer).__name__} is not torch.nn.RNN, LSTM or GRU")
    kwargs: dict[str, Any] = {
        "num_layers": layer.num_layers,
        "bias": layer.bias,
        "batch_first": layer.batch_first,
        "dropout": layer.dropout,
        "bidirectional": layer.bidirectional,
    }
    if cls is RNN:
        kwargs["nonlinearity"] = layer.nonlinearity
    if cls is LSTM:
        kwargs["proj_size"] = layer.proj_size
    p = next(layer.parameters())
    new = cls(layer.input_size, layer.hidden_size, device=p.device, dtype=p.dtype, **kwargs)
    new.load_state_dict(layer.state_dict())
    new.train(layer.training)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``torch.nn.RNN/LSTM/GRU`` inside ``module`` by its edgernn twin; returns module.

    A subclass of a torch layer (a library's wrapper adding its own init or ``lengths`` handling) keeps its class
    and its own ``forward``: the object's class becomes a twin deriving from both, so its ``super().forward``
    call reaches edgernn's. A submodule registered under several names stays one object, converted once.
    """
    return _convert(module, {})


def _convert(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    if type(module) in _BY_TORCH_CLASS:
        new: nn.Module = from_torch(module)
    elif isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)) and not isinstance(module, _Recurrent):
        new = _adopt_subclass(module)
    else:
        new = module
    memo[id(module)] = new
    if new is module:
        for name, child in list(module._modules.items()):
            if child is not None:
                setattr(module, name, _convert(child, memo))
    return new


_TWINS: dict[type, type] = {}


def _adopt_subclass(layer: nn.Module) -> nn.Module:
    """Give a subclass of torch.nn.RNN/LSTM/GRU edgernn's forward under its own: its class becomes
    ``class Twin(TheSubclass, edgernn.LSTM)``, whose method order runs the subclass's code first and edgernn's
    at its ``super().forward`` (the torch base class's, which edgernn's calls in eager mode, comes last)."""
    cls = type(layer)
    base = next(b for b in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(layer, b))
    twin = _TWINS.get(cls)
    if twin is None:
        twin = type(cls.__name__, (cls, _BY_TORCH_CLASS[base]), {"__module__": cls.__module__})
        twin.__qualname__ = cls.__qualname__
        _TWINS[cls] = twin
    layer.__class__ = twin
    layer.edgernn_subclass = cls  # type: ignore[assignment]
    if base is nn.LSTM:
        layer.cell_kind = get_cell("lstm")
        layer.peephole = False  # type: ignore[assignment]
    elif base is nn.GRU:
        layer.cell_kind = get_cell("gru")
    else:
        layer.cell_kind = get_cell("rnn-" + layer.nonlinearity)  # type: ignore[operator]
    return layer


def overrides_forward(layer: nn.Module) -> type | None:
    """The user's subclass when it defines its own ``forward`` (edgernn's twin of it runs that code)."""
    cls = getattr(layer, "edgernn_subclass", None)
    if cls is None:
        return None
    base = next(b for b in (nn.LSTM, nn.GRU, nn.RNN) if issubclass(cls, b))
    return cls if cls.forward is not base.forward else None


def number_layers(layers: list[tuple[str, Layer]]) -> None:
    """Give each recurrent layer its index (``layer_slot``): exporters key per-layer data by it, since torch's
    exporter may hand the forward a copy of the module (a different object)."""
    for i, (name, layer) in enumerate(layers):
        layer.edgernn_slot = i  # type: ignore[union-attr]
        layer.edgernn_name = name or type(layer).__name__  # type: ignore[union-attr]


def layer_slot(layer: Any) -> int:
    slot = getattr(layer, "edgernn_slot", None)
    if slot is None:
        raise ConfigError(f"recurrent layer {type(layer).__name__} was not numbered for this export (an edgernn bug)")
    return int(slot)


def recurrent_layers(module: nn.Module) -> list[tuple[str, Layer]]:
    """The edgernn recurrent layers inside ``module``, with their qualified names."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _Recurrent)]  # type: ignore[misc]
