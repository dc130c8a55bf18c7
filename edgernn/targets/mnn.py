"""Target `mnn`: Alibaba's MNN, an inference engine embedded in apps (``pip install MNN``), run from its own
``.mnn`` format, which MNN's converter makes from the ONNX file.

What MNN 3.6 takes of edgernn's exports (measured; docs/engines/mnn.md has the numbers and reproductions):

- `native` converts and matches torch *without lengths*. With a runtime ``sequence_lens`` MNN computes every
  sequence at full length: the converter prints "MNN LSTM not support sequence_lens ... the result may has error"
  (RNN, LSTM) and the padded rows come out wrong, or (GRU) fails to convert. So padded batches are masked in plain
  ops (``Less``/``Where``, which MNN takes) and `native` is taken only without lengths;
- `unroll` (masking in plain ops, or the float mask) and `step` (plain or ``--fused``) convert and match;
- `loop` does not convert: MNN has no ``Scan`` ("These Op Not Support: ONNX::Scan");
- its converter's default lowering of an ONNX LSTM to a ``While`` loop crashes the converter (a memory fault, no file
  written) when the LSTM node does not name all three outputs, as torch's exporter writes it; MNN's own RNN
  kernels (``--useOriginRNNImpl``) convert every cell, so edgernn always passes that flag.

The converter runs in a child process (it can crash) through the wheel's compiled extension ``_tools``. **Never
through the ``mnnconvert``/``mnnquant`` console scripts nor anything under ``MNN.tools``**: importing
``MNN.tools`` imports ``MNN.tools.utils.log``, which runs ``pip install -U aliyun-log-python-sdk`` and sends a
usage log to a host outside this machine. The child also installs an audit hook that stops it at any attempt to
open a socket or start a process.

The check on every export: the file converts to ``.mnn``, MNN loads it (``MNN.nn.load_module_from_file``) and its
outputs match torch's on the parity cases (``mnn_report``, or ``mnn_runner`` as a parity runner).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    from ..verify.check import TargetReport
    from ..verify.parity import Runner, Tolerance

_NO_SCAN = 'MNN\'s converter has no ONNX Scan ("These Op Not Support: ONNX::Scan")'


@dataclass(frozen=True)
class MnnTarget(Target):
    def graph_form(self, proto: Any) -> Any:
        """A bidirectional recurrent op's final state read from its output sequence (MNN gets the reverse
        direction's Y_h wrong: ``edgernn.rewrite.ncnn_forms.final_state_from_sequence``, made for ncnn)."""
        from ..rewrite.ncnn_forms import final_state_from_sequence

        return final_state_from_sequence(proto)

    def reduced_graph_form(self, proto: Any) -> Any:
        """An fp16 file's zero state filled in fp32 and cast (``edgernn.rewrite.travel.fp32_fills``): MNN's
        converter reads an fp16 fill's bytes as an fp32, a different number on each conversion."""
        from ..rewrite.travel import fp32_fills

        return fp32_fills(proto)

    def structure_report(self, model: Any) -> TargetReport:
        """MNN's converter writes the .mnn and MNN loads it."""
        return mnn_structure(model)

    def runners(self, model: Any) -> dict[str, Runner]:
        """MNN on the converted file."""
        return {"mnn": mnn_runner(model)}


TARGET = register_target(
    MnnTarget(
        name="mnn",
        summary="Alibaba MNN (.mnn via MNN's converter): native (without lengths), unroll, step; padding masked",
        strategies=("native", "unroll", "step"),
        padding="masking",
        check="mnn",
        needs="mnn",
        int8_products="MNN's DynamicQuantizeLinear returns NaN for an all-zero tensor (every stream's first state)",
    ),
    why_not={"loop": _NO_SCAN},
)

NOT_INSTALLED = "the mnn target is checked with MNN itself, which is not installed: pip install 'edgernn[mnn]'"

# Always passed to MNN's converter: MNN's own RNN/LSTM/GRU kernels instead of its default lowering to a While loop,
# which crashes the converter on the LSTM nodes torch writes (only output Y named) and for GRU computes a runtime
# sequence_lens wrong without a word. With it every cell converts, and a sequence_lens is refused or warned about.
CONVERTER_FLAGS = ("--useOriginRNNImpl",)

# The child process that runs the converter: the compiled extension only (never MNN.tools, see above), with an
# audit hook that ends it before any socket is opened or process started. argv: source .onnx, destination .mnn,
# then converter flags.
_GUARD = """
import os, sys
def _guard(event, args):
    if event.startswith(("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn")):
        sys.stderr.write("edgernn: MNN's converter tried " + event + "; stopped\\n")
        sys.stderr.flush()
        os._exit(70)
sys.addaudithook(_guard)
"""
_CONVERT = (
    _GUARD
    + """
import _tools
src, dst = sys.argv[1], sys.argv[2]
_tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", src, "--MNNModel", dst, "--bizCode", "edgernn",
                   *sys.argv[3:]])
"""
)

