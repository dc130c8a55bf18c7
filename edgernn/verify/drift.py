"""How far a reduced-precision model drifts from its fp32 original, and what it does to the task.

Two ONNX files of one export (fp32 and int8 or fp16) are run side by side with onnxruntime, torch-free:

- ``long_drift``: one long sequence (10,000 steps by default) through the streaming form where the export has
  one (a ``step`` file is called once per chunk, carrying its state), else as one call of a dynamic-length file
  at growing lengths; the largest absolute difference of the outputs up to each checkpoint in time shows whether
  a recurrent state carries the error forward. A fixed-length (``unroll``) file is measured at its length only.
- ``task_metric``: an edgernn task's validation metric (masked MSE or accuracy) computed through a file, so the
  fp32 and the quantised model are judged by what the model is for, not elementwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..manifest import Manifest, TensorSpec

if TYPE_CHECKING:
    from ..runtime.model import Model

LONG_STEPS = 10_000
# the longest run a user may ask for: its inputs and outputs are held in memory (about 4 bytes x (features +
# 2 x outputs) a step, times a few for onnxruntime's buffers); a million steps of a 40-feature model is ~0.5 GB
MAX_LONG_STEPS = 1_000_000
CHECKPOINTS = 10  # points on the drift-against-time curve


def check_long_steps(steps: Any) -> None:
    """ConfigError, before any work, unless ``steps`` is a whole number from 1 to MAX_LONG_STEPS."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_LONG_STEPS:
        estimate = ""
        if isinstance(steps, int) and steps > MAX_LONG_STEPS:
            estimate = f" (its inputs and outputs alone would take at least {steps * 12 / 2**30:.3g} GiB)"
        raise ConfigError(f"--long-steps must be from 1 to {MAX_LONG_STEPS:,}; got {steps!r}{estimate}")


def _stream_outputs(model: bytes, frames: np.ndarray) -> np.ndarray:
    """Every chunk's primary output of a streaming file, for one stream: frames (T, F) -> (calls, ...)."""
    from ..runtime.stream import StreamingModel

    sm = StreamingModel(model, threads=1)
    stream = sm.stream()
    k = sm.chunk or 1
    return np.stack([stream.step(frames[t : t + k] if k > 1 else frames[t]) for t in range(0, len(frames), k)])


