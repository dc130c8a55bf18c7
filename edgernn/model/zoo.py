"""The model zoo: optional input projection, a recurrent stack, and a head, built from one frozen config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .cells import get_cell
from .nn import make_layer

HEADS = ("regression", "classification")
MAX_LAYERS = 64  # beyond these a typo is likelier than a model: refused up front, not after minutes of allocation
MAX_WIDTH = 1 << 16
MAX_WEIGHTS_GIB = 4.0
READOUTS = ("last", "all")


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "lstm"  # a registered cell kind: rnn-tanh, rnn-relu, lstm, gru
    input_size: int = 1  # features per time step
    hidden_size: int = 32  # units per direction
    num_layers: int = 1  # stacked recurrent layers
    bidirectional: bool = False  # a second, time-reversed direction per layer
    dropout: float = 0.0  # between stacked layers and before the head (training only)
    head: str = "regression"  # "regression" (linear outputs) or "classification" (logits)
    output_size: int = 1  # regression targets, or number of classes
    readout: str = "last"  # "last": one output per sequence; "all": one per time step
    proj_size: int = 0  # LSTM only: project h to this width (0 = off)
    peephole: bool = False  # LSTM only: gates also see the cell state (no fused torch kernel: slower training)
    normalize: bool = False  # inputs are standardised in the model ((x - mean) / std, buffers set from training data)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), {"str": str, "int": int, "bool": bool, "float": (int, float)}[f.type]
            if not isinstance(value, want) or (f.type == "int" and isinstance(value, bool)):
                raise ConfigError(f"model config {f.name} must be {f.type}; got {value!r}")
        get_cell(self.cell)
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")
        if self.readout not in READOUTS:
            raise ConfigError(f"unknown readout {self.readout!r}; choose one of: {', '.join(READOUTS)}")
        for name in ("input_size", "hidden_size", "num_layers", "output_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.proj_size and (self.cell != "lstm" or not 0 < self.proj_size < self.hidden_size):
            raise ConfigError("proj_size needs cell 'lstm' and 0 < proj_size < hidden_size")
        if self.peephole and self.cell != "lstm":
            raise ConfigError(f"peephole needs cell 'lstm'; got cell {self.cell!r}")
        for name, most in (("num_layers", MAX_LAYERS), ("hidden_size", MAX_WIDTH), ("input_size", MAX_WIDTH)):
            if int(getattr(self, name)) > most:
                raise ConfigError(f"{name} {getattr(self, name)} is over edgernn's bound of {most}")
        gib = self.parameter_count() * 4 / 2**30
        if gib > MAX_WEIGHTS_GIB:
            raise ConfigError(
                f"this model would hold {self.parameter_count():,} parameters ({gib:.1f} GiB of fp32 weights, before "
                f"training state); edgernn's bound is {MAX_WEIGHTS_GIB} GiB: use fewer or narrower layers"
            )

    def parameter_count(self) -> int:
        """The recurrent stack's and the head's parameters, computed from the sizes (nothing is allocated)."""
        gates = get_cell(self.cell).gates
        h, p, d = self.hidden_size, self.state_size, self.num_directions
        total = 0
        for layer in range(self.num_layers):
            inp = self.input_size if layer == 0 else p * d
            total += d * (gates * h * (inp + p) + 2 * gates * h + (h * p if self.proj_size else 0))
        return total + (p * d + 1) * self.output_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        return self.proj_size or self.hidden_size


class RecurrentModel(nn.Module):
    """x (batch, time, features) [+ lengths (batch,)] -> (batch, outputs) or (batch, time, outputs).

    With ``readout='last'`` the output is read from the final state of the top layer (both directions when
    bidirectional), which with ``lengths`` is each sequence's last valid step.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.rnn = make_layer(
            c.cell,
            c.input_size,
            c.hidden_size,
            num_layers=c.num_layers,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            batch_first=True,
            proj_size=c.proj_size,
            peephole=c.peephole,
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.state_size * c.num_directions, c.output_size)
        # normalize: buffers, so saved in the checkpoint and constants in every export; devices feed raw inputs
        # and read outputs in the data's own units
        if c.normalize:
            self.register_buffer("input_mean", torch.zeros(c.input_size))
            self.register_buffer("input_std", torch.ones(c.input_size))
        if self._scales_output:
            self.register_buffer("output_mean", torch.zeros(c.output_size))
            self.register_buffer("output_std", torch.ones(c.output_size))

    @property
    def _scales_output(self) -> bool:
        return self.config.normalize and self.config.head == "regression"

    def set_normalization(self, mean: Any, std: Any, output_mean: Any = None, output_std: Any = None) -> None:
        """Set the per-feature statistics the model standardises its inputs with and, for regression, those its
        outputs are scaled back with (``normalize`` models only)."""
        if not self.config.normalize:
            raise ConfigError("this model was built without normalize=True; it has no input statistics to set")
        c = self.config
        with torch.no_grad():
            self.input_mean.copy_(_stat(mean, c.input_size, "input mean"))
            self.input_std.copy_(_stat(std, c.input_size, "input std", positive=True))
            if self._scales_output and output_mean is not None:
                self.output_mean.copy_(_stat(output_mean, c.output_size, "output mean"))
                self.output_std.copy_(_stat(output_std, c.output_size, "output std", positive=True))

    def normalization(self) -> dict[str, list[float]] | None:
        """The statistics as plain lists, or None for a model that takes its inputs as they are."""
        if not self.config.normalize:
            return None
        out = {"mean": self.input_mean.tolist(), "std": self.input_std.tolist()}
        if self._scales_output:
            out |= {"output_mean": self.output_mean.tolist(), "output_std": self.output_std.tolist()}
        return out

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.config.normalize:
            x = (x - self.input_mean) / self.input_std
        y, state = self.rnn(x, None, lengths)
        if self.config.readout == "all":
            out = self.head(self.drop(y))
        else:
            h = state[0] if isinstance(state, tuple) else state
            d = self.config.num_directions
            last = torch.cat([h[-d + i] for i in range(d)], dim=-1) if d > 1 else h[-1]
            out = self.head(self.drop(last))
        if self._scales_output:
            out = out * self.output_std + self.output_mean
        return out


def _stat(values: Any, n: int, what: str, positive: bool = False) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() != n:
        raise ConfigError(f"the {what} needs {n} value(s); got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
        raise ConfigError(f"the {what} must be finite{' and above zero' if positive else ''}")
    return t


def build_model(config: ModelConfig) -> RecurrentModel:
    return RecurrentModel(config)
