"""The numpy oracle: each cell written out as its equations, in torch's weight layout.

It is the third implementation that parity checks hold torch and onnxruntime to. It shares no code with either:
the gates are read in torch's order straight from a ``state_dict``, so a wrong gate permutation in an exporter
shows up as a disagreement here. It imports numpy only and favours plainness over speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..model.cells import get_cell

Array = np.ndarray


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def cell_step(cell: str, x: Array, h: Array, c: Array | None, w: Mapping[str, Array]) -> tuple[Array, Array | None]:
    """One time step of one direction of one layer; x (B, I), h (B, H or P), c (B, H) for LSTM."""
    kind = get_cell(cell)
    b_ih = w.get("b_ih", 0.0)
    b_hh = w.get("b_hh", 0.0)
    if kind.torch_class == "RNN":
        # h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        pre = x @ w["w_ih"].T + b_ih + h @ w["w_hh"].T + b_hh
        return (np.tanh(pre) if kind.nonlinearity == "tanh" else np.maximum(pre, 0.0)), None
    if kind.torch_class == "GRU":
        gi = x @ w["w_ih"].T + b_ih
        gh = h @ w["w_hh"].T + b_hh
        i_r, i_z, i_n = np.split(gi, 3, axis=-1)
        h_r, h_z, h_n = np.split(gh, 3, axis=-1)
        r = _sigmoid(i_r + h_r)  # reset gate
        z = _sigmoid(i_z + h_z)  # update gate
        n = np.tanh(i_n + r * h_n)  # candidate; the reset gate applies after W_hn (linear_before_reset)
        return (1.0 - z) * n + z * h, None
    # LSTM, with optional peepholes (p_i, p_f, p_o) and projection (w_hr)
    if c is None:
        raise ValueError("an LSTM step needs the cell state c")
    gates = x @ w["w_ih"].T + b_ih + h @ w["w_hh"].T + b_hh
    a_i, a_f, a_g, a_o = np.split(gates, 4, axis=-1)
    if "p_i" in w:
        a_i = a_i + w["p_i"] * c
        a_f = a_f + w["p_f"] * c
    i = _sigmoid(a_i)  # input gate
    f = _sigmoid(a_f)  # forget gate
    g = np.tanh(a_g)  # cell candidate
    c_new = f * c + i * g
    if "p_o" in w:
        a_o = a_o + w["p_o"] * c_new  # the output-gate peephole sees the new cell state
    o = _sigmoid(a_o)  # output gate
    h_new = o * np.tanh(c_new)
    if "w_hr" in w:
        h_new = h_new @ w["w_hr"].T
    return h_new, c_new


def run_direction(
    cell: str,
    x: Array,
    h0: Array,
    c0: Array | None,
    w: Mapping[str, Array],
    lengths: Array,
    reverse: bool,
) -> tuple[Array, Array, Array | None]:
    """x (T, B, I) -> y (T, B, H), h_T, c_T. Steps at t >= lengths[b] leave the state alone and output zero."""
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h, c = h0, c0
    ys: list[Array | None] = [None] * x.shape[0]
    for t in steps:
        valid = (t < lengths)[:, None]
        h_new, c_new = cell_step(cell, x[t], h, c, w)
        h = np.where(valid, h_new, h)
        if c is not None and c_new is not None:
            c = np.where(valid, c_new, c)
        ys[t] = np.where(valid, h_new, 0.0)
    y = np.stack(ys) if ys else np.zeros((0, *h.shape), dtype=h.dtype)  # type: ignore[arg-type]
    return y, h, c


def layer_weights(state: Mapping[str, Array], prefix: str, layer: int, direction: int) -> dict[str, Array]:
    """Pick one layer/direction's weights out of a torch state_dict (keys weight_ih_l0, ..._reverse)."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh", "w_hr": "weight_hr"}
    out = {k: np.asarray(state[prefix + v + sfx]) for k, v in names.items() if prefix + v + sfx in state}
    ph = prefix + "weight_ph" + sfx
    if ph in state:
        out["p_i"], out["p_f"], out["p_o"] = np.split(np.asarray(state[ph]), 3)
    return out


