"""Streaming: many live sequences (audio frames, sensor samples, tokens) over one loaded stateful model.

A stateful model takes its recurrent state as inputs and returns the next state as outputs: edgernn's ``step``
strategy exports such models (the manifest names the state pairs); any other model works when the caller names
its state input -> output pairs and the initial state's shape.

* ``StreamingModel`` owns the onnxruntime session; ``Stream`` objects made from it each keep their own state,
  start from the initial state (zeros, batch 1), take one step or one chunk per call, and can ``reset()``.
* ``StreamingModel.step_many`` serves many streams with one call: their states are stacked along the batch
  axis, the model runs once, and the results are split back (what sherpa-onnx does for streaming ASR).
* Streams are safe to use from several threads: onnxruntime's ``run`` is thread-safe on one session, and each
  stream's state is guarded by its own lock (``step_many`` takes the locks of all its streams, in a fixed order).
* The hot path of ``Stream.step`` runs on pre-bound buffers (IOBinding): the frame is copied into a bound input
  buffer and the state ping-pongs between two bound buffer sets, so nothing is allocated per step apart from the
  returned output. Measured on LSTM H128 x2, batch 1, one thread: 28 us per bound call against 36 us for
  ``session.run`` (docs/benchmarks.md).
* States live in pages of slots shared by the model's streams (``StatePool``), so a batched call gathers and
  scatters each state with one vectorised copy rather than one per stream.
* Inputs that are neither states nor the data input (a sample rate, a temperature) are constants: given once
  (``constants={"sr": 16000}``, CLI ``--const sr=16000``) and fed unchanged to every call, batched or not. A
  constant cannot have a dynamic batch axis: one value would have to stand for every stream of a batched call,
  so such an input is refused rather than tiled.
* The data input is floating point (frames of features) or integer (token ids, e.g. before an Embedding): a
  token stream steps one id (a scalar) or a chunk of ids ``(K,)``; floats are not rounded into ids.
* A file whose graph fixes the batch to N (``edgernn export --batch N``: NNAPI and CoreML take fixed shapes) is
  streamed as any other: each stream's state and frame have batch 1 (``StreamingModel.batch`` is N), and
  ``step_many`` over exactly N streams, or ``group(N)``, runs them in one call. A lone ``Stream.step`` runs its
  stream as row 0 of a call of N rows, the other rows a zeros frame from a zeros state and their outputs
  discarded: correct, unbound, and N times the arithmetic, so serve N streams together where you can.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, ModelFormatError
from ..manifest import TensorSpec
from .layout import BATCH_NAMES, Axes, infer_axes, parse_layout
from .model import Model
from .states import StatePair, StatePool, resolve_states
from .validate import check_ids

isnan = math.isnan  # a module global: one lookup on the hot path instead of two


@dataclass(frozen=True)
class _Output:
    name: str
    index: int  # position among the session's outputs
    axes: Axes | None  # None: batch and time axes unknown (returned as they come, not split by stream)


class StreamingModel:
    """A stateful model shared by many ``Stream`` objects.

    >>> sm = StreamingModel("step.onnx")                        # an edgernn `step` export: states from the manifest
    >>> s = sm.stream(); y = s.step(frame)                      # frame: (features,) or a chunk (K, features)
    >>> ys = sm.step_many([s1, s2, s3], [f1, f2, f3])           # one onnxruntime call for three streams
    >>> other = StreamingModel("their.onnx", states=["initial_h:Y_h:1xbx64"], layout="tbf")
    >>> vad = StreamingModel("vad.onnx", states=["state:stateN:2xbx128"], constants={"sr": 16000})

    ``model`` is a path, bytes, or a loaded ``Model`` (whose session is shared). ``constants`` gives the value of
    each input that is neither a state nor the data input, by name (converted to the input's dtype and shape; a
    plain number for a scalar input); the keyword arguments after it are those of ``Model`` (provider, fallback,
    threads, ...).
    """

    def __init__(
        self,
        model: Model | str | os.PathLike[str] | bytes,
        *,
        states: Sequence[StatePair | str] | None = None,
        layout: str | None = None,
        constants: Mapping[str, Any] | None = None,
        **session: Any,
    ) -> None:
        if isinstance(model, Model) and session:
            raise ConfigError(f"{', '.join(session)}: session options go to Model(...), not with a loaded Model")
        self.model = model if isinstance(model, Model) else Model(model, **session)
        self.session = self.model.session
        self._ro = self.model.run_options  # every call's RunOptions (see Model.run_options)
        self._output_names = list(self.model.output_names)
        self.states = resolve_states(self.model, states)
        given = dict(constants or {})
        self._check_constant_names(given)
        self.data: TensorSpec = self._pick_data(given)
        self.dtype = np.dtype(self.data.dtype)
        # token ids index the Embedding's table: 0..limit-1 (None: the graph does not show a table)
        self.id_limit: int | None = self.model.index_limits.get(self.data.name)
        if self.dtype.kind not in "fiu":
            raise ModelFormatError(
                f"data input {self.data.name!r} is {self.dtype}; streams take floating point frames or integer ids"
            )
        graph_data = self.model.graph_inputs[self.data.name].shape
        if graph_data and len(graph_data) != len(self.data.shape):
            raise ModelFormatError(
                f"the manifest gives input {self.data.name!r} {len(self.data.shape)} dimensions "
                f"{_fmt(self.data.shape)} but the graph has {len(graph_data)} {_fmt(graph_data)}: the manifest does "
                "not describe this graph; export the model again"
            )
        # the graph's fixed sizes win over a manifest that still names an axis (e.g. "time" fixed to the chunk)
        self.shape: list[int | str] = (
            [g if isinstance(g, int) else d for d, g in zip(self.data.shape, graph_data, strict=True)]
            if graph_data
            else list(self.data.shape)
        )
        batch_dims = self._state_batch_names()
        if layout is not None:
            axes = parse_layout(layout, len(self.data.shape), self.data.name)
        else:
            found = infer_axes(self.data.named_shape(), batch_names=batch_dims) or infer_axes(
                graph_data, batch_names=batch_dims
            )
            if found is None:  # the model does not say; the caller can (an option): exit 2, as for options
                raise ConfigError(
                    f"cannot tell the batch axis from the time axis of {self.data.name!r} "
                    f"(shape {_fmt(self.data.shape)}); name them, e.g. layout='btf' or 'tbf' (--layout)"
                )
            axes = found
        self.axes = axes
        t = self.shape[axes.time] if axes.time is not None else 1
        # steps per call: fixed by the graph, or None when the time axis is dynamic (any chunk length)
        self.chunk: int | None = t if isinstance(t, int) else None
        feat = self.shape[-1] if axes.rank and (axes.rank - 1) not in (axes.batch, axes.time) else None
        self.features: int | None = feat if isinstance(feat, int) else None
        self.batch: int | None = self._fixed_batch(graph_data)
        named = self.data.named_shape()
        bname = named[axes.batch] if axes.batch is not None else None
        tname = named[axes.time] if axes.time is not None else None
        batchy = {n.lower() for n in [*batch_dims, *([bname] if isinstance(bname, str) else [])]} | BATCH_NAMES
        # each constant's value, in its input's dtype and shape; read-only: it is bound once and fed to every call
        self.constants: dict[str, np.ndarray] = {k: self._constant(k, v, batchy) for k, v in given.items()}
        self._constant_values: dict[str, Any] | None = None  # the same as OrtValues, for the bound hot path
        state_outputs = {s.output for s in self.states}
        self.outputs: list[_Output] = []
        for i, name in enumerate(self._output_names):
            if name in state_outputs:
                continue
            spec = next((o for o in self.model.outputs if o.name == name), self.model.graph_outputs[name])
            # outputs share the data input's dim names (B, T) in most graphs; edgernn's say batch/time
            found_axes = infer_axes(
                spec.named_shape(),
                batch_names=[bname] if isinstance(bname, str) else [],
                time_names=[tname] if isinstance(tname, str) else [],
            )
            self.outputs.append(_Output(name, i, found_axes))
        if not self.outputs:
            raise ModelFormatError("this model returns only its states; a streaming model needs an output as well")
        self.primary = self.outputs[0].name
        # user frame shape -> the model's input shape for one stream (validated once per shape)
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._zeros: dict[int, np.ndarray] = {}
        self._pool = StatePool([st.shape for st in self.states], [st.dtype for st in self.states])

    # -- construction helpers ------------------------------------------------------------------------------------

    def _check_constant_names(self, given: Mapping[str, Any]) -> None:
        inputs = self.model.graph_inputs
        state_inputs = {s.input for s in self.states}
        for name in given:
            if name not in inputs:
                raise ConfigError(
                    f"constant {name!r} is not an input of this model; its inputs: {', '.join(inputs)}"
                    + (f" (states: {', '.join(sorted(state_inputs))})" if state_inputs else "")
                )
            if name in state_inputs:
                raise ConfigError(f"{name!r} is a state input (it carries the recurrent state), not a constant")

    def _pick_data(self, given: Mapping[str, Any]) -> TensorSpec:
        """The data input: the one input left besides the states and constants. Where several are left, the one
        that shares the states' batch axis (else has a dynamic axis, else the most axes) is taken as the data, and
        the others must be given as constants."""
        state_inputs = {s.input for s in self.states}
        rest = [s for s in self.model.inputs if s.name not in state_inputs and s.name not in given]
        if not rest:
            what = f"its inputs are states ({', '.join(sorted(state_inputs))})"
            if given:
                what += f" and constants ({', '.join(given)})"
            raise (ConfigError if given else ModelFormatError)(
                f"a streaming model takes one data input besides its states and constants; {what}"
            )
        if len(rest) == 1:
            return rest[0]
        batch_names = set(self._state_batch_names())

        def score(s: TensorSpec) -> tuple[bool, bool, int]:
            graph = self.model.graph_inputs[s.name].shape
            shares = any(isinstance(d, str) and d in batch_names for d in graph)
            return shares, any(isinstance(d, str) for d in graph), len(graph)

        best = max(score(s) for s in rest)
        top = [s for s in rest if score(s) == best]
        if len(top) > 1:
            raise ConfigError(
                f"this model takes {', '.join(s.name for s in rest)} besides its states, and a stream feeds one data "
                "input: give each of the others as a constant, constants={'NAME': ...} (CLI: --const NAME=VALUE)"
            )
        data = top[0]
        missing = [s for s in rest if s is not data]
        spec = self.model.graph_inputs[missing[0].name]
        raise ConfigError(
            f"input {spec.name!r} ({spec.dtype}, shape {_fmt(spec.shape)}) is neither a state nor the data input "
            f"({data.name!r}): give its value, constants={{{', '.join(repr(s.name) + ': ...' for s in missing)}}} "
            f"(CLI: {' '.join('--const ' + s.name + '=VALUE' for s in missing)})"
        )

    def _constant(self, name: str, value: Any, batch_names: set[str]) -> np.ndarray:
        """``value`` as constant input ``name``: the input's dtype (integers stay whole: no rounding, no wrap
        around) and shape (a scalar for a () input; a size-1 value fills any all-ones shape)."""
        graph = self.model.graph_inputs[name]
        spec = next((s for s in self.model.inputs if s.name == name), graph)
        for axis, (d, n) in enumerate(zip(graph.shape, spec.named_shape(), strict=True)):
            if isinstance(d, str) and isinstance(n, str) and n.lower() in batch_names:
                raise ConfigError(
                    f"input {name!r} {_fmt(graph.shape)} has a batch axis ({axis}, {n!r}); a constant is fed "
                    "unchanged to every call, batched step_many calls included, so it cannot have one (it would "
                    "be one value for every stream of a call, or need a value per stream)"
                )
        a = np.asarray(value)
        want = np.dtype(graph.dtype)
        if a.dtype == object and a.size and all(type(v) is int for v in a.flat):  # Python ints beyond int64
            if want.kind in "iu":
                info = np.iinfo(want)
                raise InputError(f"constant {name!r} has values outside {want}'s range {info.min}..{info.max}")
            a = a.astype(np.float64)
        if a.dtype.kind not in "biuf":
            raise InputError(f"constant {name!r} must be numbers ({want}); got {a.dtype} {value!r:.80}")
        if want.kind == "b":
            if a.dtype.kind != "b" and not np.isin(a, (0, 1)).all():
                raise InputError(f"constant {name!r} is bool: give True/False or 1/0; got {value!r:.80}")
        elif want.kind in "iu":
            if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
                raise InputError(
                    f"constant {name!r} is {want}: whole numbers only (edgernn does not round); got {value!r:.80}"
                )
            info = np.iinfo(want)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise InputError(f"constant {name!r} has values outside {want}'s range {info.min}..{info.max}")
            if name in self.model.index_limits:
                check_ids(name, a, self.model.index_limits[name], "constant")
        elif want.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                if not np.isfinite(a.astype(want)).all():
                    raise InputError(f"constant {name!r} must be finite {want} values; got {value!r:.80}")
        else:
            raise ModelFormatError(f"input {name!r} is {want}; edgernn feeds constants of numbers only")
        shape = graph.shape
        if a.ndim != len(shape):
            fixed = [d for d in shape if isinstance(d, int)]
            if len(fixed) == len(shape) and a.size == math.prod(fixed):
                a = a.reshape(fixed)
            else:
                raise InputError(f"constant {name!r} must have shape {_fmt(shape)}; got {a.shape}")
        for d, got in zip(shape, a.shape, strict=True):
            if (isinstance(d, int) and d != got) or got == 0:
                raise InputError(f"constant {name!r} must have shape {_fmt(shape)}; got {a.shape}")
        out = np.array(a, dtype=want, order="C")  # a copy; np.ascontiguousarray would make a scalar 1-D
        out.flags.writeable = False
        return out

    def _ort_constants(self) -> dict[str, Any]:
        """The constants as OrtValues (made once; they share the read-only arrays' memory)."""
        if self._constant_values is None:
            import onnxruntime as ort

            self._constant_values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self.constants.items()}
        return self._constant_values

    def _fixed_batch(self, graph_data: Sequence[int | str]) -> int | None:
        """The file's batch where its graph fixes it (a static-batch export, ``--batch N``: NNAPI, CoreML), from the
        data input's and the states' batch axes (else the manifest's); None where it is dynamic."""
        fixed: set[int] = set()
        if self.axes.batch is not None and len(graph_data) == self.axes.rank:
            d = graph_data[self.axes.batch]
            if isinstance(d, int):
                fixed.add(d)
        for st in self.states:
            if st.batch_axis is not None:
                d = self.model.graph_inputs[st.input].shape[st.batch_axis]
                if isinstance(d, int):
                    fixed.add(d)
        if len(fixed) > 1:
            sizes = ", ".join(map(str, sorted(fixed)))
            raise ModelFormatError(
                f"the graph fixes the batch of its data and states to different sizes ({sizes}); it cannot be "
                "streamed: export it again"
            )
        if fixed:
            return fixed.pop()
        return self.model.manifest.batch if self.model.manifest is not None else None

    def _state_batch_names(self) -> list[str]:
        names = []
        for s in self.states:
            if s.batch_axis is not None:
                d = self.model.graph_inputs[s.input].shape[s.batch_axis]
                if isinstance(d, str):
                    names.append(d)
        return names

    # -- public API ----------------------------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.model.provider

    def stream(self) -> Stream:
        """A new stream, starting from the initial state."""
        return Stream(self)

    def group(self, n: int) -> StreamGroup:
        """``n`` new streams that advance together, one call per step on pre-bound batch buffers (see
        ``StreamGroup``): for streams that stay together, faster than ``step_many`` over separate streams.
        ``n`` is at most ``StreamGroup.MAX_MEMBERS`` (65,536), and the group's state buffers at most
        ``StreamGroup.MAX_STATE_BYTES`` (4 GiB); a larger group is refused (ConfigError) before any allocation."""
        return StreamGroup(self, n)

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """The state a new stream starts from (zeros), for ``batch`` streams stacked along the batch axis."""
        out = {}
        for s in self.states:
            shape = list(s.shape)
            if s.batch_axis is not None:
                shape[s.batch_axis] = batch
            elif batch != 1:
                raise ModelFormatError(f"state {s.input!r} has no batch axis; streams cannot be batched")
            out[s.input] = np.zeros(shape, s.dtype)
        return out

    def step_many(self, streams: Sequence[Stream], frames: Sequence[Any]) -> list[np.ndarray]:
        """Advance each stream by its frame (or chunk) with one onnxruntime call; returns each stream's primary
        output, as ``Stream.step`` would. Frames must all have one shape; the constants go with the call as they
        are (one value for every stream)."""
        if not streams and not frames:
            return []
        if self._one_at_a_time(streams, frames):
            return [s.step(f) for s, f in zip(streams, frames, strict=True)]
        results = self._run_many(streams, frames)
        o = self.outputs[0]
        return list(np.moveaxis(results[o.index], _split_axis(o), 0))

    def step_many_all(self, streams: Sequence[Stream], frames: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        """``step_many`` returning every (non-state) output of each stream by name."""
        if not streams and not frames:
            return []
        if self._one_at_a_time(streams, frames):
            return [s.step_all(f) for s, f in zip(streams, frames, strict=True)]
        results = self._run_many(streams, frames)
        per: list[dict[str, np.ndarray]] = [{} for _ in streams]
        for o in self.outputs:
            rows = np.moveaxis(results[o.index], _split_axis(o), 0)
            for d, row in zip(per, rows, strict=True):
                d[o.name] = row
        return per

    def _one_at_a_time(self, streams: Sequence[Stream], frames: Sequence[Any]) -> bool:
        """A model exported with its batch fixed (NNAPI, CoreML) cannot stack streams: at batch 1 each stream
        gets its own call; at batch N exactly N streams go in one call."""
        fixed = self.batch
        if fixed is None or len(streams) == fixed:
            return False
        if fixed == 1:
            if len(streams) != len(frames):
                raise InputError(f"{len(streams)} streams but {len(frames)} frames; give one frame per stream")
            return True
        raise InputError(
            f"this model was exported with a fixed batch of {fixed}: step exactly {fixed} streams at once (or one "
            f"stream at a time with Stream.step, which runs it alone in a call of {fixed} rows)"
        )

    def _run_many(self, streams: Sequence[Stream], frames: Sequence[Any]) -> list[np.ndarray]:
        """Stack the streams' frames and states along the batch axis, run once, write each state back."""
        n = len(streams)
        if n != len(frames):
            raise InputError(f"{n} streams but {len(frames)} frames; give one frame (or chunk) per stream")
        if self.axes.batch is None or any(s.batch_axis is None for s in self.states):
            raise ModelFormatError(
                "this model's data or states have no batch axis, so streams cannot be stacked; call step() on each, "
                "or name the batch axis (b in the state shape, e.g. 2xbx64, and the layout)"
            )
        for o in self.outputs:
            _split_axis(o)
        if any(s.model is not self for s in streams):
            raise ConfigError("every stream of a batched call must come from this StreamingModel")
        # one lock order for every caller (by id), so two overlapping batched calls cannot deadlock
        ordered = sorted(streams, key=id)
        if any(a is b for a, b in itertools.pairwise(ordered)):
            raise InputError("a stream appears twice in one batched call; its steps must run one after the other")
        feed = {self.data.name: self._as_batch(frames), **self.constants}
        pages = np.fromiter((s._page for s in streams), np.intp, n)
        slots = np.fromiter((s._slot for s in streams), np.intp, n)
        for s in ordered:
            s._lock.acquire()
        try:
            where = self._pool.where(pages, slots, np.fromiter((s._cur for s in streams), np.intp, n))
            for j, st in enumerate(self.states):
                b = st.batch_axis
                rows = self._pool.gather(j, where).reshape(n, *st.row_shape)  # batch axis (1) dropped
                feed[st.input] = np.ascontiguousarray(np.moveaxis(rows, 0, b))  # type: ignore[arg-type]
            results = self.session.run(self._output_names, feed, self._ro)
            for j, st in enumerate(self.states):
                b = st.batch_axis
                self._pool.scatter(j, where, np.expand_dims(np.moveaxis(results[st.out_index], b, 0), 1 + b))  # type: ignore[arg-type,operator]
            for s in streams:
                s.steps += 1
        finally:
            for s in ordered:
                s._lock.release()
        return results

    def _as_batch(self, frames: Sequence[Any]) -> np.ndarray:
        """Frames of several streams (one shape) as one batched data input, checked once."""
        try:
            a = np.asarray(frames)
        except ValueError:
            raise InputError("frames of one batched call must share a shape") from None
        a = self._convert(a)
        one = self._as_input(a[0])  # shape checks (and their error messages) are those of one stream
        if self.id_limit is not None:
            check_ids(self.data.name, a, self.id_limit)
        if self.dtype.kind == "f" and not self._finite(a.reshape(-1)):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise InputError(f"input {self.data.name!r} has {bad} non-finite value(s) (NaN or inf)")
        b = self.axes.batch
        rows = a.reshape((len(a), *(d for i, d in enumerate(one.shape) if i != b)))
        if b == 0:  # batch first: the frames are the batch as they stand (np.moveaxis alone costs ~3 us)
            return np.ascontiguousarray(rows)
        return np.ascontiguousarray(np.moveaxis(rows, 0, b))  # type: ignore[arg-type]

    def run_sequence(self, x: Any) -> dict[str, np.ndarray]:
        """Run whole sequences from the initial state, chunk by chunk; x is the data input with its full time
        axis (a multiple of the chunk). Outputs with a time axis are concatenated over the chunks; the others
        (e.g. last-step readouts) and the final states are those of the last chunk. Models without a time axis
        take x with an extra leading time axis, and their outputs get one."""
        a = self._convert(np.asarray(x))
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise InputError(f"input {self.data.name!r} has non-finite values (NaN or inf)")
        if self.id_limit is not None:
            check_ids(self.data.name, a, self.id_limit)
        stacked_time = self.axes.time is None
        t_axis = 0 if self.axes.time is None else self.axes.time
        rank = self.axes.rank + (1 if stacked_time else 0)
        if a.ndim != rank:
            raise InputError(
                f"input {self.data.name!r} must have {rank} dimensions {_fmt(self.data.shape)}"
                + (" with a leading time axis" if stacked_time else "")
                + f"; got shape {a.shape}"
            )
        total = a.shape[t_axis]
        k = 1 if stacked_time else (self.chunk or total)
        if total == 0 or total % k:
            raise InputError(
                f"sequence length {total} is not a whole number of chunks of {k} steps (the model's chunk)"
            )
        b_axis = self.axes.batch
        batch = 1 if b_axis is None else a.shape[b_axis + (1 if stacked_time else 0)]
        if batch == 0:  # onnxruntime aborts the process on an empty batch through its recurrent ops
            raise InputError(f"input {self.data.name!r} has shape {a.shape}: no sequences (batch 0)")
        state = self.initial_state(batch)
        outs: dict[str, list[np.ndarray]] = {o.name: [] for o in self.outputs}
        results: list[np.ndarray] = []
        for start in range(0, total, k):
            piece = a[start] if stacked_time else np.take(a, range(start, start + k), axis=t_axis)
            feed = {self.data.name: self._check_full(np.ascontiguousarray(piece)), **state, **self.constants}
            results = self.session.run(self._output_names, feed, self._ro)
            state = {st.input: results[st.out_index] for st in self.states}
            for o in self.outputs:
                outs[o.name].append(results[o.index])
        final: dict[str, np.ndarray] = {}
        for o in self.outputs:
            if stacked_time:
                final[o.name] = np.stack(outs[o.name])
            elif o.axes is not None and o.axes.time is not None:
                final[o.name] = np.concatenate(outs[o.name], axis=o.axes.time)
            else:
                final[o.name] = outs[o.name][-1]
        for st in self.states:
            final[st.output] = state[st.input]
        return final

    # -- input checks --------------------------------------------------------------------------------------------

    def _as_input(self, x: Any) -> np.ndarray:
        """One stream's frame or chunk as the model's data input (batch 1): checked, converted, reshaped."""
        a = x if type(x) is np.ndarray else np.asarray(x)
        if a.dtype != self.dtype:
            a = self._convert(a)
        target = self._shapes.get(a.shape)
        if target is None:
            target = self._target_shape(a.shape)
            if len(self._shapes) < 64:  # a stream sees one or two shapes; bound the cache against odd callers
                self._shapes[a.shape] = target
        if self.dtype.kind == "f" and not self._finite(a.reshape(-1)):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise InputError(f"input {self.data.name!r} has {bad} non-finite value(s) (NaN or inf)")
        if self.id_limit is not None:
            check_ids(self.data.name, a, self.id_limit)
        return a.reshape(target)

    def _convert(self, a: np.ndarray) -> np.ndarray:
        """``a`` in the data input's dtype: floats for a float input; integers for an integer one (token ids),
        checked against its range, never floats rounded into ids."""
        if a.dtype == self.dtype:
            return a
        name = self.data.name
        if self.dtype.kind == "f":
            if a.dtype.kind != "f":
                raise InputError(f"input {name!r} must be floating point ({self.dtype}); got {a.dtype}")
            return a.astype(self.dtype)
        if a.dtype.kind not in "iu":
            raise InputError(
                f"input {name!r} takes integers ({self.dtype}, e.g. token ids); got {a.dtype}: edgernn does not "
                "round values into ids, convert them yourself"
            )
        info = np.iinfo(self.dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):  # a cast would wrap around, silently
            raise InputError(f"input {name!r} has values outside {self.dtype}'s range {info.min}..{info.max}")
        return a.astype(self.dtype)

    def _finite(self, flat: np.ndarray) -> bool:
        """No NaN or inf in ``flat``: x . 0 is 0 for finite x and NaN otherwise, and cannot overflow; 4x faster
        than ``isfinite().all()`` on a frame, which matters on a 30 us step."""
        zeros = self._zeros.get(flat.size)
        if zeros is None:
            zeros = np.zeros(flat.size, self.dtype)
            if len(self._zeros) < 64:
                self._zeros[flat.size] = zeros
        return not math.isnan(flat.dot(zeros))

    def _target_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        ax, spec = self.axes, self.shape
        full = list(shape)
        if len(shape) == ax.rank:
            if ax.batch is not None and shape[ax.batch] != 1:
                raise InputError(
                    f"a stream takes one sequence, but {self.data.name!r} has batch {shape[ax.batch]} "
                    f"(shape {shape}); use step_many() to serve several streams in one call"
                )
        elif ax.batch is not None and len(shape) == ax.rank - 1:
            full.insert(ax.batch, 1)  # a chunk, or the frame of a model without a time axis
        elif ax.time is not None and len(shape) == ax.rank - 1 - (ax.batch is not None):
            # one frame: no time axis (and no batch axis where the model has one)
            if self.chunk not in (None, 1):
                raise InputError(
                    f"this model runs chunks of {self.chunk} steps per call; pass {self.chunk} frames at once "
                    f"(shape {_shape(self._frame_shape(self.chunk))}), not one frame of shape {shape}"
                )
            for i in sorted(i for i in (ax.batch, ax.time) if i is not None):
                full.insert(i, 1)
        else:
            raise InputError(
                f"a frame for {self.data.name!r} {_fmt(spec)} must be {self._frame_help()}; got shape {shape}"
            )
        for axis, (want, got) in enumerate(zip(spec, full, strict=True)):
            # the batch axis is 1 here, one stream's; a graph that fixes it to N (--batch N) takes N streams per call
            if isinstance(want, int) and want != got and axis != ax.batch:
                if axis == ax.time:
                    raise InputError(
                        f"this model runs chunks of {want} steps per call; got {got} steps (shape {shape})"
                    )
                what = "features" if axis == ax.rank - 1 else f"at axis {axis}"
                raise InputError(
                    f"input {self.data.name!r} expects {want} {what}; got {got} (shape {shape}); a stream takes "
                    f"{self._frame_help()}"
                )
        return tuple(full)

    def _check_full(self, a: np.ndarray) -> np.ndarray:
        for axis, (want, got) in enumerate(zip(self.shape, a.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"input {self.data.name!r} axis {axis} must be {want} {_fmt(self.data.shape)}; got {a.shape}"
                )
        return a

    def _frame_shape(self, steps: int | str | None) -> list[int | str]:
        """One stream's frame as the caller passes it: the data input without its batch axis, and without its time
        axis (``steps`` None) or with ``steps`` there (a chunk)."""
        out: list[int | str] = []
        for i, d in enumerate(self.shape):
            if i == self.axes.time:
                if steps is not None:
                    out.append(steps)
            elif i != self.axes.batch:
                out.append(d)
        return out

    def _frame_help(self) -> str:
        frame = _shape(self._frame_shape(None))
        if not self._frame_shape(None):
            frame += " (a scalar" + (", e.g. one token id)" if self.dtype.kind in "iu" else ")")
        if self.axes.time is None or self.chunk == 1:
            return f"one frame, shape {frame}"
        chunk = _shape(self._frame_shape(self.chunk or "steps"))
        if self.chunk is None:
            return f"one frame, shape {frame}, or a chunk, shape {chunk}"
        return f"a chunk, shape {chunk}"


class _Bound:
    """Pre-bound buffers of one stream for one input shape: the input, the outputs, and two IOBindings whose
    state inputs and outputs swap, so the state never moves between steps."""

    def __init__(
        self,
        sm: StreamingModel,
        bufs: list[list[np.ndarray]],
        x_shape: tuple[int, ...],
        results: list[np.ndarray],
        one: bool = True,
    ) -> None:
        import onnxruntime as ort

        def ov(a: np.ndarray) -> Any:
            return ort.OrtValue.ortvalue_from_numpy(a)

        self.x = np.zeros(x_shape, sm.dtype)
        # the frame's finiteness, checked on the bound buffer after the copy: x . 0 is NaN for NaN or inf
        self.flat = self.x.reshape(-1)
        self.flat_zeros = np.zeros(self.flat.size, sm.dtype)
        self.outs = [np.zeros_like(results[o.index]) for o in sm.outputs]
        # what a stream returns (copied): views of the output buffers without their batch axis (1); a group's
        # buffers keep it
        self.views = [
            _drop_batch(buf, _batch_of(o.axes)) if one else buf for o, buf in zip(sm.outputs, self.outs, strict=True)
        ]
        self.primary = self.views[0]
        x_val = ov(self.x)
        out_vals = [ov(b) for b in self.outs]
        constants = sm._ort_constants()
        self.io = []
        for cur in (0, 1):
            io = sm.session.io_binding()
            io.bind_ortvalue_input(sm.data.name, x_val)
            for name, value in constants.items():
                io.bind_ortvalue_input(name, value)
            for j, st in enumerate(sm.states):
                io.bind_ortvalue_input(st.input, ov(bufs[cur][j]))
                io.bind_ortvalue_output(st.output, ov(bufs[1 - cur][j]))
            for o, v in zip(sm.outputs, out_vals, strict=True):
                io.bind_ortvalue_output(o.name, v)
            self.io.append(io)


class Stream:
    """One live sequence over a ``StreamingModel``: its own state, advanced one step (or chunk) per call.

    On a file exported with a fixed batch of N > 1 (``--batch N``), ``step`` runs this stream alone as row 0 of a
    call of N rows (zeros frame and zeros state in the others, their outputs discarded), on the unbound path;
    ``StreamingModel.step_many`` over exactly N streams, or ``StreamingModel.group(N)``, fills every row."""

    def __init__(self, model: StreamingModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        # two buffer sets in the model's pool: the state is read from _buf[_cur] and the next one written to the
        # other; a new slot starts as zeros (the initial state)
        self._page, self._slot, self._buf = model._pool.take()
        weakref.finalize(self, model._pool.give, self._page, self._slot)
        self._cur = 0
        self._bound: dict[tuple[int, ...], _Bound] = {}
        # the hot path of a float frame whose shape was validated and bound: the caller's shape -> the bound
        # buffers and a view of their input in that shape (no reshape, no shape check per call)
        self._fast: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self._fast_dtype = model.dtype if model.dtype.kind == "f" else None  # token ids take the checked path
        self.steps = 0  # calls made since the last reset

    def step(self, x: Any) -> np.ndarray:
        """Advance by one frame ``(features,)`` or one chunk ``(K, features)`` (a token stream: one id, or ``(K,)``
        ids); returns the model's primary output for this stream (its batch axis removed), e.g. ``(K, outputs)``
        for a per-step readout."""
        # the dtype by identity: numpy's float32 is one object; an equal dtype that is another (a byte order
        # spelled out) takes the checked path below
        if type(x) is np.ndarray and x.dtype is self._fast_dtype:
            fast = self._fast.get(x.shape)
            if fast is not None:  # a shape seen and bound before: copy, check the copy, run
                view, dot, zeros, io, run, ro, primary = fast
                with self._lock:
                    view[...] = x  # same dtype and shape: a plain copy (np.copyto's dispatch costs ~0.3 us more)
                    if isnan(dot(zeros)):  # x . 0 is NaN for a NaN or inf anywhere in the copied frame
                        self._refuse(x)
                    cur = self._cur
                    run(io[cur], ro)
                    self._cur = cur ^ 1
                    self.steps += 1
                    return primary.copy()  # a copy: the bound buffer is overwritten by the next step
        sm = self.model
        a = sm._as_input(x)
        with self._lock:
            bound = self._bound.get(a.shape)
            if bound is None:
                return self._first_step(a)[0]
            self._remember(x, bound)
            np.copyto(bound.x, a)
            sm.session.run_with_iobinding(bound.io[self._cur], sm._ro)
            self._cur ^= 1
            self.steps += 1
            return bound.primary.copy()  # a copy: the bound buffer is overwritten by the next step

    def _remember(self, x: Any, bound: _Bound) -> None:
        """Take the hot path for frames like ``x`` (validated by ``_as_input`` and bound) from now on: what it needs
        is held in one tuple (bound methods included), because attribute lookups are a measurable part of a
        step that costs the bound call a few microseconds on top."""
        if type(x) is np.ndarray and x.dtype is self._fast_dtype and len(self._fast) < 8:
            run, io = _bound_call(self.model.session, bound.io)
            hot = (bound.x.reshape(x.shape), bound.flat.dot, bound.flat_zeros, io, run, self.model._ro, bound.primary)
            self._fast[x.shape] = hot

    def _refuse(self, x: np.ndarray) -> None:
        """The frame copied into the bound input is not finite: the checked path's error (the state, read from
        the other buffers, has not moved)."""
        self.model._as_input(x)  # raises InputError, naming how many values are NaN or inf
        raise InputError(f"input {self.model.data.name!r} has non-finite values (NaN or inf)")

    def step_all(self, x: Any) -> dict[str, np.ndarray]:
        """``step`` returning every (non-state) output by name."""
        sm = self.model
        a = sm._as_input(x)
        with self._lock:
            bound = self._bound.get(a.shape)
            if bound is None:
                values = self._first_step(a)
            else:
                np.copyto(bound.x, a)
                sm.session.run_with_iobinding(bound.io[self._cur], sm._ro)
                self._cur ^= 1
                self.steps += 1
                values = [v.copy() for v in bound.views]
        return dict(zip((o.name for o in sm.outputs), values, strict=True))

    def _first_step(self, a: np.ndarray) -> list[np.ndarray]:
        """The first call with an input shape (lock held): a plain run tells the output shapes, then this
        stream's buffers are bound for the next calls."""
        sm = self.model
        if sm.batch is not None and sm.batch > 1:
            return self._step_padded(a)
        results = _run_in_place(sm, a, self._buf[self._cur])
        if len(self._bound) < 8:  # a stream sees one or two chunk shapes; do not bind for every odd one
            self._bound[a.shape] = _Bound(sm, self._buf, a.shape, results)
        self.steps += 1
        return [_drop_batch(results[o.index], _batch_of(o.axes)) for o in sm.outputs]

    def _step_padded(self, a: np.ndarray) -> list[np.ndarray]:
        """One stream on a file whose batch is fixed to N > 1 (lock held): the stream is row 0 of one call of N
        rows, the other rows a zeros frame from a zeros state, their outputs discarded. Unbound, N times the
        arithmetic: ``step_many`` over N streams, or ``group(N)``, fills every row."""
        sm = self.model
        n = sm.batch or 1
        if sm.axes.batch is None or any(st.batch_axis is None for st in sm.states):
            raise ModelFormatError(
                f"this model's batch is fixed to {n}, but its data or states have no batch axis to put one stream "
                "in; name it (b in the state shape, e.g. 2xbx64, and the layout)"
            )
        split = [_split_axis(o) for o in sm.outputs]  # before the run: an error leaves the state where it was
        feed = {sm.data.name: _pad_rows(a, sm.axes.batch, n), **sm.constants}
        for st, buf in zip(sm.states, self._buf[self._cur], strict=True):
            feed[st.input] = _pad_rows(buf, st.batch_axis, n)  # type: ignore[arg-type]
        results = sm.session.run(sm._output_names, feed, sm._ro)
        for st, buf in zip(sm.states, self._buf[self._cur], strict=True):
            buf[...] = np.take(results[st.out_index], [0], axis=st.batch_axis)
        self.steps += 1
        return [np.take(results[o.index], 0, axis=axis) for o, axis in zip(sm.outputs, split, strict=True)]

    def reset(self) -> None:
        """Back to the initial state, as a new stream."""
        with self._lock:
            for buf in self._buf[self._cur]:
                buf.fill(0)
            self.steps = 0

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the current state, by state input name."""
        with self._lock:
            return {st.input: b.copy() for st, b in zip(self.model.states, self._buf[self._cur], strict=True)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Replace the state (e.g. restore a saved one); every state input must be given, with its shape."""
        sm = self.model
        names = {st.input for st in sm.states}
        if set(state) != names:
            raise InputError(f"a state needs exactly {', '.join(sorted(names))}; got {', '.join(sorted(state))}")
        arrs = []
        for st in sm.states:
            a = np.asarray(state[st.input])
            if a.shape != st.shape or a.dtype.kind != "f":
                raise InputError(
                    f"state {st.input!r} must be finite floats of shape {st.shape}; got {a.dtype} {a.shape}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                a = a.astype(st.dtype)  # checked after the cast: 1e39 is finite as float64, inf as float32
            if not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise InputError(
                    f"state {st.input!r} has {bad} value(s) that are not finite as {st.dtype} (NaN, inf, or beyond "
                    f"+-{np.finfo(st.dtype).max:g}); a state must be finite {st.dtype} values"
                )
            arrs.append(a)
        with self._lock:
            for buf, a in zip(self._buf[self._cur], arrs, strict=True):
                buf[...] = a


class StreamGroup:
    """``n`` streams that advance together: every ``step`` is one onnxruntime call on pre-bound buffers.

    The members' states live side by side in two batch-shaped buffers that swap roles each step (read one, write
    the other), the frames are copied into one bound input buffer and the outputs land in bound output buffers:
    nothing is stacked, gathered or scattered per call, which is what ``step_many`` pays for streams that come
    and go. For a server whose streams stay in one group (a fixed set of channels, a batch of sessions); member
    ``i`` restarts with ``reset(i)`` when its sequence ends and another takes its place.
    """

    MAX_MEMBERS = 1 << 16
    MAX_STATE_BYTES = 4 << 30

    def __init__(self, model: StreamingModel, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"a stream group has at least one member; got {n!r}")
        # two state buffers of n members each, allocated up front: bounded before any allocation
        need = 2 * n * sum(math.prod(st.shape) * st.dtype.itemsize for st in model.states)
        if n > self.MAX_MEMBERS or need > self.MAX_STATE_BYTES:
            raise ConfigError(
                f"a group of {n:,} streams would need {_bytes(need)} of state buffers; a group has at most "
                f"{self.MAX_MEMBERS:,} members and {_bytes(self.MAX_STATE_BYTES)} of state: make several groups"
            )
        if model.axes.batch is None or any(s.batch_axis is None for s in model.states):
            raise ModelFormatError(
                "this model's data or states have no batch axis, so streams cannot be grouped; use one Stream each"
            )
        fixed = model.batch
        if fixed is not None and fixed != n:
            raise ConfigError(f"this model was exported with a fixed batch of {fixed}: a group must have {fixed}")
        self._split = [_split_axis(o) for o in model.outputs]  # each output's member axis
        self.model = model
        self.n = n
        self._lock = threading.Lock()
        zeros = model.initial_state(n)
        self._buf = [[zeros[st.input] for st in model.states], [np.zeros_like(zeros[st.input]) for st in model.states]]
        self._cur = 0
        self._bound: dict[tuple[int, ...], _Bound] = {}
        self.steps = 0  # group steps since the group was made

    def step(self, frames: Any) -> np.ndarray:
        """Advance every member by its frame: ``frames`` holds one frame (or chunk) per member along its first
        axis, ``(n, features)`` or ``(n, K, features)``; returns the primary output, member first."""
        return self._step(frames)[0]

    def step_all(self, frames: Any) -> dict[str, np.ndarray]:
        """``step`` returning every (non-state) output by name, member first."""
        return dict(zip((o.name for o in self.model.outputs), self._step(frames), strict=True))

    def _step(self, frames: Any) -> list[np.ndarray]:
        sm = self.model
        if len(frames) != self.n:
            raise InputError(f"a group of {self.n} streams takes {self.n} frames (one per member); got {len(frames)}")
        a = sm._as_batch(frames)
        with self._lock:
            bound = self._bound.get(a.shape)
            if bound is None:
                results = _run_in_place(sm, a, self._buf[self._cur])
                if len(self._bound) < 8:
                    self._bound[a.shape] = _Bound(sm, self._buf, a.shape, results, one=False)
                outs = [results[o.index] for o in sm.outputs]
            else:
                np.copyto(bound.x, a)
                sm.session.run_with_iobinding(bound.io[self._cur], sm._ro)
                self._cur ^= 1
                outs = bound.outs
            self.steps += 1
            return [
                v.copy() if axis == 0 else np.moveaxis(v, axis, 0).copy()
                for axis, v in zip(self._split, outs, strict=True)
            ]

    def reset(self, member: int | None = None) -> None:
        """Back to the initial state: one member (its stream ended, a new one takes its place) or all."""
        if member is not None:
            self._check_member(member)
        with self._lock:
            for st, buf in zip(self.model.states, self._buf[self._cur], strict=True):
                if member is None:
                    buf.fill(0)
                else:
                    np.moveaxis(buf, st.batch_axis, 0)[member] = 0

    def state(self, member: int) -> dict[str, np.ndarray]:
        """A copy of one member's state, by state input name, shaped as a single stream's."""
        self._check_member(member)
        with self._lock:
            return {
                st.input: np.expand_dims(np.moveaxis(buf, st.batch_axis, 0)[member], st.batch_axis).copy()
                for st, buf in zip(self.model.states, self._buf[self._cur], strict=True)
            }

    def _check_member(self, member: Any) -> None:
        if not (isinstance(member, int) and 0 <= member < self.n):
            raise InputError(f"member must be 0..{self.n - 1}; got {member!r}")


def _run_in_place(sm: StreamingModel, a: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
    """One plain run from the state in ``state`` (buffers in the order of ``sm.states``), whose new state is written
    back into those buffers; every output returned. The first call with an input shape, before it is bound."""
    feed = {sm.data.name: a, **sm.constants}
    feed.update({st.input: buf for st, buf in zip(sm.states, state, strict=True)})
    results = sm.session.run(sm._output_names, feed, sm._ro)
    for st, buf in zip(sm.states, state, strict=True):
        buf[...] = results[st.out_index]
    return results


def _bound_call(session: Any, ios: Sequence[Any]) -> tuple[Any, list[Any]]:
    """The bound call of the hot path, ``run(io[cur], run_options)``: onnxruntime's own entry point under its Python
    ``InferenceSession.run_with_iobinding`` where that is the same call. The wrapper checks that each binding
    belongs to the session (true here by construction) and whether WebGPU graph capture is on (fixed for a
    session), and those checks cost ~0.8 us of a ~30 us step; with capture on, or an onnxruntime whose wrapper
    is built otherwise, the public method is used."""
    public = session.run_with_iobinding, list(ios)
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run_with_iobinding", None)
    capture = getattr(inner, "is_webgpu_graph_capture_enabled", None)
    raw = [getattr(io, "_iobinding", None) for io in ios]
    ours = all(r is not None and getattr(io, "_session", None) is inner for r, io in zip(raw, ios, strict=True))
    if run is None or not ours or capture is None or capture():
        return public
    return run, raw


def _pad_rows(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``a`` (size 1 along ``axis``) as row 0 of ``n`` rows along ``axis``, the others zeros."""
    out = np.zeros((*a.shape[:axis], n, *a.shape[axis + 1 :]), a.dtype)
    out[(slice(None),) * axis + (slice(0, 1),)] = a
    return out


def _split_axis(o: _Output) -> int:
    """The axis along which a batched output is split back into streams."""
    if o.axes is None or o.axes.batch is None:
        raise ModelFormatError(f"cannot split output {o.name!r} by stream: its batch axis is unknown")
    return o.axes.batch


def _batch_of(axes: Axes | None) -> int | None:
    return axes.batch if axes is not None else None


def _drop_batch(a: np.ndarray, batch_axis: int | None) -> np.ndarray:
    """A view of ``a`` without its batch axis (of size 1); ``a`` itself when it has none."""
    if batch_axis is None or a.ndim <= batch_axis:
        return a
    return np.squeeze(a, axis=batch_axis)


def _bytes(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _shape(shape: Sequence[Any]) -> str:
    """A shape as Python writes a tuple: ``(576,)`` for one axis."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def parse_constant(text: str) -> tuple[str, float | int | list[float | int]]:
    """``NAME=VALUE`` as the CLI's ``--const`` takes it: VALUE a number (``16000``, ``0.5``) or a comma list of
    numbers for a 1-D input (``1,2,3``); the model's input decides the dtype and shape."""
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not name or not value:
        raise ConfigError(f"constant {text!r} must be NAME=VALUE, e.g. sr=16000 (a number, or a comma list: 1,2,3)")
    numbers: list[float | int] = []
    for part in value.split(","):
        part = part.strip()
        try:
            numbers.append(int(part))
        except ValueError:
            try:
                numbers.append(float(part))
            except ValueError:
                raise ConfigError(
                    f"constant {text!r}: {part!r} is not a number; VALUE is a number or a comma list of numbers"
                ) from None
    return name, numbers if "," in value else numbers[0]
