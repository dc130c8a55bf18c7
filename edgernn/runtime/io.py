"""Files and frame streams in and out of the runtime: what ``edgernn run`` reads and writes. numpy only.

Inputs: ``.npy`` (the data input), ``.npz`` (arrays by input name) and ``.csv`` (one sequence: rows are time
steps, columns features). Live frames: one per line of comma- or space-separated floats, or raw float32
(little-endian) frames of the model's feature size.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np

from ..errors import ConfigError, InputError, ModelFormatError
from ..files import write_atomic
from ..manifest import TensorSpec
from .layout import BATCH_NAMES, TIME_NAMES, Axes, infer_axes, parse_layout
from .model import Model
from .states import StatePair
from .stream import StreamingModel

INPUT_FORMATS = (".npy", ".npz", ".csv")
OUTPUT_FORMATS = (".npy", ".npz", ".csv")


def read_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """A CSV of floats as (rows, columns) float32; a first line that is not numbers is taken as a header."""
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise InputError(f"{name} is not text (a CSV of numbers is); is it a binary file?") from None
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rows.append([float(v) for v in text.replace(";", ",").split(",")])
        except ValueError:
            if not rows and lineno == 1:
                continue  # header
            raise InputError(f"{name}:{lineno}: not a row of numbers: {text[:80]!r}") from None
        if len(rows[-1]) != len(rows[0]):
            raise InputError(f"{name}:{lineno}: {len(rows[-1])} columns, but the first row has {len(rows[0])}")
    if not rows:
        raise InputError(f"{name} holds no rows of numbers")
    return np.asarray(rows, dtype=np.float32)


def _check_npy_size(path: str) -> None:
    """A .npy header states its shape; one that claims more data than the file holds (10**12 elements in a
    100-byte file) is refused before numpy tries to allocate for it."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return  # a newer header: numpy reads and checks it itself
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            start = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path!r} is not a readable .npy file: {str(e).splitlines()[0][:200]}") from None
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = os.path.getsize(path) - start
    if dtype.hasobject:
        raise InputError(f"{path!r} holds Python objects, not numbers; save a numeric array")
    if need > have:
        raise InputError(
            f"{path!r} claims shape {shape} ({need:,} bytes) but holds {have:,} bytes: truncated or forged"
        )


def read_inputs(path: str | os.PathLike[str], data_name: str) -> dict[str, np.ndarray]:
    """Arrays by input name from a .npy/.csv (the data input ``data_name``) or a .npz (by name; a single array
    saved without a name, ``arr_0``, is the data input)."""
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    if ext not in INPUT_FORMATS:
        raise ConfigError(
            f"input {p!r}: unknown format {ext or '(no extension)'}; use one of {', '.join(INPUT_FORMATS)}"
        )
    if not os.path.isfile(p):
        raise InputError(f"no input file at {p!r}")
    if ext == ".csv":
        return {data_name: read_csv(p)}
    if ext == ".npy":
        _check_npy_size(p)
    try:
        loaded = np.load(p, allow_pickle=False)  # never unpickle: an input file must not run code
        if ext == ".npy":
            return {data_name: loaded}
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, EOFError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{p!r} is not a readable {ext} file of numeric arrays: {first}") from None
    if list(arrays) == ["arr_0"]:
        return {data_name: arrays["arr_0"]}
    return arrays


def write_outputs(path: str | os.PathLike[str], outputs: Mapping[str, np.ndarray], primary: str) -> None:
    """.npy: the primary output; .npz: every output by name; .csv: the primary output as rows (one sequence)."""
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ConfigError(
            f"output {p!r}: unknown format {ext or '(no extension)'}; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    buf = io.BytesIO()
    if ext == ".npy":
        np.save(buf, outputs[primary])
    elif ext == ".npz":
        np.savez(buf, **dict(outputs))  # type: ignore[arg-type]  # numpy's stub takes kwargs for allow_pickle
    else:
        y = np.asarray(outputs[primary])
        while y.ndim > 2 and 1 in y.shape:
            y = np.squeeze(y, axis=y.shape.index(1))
        if y.ndim > 2:
            raise InputError(f"output {primary!r} has shape {y.shape}: more than rows x columns; write .npy or .npz")
        text = io.StringIO()
        np.savetxt(text, np.atleast_2d(y) if y.ndim == 1 else y, delimiter=",", fmt="%.9g")
        buf.write(text.getvalue().encode())
    write_atomic(p, buf.getvalue())  # a reader never sees half a file; a killed run leaves no stray file behind


def data_axes(spec: TensorSpec, layout: str | None) -> Axes | None:
    return parse_layout(layout, len(spec.shape), spec.name) if layout else infer_axes(spec.named_shape())


def complete_batch(arr: np.ndarray, spec: TensorSpec, axes: Axes | None) -> np.ndarray:
    """One sequence given without its batch axis (a CSV, a 2-D .npy) gets a batch axis of 1."""
    if arr.ndim == len(spec.shape) - 1 and axes is not None and axes.batch is not None:
        return np.expand_dims(arr, axes.batch)
    return arr


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    primary: str  # the output written to .npy / .csv
    provider: dict[str, Any]
    seconds: float
    streaming: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "seconds": round(self.seconds, 6),
            "streaming": self.streaming,
            "primary": self.primary,
            "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.outputs.items()},
            **self.info,
        }