def recurrent_forward(
    cell: str,
    state: Mapping[str, Array],
    x: Array,
    *,
    num_layers: int,
    bidirectional: bool,
    lengths: Array | None = None,
    h0: Array | None = None,
    c0: Array | None = None,
    prefix: str = "",
) -> tuple[Array, Array, Array | None]:
    """A stacked (bi)directional layer like torch's, time-major: x (T, B, I) -> y, h_n, c_n (c_n LSTM only)."""
    kind = get_cell(cell)
    x = np.asarray(x, dtype=np.float64)
    t_len, batch = x.shape[:2]
    dirs = 2 if bidirectional else 1
    lengths = np.full(batch, t_len) if lengths is None else np.asarray(lengths)
    hidden = np.asarray(state[f"{prefix}weight_hh_l0"]).shape[0] // kind.gates
    width = state.get(f"{prefix}weight_hr_l0", np.zeros((0, 0))).shape[0] or hidden
    if h0 is None:
        h0 = np.zeros((num_layers * dirs, batch, width))
    if c0 is None and kind.has_cell_state:
        c0 = np.zeros((num_layers * dirs, batch, hidden))
    hs, cs = [], []
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = {n: a.astype(np.float64) for n, a in layer_weights(state, prefix, layer, d).items()}
            y, h, c = run_direction(cell, inp, h0[k], None if c0 is None else c0[k], w, lengths, reverse=d == 1)
            outs.append(y)
            hs.append(h)
            cs.append(c)
        inp = np.concatenate(outs, axis=-1)
    c_n = np.stack(cs) if kind.has_cell_state else None  # type: ignore[arg-type]
    return inp, np.stack(hs), c_n


def model_forward(config: Any, state: Mapping[str, Array], x: Array, lengths: Array | None = None) -> Array:
    """The whole ``edgernn.model.zoo.RecurrentModel`` (eval mode): x (B, T, F) -> (B, out) or (B, T, out)."""
    state = {k: np.asarray(v) for k, v in state.items()}
    y, h, _ = recurrent_forward(
        config.cell,
        state,
        np.swapaxes(_normalized(config, state, x), 0, 1),
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        lengths=lengths,
        prefix="rnn.",
    )
    w, b = state["head.weight"].astype(np.float64), state["head.bias"].astype(np.float64)
    if config.readout == "all":
        return _scaled(config, state, np.swapaxes(y, 0, 1) @ w.T + b)
    d = 2 if config.bidirectional else 1
    last = np.concatenate([h[-d + i] for i in range(d)], axis=-1)
    return _scaled(config, state, last @ w.T + b)


def model_steps(config: Any, state: Mapping[str, Array], x: Array) -> Array:
    """What a streaming zoo model outputs after each step of one sequence x (T, F): (T, out). The head on each
    step's hidden state, whatever the readout: a last-step readout at step t is the model on x[: t + 1]."""
    state = {k: np.asarray(v) for k, v in state.items()}
    if config.bidirectional:
        raise ValueError("a bidirectional model cannot stream: its output at a step needs the steps after it")
    y, _, _ = recurrent_forward(
        config.cell,
        state,
        _normalized(config, state, x)[:, None, :],
        num_layers=config.num_layers,
        bidirectional=False,
        prefix="rnn.",
    )
    w, b = state["head.weight"].astype(np.float64), state["head.bias"].astype(np.float64)
    return _scaled(config, state, y[:, 0] @ w.T + b)


def _normalized(config: Any, state: Mapping[str, Array], x: Array) -> Array:
    """x in float64, standardised with the model's input statistics when it has them (``normalize``)."""
    x64 = np.asarray(x, dtype=np.float64)
    if not getattr(config, "normalize", False):
        return x64
    mean, std = state["input_mean"].astype(np.float64), state["input_std"].astype(np.float64)
    return (x64 - mean) / std


def _scaled(config: Any, state: Mapping[str, Array], out: Array) -> Array:
    """A regression head's output in the data's units, for models that scale it back (``normalize``)."""
    if "output_mean" not in state:
        return out
    return out * state["output_std"].astype(np.float64) + state["output_mean"].astype(np.float64)


def model_oracle(config: Any, state: Mapping[str, Array]) -> Callable[[Mapping[str, Array]], list[Array]]:
    """A parity runner for a zoo model: a feed with ``x`` (and optional ``lengths``) -> [output]."""
    weights = {k: np.asarray(v) for k, v in state.items()}

    def run(feed: Mapping[str, Array]) -> list[Array]:
        return [model_forward(config, weights, feed["x"], feed.get("lengths"))]

    return run
