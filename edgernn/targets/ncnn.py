"""Target `ncnn`: Tencent's ncnn, an inference engine for phones and boards (``pip install ncnn``), fed through
pnnx, its converter (``pip install --no-deps pnnx``: pnnx depends on torch, but only its executable is used, and
that reads ONNX without torch).

ncnn does not read ONNX: pnnx converts the ``.onnx`` to ncnn's ``.param`` (the graph, text) and ``.bin`` (the
weights). What converts and runs, measured with pnnx 20261020 and ncnn 1.0.20261020 (docs/engines/ncnn.md):

- `native` without lengths: pnnx lowers ONNX RNN/GRU/LSTM (bidirectional too) to ncnn's own RNN/GRU/LSTM
  layers, once ``for_ncnn`` has sliced each final state the model reads (``readout="last"``) out of the op's
  output sequence; with ``sequence_lens`` nothing honours the lengths, so `native` is taken only without them;
- `unroll` and `step` (the plain step and ``--fused``) in the forms NNAPI takes: batch fixed to 1 (ncnn has no
  batch axis), padding as a float ``mask`` input multiplied in (pnnx lowers no ``Less``: ``torch.lt not
  exists``), with ``edgernn.rewrite.ncnn_forms.for_ncnn`` applied (a Gemm's runtime addend as an Add);
- `loop`: never (pnnx crashes with SIGSEGV on every Scan).

Two defaults of the tools compute fp16 and must be turned off for fp32 parity (each alone costs ~5e-5): pnnx
stores the weights in fp16 unless given ``fp16=0`` (``to_ncnn`` gives it), and ncnn computes in fp16 storage on
CPUs with F16C/ARMv8.2 unless ``opt.use_fp16_storage/packed/arithmetic`` are off (``ncnn_net`` turns them off;
an app must do the same).

ncnn's ``Mat`` has no batch axis: it holds up to four axes (c, d, h, w). pnnx states, in the Python script it
writes beside the ``.param``, which axis of each input and output is the batch it dropped (``batch_index=0``
for the `native` forms: ``(1, T, F)`` is fed as a 2-D ``(T, F)`` Mat) or that none was dropped (``233``: the
`step` and `unroll` forms keep the leading 1 as the Mat's ``c``). The runner here reads those indices and uses
ncnn's own ``Mat(array, batch_index=k)`` / ``Mat.numpy(batch_index=k)`` to drop and restore that axis; an output
whose Mat came back with fewer axes but the same number of values (ncnn drops size-1 axes) is reshaped to the
ONNX output's shape, and any other shape is a failure.

The check on every export: pnnx converts the file, ncnn loads the ``.param``/``.bin``, and ncnn's outputs on the
parity cases (a padded sequence through the mask; for `step` a stream of frames with the state fed back) match
torch's (``ncnn_report``, or ``ncnn_runner`` as a parity runner).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    from ..verify.check import TargetReport
    from ..verify.parity import Runner, Tolerance

_NO_SCAN = "pnnx crashes (SIGSEGV) converting any ONNX Scan; use native (without lengths), unroll or step"


@dataclass(frozen=True)
class NcnnTarget(Target):
    def graph_form(self, proto: Any) -> Any:
        """No symbolic shapes beyond the inputs (pnnx reads the annotations as shapes to keep), each final state a
        recurrent op's reader takes sliced out of its output sequence (pnnx lowers the op only with that sequence
        read), and a Gemm whose added term is computed at run time as Gemm + Add (pnnx leaves it as F.linear)."""
        from ..rewrite.ncnn_forms import for_ncnn
        from ..rewrite.travel import for_bound_shapes

        return for_ncnn(for_bound_shapes(proto))

    def structure_report(self, model: Any) -> TargetReport:
        """pnnx converts the file to .param/.bin and ncnn loads it."""
        return ncnn_structure(model)

    def runners(self, model: Any) -> dict[str, Runner]:
        """ncnn on the converted file, fp32 throughout (its fp16 storage and arithmetic off)."""
        return {"ncnn": ncnn_runner(model)}


TARGET = register_target(
    NcnnTarget(
        name="ncnn",
        summary="Tencent ncnn via pnnx: native (no lengths), unroll or step; batch 1, padding as a float mask",
        strategies=("native", "unroll", "step"),
        padding="float-mask",
        static_batch=True,
        default_batch=1,
        check="ncnn",
        needs="ncnn",
        int8_products="ncnn has no DynamicQuantizeLinear layer (pnnx leaves it as an op it cannot lower)",
    ),
    why_not={"loop": _NO_SCAN},
)

NOT_INSTALLED = (
    "the ncnn target is checked with ncnn itself and its converter pnnx, which are not installed: "
    "pip install 'edgernn[ncnn]' && pip install --no-deps pnnx"
)
PNNX_TIMEOUT_S = 600.0  # a 2-layer bidirectional GRU unrolled over 20 steps takes ~40 s on a shared 2-core machine
NO_BATCH = 233  # ncnn's and pnnx's batch_index for "no batch axis dropped"
FP16_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_LOG = re.compile(r"\d{4}-\d\d-\d\d [\d:.]+ \[[WIE]:onnxruntime:[^\]]*\][^\n]*")
_ERROR_WORDS = re.compile(r"failed|error|not supported|unsupported|not exist|invalid|cannot|can't", re.IGNORECASE)


def pnnx_path() -> str | None:
    """The pnnx executable: the one inside the pip package ``pnnx`` (found without importing the package, whose
    ``__init__`` imports torch-using helpers), else ``pnnx`` on PATH; None when neither exists."""
    spec = importlib.util.find_spec("pnnx")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for name in ("pnnx", "pnnx.exe"):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return shutil.which("pnnx")


def ncnn_available() -> bool:
    """ncnn (the Python module) and the pnnx executable are both installed."""
    return importlib.util.find_spec("ncnn") is not None and pnnx_path() is not None


def _clean(text: str) -> str:
    return _ORT_LOG.sub("", _ANSI.sub("", text))


def pnnx_error(output: str) -> str:
    """pnnx's own first error line, one line, with the ONNX node and op it names when it names one: pnnx's errors
    come from the onnxruntime it embeds (``ort CreateSession failed ... In Node, ("node_scan__1", Scan, ...)``)
    or from its passes; when no line reads as an error, the last pass pnnx started (where it stopped)."""
    lines = [ln.strip() for ln in _clean(output).splitlines() if ln.strip()]
    first = next((ln for ln in lines if _ERROR_WORDS.search(ln) and not ln.startswith(("inputshape", "customop"))), "")
    if not first:
        passes = [ln for ln in lines if ln.endswith("...") or " ... " in ln or ln.startswith("#############")]
        first = f"stopped in {passes[-1].rstrip('.').strip()}" if passes else (lines[-1] if lines else "no output")
    node = re.search(r'In Node, \("([^"]*)", (\w+)', first) or re.search(r"Node \(([^)]*)\) Op \((\w+)\)", first)
    where = f" (node {node.group(1)}, op {node.group(2)})" if node else ""
    return (first[:300] + where)[:400]


@dataclass(frozen=True)
class NcnnFiles:
    """What pnnx wrote for one model: the ``.param``/``.bin`` and, by blob name (``in0``.., ``out0``..), the
    batch axis pnnx dropped from each (``NO_BATCH``: none), read from the script pnnx writes beside them."""

    param: str
    bin: str
    batch_index: Mapping[str, int]


def _proto(model: bytes | Any) -> Any:
    import onnx

    return onnx.load_from_string(model) if isinstance(model, bytes) else model


def _bytes(model: bytes | Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def _elem(elem_type: int) -> str:
    from onnx import TensorProto

    names: dict[int, str] = {
        int(TensorProto.FLOAT): "f32",
        int(TensorProto.INT64): "i64",
        int(TensorProto.INT32): "i32",
        int(TensorProto.FLOAT16): "f16",
    }
    if elem_type not in names:
        raise TargetError(f"ncnn: pnnx takes no input of ONNX element type {elem_type}")
    return names[elem_type]


def input_shapes(model: bytes | Any, shapes: Mapping[str, Sequence[int]] | None = None) -> str:
    """pnnx's ``inputshape=`` argument for ``model``'s graph inputs (``[1,20,3]f32,[1,20]f32``): the file's fixed
    dims, or ``shapes`` by input name for the inputs it names. A symbolic dim left unset (a `native` export's
    ``time``) is given as 20: pnnx takes the converted model as dynamic in it all the same."""
    proto = _proto(model)
    weights = {t.name for t in proto.graph.initializer}
    parts = []
    for value in proto.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        given = (shapes or {}).get(value.name)
        dims = [int(d) for d in given] if given is not None else [d.dim_value or 20 for d in tensor.shape.dim]
        parts.append("[" + ",".join(str(d) for d in dims) + "]" + _elem(tensor.elem_type))
    return ",".join(parts)


def _batch_indices(script: str) -> dict[str, int]:
    """``{"in0": 0, "out0": 0, ...}`` from pnnx's ``*_ncnn.py``: ``ncnn.Mat(in0.numpy(), batch_index=0)`` and
    ``out0.numpy(batch_index=0)``."""
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"\b(in\d+)\.numpy\(\), batch_index=(\d+)", script)}
    found.update({m.group(1): int(m.group(2)) for m in re.finditer(r"\b(out\d+)\.numpy\(batch_index=(\d+)\)", script)})
    return found


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def convert(
    model: bytes | Any,
    workdir: str | os.PathLike[str],
    *,
    name: str = "model",
    shapes: Mapping[str, Sequence[int]] | None = None,
    timeout: float = PNNX_TIMEOUT_S,
) -> NcnnFiles:
    """pnnx on ``model`` (bytes or an onnx.ModelProto, converted as written) with fp32 weights (``fp16=0``), run
    in a temporary folder that keeps its side files (``.pnnx.param``, ``.pnnxsim.onnx``, scripts) and is removed
    after; ``{name}.ncnn.param`` and ``{name}.ncnn.bin`` are moved into ``workdir``. ``TargetError`` with pnnx's
    own first error line (and the ONNX node it names) when it fails, crashes, times out or writes no ``.param``;
    ``TargetError(NOT_INSTALLED)`` when pnnx is not installed."""
    exe = pnnx_path()
    if exe is None:
        raise TargetError(NOT_INSTALLED)
    os.makedirs(workdir, exist_ok=True)
    shape_arg = input_shapes(model, shapes)
    with tempfile.TemporaryDirectory(prefix="edgernn-pnnx-") as tmp:
        with open(os.path.join(tmp, "model.onnx"), "wb") as f:
            f.write(_bytes(model))
        cmd = [exe, "model.onnx", f"inputshape={shape_arg}", "fp16=0"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetError(f"pnnx did not finish converting the model in {timeout:g} s") from None
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode < 0:
            raise TargetError(
                f"pnnx crashed ({_signal_name(-proc.returncode)}) converting the model: {pnnx_error(output)}"
            )
        param, weights = os.path.join(tmp, "model.ncnn.param"), os.path.join(tmp, "model.ncnn.bin")
        if proc.returncode != 0 or not (os.path.isfile(param) and os.path.isfile(weights)):
            rc = f"exit {proc.returncode}" if proc.returncode else "exit 0 but no .ncnn.param written"
            raise TargetError(f"pnnx cannot convert the model ({rc}): {pnnx_error(output)}")
        script = os.path.join(tmp, "model_ncnn.py")
        batch = _batch_indices(_read_text(script)) if os.path.isfile(script) else {}
        out_param = os.path.join(os.fspath(workdir), f"{name}.ncnn.param")
        out_bin = os.path.join(os.fspath(workdir), f"{name}.ncnn.bin")
        shutil.move(param, out_param)
        shutil.move(weights, out_bin)
    return NcnnFiles(out_param, out_bin, batch)


def to_ncnn(model_bytes: bytes, workdir: str | os.PathLike[str]) -> tuple[str, str]:
    """pnnx on an ONNX model (``convert``): the paths of the ``model.ncnn.param`` and ``model.ncnn.bin`` it wrote
    into ``workdir`` (what ``edgernn package --target ncnn`` ships)."""
    files = convert(model_bytes, workdir)
    return files.param, files.bin


def unknown_layers(param_path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(layer type, layer name) of each layer in a ``.param`` that this ncnn does not know: what pnnx rewrote into
    its torch-like graph but could not lower (``torch.unbind``, ``F.linear``, ``torch.lt``...). ncnn refuses the
    whole file at load for the first of them."""
    import ncnn

    unknown = []
    with open(param_path, encoding="utf-8") as f:
        for line in f.read().splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 2 and ncnn.layer_to_index(parts[0]) < 0:
                unknown.append((parts[0], parts[1]))
    return unknown


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """What the C library writes on file descriptor 2 inside the block (ncnn logs its errors there with
    fprintf, out of Python's reach), as lines in the yielded list once the block ends."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln.strip() for ln in sink.read().decode(errors="replace").splitlines() if ln.strip())


def ncnn_net(param: str | os.PathLike[str], weights: str | os.PathLike[str]) -> Any:
    """An ``ncnn.Net`` loaded from ``param``/``weights`` in fp32 (ncnn's fp16/bf16 storage and arithmetic, on by
    default where the CPU has them, turned off). ``TargetError`` naming the first layer ncnn does not know, or
    ncnn's own error line, when it cannot load them."""
    try:
        import ncnn
    except ImportError:
        raise TargetError(NOT_INSTALLED) from None
    unknown = unknown_layers(param)
    if unknown:
        kind, layer = unknown[0]
        kinds = sorted({k for k, _ in unknown})
        more = f"; {len(unknown)} such layers, of {', '.join(kinds)}" if len(unknown) > 1 else ""
        raise TargetError(
            f"ncnn cannot load the converted model: layer {kind} not exists or registered (layer {layer}: an op pnnx "
            f"could not lower to ncnn){more}"
        )
    net = ncnn.Net()
    for option in FP16_OPTIONS:
        setattr(net.opt, option, False)
    with _native_stderr() as log:
        rc_param = net.load_param(os.fspath(param))
        rc_bin = net.load_model(os.fspath(weights)) if rc_param == 0 else 0
    if rc_param != 0 or rc_bin != 0:
        what = "its .param" if rc_param != 0 else "its .bin"
        raise TargetError(f"ncnn cannot load {what}: {log[0] if log else f'rc {rc_param or rc_bin}'}")
    return net


