"""Which axis of a tensor is the batch and which the time, for models with and without an edgernn manifest.

edgernn's manifest names them (``"batch"``, ``"time"``). Other models are read from their graph's symbolic dim
names (``B``, ``batch_size``, ``T``, ``seq_len`` ...) or told by the user as a layout string such as ``btf``
(batch, time, features) or ``tbf`` (time-major, as ONNX's own recurrent ops take it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError

BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "b", "n", "bs", "num_streams", "streams"})
TIME_NAMES = frozenset(
    {"time", "t", "seq", "seq_len", "seqlen", "sequence", "sequence_length", "length", "len", "steps", "frames"}
)


@dataclass(frozen=True)
class Axes:
    rank: int
    batch: int | None  # None: the tensor has no batch axis (one stream per call)
    time: int | None  # None: one step per call, no time axis

    def without_batch(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.rank) if i != self.batch)


def parse_layout(text: str, rank: int, name: str = "input") -> Axes:
    """``btf`` -> batch 0, time 1; one letter per axis: b batch, t time, anything else another axis."""
    text = text.strip().lower()
    if len(text) != rank:
        raise ConfigError(f"layout {text!r} has {len(text)} letters but {name!r} has {rank} dimensions")
    if text.count("b") > 1 or text.count("t") > 1:
        raise ConfigError(f"layout {text!r} names the batch or time axis twice; use b and t at most once each")
    return Axes(rank, text.index("b") if "b" in text else None, text.index("t") if "t" in text else None)


def infer_axes(
    shape: Sequence[int | str],
    *,
    batch_names: Iterable[str] = (),
    time_names: Iterable[str] = (),
) -> Axes | None:
    """Batch and time axes from dim names, or None when they cannot be told apart.

    A rank-3 tensor whose batch (or time) axis is known by name gets the other non-feature axis as its time
    (or batch) axis: (batch, chunk, features) with a fixed chunk is how the ``step`` strategy exports.
    """
    bn = {n.lower() for n in batch_names} | BATCH_NAMES
    tn = {n.lower() for n in time_names} | TIME_NAMES
    rank = len(shape)
    batch = _find(shape, bn)
    time = _find(shape, tn - bn)
    if time == batch:
        time = None
    if rank == 3:
        rest = [i for i in (0, 1) if i not in (batch, time)]
        if batch is not None and time is None and len(rest) == 1:
            time = rest[0]
        elif time is not None and batch is None and len(rest) == 1:
            batch = rest[0]
        elif batch is None and time is None:
            return None
    elif rank == 2 and batch is None and time is None:
        batch = 0  # (batch, features) is the universal 2-D convention
    elif rank >= 4 and batch is None:
        return None
    return Axes(rank, batch, time)


def _find(shape: Sequence[int | str], names: set[str]) -> int | None:
    hits = [i for i, d in enumerate(shape) if isinstance(d, str) and d.lower() in names]
    return hits[0] if len(hits) == 1 else None
