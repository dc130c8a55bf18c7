"""Registry of recurrent cell kinds, shared by the torch side, the exporters, the numpy oracle and the runtime.

Nothing here imports torch. The gate orders differ between torch and ONNX; this module names both and is the
one place that knows the permutation between them:

    torch LSTM rows: i, f, g, o        ONNX LSTM rows: i, o, f, c   (c is torch's g)
    torch GRU rows:  r, z, n           ONNX GRU rows:  z, r, h      (h is torch's n; linear_before_reset=1)
    torch RNN rows:  one gate          ONNX RNN rows:  one gate
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class CellKind:
    name: str  # registry key, used on the CLI and in manifests
    torch_class: str  # torch.nn class the cell is a drop-in for
    gates: int  # gate blocks stacked in each weight matrix
    onnx_op: str  # the ONNX operator of the `native` strategy
    nonlinearity: str | None  # RNN only: "tanh" or "relu"
    has_cell_state: bool  # LSTM carries c as well as h
    torch_to_onnx_gates: tuple[int, ...]  # ONNX gate block j is torch gate block torch_to_onnx_gates[j]

    def gate_permutation(self, hidden_size: int) -> np.ndarray:
        """Row indices that turn a torch-ordered weight (gates*H rows) into the ONNX gate order."""
        h = hidden_size
        return np.concatenate([np.arange(g * h, (g + 1) * h) for g in self.torch_to_onnx_gates])


_CELLS: dict[str, CellKind] = {}


def register_cell(kind: CellKind) -> CellKind:
    if kind.name in _CELLS:
        raise ValueError(f"cell kind {kind.name!r} is already registered")
    _CELLS[kind.name] = kind
    return kind


register_cell(CellKind("rnn-tanh", "RNN", 1, "RNN", "tanh", False, (0,)))
register_cell(CellKind("rnn-relu", "RNN", 1, "RNN", "relu", False, (0,)))
register_cell(CellKind("lstm", "LSTM", 4, "LSTM", None, True, (0, 3, 1, 2)))
register_cell(CellKind("gru", "GRU", 3, "GRU", None, False, (1, 0, 2)))


def cell_names() -> list[str]:
    return list(_CELLS)


def get_cell(name: str) -> CellKind:
    try:
        return _CELLS[name]
    except KeyError:
        raise ConfigError(f"unknown cell kind {name!r}; choose one of: {', '.join(_CELLS)}") from None