def streaming_model(
    model: Model,
    states: Sequence[StatePair | str] | None,
    layout: str | None,
    constants: Mapping[str, Any] | None = None,
) -> StreamingModel | None:
    """The model as a StreamingModel when it has state (named, or in its manifest); else None."""
    if states or (model.manifest is not None and model.manifest.states):
        return StreamingModel(model, states=states, layout=layout, constants=constants)
    return None


def random_input(model: Model, data: TensorSpec, *, steps: int = 20, seed: int = 0) -> np.ndarray:
    """A seeded standard-normal input for ``data`` at the model's shapes: batch 1 (or the fixed batch), the
    fixed time length or ``steps`` (a multiple of a streaming model's chunk), the fixed feature sizes."""
    named = data.named_shape()
    shape = []
    for name, size in zip(named, data.shape, strict=True):
        if isinstance(size, int):
            shape.append(size)
        elif name == "batch" or str(name).lower() in BATCH_NAMES:
            shape.append(1)
        elif name == "time" or str(name).lower() in TIME_NAMES:
            shape.append(steps)
        else:
            raise ModelFormatError(
                f"input {data.name!r} has a dynamic axis {name!r} that is not batch or time; give --input instead"
            )
    return np.random.default_rng(seed).standard_normal(shape).astype(np.dtype(data.dtype))


