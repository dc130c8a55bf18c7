"""Input checks made before onnxruntime sees the data, so errors say what was expected and what came."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..manifest import TensorSpec


def check_feed(
    specs: Sequence[TensorSpec], feed: Mapping[str, Any], *, fill_lengths: bool = True
) -> dict[str, np.ndarray]:
    """Validate and convert ``feed`` against the model's input specs; returns arrays of the graph's dtypes.

    A missing ``lengths`` input (role ``lengths``) is filled with the full length of each sequence.
    """
    names = [s.name for s in specs]
    unknown = set(feed) - set(names)
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(sorted(unknown))}; this model takes: {', '.join(names)}")
    dims: dict[str, tuple[int, str]] = {}  # named axis -> (size, where it was seen)
    out: dict[str, np.ndarray] = {}
    pending_lengths = None
    for spec in specs:
        if spec.name not in feed:
            if spec.role == "lengths" and fill_lengths:
                pending_lengths = spec
                continue
            raise InputError(f"missing input {spec.name!r} (shape {_fmt(spec.shape)}, {spec.dtype})")
        arr = _convert(spec, feed[spec.name])
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} must have {len(spec.shape)} dimensions {_fmt(spec.shape)}; got shape {arr.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(want, int):
                if want != got:
                    raise InputError(
                        f"input {spec.name!r} axis {axis} must be {want} {_fmt(spec.shape)}; got shape {arr.shape}"
                    )
            elif want in dims and dims[want][0] != got:
                size, where = dims[want]
                raise InputError(f"{want} size differs: {size} in {where} but {got} in {spec.name!r}")
            else:
                dims.setdefault(want, (got, repr(spec.name)))
        out[spec.name] = arr
    for spec in specs:
        if spec.role == "lengths" and spec.name in out:
            _check_lengths(out[spec.name], dims)
    if pending_lengths is not None:
        batch = dims.get("batch", (1, ""))[0]
        if "time" not in dims:
            raise InputError(f"cannot infer {pending_lengths.name!r}; pass it explicitly")
        out[pending_lengths.name] = np.full(batch, dims["time"][0], dtype=np.dtype(pending_lengths.dtype))
    return {s.name: out[s.name] for s in specs if s.name in out}


def _convert(spec: TensorSpec, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    want = np.dtype(spec.dtype)
    if want.kind == "f":
        if arr.dtype.kind not in "f":
            raise InputError(f"input {spec.name!r} must be floating point ({spec.dtype}); got {arr.dtype}")
        arr = arr.astype(want, copy=False)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"input {spec.name!r} has {bad} non-finite value(s) (NaN or inf)")
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iu":
        raise InputError(f"input {spec.name!r} must be integer ({spec.dtype}); got {arr.dtype}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _check_lengths(lengths: np.ndarray, dims: dict[str, tuple[int, str]]) -> None:
    total = dims.get("time", (None, ""))[0]
    if lengths.size and (lengths.min() < 1 or (total is not None and lengths.max() > total)):
        raise InputError(f"every length must be in 1..{total} (the padded length); got {lengths.tolist()}")


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