class _Ncnn:
    """One model converted by pnnx and loaded in ncnn; runs feeds by ONNX input name."""

    def __init__(self, model: bytes | Any, converted: Any = None) -> None:
        if importlib.util.find_spec("ncnn") is None or pnnx_path() is None:
            raise TargetError(NOT_INSTALLED)
        proto = _proto(model)
        weights = {t.name for t in proto.graph.initializer}
        self.inputs = [v.name for v in proto.graph.input if v.name not in weights]
        self.outputs = [v.name for v in proto.graph.output]
        self.output_shapes = [[d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in proto.graph.output]
        if converted is not None:  # files ``convert`` wrote from this model already (what a package ships)
            self.files = converted
            self.net = ncnn_net(self.files.param, self.files.bin)
            return
        with tempfile.TemporaryDirectory(prefix="edgernn-ncnn-") as tmp:
            self.files = convert(proto, tmp)
            self.net = ncnn_net(self.files.param, self.files.bin)

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import ncnn

        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TargetError(f"ncnn: no value for the model's input(s) {', '.join(missing)}")
        with _native_stderr() as log:
            results = self._run(ncnn, feed)
        if isinstance(results, str):
            raise TargetError(f"ncnn fails running the model: {results}" + (f": {log[0]}" if log else ""))
        return results

    def _run(self, ncnn: Any, feed: Mapping[str, np.ndarray]) -> list[np.ndarray] | str:
        with self.net.create_extractor() as ex:
            for i, name in enumerate(self.inputs):
                blob = f"in{i}"
                value = np.ascontiguousarray(feed[name], dtype=np.float32)
                batch = self.files.batch_index.get(blob, NO_BATCH)
                if batch != NO_BATCH and (batch >= value.ndim or value.shape[batch] != 1):
                    return f"input {name} of shape {value.shape}: ncnn has no batch axis and pnnx dropped axis {batch}"
                mat = ncnn.Mat(value, batch_index=batch) if batch != NO_BATCH else ncnn.Mat(value)
                if ex.input(blob, mat.clone()) != 0:
                    return f"blob {blob} (input {name}) is not an input of the converted model"
            outs: list[np.ndarray] = []
            for i, (name, shape) in enumerate(zip(self.outputs, self.output_shapes, strict=True)):
                blob = f"out{i}"
                rc, mat = ex.extract(blob)
                if rc != 0:
                    return f"extracting {blob} (output {name}) failed with rc {rc}"
                batch = self.files.batch_index.get(blob, NO_BATCH)
                got = np.array(mat.numpy(batch_index=batch) if batch != NO_BATCH else mat.numpy(), copy=True)
                outs.append(_as_onnx_shape(got, shape))
        return outs


def _as_onnx_shape(value: np.ndarray, shape: Sequence[int | None]) -> np.ndarray:
    """ncnn's output in the ONNX output's shape (None: a dynamic dim) when the two differ only in size-1 axes
    (ncnn's Mat drops them, and has no batch axis); as it came otherwise, so the comparison fails on the shape."""
    dims = list(shape)
    unknown = [i for i, d in enumerate(dims) if d is None]
    if len(unknown) > 1:
        return value
    if unknown:
        known = int(np.prod([d for d in dims if d is not None]))
        if known == 0 or value.size % known:
            return value
        dims[unknown[0]] = value.size // known
    target = [int(d) for d in dims if d is not None]
    if tuple(value.shape) == tuple(target) or value.size != int(np.prod(target)):
        return value
    if [d for d in value.shape if d != 1] != [d for d in target if d != 1]:
        return value
    return value.reshape(target)


def ncnn_runner(model: bytes | Any, converted: Any = None) -> Runner:
    """ncnn on ``model`` (bytes or an onnx.ModelProto, converted by pnnx as written) as a parity runner: feeds by
    ONNX input name, outputs in the graph's output order and shapes. ``TargetError`` with pnnx's or ncnn's own
    first error line when the model does not convert, load or run; ``TargetError(NOT_INSTALLED)`` naming the
    extras when ncnn or pnnx is not installed. ``converted``: what ``convert`` wrote from ``model`` already."""
    engine = _Ncnn(model, converted)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return engine.run(feed)

    return run


def _failure(e: TargetError) -> TargetReport:
    from ..verify.check import TargetReport

    return TargetReport("ncnn", None if str(e) == NOT_INSTALLED else False, str(e))


def ncnn_structure(model: bytes | Any) -> TargetReport:
    """Does pnnx convert ``model`` and ncnn load the result? The ncnn target's structure check, before any number
    is compared: passed None when ncnn or pnnx is not installed, False with pnnx's or ncnn's own error line."""
    from ..verify.check import TargetReport

    try:
        _Ncnn(model)
    except TargetError as e:
        return _failure(e)
    return TargetReport("ncnn", True, "pnnx converts the model and ncnn loads it (fp32 weights and arithmetic)")


def ncnn_report(
    model: bytes | Any,
    feeds: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Sequence[np.ndarray]],
    tolerance: Tolerance | None = None,
    *,
    states: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
) -> TargetReport:
    """The ncnn target's check: ``model`` converted by pnnx, loaded in ncnn, run on each feed, and its outputs
    compared with ``expected`` (per feed, the reference outputs in the graph's output order: torch's at export)
    within ``tolerance`` (default 1e-5 absolute, no relative part).

    ``states`` (state input name -> state output name, a `step` export's manifest states): the feeds are the
    frames of one stream, in order; the state inputs of the first feed are the initial state, and every later
    feed's state inputs are replaced by ncnn's own state outputs of the call before (fed back, never taken from
    the reference). ``expected`` then holds the reference's outputs per frame (torch on the whole sequence, cut
    per frame, and its final state on the last frame).

    passed None: ncnn or pnnx is not installed (the summary names the extras). passed False: pnnx cannot convert
    the file, ncnn cannot load or run it (their own first error line and the node/layer it names), or an output
    differs (the worst case named).
    """
    from ..verify.check import TargetReport
    from ..verify.parity import Tolerance, compare

    tol = tolerance or Tolerance(atol=1e-5, rtol=0.0)
    if len(feeds) != len(expected):
        raise ValueError(f"ncnn_report: {len(feeds)} feeds but {len(expected)} expected output lists")
    names = list(labels) if labels is not None else [f"case {i}" for i in range(len(feeds))]
    try:
        engine = _Ncnn(model)
    except TargetError as e:
        return _failure(e)
    by_output = {name: i for i, name in enumerate(engine.outputs)}
    carried: dict[str, np.ndarray] = {}
    worst = 0.0
    cases: list[dict[str, Any]] = []
    for label, feed, want in zip(names, feeds, expected, strict=True):
        try:
            got = engine.run({**feed, **carried})
        except TargetError as e:
            return TargetReport("ncnn", False, f"{label}: {e}", parity={"cases": cases, "passed": False})
        if states:
            carried = {i: got[by_output[o]] for i, o in states.items() if o in by_output}
        if len(got) < len(want):
            return TargetReport("ncnn", False, f"{label}: ncnn returned {len(got)} outputs, expected {len(want)}")
        for i, (w, g) in enumerate(zip(want, got, strict=False)):
            max_abs, max_rel, ok = compare(w, g, tol)
            cases.append({"case": label, "output": i, "max_abs": max_abs, "max_rel": max_rel, "passed": ok})
            if np.isfinite(max_abs):
                worst = max(worst, max_abs)
            if not ok:
                shape = f" (shape {tuple(g.shape)} vs {tuple(np.shape(w))})" if np.shape(w) != g.shape else ""
                return TargetReport(
                    "ncnn",
                    False,
                    f"ncnn: {label} output {i} ({engine.outputs[i]}) differs from the reference: max abs "
                    f"{max_abs:.3g}, rel {max_rel:.3g} over atol {tol.atol:g}{shape}",
                    parity={"cases": cases, "passed": False, "max_abs": worst},
                )
    kind = f"a stream of {len(feeds)} frames, state fed back" if states else f"{len(feeds)} case(s)"
    summary = f"pnnx converts the model, ncnn loads it and matches on {kind} (max abs {worst:.2e})"
    return TargetReport("ncnn", True, summary, parity={"cases": cases, "passed": True, "max_abs": worst})
