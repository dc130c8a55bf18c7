"""Why a gated cell is worth its cost: how much of the loss's gradient reaches the hidden state a given number of
steps back (the vanishing-gradient picture), per cell, on a task's own sequences.

For each step t the model's recurrent state after t (the top layer's h) is kept, the task's loss is taken on the
output, and the mean over the batch of ||dloss/dh_t|| is read against the lag T - 1 - t. Where the curve has
fallen by many orders of magnitude, what happened that long ago can no longer move the weights. Read it on the
model you have: at initialisation every cell's curve falls (measured on the adding problem at T = 100, default
init: 1e-20 or lower at lag 99 for all three; orthogonal init keeps a tanh RNN at 1e-3); a gated cell trained
on a long-lag task learns to hold its state (forget gates open), and its curve flattens where a tanh RNN's
cannot (``--ckpt`` reads a trained checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..progress import stage


def gradient_norms(model: Any, task: Any, examples: Sequence[Any]) -> np.ndarray:
    """Mean over ``examples`` (one batch, equal lengths) of ||dloss/dh_t|| for t = 0..T-1, the top layer's
    state of a unidirectional zoo model."""
    import torch

    from .data import collate
    from .loop import _loss

    if model.config.bidirectional:
        raise ConfigError("the gradient study follows the state forward in time: use a unidirectional model")
    batch = collate(examples)
    if len(set(batch.lengths.tolist())) != 1:
        raise ConfigError("the gradient study needs sequences of one length (--seq-len)")
    x = torch.from_numpy(batch.x)
    model.eval()  # no dropout: the picture of the model itself
    states: list[Any] = []
    with torch.enable_grad():
        state = None
        outs = []
        for t in range(x.shape[1]):
            y, state = model.rnn(x[:, t : t + 1], state)
            h = state[0] if isinstance(state, tuple) else state
            h.retain_grad()
            states.append(h)
            outs.append(y)
        per_step = model.config.readout == "all"
        out = model.head(torch.cat(outs, dim=1) if per_step else states[-1][-1])
        loss = _loss(task, out, batch)
        loss.backward()
    return np.array([float(h.grad[-1].norm(dim=-1).mean()) for h in states])


def study_gradients(
    task: str = "adding",
    *,
    cells: Sequence[str] = ("rnn-tanh", "lstm", "gru"),
    seq_len: int = 100,
    hidden: int = 32,
    batch: int = 32,
    seed: int = 0,
    init: str = "orthogonal",
    models: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gradient reaching each lag, per cell: fresh models of ``cells`` (``init``, one seed) or the given
    ``models`` (name -> zoo model, e.g. a trained checkpoint's), on ``batch`` sequences of the task at
    ``seq_len``. Returns the lags, each cell's curve and its fall from lag 0 to the longest lag."""
    import torch

    from ..model.zoo import build_model
    from .data import get_task
    from .loop import initialise, model_config_for

    if isinstance(seq_len, bool) or seq_len < 2:
        raise ConfigError(f"--seq-len must be at least 2; got {seq_len}")
    t = get_task(task)
    examples = t.make(np.random.default_rng(seed), batch, seq_len, seq_len)
    if models is None:
        models = {}
        for cell in cells:
            torch.manual_seed(seed)
            m = build_model(model_config_for(t, cell=cell, hidden_size=hidden))
            initialise(m, init)
            models[cell] = m
    curves: dict[str, list[float]] = {}
    for name, m in models.items():
        stage(f"gradients of {name} at {seq_len} steps ({batch} sequences)")
        norms = gradient_norms(m, t, examples)
        curves[name] = norms[::-1].tolist()  # by lag: lag 0 is the last step
    lags = list(range(seq_len))
    fall = {n: (c[-1] / c[0] if c[0] > 0 else float("nan")) for n, c in curves.items()}
    return {"task": task, "seq_len": seq_len, "batch": batch, "seed": seed, "lags": lags, "norms": curves, "fall": fall}


def plot_gradients(result: dict[str, Any], path: str) -> None:
    """The curves on a log scale against the lag (PNG, written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import write_atomic

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result["norms"].items():
        ax.semilogy(result["lags"], np.maximum(curve, 1e-30), label=name)
    ax.set_xlabel("lag T - 1 - t (steps back from the loss)")
    ax.set_ylabel("mean ||dloss / dh_t||")
    ax.set_title(f"gradient reaching each step back: {result['task']}, T = {result['seq_len']}")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
