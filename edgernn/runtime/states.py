"""Recurrent state for streams: which graph inputs and outputs carry it, and where streams keep it.

``StatePair`` / ``parse_state`` name a state (``h_in:h_out:2x1x64``), ``resolve_states`` checks the pairs against
the graph (or reads them from the manifest), and ``StatePool`` holds every stream's state buffers in pages so
that a batched call moves them with one vectorised copy. numpy only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFormatError
from .model import Model


@dataclass(frozen=True)
class StatePair:
    """One recurrent state: the graph input it enters by, the graph output it leaves by, and its initial shape
    for one stream (the batch axis, if the model has one, is 1 there, even where the graph fixes it to the file's
    batch N: a ``--batch N`` export steps N streams per call)."""

    input: str
    output: str
    shape: tuple[int, ...]
    batch_axis: int | None = None  # None: read from the graph (the state input's dynamic axis)
    init: str = "zeros"


def parse_state(text: str) -> StatePair:
    """``IN:OUT:SHAPE`` as the CLI takes it, e.g. ``h_in:h_out:2x1x64``; write the batch axis as ``b``
    (``2xbx64``) when the graph does not say which axis it is."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"state {text!r} must be IN:OUT:SHAPE, e.g. h_in:h_out:2x1x64 (b marks the batch axis)")
    name_in, name_out, dims = parts
    shape: list[int] = []
    batch_axis = None
    for i, d in enumerate(dims.lower().split("x")):
        if d in ("b", "batch"):
            if batch_axis is not None:
                raise ConfigError(f"state {text!r} marks the batch axis twice")
            batch_axis = i
            shape.append(1)
        elif d.isdigit() and int(d) > 0:
            shape.append(int(d))
        else:
            raise ConfigError(f"state {text!r}: shape {dims!r} must be sizes joined by x, e.g. 2x1x64 or 2xbx64")
    return StatePair(name_in, name_out, tuple(shape), batch_axis)


@dataclass(frozen=True)
class State:
    input: str
    output: str
    shape: tuple[int, ...]  # one stream's
    batch_axis: int | None
    dtype: np.dtype[Any]
    out_index: int  # position among the session's outputs

    @property
    def row_shape(self) -> tuple[int, ...]:
        """One stream's shape without its batch axis."""
        return tuple(d for i, d in enumerate(self.shape) if i != self.batch_axis)


def resolve_states(model: Model, given: Sequence[StatePair | str] | None) -> list[State]:
    """The model's states: the pairs given (checked against the graph), else its manifest's; ModelFormatError
    that says how to name them when there are none."""
    ins, outs = model.graph_inputs, model.graph_outputs
    output_names = list(model.output_names)
    pairs: list[StatePair] = []
    if given:
        pairs = [parse_state(p) if isinstance(p, str) else p for p in given]
    elif model.manifest is not None and model.manifest.states:
        for s in model.manifest.states:
            if s.init != "zeros":
                raise ModelFormatError(f"state {s.input!r} starts from {s.init!r}; this edgernn knows only zeros")
            bad = [d for d in s.shape if isinstance(d, str) and d != "batch"]
            if bad:
                raise ModelFormatError(f"state {s.input!r} has dynamic axes other than batch: {bad}")
            axis = s.shape.index("batch") if "batch" in s.shape else None
            pairs.append(StatePair(s.input, s.output, tuple(1 if d == "batch" else int(d) for d in s.shape), axis))
    else:
        what = "its manifest has no states" if model.manifest else "it has no edgernn manifest"
        raise ModelFormatError(
            f"cannot stream this model: {what}. Export it with --strategy step, or name its state input -> output "
            f"pairs and initial shapes (Python: states=['h_in:h_out:2x1x64']; CLI: --state h_in:h_out:2x1x64). "
            f"Its inputs: {', '.join(ins)}; outputs: {', '.join(outs)}"
        )
    seen: set[str] = set()
    out: list[State] = []
    for p in pairs:
        if p.input not in ins:
            raise ConfigError(f"state input {p.input!r} is not an input of this model; inputs: {', '.join(ins)}")
        if p.output not in outs:
            raise ConfigError(f"state output {p.output!r} is not an output of this model; outputs: {', '.join(outs)}")
        if p.input in seen or p.output in seen:
            raise ConfigError(f"state {p.input}:{p.output} is named twice")
        seen |= {p.input, p.output}
        if p.init != "zeros":
            raise ConfigError(f"state {p.input!r}: initial value {p.init!r} is not supported; use zeros")
        graph = ins[p.input].shape
        if len(graph) != len(p.shape):
            raise ConfigError(
                f"state {p.input!r} has {len(graph)} dimensions {_fmt(graph)} in the graph; got shape {p.shape}"
            )
        axis_b = p.batch_axis
        if axis_b is None:
            dynamic = [i for i, d in enumerate(graph) if isinstance(d, str)]
            axis_b = dynamic[0] if len(dynamic) == 1 else None
        if axis_b is not None and p.shape[axis_b] != 1:
            raise ConfigError(f"state {p.input!r}: the batch axis ({axis_b}) of one stream's state must be 1")
        for axis, (want, got) in enumerate(zip(graph, p.shape, strict=True)):
            # the batch axis may be fixed in the graph (a static-batch export, --batch N): the file's batch, while
            # one stream's state has batch 1 there
            if isinstance(want, int) and want != got and axis != axis_b:
                raise ConfigError(f"state {p.input!r} axis {axis} is {want} in the graph; got shape {p.shape}")
        dtype = np.dtype(ins[p.input].dtype)
        out.append(State(p.input, p.output, p.shape, axis_b, dtype, output_names.index(p.output)))
    return out


