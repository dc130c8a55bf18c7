"""Ray Data: run an exported model over a dataset, or over a directory of shards, in a pool of actors that each
hold one onnxruntime session.

* ``map_model(ds, "model.onnx", column="x")`` adds an output column to a dataset whose rows are sequences (one
  row = one sequence, ``(time, features)``; rows may differ in length). A whole-sequence export runs each batch of
  rows at once, padded to the longest with the lengths passed when the model has a lengths input (rows of one length
  together when it has none); a ``step`` export runs each row from the initial state, step by step
  (``StreamingModel.run_sequence``; rows of one length step together). Per row, the output is the model's primary
  output without its batch axis, cut to the row's length when it has a time axis.
* ``run_directory_ray(model, DIR, OUT)`` is ``edgernn run --input DIR --output OUT --ray``: one shard per row,
  each run by an actor exactly as ``edgernn run`` runs it (``edgernn.batch.shards.ShardRunner``) and written under
  the same name in OUT. Actors read and write the files themselves: on a cluster of several machines both
  directories must be on storage every node sees.

``num_cpus`` per actor is also its onnxruntime intra-op thread count. ray is imported only when these run; without
it they raise ``MissingPackageError`` (exit code 10 on the CLI).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, ModelFormatError
from ..serve.ray import DEFAULT_RAY_TIMEOUT_S, check_ray_timeout, init_ray, require_ray
from .shards import DirectoryRun, ShardRunner, check_directories, list_shards

MODES = ("auto", "sequence", "step")


class ModelBatch:
    """The ``map_batches`` callable of ``map_model``: one session per actor, rows of ``column`` in, ``output_column``
    added (the batch's other columns pass through)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        column: str = "x",
        output_column: str = "y",
        lengths_column: str | None = None,
        mode: str = "auto",
        threads: int | None = 1,
        provider: str = "cpu",
    ) -> None:
        from ..runtime.io import streaming_model
        from ..runtime.layout import infer_axes
        from ..runtime.model import Model

        self.column, self.output_column, self.lengths_column = column, output_column, lengths_column
        self.model = Model(model, provider=provider, threads=threads)
        self.stream = streaming_model(self.model, None, None)
        self.mode = _resolve_mode(mode, self.stream is not None)
        if self.mode == "step":
            spec = next(o for o in self.model.outputs if o.name == self._streaming().primary)
        else:
            data = self.model.data_inputs()
            if len(data) != 1:
                raise ConfigError(f"map_model runs models with one data input; this one has {len(data)}")
            self.data = data[0]
            self.lengths = next((s for s in self.model.inputs if s.role in ("lengths", "mask")), None)
            spec = self.model.outputs[0]
        axes = infer_axes(spec.named_shape())
        # the primary output's time axis, counted without its batch axis: a per-step output is cut to each row
        self.out_time: int | None = None
        if axes is not None and axes.time is not None:
            self.out_time = axes.time - (1 if axes.batch is not None and axes.batch < axes.time else 0)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.column not in batch:
            raise InputError(f"the dataset has no column {self.column!r} (it has {', '.join(batch)})")
        rows = [np.asarray(r) for r in batch[self.column]]
        if self.lengths_column is not None:
            lengths = [int(n) for n in np.asarray(batch[self.lengths_column]).reshape(-1)]
            if len(lengths) != len(rows):
                raise InputError(f"{len(lengths)} lengths for {len(rows)} rows")
            for n, r in zip(lengths, rows, strict=True):
                if not 1 <= n <= (r.shape[0] if r.ndim else 0):
                    raise InputError(f"a length of {n} for a row of {r.shape[0] if r.ndim else 0} steps")
            rows = [r[:n] for r, n in zip(rows, lengths, strict=True)]
        else:
            lengths = [r.shape[0] if r.ndim else 0 for r in rows]
        outs = self.run_rows(rows, lengths)
        return {**batch, self.output_column: _column(outs)}

    def run_rows(self, rows: Sequence[np.ndarray], lengths: Sequence[int]) -> list[np.ndarray]:
        """Each row's output (its batch axis removed, cut to its length when it has a time axis)."""
        if not rows:
            return []
        if any(n < 1 for n in lengths):
            raise InputError("a row holds an empty sequence (0 steps)")
        if self.mode == "step":
            return self._by_length(rows, lengths, self._step_group)
        if self.lengths is None:  # no lengths input: only rows of one length can share a call
            return self._by_length(rows, lengths, self._sequence_group)
        return self._padded(rows, lengths)

    def _by_length(
        self, rows: Sequence[np.ndarray], lengths: Sequence[int], run: Callable[[np.ndarray], np.ndarray]
    ) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(rows)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        for idx in groups.values():
            y = run(np.stack([rows[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = np.array(y[j])
        return [o for o in out if o is not None]

    def _step_group(self, x: np.ndarray) -> np.ndarray:
        stream = self._streaming()
        return stream.run_sequence(x)[stream.primary]

    def _streaming(self) -> Any:
        if self.stream is None:
            raise ModelFormatError("mode 'step' needs a stateful (`step`) export; this model has no states")
        return self.stream

    def _sequence_group(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x)

    def _padded(self, rows: Sequence[np.ndarray], lengths: Sequence[int]) -> list[np.ndarray]:
        longest = max(lengths)
        first = rows[0]
        x = np.zeros((len(rows), longest, *first.shape[1:]), first.dtype)
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            if r.shape[1:] != first.shape[1:]:
                raise InputError(f"rows have different feature shapes: {first.shape[1:]} and {r.shape[1:]}")
            x[i, :n] = r
        y = self.model.run(x, np.asarray(lengths, np.int64))
        out = []
        for i, n in enumerate(lengths):
            row = y[i]
            if self.out_time is not None:
                row = np.take(row, range(n), axis=self.out_time)
            out.append(np.array(row))
        return out


def _resolve_mode(mode: str, stateful: bool) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    found = "step" if stateful else "sequence"
    if mode == "auto":
        return found
    if mode != found:
        what = "a step export (state in, state out)" if stateful else "a whole-sequence export (no state)"
        raise ConfigError(f"mode={mode!r}, but the model is {what}: use mode={found!r} (or 'auto')")
    return mode


def _column(outs: list[np.ndarray]) -> Any:
    """Rows of one shape as one array; rows of several (per-step outputs of different lengths) as an object
    array of arrays, which Ray Data stores as a variable-shaped tensor column."""
    if outs and all(o.shape == outs[0].shape and o.dtype == outs[0].dtype for o in outs):
        return np.stack(outs)
    col = np.empty(len(outs), dtype=object)
    col[:] = outs
    return col


def _threads(num_cpus: float) -> int:
    return max(1, int(num_cpus))


def _compute(concurrency: int | tuple[int, int]) -> Any:
    from ray.data import ActorPoolStrategy

    if isinstance(concurrency, tuple):
        lo, hi = concurrency
        if not 1 <= lo <= hi:
            raise ConfigError(f"concurrency {concurrency}: a (min, max) pair with 1 <= min <= max")
        return ActorPoolStrategy(min_size=lo, max_size=hi)
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1 actor; got {concurrency}")
    return ActorPoolStrategy(size=concurrency)


def map_model(
    dataset: Any,
    model_path: str | os.PathLike[str],
    *,
    column: str = "x",
    output_column: str = "y",
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    lengths_column: str | None = None,
    mode: str = "auto",
    batch_size: int = 64,
    provider: str = "cpu",
) -> Any:
    """``dataset`` with ``output_column`` added: the model's output for each row of ``column`` (see the module
    docstring). ``concurrency`` actors (or a (min, max) autoscaling range), each reserving ``num_cpus`` CPUs and
    running onnxruntime with that many intra-op threads; ``batch_size`` rows per call. ``mode``: ``sequence`` for
    a whole-sequence export, ``step`` for a step export, ``auto`` to take it from the model (a wrong one is an
    error). ``lengths_column``: each row's real length when rows are stored padded. The model is read here and
    shipped to the actors as bytes. Lazy, as Ray Data is: nothing runs until the dataset is consumed."""
    require_ray("data")
    if num_cpus <= 0:
        raise ConfigError(f"num_cpus must be positive; got {num_cpus}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
    if not os.path.isfile(model_path):
        raise _no_model(model_path)
    with open(model_path, "rb") as f:
        data = f.read()
    # checked here, before any actor starts: the mode against the model, the provider
    ModelBatch(data, column=column, output_column=output_column, mode=mode, threads=1, provider=provider)
    return dataset.map_batches(
        ModelBatch,
        fn_constructor_args=(data,),
        fn_constructor_kwargs={
            "column": column,
            "output_column": output_column,
            "lengths_column": lengths_column,
            "mode": mode,
            "threads": _threads(num_cpus),
            "provider": provider,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=_compute(concurrency),
        num_cpus=num_cpus,
    )


def _no_model(path: str | os.PathLike[str]) -> Exception:
    from ..errors import ModelFormatError

    return ModelFormatError(f"no model file at {os.fspath(path)!r}")


class ShardBatch:
    """The ``map_batches`` callable of ``run_directory_ray``: a batch of shard names in, one entry per shard out
    (as ``ShardRunner`` returns them); the outputs are written by the actor."""

    def __init__(
        self,
        model: bytes,
        input_dir: str,
        output_dir: str,
        *,
        session: Mapping[str, Any],
        states: Sequence[str] = (),
        layout: str | None = None,
    ) -> None:
        self.runner = ShardRunner(model, session=session, states=states, layout=layout)
        self.input_dir, self.output_dir = input_dir, output_dir

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        entries = [
            self.runner(os.path.join(self.input_dir, str(n)), os.path.join(self.output_dir, str(n)))
            for n in batch["name"]
        ]
        return {
            "name": np.array([e["name"] for e in entries]),
            "shape": np.array([",".join(str(d) for d in e.get("shape", [])) for e in entries]),
            "seconds": np.array([e.get("seconds", 0.0) for e in entries], np.float64),
            "error": np.array([e.get("error", "") for e in entries]),
            "code": np.array([e.get("code", 0) for e in entries], np.int64),
        }


def run_directory_ray(
    model: str | os.PathLike[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    concurrency: int = 1,
    session: Mapping[str, Any] | None = None,
    states: Sequence[str] = (),
    layout: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    ray_timeout_s: float = DEFAULT_RAY_TIMEOUT_S,
) -> DirectoryRun:
    """Every shard of ``input_dir`` through a Ray Data pipeline of ``concurrency`` actors (one shard per call;
    each actor reserves as many CPUs as its onnxruntime threads, ``session["threads"]``, at least 1). Uses the Ray
    cluster this process is connected to, or starts a local one. ``progress`` is called with each shard's entry as
    results come back. Starting (or reaching) Ray may take ``ray_timeout_s`` seconds; then ``RayStartError``
    (exit code 1) says what failed."""
    check_ray_timeout(ray_timeout_s)
    ray = require_ray("data")
    from ray.data import DataContext

    from ..runtime.model import Model

    check_directories(input_dir, output_dir)
    shards, skipped = list_shards(input_dir)
    session = dict(session or {})
    if not os.path.isfile(model):
        raise _no_model(model)
    with open(model, "rb") as f:
        data = f.read()
    Model(data, **session)  # the session options fail here, once, rather than in every actor
    if not ray.is_initialized():
        init_ray(ray, timeout_s=ray_timeout_s, include_dashboard=False, logging_level="WARNING")
    os.makedirs(output_dir, exist_ok=True)  # after Ray started: a failed start leaves nothing behind
    context = DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False  # the caller draws its own
    try:
        return _run_shards(
            ray, data, shards, skipped, input_dir, output_dir, concurrency, session, states, layout, progress
        )
    finally:
        context.enable_progress_bars = bars


def _run_shards(
    ray: Any,
    data: bytes,
    shards: list[str],
    skipped: list[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    concurrency: int,
    session: dict[str, Any],
    states: Sequence[str],
    layout: str | None,
    progress: Callable[[dict[str, Any]], None] | None,
) -> DirectoryRun:
    threads = session.get("threads") or 1
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"name": n} for n in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(
        ShardBatch,
        fn_constructor_args=(data, os.path.abspath(input_dir), os.path.abspath(output_dir)),
        fn_constructor_kwargs={"session": session, "states": list(states), "layout": layout},
        batch_size=1,
        batch_format="numpy",
        compute=_compute(concurrency),
        num_cpus=threads,
    )
    done = []
    for row in ds.iter_rows():
        entry: dict[str, Any] = {"name": str(row["name"])}
        if row["error"]:
            entry.update(error=str(row["error"]), code=int(row["code"]))
        else:
            entry.update(shape=[int(d) for d in str(row["shape"]).split(",") if d], seconds=float(row["seconds"]))
        done.append(entry)
        if progress is not None:
            progress(entry)
    return DirectoryRun(
        done, skipped, time.perf_counter() - t0, f"ray ({concurrency} actor(s))", {"actors": concurrency}
    )
