"""An in-process stand-in for Triton's sequence batcher with implicit state, to test a model repository where no
Triton server runs (its onnxruntime backend ships only in the server container).

It reads the repository as Triton does (``NAME/config.pbtxt`` with Triton's config protobuf, the model file of
the highest version) and runs the model with one onnxruntime session. Requests ``(correlation id, inputs,
start, end)`` are queued in arrival order; each scheduling round takes, for up to ``max_batch_size`` sequences,
the oldest waiting request of each (never two of one sequence), stacks their inputs and states along axis 0,
runs the model once and scatters each output state back to its sequence by the config's state pairs
(``input_name`` <- ``output_name``). A request with START (re)starts its sequence from the config's
``initial_state`` (zeros); one with END frees the sequence's slot and state after it runs.

* ``direct``: a sequence holds a batch slot from its START to its END, at most ``max_batch_size`` x instances
  slots; the sequences of a round are those holding slots. A START that finds no free slot waits in a backlog.
* ``oldest``: up to ``max_candidate_sequences`` x instances sequences are candidates; a round batches the oldest
  requests of distinct candidates.

Not emulated: timing (``max_queue_delay_microseconds``, ``max_sequence_idle_microseconds``), several instances
running at once (their slots are pooled into one batch per round here), empty direct slots (Triton may run
them with READY 0; here only requests run), and a request without START for a sequence not yet started is
refused as Triton refuses it.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, ModelFormatError
from .triton import TRITON_TO_NUMPY, config_pb2, parse_config


@dataclass
class _Request:
    id: int
    sequence: int | str
    inputs: dict[str, np.ndarray]
    start: bool
    end: bool


@dataclass
class _Sequence:
    state: dict[str, np.ndarray]  # by state input name, each with a batch axis of 1
    pending: deque[_Request] = field(default_factory=deque)


class SequenceBatcherEmulator:
    """Triton's sequence batcher with implicit state over repository ``repo`` model ``name`` (see module doc)."""

    def __init__(self, repo: str | os.PathLike[str], name: str, *, threads: int | None = 1) -> None:
        from ..runtime.providers import make_session

        base = Path(repo) / name
        self.config = parse_config(base / "config.pbtxt")
        if self.config.name and self.config.name != name:
            raise ConfigError(f"{base / 'config.pbtxt'} names model {self.config.name!r}, not {name!r}")
        if self.config.backend == "python":
            raise ConfigError(
                f"{base / 'config.pbtxt'} is a --state control repository (model.py keeps the states); the emulator "
                "emulates implicit state only"
            )
        versions = sorted((int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
        if not versions:
            raise ModelFormatError(f"{base} has no version directory (1/, 2/, ...)")
        filename = self.config.default_model_filename or "model.onnx"
        path = base / str(versions[0]) / filename
        if not path.is_file():
            raise ModelFormatError(f"no model file at {str(path)!r}")
        self.session, _ = make_session(str(path), "cpu", threads=threads)
        self.max_batch_size = int(self.config.max_batch_size)
        if self.max_batch_size < 1:
            raise ConfigError("the sequence batcher stacks sequences along the batch axis: max_batch_size must be > 0")
        seq = self.config.sequence_batching
        self.strategy = seq.WhichOneof("strategy_choice") or "direct"
        instances = sum(g.count for g in self.config.instance_group) or 1
        if self.strategy == "direct":
            self.capacity = self.max_batch_size * instances
        else:
            self.capacity = max(1, int(seq.oldest.max_candidate_sequences)) * instances
        pb = config_pb2()
        self.pairs = [(s.input_name, s.output_name) for s in seq.state]
        self._initial: dict[str, np.ndarray] = {}
        for s in seq.state:
            init = s.initial_state[0] if len(s.initial_state) == 1 else None
            if init is None or init.WhichOneof("state_data") != "zero_data":
                raise ConfigError(f"state {s.input_name!r}: the emulator knows zero initial states only")
            dtype = np.dtype(TRITON_TO_NUMPY[pb.DataType.Name(init.data_type)])
            self._initial[s.input_name] = np.zeros((1, *init.dims), dtype)
        self.inputs = {
            i.name: (np.dtype(TRITON_TO_NUMPY[pb.DataType.Name(i.data_type)]), list(i.dims)) for i in self.config.input
        }
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._ids = itertools.count(1)
        self._queue: deque[_Request] = deque()  # arrived, for sequences not yet admitted (backlog)
        self._active: OrderedDict[int | str, _Sequence] = OrderedDict()  # admitted: holding a slot / candidates
        self.batch_sizes: list[int] = []  # each round's batch, for inspection

    # -- requests ------------------------------------------------------------------------------------------------

    def submit(self, sequence: int | str, inputs: dict[str, Any], *, start: bool = False, end: bool = False) -> int:
        """Queue one request of sequence ``sequence`` (``inputs`` by name, each with its batch axis of 1); its id."""
        if set(inputs) != set(self.inputs):
            raise InputError(f"a request gives {', '.join(sorted(self.inputs))}; got {', '.join(sorted(inputs))}")
        checked = {}
        for k, v in inputs.items():
            dtype, dims = self.inputs[k]
            a = np.asarray(v)
            if (
                a.dtype != dtype
                or a.ndim != len(dims) + 1
                or a.shape[0] != 1
                or any(d >= 0 and d != n for d, n in zip(dims, a.shape[1:], strict=True))
            ):
                raise InputError(f"input {k!r} takes {dtype} [1, {', '.join(map(str, dims))}]; got {a.dtype} {a.shape}")
            checked[k] = a
        if not start and not self._open(sequence):
            raise InputError(
                f"inference request for sequence {sequence} must specify the START flag on the first request of the "
                "sequence (it has not started, or its last request ended it)"
            )
        req = _Request(next(self._ids), sequence, checked, bool(start), bool(end))
        active = self._active.get(sequence)
        if active is not None:
            active.pending.append(req)
        else:
            self._queue.append(req)
        return req.id

    def submit_request(self, request: Any) -> int:
        """Queue a gRPC ``ModelInferRequest`` as the server receives it (what tritonclient's ``infer`` sends):
        inputs from its raw contents, sequence id and flags from its parameters."""
        params = request.parameters
        if "sequence_id" not in params:
            raise InputError("the request has no sequence_id: a sequence batcher takes sequence requests only")
        sid = params["sequence_id"]
        sequence = sid.int64_param if sid.WhichOneof("parameter_choice") == "int64_param" else sid.string_param
        start = params["sequence_start"].bool_param if "sequence_start" in params else False
        end = params["sequence_end"].bool_param if "sequence_end" in params else False
        pb = config_pb2()
        inputs = {}
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            dtype = np.dtype(TRITON_TO_NUMPY[pb.DataType.Name(pb.DataType.Value("TYPE_" + tensor.datatype))])
            inputs[tensor.name] = np.frombuffer(raw, dtype).reshape(tuple(tensor.shape))
        return self.submit(sequence, inputs, start=start, end=end)

    def _open(self, sequence: int | str) -> bool:
        """Whether a request without START may follow: the sequence is live and its last request so far is not END."""
        queued = [r for r in self._queue if r.sequence == sequence]
        if queued:
            return not queued[-1].end
        active = self._active.get(sequence)
        return active is not None and not (active.pending and active.pending[-1].end)

    # -- scheduling ----------------------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Backlogged sequences take free slots (candidacies) in arrival order, with all their queued requests."""
        while self._queue and len(self._active) < self.capacity:
            first = self._queue[0]
            if first.sequence in self._active:  # restarted while its last request waits: keep order
                break
            mine = [r for r in self._queue if r.sequence == first.sequence]
            self._queue = deque(r for r in self._queue if r.sequence != first.sequence)
            self._active[first.sequence] = _Sequence({k: v.copy() for k, v in self._initial.items()}, deque(mine))

    def run_round(self) -> dict[int, dict[str, np.ndarray]]:
        """One model call: the oldest waiting request of up to ``max_batch_size`` admitted sequences; each request's
        outputs by request id (every graph output, with its batch axis of 1)."""
        self._admit()
        ready = [(sid, s) for sid, s in self._active.items() if s.pending]
        ready.sort(key=lambda item: item[1].pending[0].id)  # oldest request first
        ready = ready[: self.max_batch_size]
        if not ready:
            return {}
        reqs = [s.pending.popleft() for _, s in ready]
        for (_, s), r in zip(ready, reqs, strict=True):
            if r.start:  # a sequence (re)started: its state is the initial state
                s.state = {k: v.copy() for k, v in self._initial.items()}
        feed = {k: np.concatenate([r.inputs[k] for r in reqs], axis=0) for k in self.inputs}
        for name_in, _ in self.pairs:
            feed[name_in] = np.concatenate([s.state[name_in] for _, s in ready], axis=0)
        results = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        self.batch_sizes.append(len(reqs))
        out: dict[int, dict[str, np.ndarray]] = {}
        for row, ((sid, s), r) in enumerate(zip(ready, reqs, strict=True)):
            for name_in, name_out in self.pairs:
                s.state[name_in] = results[name_out][row : row + 1].copy()
            out[r.id] = {k: v[row : row + 1].copy() for k, v in results.items()}
            if r.end:  # the slot and the state are freed
                del self._active[sid]
                if s.pending:  # requests of a new sequence under the same id: back to the backlog, in order
                    self._queue.extendleft(reversed(s.pending))
        return out

    def drain(self) -> dict[int, dict[str, np.ndarray]]:
        """Rounds until no request waits; every request's outputs by id."""
        out: dict[int, dict[str, np.ndarray]] = {}
        while True:
            got = self.run_round()
            if not got:
                if self._queue or any(s.pending for s in self._active.values()):
                    raise RuntimeError("the emulated batcher made no progress with requests waiting")
                return out
            out.update(got)

    def state(self, sequence: int | str) -> dict[str, np.ndarray]:
        """A copy of an active sequence's state, by state input name."""
        if sequence not in self._active:
            raise KeyError(sequence)
        return {k: v.copy() for k, v in self._active[sequence].state.items()}