def long_drift(
    reference: bytes,
    candidate: bytes,
    manifest: Manifest,
    *,
    steps: int = LONG_STEPS,
    x: np.ndarray | None = None,
    seed: int = 0,
    given: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The drift of ``candidate`` from ``reference`` over one long sequence (see the module docstring).

    ``x`` (T, F) is the sequence (default: standard normal, seeded). Returns the form used, the steps run, the
    largest absolute difference overall, and ``growth``: [step, max abs difference up to that step] pairs.
    A dynamic-length model whose inputs are not one (batch, time, features) float tensor (several inputs, more
    dimensions, token ids) is fed every input at once (``_feed_drift``), from ``given`` (inputs by name, first
    axis the batch) where it has them.
    """
    from ..runtime.model import Model

    data = next((s for s in manifest.inputs if s.role == "data"), None)
    if data is None:
        raise ConfigError("long drift needs a model with a data input")
    if not manifest.states and manifest.seq_len is None and not _one_plain_input(manifest):
        return _feed_drift(reference, candidate, manifest, steps, given, seed)
    if not isinstance(data.shape[-1], int) or not _one_plain_input(manifest):
        raise ConfigError(
            "long drift of a streaming or fixed-length file needs one float data input (batch, time, features)"
        )
    features = int(data.shape[-1])
    fixed = manifest.seq_len
    if manifest.states:
        k = manifest.chunk or 1
        steps = max(k, steps - steps % k)
    elif fixed is not None:
        steps = fixed
    if x is None:
        x = np.random.default_rng(seed).standard_normal((steps, features)).astype(np.float32)
    x = np.asarray(x, np.float32)[:steps]
    if manifest.states:
        a, b = _stream_outputs(reference, x), _stream_outputs(candidate, x)
        per_call = np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(axis=1)
        k = manifest.chunk or 1
        ends = _checkpoints(len(per_call))
        growth = [[int(e * k), float(per_call[:e].max())] for e in ends]
        return {"form": "stream", "steps": int(len(per_call) * k), "max_abs": float(per_call.max()), "growth": growth}
    ref, cand = Model(reference, threads=1), Model(candidate, threads=1)
    batch = manifest.batch or 1
    if fixed is not None:
        xb = np.repeat(x[None], batch, axis=0)
        d = float(np.abs(ref.run(xb).astype(np.float64) - cand.run(xb)).max())
        return {"form": "fixed", "steps": int(steps), "max_abs": d, "growth": [[int(steps), d]]}
    growth, worst = [], 0.0
    for end in _checkpoints(steps):  # outputs read at growing lengths: a last-step readout shows its drift too
        xb = np.repeat(x[None, :end], batch, axis=0)
        worst = max(worst, float(np.abs(ref.run(xb).astype(np.float64) - cand.run(xb)).max()))
        growth.append([int(end), worst])
    return {"form": "sequence", "steps": int(steps), "max_abs": worst, "growth": growth}


def _one_plain_input(manifest: Manifest) -> bool:
    data = [s for s in manifest.inputs if s.role == "data"]
    return len(data) == 1 and data[0].dtype.startswith("float") and len(data[0].shape) == 3


def _feed_drift(
    reference: bytes,
    candidate: bytes,
    manifest: Manifest,
    steps: int,
    given: Mapping[str, np.ndarray] | None,
    seed: int,
) -> dict[str, Any]:
    """Long drift of a dynamic-length model with any inputs: one long sequence per data input (the given
    sequences joined end to end along time, repeated to ``steps``; float inputs without data drawn standard
    normal), every output compared at growing lengths."""
    from ..runtime.model import Model

    long = {s.name: _long_input(s, steps, given, seed) for s in manifest.inputs if s.role == "data"}
    ref, cand = Model(reference, threads=1), Model(candidate, threads=1)
    time_axes = {s.name: _axes(s)[1] for s in manifest.inputs if s.role == "data"}
    growth, worst = [], 0.0
    for end in _checkpoints(steps):
        feed = {
            n: (a if time_axes[n] is None else np.take(a, np.arange(end), axis=time_axes[n])) for n, a in long.items()
        }
        ya, yb = ref.run_feed(feed), cand.run_feed(feed)
        for name, a in ya.items():
            if a.dtype.kind == "f":
                worst = max(worst, float(np.abs(a.astype(np.float64) - yb[name]).max()))
        growth.append([int(end), worst])
    return {"form": "inputs", "steps": int(steps), "max_abs": worst, "growth": growth}


def _axes(spec: TensorSpec) -> tuple[int | None, int | None]:
    from ..runtime.layout import infer_axes

    axes = infer_axes(spec.named_shape())
    return (None, None) if axes is None else (axes.batch, axes.time)


def _long_input(spec: TensorSpec, steps: int, given: Mapping[str, np.ndarray] | None, seed: int) -> np.ndarray:
    """One sequence (batch 1) of ``steps`` steps for input ``spec``: from ``given`` or drawn."""
    batch, time = _axes(spec)
    if given is not None and spec.name in given:
        a = np.asarray(given[spec.name])
        if a.ndim != len(spec.shape):
            raise ConfigError(
                f"--data's {spec.name!r} has shape {a.shape}; the model takes {len(spec.shape)} dimensions "
                f"{tuple(spec.shape)}"
            )
        if batch is None or time is None:  # no time axis: the first item as it is
            return a if batch is None else np.take(a, [0], axis=batch)
        seqs = [np.take(a, [i], axis=batch) for i in range(a.shape[batch])]
        joined = np.concatenate(seqs, axis=time)
        reps = -(-steps // max(1, joined.shape[time]))
        return np.take(np.concatenate([joined] * reps, axis=time), np.arange(steps), axis=time)
    if not spec.dtype.startswith("float"):
        raise ConfigError(
            f"the long-run drift needs values for the {spec.dtype} input {spec.name!r} (token ids cannot be drawn "
            f"at random): give --data X.npz with an array {spec.name!r}"
        )
    shape = []
    for i, d in enumerate(spec.shape):
        if i == batch:
            shape.append(1)
        elif i == time:
            shape.append(steps)
        elif isinstance(d, int):
            shape.append(d)
        else:
            raise ConfigError(f"input {spec.name!r} has a dynamic axis {d!r} besides batch and time: give --data")
    return np.random.default_rng(seed).standard_normal(shape).astype(spec.dtype)


def _checkpoints(n: int) -> list[int]:
    return sorted({max(1, round(n * (i + 1) / CHECKPOINTS)) for i in range(CHECKPOINTS)})


def task_metric(model: bytes | Model, task: Any, examples: Sequence[Any], manifest: Manifest) -> float:
    """The task's validation metric (lower is better for "mse", higher for "accuracy") computed through the
    model file (or a loaded ``Model``, on its provider) with onnxruntime, on ``task_predictions``. ``task`` needs
    only ``head``, ``readout`` and ``metric``; an example ``x`` and ``y``."""
    return _metric(task, task_predictions(model, examples, manifest), examples)


def task_predictions(model: bytes | Model, examples: Sequence[Any], manifest: Manifest) -> list[np.ndarray]:
    """The model's primary output for each example, as the task metric sees it: every example run as its own
    sequence of its own length (a fixed-length file takes them padded to its length with their lengths; a
    streaming file is stepped through them)."""
    from ..runtime.model import Model
    from ..runtime.stream import StreamingModel

    loaded = model if isinstance(model, Model) else None
    preds: list[np.ndarray] = []
    if manifest.states:
        sm = StreamingModel(loaded) if loaded is not None else StreamingModel(model, threads=1)
        k = sm.chunk or 1
        for e in examples:
            steps = max(k, len(e.x) - len(e.x) % k)
            x = np.asarray(e.x[:steps], np.float32)
            y = sm.run_sequence(x[None])[sm.primary][0]
            preds.append(y)
    else:
        m = loaded if loaded is not None else Model(model, threads=1)
        fixed = manifest.seq_len
        for e in examples:
            x = np.asarray(e.x, np.float32)
            if fixed is not None:
                if len(x) > fixed:
                    raise ConfigError(f"a validation sequence has {len(x)} steps; this file is fixed at {fixed}")
                padded = np.zeros((manifest.batch or 1, fixed, x.shape[1]), np.float32)
                padded[:, : len(x)] = x
                lengths = np.full(manifest.batch or 1, len(x)) if _takes_lengths(manifest) else None
                if lengths is None and len(x) != fixed:
                    raise ConfigError("this fixed-length file takes no lengths; validation sequences must fill it")
                preds.append(m.run(padded, lengths)[0])
            else:
                preds.append(m.run(x[None])[0])
    return preds


def _takes_lengths(manifest: Manifest) -> bool:
    return any(s.role in ("lengths", "mask") for s in manifest.inputs)


def _metric(task: Any, preds: Sequence[np.ndarray], examples: Sequence[Any]) -> float:
    if task.head == "classification":
        return float(np.mean([int(np.argmax(p)) == int(e.y) for p, e in zip(preds, examples, strict=True)]))
    if task.readout == "all":  # per-step targets: squared error averaged over each real step's outputs
        total, count = 0.0, 0
        for p, e in zip(preds, examples, strict=True):
            n = min(len(p), len(e.y))
            total += float(((p[:n] - e.y[:n]) ** 2).mean(-1).sum())
            count += n
        return total / max(count, 1)
    return float(np.mean([((p - e.y) ** 2).mean() for p, e in zip(preds, examples, strict=True)]))


def metric_drop(task: Any, fp32: float, reduced: float) -> float:
    """The relative loss of quality: positive when the reduced model is worse (for MSE: higher; accuracy: lower)."""
    scale = max(abs(fp32), 1e-12)
    return (reduced - fp32) / scale if task.metric == "mse" else (fp32 - reduced) / scale
