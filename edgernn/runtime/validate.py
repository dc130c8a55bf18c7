"""Input checks made before onnxruntime sees the data, so errors say what was expected and what came."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, ModelFormatError
from ..manifest import TensorSpec


def check_feed(
    specs: Sequence[TensorSpec],
    feed: Mapping[str, Any],
    *,
    fill_lengths: bool = True,
    limits: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Validate and convert ``feed`` against the model's input specs; returns arrays of the graph's dtypes.

    ``limits`` bounds integer inputs that index a table (token ids: ``Model.index_limits``): each value must be in
    ``0..limit-1``, as torch's Embedding demands, where ONNX's Gather would count a negative id from the end.

    A missing ``lengths`` input (role ``lengths``) is filled with the full length of each sequence. A model that
    takes its padding as a float mask (role ``mask``: exports for NNAPI and CoreML) may be fed ``lengths`` like
    any other: the mask (batch, time) is made from them here, on the host; without either, every step is real.
    """
    names = [s.name for s in specs]
    mask_spec = next((s for s in specs if s.role == "mask"), None)
    host_lengths = None
    if mask_spec is not None and mask_spec.name not in feed and "lengths" in feed and "lengths" not in names:
        feed = dict(feed)
        host_lengths = feed.pop("lengths")
    unknown = set(feed) - set(names)
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(sorted(unknown))}; this model takes: {', '.join(names)}")
    dims: dict[str, tuple[int, str]] = {}  # named axis -> (size, where it was seen)
    out: dict[str, np.ndarray] = {}
    pending_lengths = None
    for spec in specs:
        if spec.name not in feed:
            if spec.role in ("lengths", "mask") and fill_lengths:
                pending_lengths = spec
                continue
            raise InputError(f"missing input {spec.name!r} (shape {_fmt(spec.shape)}, {spec.dtype})")
        arr = _convert(spec, feed[spec.name])
        if limits and spec.name in limits:
            check_ids(spec.name, arr, limits[spec.name])
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} must have {len(spec.shape)} dimensions {_fmt(spec.shape)}; got shape {arr.shape}"
            )
        named = spec.named_shape()  # a fixed axis keeps its name (time fixed to an unroll length, a static batch)
        if 0 in arr.shape:  # onnxruntime crashes on some empty batches (SIGSEGV)
            axis = arr.shape.index(0)
            what = {"batch": "sequence", "time": "step"}.get(str(named[axis]), "element")
            raise InputError(
                f"input {spec.name!r} has shape {arr.shape}: axis {axis} ({named[axis]}) is empty; "
                f"give at least one {what}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(want, int):
                if want != got:
                    raise InputError(
                        f"input {spec.name!r} axis {axis} must be {want} {_fmt(spec.shape)}; got shape {arr.shape}"
                    )
                if isinstance(named[axis], str):
                    dims.setdefault(str(named[axis]), (got, repr(spec.name)))
            elif want in dims and dims[want][0] != got:
                size, where = dims[want]
                raise InputError(f"{want} size differs: {size} in {where} but {got} in {spec.name!r}")
            else:
                dims.setdefault(want, (got, repr(spec.name)))
        out[spec.name] = arr
    for spec in specs:
        if spec.role == "lengths" and spec.name in out:
            _check_lengths(out[spec.name], dims)
        if spec.role == "mask" and spec.name in out:
            _check_mask(spec.name, out[spec.name])
    if pending_lengths is not None and pending_lengths.role == "mask":
        out[pending_lengths.name] = _mask_for(pending_lengths, host_lengths, dims)
    elif pending_lengths is not None:
        out[pending_lengths.name] = _full_lengths(pending_lengths, dims)
    return {s.name: out[s.name] for s in specs if s.name in out}


def _full_lengths(spec: TensorSpec, dims: dict[str, tuple[int, str]]) -> np.ndarray:
    """The lengths input ``spec`` left out of the feed: every sequence its full length."""
    if len(spec.shape) != 1:
        raise ModelFormatError(
            f"the model's lengths input {spec.name!r} has shape {_fmt(spec.shape)}: lengths are one per sequence, "
            "(batch,); re-export the model"
        )
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    batch = dims.get("batch", (fixed or 1, ""))[0]
    if "time" not in dims or (fixed is not None and fixed != batch):
        raise InputError(f"cannot infer {spec.name!r} {_fmt(spec.shape)}; pass it explicitly")
    return np.full(batch, dims["time"][0], dtype=np.dtype(spec.dtype))


def _convert(spec: TensorSpec, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    want = np.dtype(spec.dtype)
    if want.kind == "f":
        if arr.dtype.kind not in "f":
            raise InputError(f"input {spec.name!r} must be floating point ({spec.dtype}); got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"input {spec.name!r} has {bad} non-finite value(s) (NaN or inf)")
        with np.errstate(over="ignore"):
            cast = arr.astype(want, copy=False)
        if not np.all(np.isfinite(cast)):
            raise InputError(
                f"input {spec.name!r} has values beyond the range of {spec.dtype} (|x| > {np.finfo(want).max:g})"
            )
        return np.ascontiguousarray(cast)
    if want.kind == "b":  # bool: True/False, or whole numbers 0/1 (what text and JSON give)
        if arr.dtype.kind == "b":
            return np.ascontiguousarray(arr)
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise InputError(f"input {spec.name!r} is bool: give True/False (or 1/0); got {arr.dtype}")
        return np.ascontiguousarray(arr.astype(want))
    if arr.dtype.kind not in "iu":
        raise InputError(f"input {spec.name!r} must be integer ({spec.dtype}); got {arr.dtype}")
    info = np.iinfo(want)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):  # a cast would wrap around, silently
        raise InputError(f"input {spec.name!r} has values outside {spec.dtype}'s range {info.min}..{info.max}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def check_ids(name: str, ids: np.ndarray, limit: int, what: str = "input") -> None:
    """Token ids (an integer input that indexes a table of ``limit`` rows) must be in ``0..limit-1``."""
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        bad = ids[(ids < 0) | (ids >= limit)].reshape(-1)
        raise InputError(
            f"{what} {name!r} indexes a table of {limit} rows (an Embedding's vocabulary): ids must be in "
            f"0..{limit - 1}; got {int(bad[0])}"
            + (f" and {bad.size - 1} more" if bad.size > 1 else "")
            + (" (ONNX would count a negative id from the end, silently)" if (bad < 0).any() else "")
        )


def _check_lengths(lengths: np.ndarray, dims: dict[str, tuple[int, str]]) -> None:
    total = dims.get("time", (None, ""))[0]
    if lengths.size and (lengths.min() < 1 or (total is not None and lengths.max() > total)):
        raise InputError(f"every length must be in 1..{total} (the padded length); got {lengths.tolist()}")


def _size(d: int | str, dims: dict[str, tuple[int, str]]) -> int | None:
    return d if isinstance(d, int) else dims.get(d, (None, ""))[0]


def lengths_to_mask(lengths: Any, steps: int, dtype: Any = np.float32) -> np.ndarray:
    """(batch, steps) ones where t < lengths[b], zeros after: the float mask of NNAPI/CoreML exports."""
    lengths = np.asarray(lengths)
    return (np.arange(steps)[None, :] < lengths.reshape(-1, 1)).astype(dtype)


def _mask_for(spec: TensorSpec, lengths: Any, dims: dict[str, tuple[int, str]]) -> np.ndarray:
    if len(spec.shape) != 2:
        raise ModelFormatError(
            f"the model's padding mask {spec.name!r} has shape {_fmt(spec.shape)}; a mask is (batch, time)"
        )
    batch, steps = (_size(d, dims) for d in spec.shape)
    if batch is None or steps is None:
        raise InputError(f"cannot make {spec.name!r} {_fmt(spec.shape)} without the data input; pass it explicitly")
    if lengths is None:
        return np.ones((batch, steps), dtype=np.dtype(spec.dtype))
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise InputError(f"lengths must be integers; got {arr.dtype}")
    if arr.shape != (batch,):
        raise InputError(f"lengths must have shape ({batch},), one per sequence; got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        raise InputError(f"every length must be in 1..{steps} (the padded length); got {arr.tolist()}")
    return lengths_to_mask(arr, steps, np.dtype(spec.dtype))


def _check_mask(name: str, mask: np.ndarray) -> None:
    """A mask is ones then zeros along time, at least one step per sequence: what lengths in 1..T give."""
    if mask.ndim != 2:
        raise ModelFormatError(
            f"input {name!r} is a padding mask, which has two axes (batch, time); this model declares "
            f"{mask.ndim}, so edgernn cannot check or make it (name the input's role in the manifest)"
        )
    ok = np.isin(mask, (0.0, 1.0)).all() and (mask.shape[1] == 0 or (mask[:, 0] == 1).all())
    if ok and mask.shape[1] > 1:
        ok = bool((np.diff(mask, axis=1) <= 0).all())
    if not ok:
        raise InputError(
            f"input {name!r} must be a padding mask: per sequence, ones for its real steps then zeros (at least "
            "one step); pass lengths instead and edgernn makes it"
        )


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
