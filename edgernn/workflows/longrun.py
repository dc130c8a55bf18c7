"""Long-run parity: one long sequence streamed through a ``step`` export, step by step against a reference, to
show whether a recurrent state carries an error forward (an error that grows with the steps, where a short
parity case cannot see it).

The reference is the numpy oracle of the checkpoint the model came from (float64, sharing no code with the
export), or another ONNX file of the same model: streamed too when it is a step export, else run on the whole
sequence (a per-step output) or at a few growing lengths (a last-step readout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

# the growth curve: the largest difference up to each of these many points in time
POINTS = 10


def long_parity(
    reference: str | os.PathLike[str] | None,
    model: str | os.PathLike[str] | bytes,
    *,
    steps: int = 100_000,
    provider: str = "cpu",
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> dict[str, Any]:
    """Stream ``steps`` steps of a seeded standard-normal sequence through ``model`` (a step export) and
    compare every output with ``reference`` (a checkpoint, an ONNX file, or None: the checkpoint recorded
    nowhere, so one must be given). Returns the steps run, the largest difference, the growth curve
    ([step, max abs up to it] pairs), its slope per 10k steps, and the verdict against the tolerance."""
    from .recheck import _is_onnx, _tolerance, load_model

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be an integer >= 1; got {steps!r}")
    cand = load_model(model)
    m = cand.manifest
    if m is None or not m.states:
        what = f"a {m.strategy} export" if m is not None else "not an edgernn export"
        raise ConfigError(f"--steps streams a step export (state in, state out); {cand.path} is {what}")
    if reference is None:
        raise ConfigError("--steps needs a REFERENCE: the checkpoint the model came from, or another ONNX file of it")
    k = m.chunk or 1
    steps = max(k, steps - steps % k)
    data = next(s for s in m.inputs if s.role == "data")
    features = data.shape[-1]
    if not isinstance(features, int):
        raise ConfigError("--steps needs a data input with a fixed feature size")
    x = np.random.default_rng(seed).standard_normal((steps, features)).astype(np.float32)
    got, at = _stream_steps(cand.data, x, provider)
    tol = _tolerance(atol, rtol)
    if _is_onnx(reference):
        ref = load_model(reference)
        label = Path(ref.path).name
        want = _file_steps(ref, x, provider, at)
    else:
        from ..model import checkpoint
        from ..verify.reference import model_steps

        ck = checkpoint.load(reference)
        state = {n: v.detach().cpu().numpy() for n, v in ck.model().state_dict().items()}
        want = model_steps(ck.config, state, x)[at]
        label = f"numpy oracle of {Path(str(reference)).name}"
    rows = got.reshape(len(at), -1).astype(np.float64)
    want = np.asarray(want, np.float64).reshape(len(at), -1)
    diff = np.abs(rows - want)
    per_step = diff.max(axis=1)
    ok = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(want)))
    ends = sorted({max(1, round(len(at) * (i + 1) / POINTS)) for i in range(POINTS)})
    growth = [[int(at[e - 1]) + 1, float(per_step[:e].max())] for e in ends]
    slope = None
    if len(growth) >= 2:
        xs = np.array([g[0] for g in growth], np.float64)
        ys = np.array([g[1] for g in growth], np.float64)
        slope = float(np.polyfit(xs, ys, 1)[0] * 10_000)
    return {
        "model": Path(cand.path).name,
        "reference": label,
        "steps": int(steps),
        "chunk": int(k),
        "max_abs": float(per_step.max()),
        "growth": growth,
        "growth_per_10k": slope,
        "atol": tol.atol,
        "rtol": tol.rtol,
        "passed": ok,
    }


def _stream_steps(data: bytes, x: np.ndarray, provider: str) -> tuple[np.ndarray, np.ndarray]:
    """The primary output of every call over x (T, F), one stream, one row per step it belongs to: every step
    for a per-step output (K rows a call), the last step of each call for a readout of the last state."""
    from ..runtime.stream import StreamingModel

    sm = StreamingModel(data, provider=provider, threads=1)
    s = sm.stream()
    k = sm.chunk or 1
    per_step = sm.outputs[0].axes is not None and sm.outputs[0].axes.time is not None
    outs = [s.step(x[t] if k == 1 else x[t : t + k]) for t in range(0, len(x), k)]
    if per_step:
        rows = np.concatenate([o.reshape(k, -1) for o in outs])
        return rows, np.arange(len(x))
    return np.stack([o.reshape(-1) for o in outs]), np.arange(k - 1, len(x), k)


def _file_steps(ref: Any, x: np.ndarray, provider: str, at: np.ndarray) -> np.ndarray:
    """The reference file's outputs at steps ``at``: streamed when it is a step export, else one call on the
    whole sequence (which must give every step)."""
    m = ref.manifest
    if m is not None and m.states:
        k = m.chunk or 1
        if len(x) % k:
            raise ConfigError(f"the reference streams chunks of {k}; {len(x)} steps are not a whole number of them")
        rows, steps = _stream_steps(ref.data, x, provider)
        where = {int(t): i for i, t in enumerate(steps)}
        missing = [int(t) for t in at if int(t) not in where]
        if missing:
            raise ConfigError(f"the reference gives no output at step {missing[0]} (its chunk is {k})")
        return rows[[where[int(t)] for t in at]]
    from ..runtime.model import Model

    y = Model(ref.data, provider=provider, threads=1).run(x[None])[0]
    if y.ndim >= 2 and y.shape[0] == len(x):
        return y.reshape(len(x), -1)[at]
    raise ConfigError(
        "the reference gives one output for the whole sequence (a last-step readout); stream against the "
        "checkpoint instead (its numpy oracle gives every step)"
    )