# MNN converter output lines that mean the .mnn is missing or computes something else than the .onnx
_FAILURE = re.compile(r"Not Support|not support|Don't support|failed|Failed|tried .*; stopped")
# the line that names the converted graph's node: "Convert Onnx's Op val_18 , type = GRU, failed"
_OP_NAMED = re.compile(r"Op (\S+) , type = (\w+)")
_OP_TYPE = re.compile(r"ONNX::(\w+)")
_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] :\d+: ")
_SEQUENCE_LENS = re.compile(r"sequence_lens", re.IGNORECASE)


def mnn_available() -> bool:
    """MNN's wheel is installed: its Python package and the converter's extension module (``_tools``)."""
    return importlib.util.find_spec("MNN") is not None and importlib.util.find_spec("_tools") is not None


def _bytes(model: bytes | Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def _proto(model: bytes | Any) -> Any:
    import onnx

    return onnx.load_from_string(model) if isinstance(model, bytes) else model


def _first_node(model: bytes | Any, op_type: str, *, sequence_lens: bool = False) -> str | None:
    """The first node of ``op_type`` in the top graph (with a sequence_lens input, when asked), as MNN's messages
    name an op type but not the node."""
    for node in _proto(model).graph.node:
        if node.op_type == op_type and (not sequence_lens or (len(node.input) > 4 and node.input[4])):
            return node.name or node.output[0]
    return None


def _clean(line: str) -> str:
    """A converter line without its time and source-line prefix ("[03:56:23] :220: ")."""
    return _STAMP.sub("", line.strip())


def converter_error(output: str, model: bytes | Any | None = None) -> str | None:
    """MNN's converter's first error line in ``output`` and the node it names (from the ONNX model where MNN
    names only the op type); None when the output says nothing went wrong."""
    line = next((_clean(ln) for ln in output.splitlines() if _FAILURE.search(ln)), None)
    if line is None:
        return None
    named = _OP_NAMED.search(line)
    if named:
        return f"{line} (node {named.group(1)!r} {named.group(2)})"
    if model is None:
        return line
    typed = _OP_TYPE.search(line)
    if _SEQUENCE_LENS.search(line):  # MNN says "LSTM" for every recurrent op here: name the first with lengths
        found = next(
            ((n, op) for op in ("RNN", "GRU", "LSTM") if (n := _first_node(model, op, sequence_lens=True))), None
        )
    elif typed:
        node = _first_node(model, typed.group(1))
        found = (node, typed.group(1)) if node else None
    else:
        found = None
    return f"{line} (node {found[0]!r} {found[1]})" if found else line


@dataclass(frozen=True)
class Converted:
    """One run of MNN's converter: the .mnn written (None when none was), the child's exit status (negative: the
    signal that ended it) and everything it printed."""

    path: Path | None
    returncode: int
    output: str


def run_converter(
    model: bytes | Any,
    workdir: str | os.PathLike[str],
    flags: Sequence[str] | None = None,
    *,
    timeout: float = 300.0,
) -> Converted:
    """MNN's converter on ``model`` (ONNX bytes or a ModelProto) in ``workdir`` (``model.onnx`` -> ``model.mnn``),
    judged by nothing: what it wrote, its exit status and its output (``to_mnn`` judges them). ``flags``: the
    converter's options, ``CONVERTER_FLAGS`` when None.

    It runs in a child process through the wheel's compiled extension (``_tools.mnnconvert``), never the
    ``mnnconvert`` console script nor ``MNN.tools``: those install and call a logging SDK that sends a usage log
    outside this machine. The child stops itself at any socket or process it would open (an audit hook).
    ``TargetError`` naming the pip extra when MNN is not installed, or when the converter runs past ``timeout``.
    """
    if not mnn_available():
        raise TargetError(NOT_INSTALLED)
    out_dir = Path(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src, dst = out_dir / "model.onnx", out_dir / "model.mnn"
    src.write_bytes(_bytes(model))
    if dst.exists():
        dst.unlink()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CONVERT, str(src), str(dst), *(CONVERTER_FLAGS if flags is None else flags)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise TargetError(f"MNN's converter did not finish in {timeout:g} s") from None
    written = dst if dst.exists() and dst.stat().st_size > 0 else None
    return Converted(written, proc.returncode, proc.stdout + proc.stderr)


def to_mnn(model_bytes: bytes | Any, workdir: str | os.PathLike[str], *, timeout: float = 300.0) -> Path:
    """``model_bytes`` (an ONNX model, bytes or ModelProto) converted to ``workdir/model.mnn`` by MNN's own
    converter with ``CONVERTER_FLAGS`` (``run_converter``: a child process, the compiled extension, never the
    console script); the path written. What the converter prints is captured, not shown.

    ``TargetError`` with the converter's first error line and the node it names when it reports a failure,
    writes nothing, crashes, or warns that it will ignore ``sequence_lens`` (MNN would compute the padding as
    data); ``TargetError`` naming the pip extra when MNN is not installed.
    """
    data = _bytes(model_bytes)
    done = run_converter(data, workdir, timeout=timeout)
    error = converter_error(done.output, data)
    if done.returncode != 0:
        last = next((ln.strip() for ln in reversed(done.output.splitlines()) if ln.strip()), "no output")
        how = f"crashed (signal {-done.returncode})" if done.returncode < 0 else f"exited {done.returncode}"
        raise TargetError(f"MNN's converter {how} without writing a file: {error or _clean(last)}")
    if error:
        raise TargetError(f"MNN's converter: {error}")
    if done.path is None:
        raise TargetError("MNN's converter wrote no file and named no error")
    return done.path


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """What MNN's C++ code prints on file descriptors 1 and 2 while inside, captured (the list holds the text
    on exit) instead of printed: it would land in `edgernn check --json`'s output otherwise."""
    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(ln for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())


def _mnn_line(e: BaseException, printed: Sequence[str]) -> str:
    """MNN's own first line: what its C++ code printed, else the exception's first line."""
    line = next((ln.strip() for ln in printed if not ln.startswith("The device supports")), None)
    if line:
        return line[:400]
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


class _Mnn:
    """One ONNX model converted to ``.mnn`` (``to_mnn``, or ``converted``: a .mnn made from it already) and
    loaded in MNN (CPU, fp32: precision High)."""

    def __init__(self, model: bytes | Any, converted: Path | None = None) -> None:
        proto = _proto(model)
        weights = {t.name for t in proto.graph.initializer}
        self.inputs = [v.name for v in proto.graph.input if v.name not in weights]
        self.outputs = [v.name for v in proto.graph.output]
        self._dir = tempfile.TemporaryDirectory(prefix="edgernn-mnn-")
        path = converted or to_mnn(proto, self._dir.name)
        printed: list[str] = []
        try:
            with _captured() as printed:
                import MNN.expr as F
                import MNN.nn

                self._F = F
                self.module = MNN.nn.load_module_from_file(
                    str(path), self.inputs, self.outputs, precision_mode=F.PrecisionMode.High
                )
        except ImportError:
            raise TargetError(NOT_INSTALLED) from None
        except Exception as e:
            raise TargetError(f"MNN cannot load the converted model: {_mnn_line(e, printed)}") from None
        if self.module is None:
            raise TargetError(f"MNN cannot load the converted model: {_mnn_line(RuntimeError('no module'), printed)}")

    def _var(self, name: str, value: np.ndarray) -> Any:
        F = self._F
        if value.dtype == np.float32:
            return F.const(np.ascontiguousarray(value), list(value.shape), F.NCHW, F.float)
        if value.dtype in (np.int64, np.int32):  # MNN computes integers in int32
            ints = np.ascontiguousarray(value.astype(np.int32))
            if not np.array_equal(ints, value):
                raise TargetError(f"mnn: input {name} holds values beyond int32, which MNN computes integers in")
            return F.const(ints, list(value.shape), F.NCHW, F.int)
        raise TargetError(f"mnn: input {name} has dtype {value.dtype}; this check feeds MNN float32 and integers")

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TargetError(f"mnn: no value for the model's input(s) {', '.join(missing)}")
        values = [self._var(n, np.asarray(feed[n])) for n in self.inputs]
        printed: list[str] = []
        try:
            with _captured() as printed:
                outs = self.module.forward(values)
                got = []
                for v in outs:
                    if v.data_format == self._F.NC4HW4:
                        v = self._F.convert(v, self._F.NCHW)
                    got.append(np.array(v.read(), copy=True))
        except Exception as e:
            raise TargetError(f"MNN fails running this model: {_mnn_line(e, printed)}") from None
        if len(got) != len(self.outputs):
            raise TargetError(
                f"MNN returned {len(got)} outputs for the model's {len(self.outputs)}: "
                f"{_mnn_line(ValueError('no message'), printed)}"
            )
        return got


def mnn_runner(model: bytes | Any, converted: Path | None = None) -> Runner:
    """MNN on ``model`` (ONNX bytes or a ModelProto), converted to ``.mnn`` once (``to_mnn``; or ``converted``, a
    .mnn already made from it) and loaded once, as a parity runner: outputs in the graph's output order.
    ``TargetError`` with MNN's own first error line (and the node it names) when the converter or MNN refuses
    it; naming the pip extra when MNN is not installed."""
    engine = _Mnn(model, converted)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return engine.run(feed)

    return run


def mnn_structure(model: bytes | Any) -> TargetReport:
    """Does MNN's converter take ``model`` and MNN load the result? The mnn target's structure check (no numbers
    compared): passed None when MNN is not installed, False with MNN's first error line and the node it names."""
    from ..verify.check import TargetReport

    try:
        _Mnn(model)
    except TargetError as e:
        return TargetReport("mnn", None if str(e) == NOT_INSTALLED else False, str(e))
    return TargetReport("mnn", True, "MNN's converter writes the .mnn and MNN loads it")


def _not_checked(e: TargetError) -> TargetReport:
    from ..verify.check import TargetReport

    return TargetReport("mnn", None if str(e) == NOT_INSTALLED else False, str(e))


def mnn_report(
    model: bytes | Any,
    feeds: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Sequence[np.ndarray]],
    tolerance: Tolerance | None = None,
    *,
    labels: Sequence[str] | None = None,
    states: Sequence[tuple[str, str]] | None = None,
) -> TargetReport:
    """The mnn target's check: ``model`` converted by MNN's converter, loaded in MNN, run on each feed, and its
    outputs compared with ``expected`` (per feed, the reference outputs in the graph's output order: torch's at
    export) within ``tolerance`` (fp32's by default: 1e-5 abs).

    ``states`` (pairs of state input and state output names, for a `step` export) makes the feeds one stream:
    from the second call on, each state input is MNN's own state output of the call before (the values given in
    those feeds are replaced), so a stream of frames with the state fed back is compared, frame by frame, with
    the reference on the whole sequence.

    passed None: MNN is not installed (the summary names the pip extra). passed False: the converter or MNN
    refuses the file (MNN's own first error line and the node it names) or an output differs (the worst named).
    """
    from ..verify.check import TargetReport
    from ..verify.parity import compare
    from ..verify.parity import tolerance as tolerance_for

    tol = tolerance or tolerance_for("fp32")
    if len(feeds) != len(expected):
        raise ValueError(f"mnn_report: {len(feeds)} feeds but {len(expected)} expected output lists")
    names = list(labels) if labels is not None else [f"case {i}" for i in range(len(feeds))]
    try:
        engine = _Mnn(model)
    except TargetError as e:
        return _not_checked(e)
    state_out = {out: inp for inp, out in (states or ())}
    carried: dict[str, np.ndarray] = {}
    worst = 0.0
    cases: list[dict[str, Any]] = []
    for label, feed, want in zip(names, feeds, expected, strict=True):
        try:
            got = engine.run({**feed, **carried})
        except TargetError as e:
            return TargetReport("mnn", False, f"{label}: {e}", parity={"cases": cases, "passed": False})
        if len(got) < len(want):
            return TargetReport("mnn", False, f"{label}: MNN returned {len(got)} outputs, expected {len(want)}")
        if states:
            carried = {state_out[o]: g for o, g in zip(engine.outputs, got, strict=True) if o in state_out}
        for i, (w, g) in enumerate(zip(want, got, strict=False)):
            max_abs, max_rel, ok = compare(w, g, tol)
            cases.append({"case": label, "output": engine.outputs[i], "max_abs": max_abs, "max_rel": max_rel})
            cases[-1]["passed"] = ok
            worst = max(worst, max_abs)
            if not ok:
                shape = f" (shape {tuple(g.shape)} vs {tuple(np.shape(w))})" if np.shape(w) != g.shape else ""
                return TargetReport(
                    "mnn",
                    False,
                    f"mnn: {label} output {engine.outputs[i]} differs from the reference: max abs {max_abs:.3g}, "
                    f"rel {max_rel:.3g} over atol {tol.atol:g}{shape}",
                    parity={"cases": cases, "passed": False, "max_abs": worst},
                )
    calls = f"a stream of {len(feeds)} calls, the state fed back" if states else f"{len(feeds)} case(s)"
    summary = f"MNN's converter writes the .mnn and MNN runs {calls}; outputs match (max abs {worst:.2e})"
    return TargetReport("mnn", True, summary, parity={"cases": cases, "passed": True, "max_abs": worst})