def run_file(
    model: Model,
    input_path: str | os.PathLike[str] | None,
    lengths_path: str | os.PathLike[str] | None = None,
    *,
    states: Sequence[StatePair | str] | None = None,
    layout: str | None = None,
    random_steps: int | None = None,
    seed: int = 0,
) -> RunResult:
    """Run a model on an input file, or (``input_path`` None) on a seeded random input of ``random_steps``
    steps. A stateful model runs the whole sequence from its initial state, chunk by chunk
    (``StreamingModel.run_sequence``)."""
    sm = streaming_model(model, states, layout)
    named = input_path is not None and os.fspath(input_path).lower().endswith(".npz")
    if sm is None and named and len(model.data_inputs()) > 1:  # a .npz names each of several data inputs
        data = model.data_inputs()[0]
    else:
        data = sm.data if sm is not None else _single_data(model)
    if input_path is None:
        steps = random_steps or 20
        if sm is not None and sm.axes.time is not None:  # a whole sequence run in chunks: a multiple of the chunk
            k = sm.chunk or 1
            steps = max(k, steps - steps % k)
            names = list(data.named_shape())
            names[sm.axes.time] = "time"  # the graph fixes it to the chunk; the sequence is longer
            if sm.axes.batch is not None and sm.batch is not None:
                names[sm.axes.batch] = sm.batch  # a fixed-batch export (--batch N) runs N sequences at once
            data_seq = replace(
                data, shape=[n if isinstance(n, str) else d for n, d in zip(names, sm.shape, strict=True)], axes=None
            )
            x = random_input(model, data_seq, steps=steps, seed=seed)
        else:
            x = random_input(model, data, steps=steps, seed=seed)
        feed: dict[str, np.ndarray] = {data.name: x}
    else:
        feed = read_inputs(input_path, data.name)
    if lengths_path is not None:
        spec = next((s for s in model.inputs if s.role in ("lengths", "mask")), None)
        if spec is None:
            raise ModelFormatError("this model has no lengths input; pass sequences of one length without --lengths")
        name = "lengths" if spec.role == "mask" else spec.name  # a float-mask model's mask is made from them
        lengths = read_inputs(lengths_path, name)
        feed[name] = np.asarray(next(iter(lengths.values()))).reshape(-1)
    t0 = time.perf_counter()
    if sm is not None:
        extra = set(feed) - {data.name}
        if extra:
            raise InputError(
                f"a stateful model is run from its initial state on {data.name!r} alone; got {', '.join(sorted(extra))}"
            )
        x = np.asarray(feed[data.name])
        if x.ndim == sm.axes.rank - 1 and sm.axes.batch is not None:
            x = np.expand_dims(x, sm.axes.batch)
        outputs = sm.run_sequence(x)
        primary = sm.primary
    else:
        if data.name in feed and len(model.data_inputs()) == 1:
            feed[data.name] = complete_batch(np.asarray(feed[data.name]), data, data_axes(data, layout))
        outputs = model.run_feed(feed)
        primary = model.output_names[0]
    seconds = time.perf_counter() - t0
    bad = [name for name, v in outputs.items() if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:  # finite inputs in, NaN out: the model itself is broken (exported with --no-verify?); write nothing
        raise ModelFormatError(
            f"the model computed non-finite values (NaN or inf) in {', '.join(bad)} from finite inputs; nothing was "
            "written. Check the model: edgernn parity CKPT MODEL"
        )
    return RunResult(outputs, primary, model.choice.to_dict(), seconds, streaming=sm is not None)


def _single_data(model: Model) -> TensorSpec:
    data = model.data_inputs()
    if len(data) != 1:
        raise ModelFormatError(
            f"this model takes {len(data)} data inputs ({', '.join(s.name for s in data)}); give them by name in a .npz"
        )
    return data[0]


# -- live frames ---------------------------------------------------------------------------------------------------


def text_frames(lines: IO[str], features: int | None, dtype: Any = np.float32) -> Iterator[np.ndarray]:
    """One frame per line of comma- or space-separated floats (integers for a token model's ids, ``dtype``
    int64); blank lines and # comments are skipped."""
    ints = np.dtype(dtype).kind in "iu"
    for lineno, line in enumerate(_decoded(lines), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            frame = np.array(text.replace(",", " ").split(), dtype=np.int64 if ints else np.float32)
        except (ValueError, OverflowError):
            what = "token ids (whole numbers)" if ints else "numbers"
            raise InputError(f"stdin line {lineno}: not a frame of {what}: {text[:80]!r}") from None
        if features is not None and frame.size != features:
            raise InputError(f"stdin line {lineno}: {frame.size} values, but the model takes {features} features")
        yield frame


def _decoded(lines: IO[str]) -> Iterator[str]:
    """The lines of a text stream; bytes that are not text end the stream with an InputError, not a traceback."""
    it = iter(lines)
    n = 0
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise InputError(
                f"stdin after line {n}: not text; send frames as lines of numbers, or use --binary"
            ) from None
        n += 1
        yield line


def binary_frames(data: IO[bytes], features: int) -> Iterator[np.ndarray]:
    """Raw little-endian float32 frames of ``features`` values each."""
    size = 4 * features
    n = 0
    while True:
        buf = _read_exact(data, size)
        if not buf:
            return
        if len(buf) < size:
            raise InputError(
                f"binary stdin ended inside frame {n + 1}: {len(buf)} of {size} bytes ({features} float32 values)"
            )
        n += 1
        yield np.frombuffer(buf, dtype="<f4").astype(np.float32)


def _read_exact(data: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes: pipes hand over data in pieces, so read until the frame is whole or input ends."""
    parts = []
    got = 0
    while got < size:
        chunk = data.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def format_row(values: np.ndarray) -> str:
    return ",".join(f"{v:.9g}" for v in np.asarray(values, dtype=np.float64).reshape(-1))


def run_stream(
    sm: StreamingModel,
    stdin: IO[Any],
    stdout: IO[Any],
    *,
    binary: bool = False,
    notes: IO[str] | None = None,
) -> int:
    """Serve one live stream: read frames, run each chunk as soon as it is complete, write its outputs (one line,
    or one raw float32 record, per time step of the output: K lines per chunk of K for a per-step output, one
    line per chunk for a last-step readout) and flush. Frames left at the end that do not fill a chunk are not
    run; ``notes`` is told. Returns the number of frames read."""
    k = sm.chunk or 1
    if binary and sm.dtype.kind != "f":
        raise ConfigError(f"--binary streams float32 frames; {sm.data.name!r} takes {sm.dtype} ids: send them as text")
    if binary and sm.features is None:
        raise ModelFormatError(f"the feature size of {sm.data.name!r} is not fixed in the graph; --binary needs it")
    ax = sm.axes
    # a data input with no feature axis (token ids, layout "bt") in fixed chunks of k > 1: a line is one id, and
    # k of them make the chunk (k,); with k = 1 a line is passed as it is (a dynamic time axis takes a line of ids)
    bare = k > 1 and ax.rank - (ax.batch is not None) - (ax.time is not None) == 0
    features = 1 if bare else sm.features
    frames = binary_frames(stdin, features or 0) if binary else text_frames(stdin, features, sm.dtype)
    stream = sm.stream()
    primary = sm.outputs[0]
    time_axis = _time_axis_without_batch(primary.axes)
    pending: list[np.ndarray] = []
    count = 0
    for frame in frames:
        count += 1
        pending.append(frame)
        if len(pending) < k:
            continue
        y = stream.step(pending[0] if k == 1 else (np.concatenate if bare else np.stack)(pending))
        pending.clear()
        rows = [y] if time_axis is None else list(np.moveaxis(y, time_axis, 0))
        for row in rows:
            if binary:
                stdout.write(np.ascontiguousarray(row, dtype="<f4").tobytes())
            else:
                stdout.write(format_row(row) + "\n")
        stdout.flush()
    if pending and notes is not None:  # end of input inside a chunk: those frames cannot be run on their own
        notes.write(
            f"edgernn: the stream ended {len(pending)} frame(s) into a chunk of {k}; they were not run "
            f"(a chunk-{k} model runs whole chunks)\n"
        )
    return count


def _time_axis_without_batch(axes: Axes | None) -> int | None:
    if axes is None or axes.time is None:
        return None
    shift = 1 if axes.batch is not None and axes.batch < axes.time else 0
    return axes.time - shift