class StatePool:
    """Where the streams of one model keep their states: pages of slots, each slot two buffers per state.

    Pages never move or grow, so a stream's buffers (views into a page) stay valid for its bound IOBindings,
    and a batched call over the streams of one page gathers and scatters each state with one fancy-indexing
    copy instead of one copy per stream (64 streams: ~45 us instead of ~150 us on LSTM H128 x2; spread over
    several pages it costs a few masked copies per page, so pages are large). Each page array stays under 2 MiB:
    zeroed allocations that large are mapped lazily by the OS, so untouched slots cost address space, not
    memory, and numpy only asks for transparent huge pages from 4 MiB, where touching one slot would commit
    2 MiB. A device with one stream thus does not pay for a server's page. Slots of dead streams are reused.
    """

    PAGE_BYTES = 1 << 21
    MAX_SLOTS = 256

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]) -> None:
        self.shapes, self.dtypes = list(shapes), list(dtypes)
        biggest = max((int(np.prod(sh)) * dt.itemsize for sh, dt in zip(shapes, dtypes, strict=True)), default=1)
        self.slots = max(8, min(self.MAX_SLOTS, self.PAGE_BYTES // (2 * biggest)))
        self.pages: list[list[np.ndarray]] = []  # page -> state -> (2, slots, *shape)
        self.flat: list[list[np.ndarray]] = []  # the same, viewed as (2 * slots, *shape): one index per buffer
        self.free: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[int, int, list[list[np.ndarray]]]:
        with self.lock:
            if not self.free:
                page = len(self.pages)
                arrays = [np.zeros((2, self.slots, *sh), dt) for sh, dt in zip(self.shapes, self.dtypes, strict=True)]
                self.flat.append([a.reshape(2 * self.slots, *a.shape[2:]) for a in arrays])
                self.pages.append(arrays)
                self.free.extend((page, k) for k in reversed(range(self.slots)))
            page, slot = self.free.pop()
        arrays = self.pages[page]
        bufs = [[a[cur, slot] for a in arrays] for cur in (0, 1)]
        for a in arrays:
            a[:, slot] = 0  # a reused slot holds a dead stream's state
        return page, slot, bufs

    def give(self, page: int, slot: int) -> None:
        with self.lock:
            self.free.append((page, slot))

    def where(self, pages: np.ndarray, slots: np.ndarray, curs: np.ndarray) -> list[tuple[int, Any, np.ndarray]]:
        """Per page holding some of the streams: (page, which of the streams, their rows in the page's flat
        (2 * slots, *shape) view)."""
        rows = curs * self.slots + slots
        first = int(pages[0])
        if (pages == first).all():  # the common case: one page, no masks
            return [(first, slice(None), rows)]
        out = []
        for page in np.unique(pages):
            mask = pages == page
            out.append((int(page), mask, rows[mask]))
        return out

    def gather(self, j: int, where: list[tuple[int, Any, np.ndarray]]) -> np.ndarray:
        """State ``j`` of the streams, stacked in their order: (n, *shape)."""
        if len(where) == 1:
            page, _, rows = where[0]
            return np.take(self.flat[page][j], rows, axis=0)
        n = sum(len(w[2]) for w in where)
        out = np.empty((n, *self.shapes[j]), self.dtypes[j])
        for page, mask, rows in where:
            out[mask] = np.take(self.flat[page][j], rows, axis=0)
        return out

    def scatter(self, j: int, where: list[tuple[int, Any, np.ndarray]], values: np.ndarray) -> None:
        for page, mask, rows in where:
            self.flat[page][j][rows] = values[mask]


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
