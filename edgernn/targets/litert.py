"""Target `litert`: Google's LiteRT (formerly TensorFlow Lite), run from its own ``.tflite`` format, which onnx2tf
makes from the ONNX file (``pip install 'edgernn[litert]'``: TensorFlow and ai-edge-litert, the interpreter, then
``pip install --no-deps 'onnx2tf>=1.29,<2'``: onnx2tf 1.x pins numpy 1.x, onnx and onnxruntime exactly).

onnx2tf converts through TensorFlow and re-lays tensors out (ONNX's NCW/NCHW to TensorFlow's NWC/NHWC); what it
takes of edgernn's exports, measured with onnx2tf 1.29.24, TensorFlow 2.21 and ai-edge-litert 2.3
(docs/engines/litert.md has the reproductions):

- `unroll` and `step` in the forms NNAPI takes: batch fixed to 1, fixed shapes, padding as a float ``mask`` input
  multiplied in; each input keeps its ONNX shape (onnx2tf's ``keep_shape_absolutely_input_names``), and a row of
  a stacked state is read where it is made (``read_stacked_directly``): onnx2tf moves the axes of the stacked
  3-D state (layers, 1, hidden) and then gathers along the wrong axis (the top layer's readout came out with
  every layer's values);
- `native` is refused up front: onnx2tf fixes its dynamic time axis at 1; `loop` too: onnx2tf fails on its Scan
  ("TypeError: 'KerasTensor' object cannot be interpreted as an integer").

An output may come back with its size-1 axes moved (the state ``(2, 1, 8)`` as ``(1, 2, 8)``): the same values in
the same order, so the runner reshapes it to the ONNX output's shape; any other shape is a failure.

The converter runs in a child process, in a temporary folder for each conversion (nothing is written beside the
user's file), with an audit hook that stops it at any attempt to connect, look a host up or fetch with curl or
wget. The child stays for the next conversion, since TensorFlow's import alone takes seconds; one that fails, crashes
or times out is ended and the next conversion starts a new one.
The check on every export: the file converts, LiteRT's interpreter loads the ``.tflite``, and its outputs on the
parity cases (a padded sequence through the mask; for `step` a stream of frames with the state fed back) match
torch's (``litert_structure``, then ``litert_runner`` as a parity runner).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingPackageError, TargetError
from . import Target, register_target

if TYPE_CHECKING:
    from ..verify.check import TargetReport
    from ..verify.parity import Runner

WHY = {
    "native": (
        "onnx2tf needs fixed input shapes and fixes a native file's dynamic time axis at 1 (the .tflite then takes "
        "one step per call); use unroll (a fixed length, padding as a float mask) or step"
    ),
    "loop": (
        "onnx2tf fails converting its Scan (\"TypeError: 'KerasTensor' object cannot be interpreted as an "
        "integer\", the Scan's length is not fixed); use unroll (a fixed length, padding as a float mask) or step"
    ),
}


def read_stacked_directly(model: Any) -> Any:
    """``model`` (an onnx.ModelProto, not changed) with each ``Gather(Concat(Unsqueeze(a_0), .., Unsqueeze(a_n)),
    k)`` (one axis throughout, ``k`` a constant scalar) read as ``a_k`` itself: the same values, bit for bit.

    Needed by onnx2tf, which moves the axes of the stacked 3-D state (layers, 1, hidden) and then gathers along the
    wrong one: torch's exporter reads the top layer's final state that way (``torch.stack(states)[-1]``), and the
    converted readout came out with every layer's values (shape (2, 1) for (1, 1)). Top graph only."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    made = {o: n for n in graph.node for o in n.output}

    def axis_of(node: Any, default: int = 0) -> int:
        return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), default)

    def unsqueezed_at(name: str) -> tuple[str, int] | None:
        node = made.get(name)
        if node is None or node.op_type != "Unsqueeze" or len(node.input) < 2 or node.input[1] not in consts:
            return None
        axes = numpy_helper.to_array(consts[node.input[1]]).reshape(-1)
        return (node.input[0], int(axes[0])) if axes.size == 1 else None

    for i, node in enumerate(graph.node):
        if node.op_type != "Gather" or node.input[1] not in consts:
            continue
        index = numpy_helper.to_array(consts[node.input[1]])
        concat = made.get(node.input[0])
        if index.ndim != 0 or concat is None or concat.op_type != "Concat":
            continue
        axis = axis_of(node)
        parts = [p for x in concat.input if (p := unsqueezed_at(x)) is not None and p[1] == axis]
        if len(parts) != len(concat.input) or axis_of(concat) != axis or axis < 0:
            continue
        k = int(index) + len(parts) if int(index) < 0 else int(index)
        if 0 <= k < len(parts):
            graph.node[i].CopyFrom(helper.make_node("Identity", [parts[k][0]], [node.output[0]], name=node.name))
    return out


@dataclass(frozen=True)
class LitertTarget(Target):
    def graph_form(self, proto: Any) -> Any:
        """No symbolic shapes beyond the inputs, and a stacked state's row read where it is made
        (``read_stacked_directly``)."""
        return read_stacked_directly(super().graph_form(proto))

    def validate(self, strategy: str, *, lengths: bool, fused: bool = False) -> None:
        """As every target, and onnx2tf and LiteRT must be installed: a MissingPackageError (exit code 10) naming
        the extra before any work."""
        super().validate(strategy, lengths=lengths, fused=fused)
        if not litert_available():
            raise MissingPackageError(NOT_INSTALLED)

    def structure_report(self, model: Any) -> TargetReport:
        """onnx2tf converts the file to .tflite and LiteRT's interpreter loads it."""
        return litert_structure(model)

    def runners(self, model: Any) -> dict[str, Runner]:
        """LiteRT's interpreter on the converted file."""
        return {"litert": litert_runner(model)}


TARGET = register_target(
    LitertTarget(
        name="litert",
        summary="Google LiteRT/TFLite (.tflite via onnx2tf): unroll or step; batch 1, padding as a float mask",
        strategies=("unroll", "step"),
        padding="float-mask",
        static_batch=True,
        default_batch=1,
        fused_step=False,
        check="litert",
        needs="litert",
        bound_shapes=True,
        int8_products="LiteRT runs DynamicQuantizeLinear and MatMulInteger only as Select TensorFlow ops, which its "
        "interpreter does not link",
    ),
    why_not=WHY,
)

NOT_INSTALLED = (
    "the litert target is checked with LiteRT itself and its converter onnx2tf, which are not installed: "
    "pip install 'edgernn[litert]' && pip install --no-deps 'onnx2tf>=1.29,<2' (docs/engines/litert.md)"
)
CONVERT_TIMEOUT_S = 600.0
_CONVERTED: dict[str, bytes] = {}  # the last few conversions, by the sha256 of the ONNX bytes
TFLITE = "model_float32.tflite"  # what onnx2tf writes for model.onnx: fp32 weights and arithmetic

# The child process that runs onnx2tf, kept for the next conversion (TensorFlow's import alone takes seconds). It
# reads one request a line on stdin (JSON: the source .onnx, the output folder, the .tflite to write, the input names
# to keep as they are, the folder to work in, the file its output goes to) and answers "ok" or "failed", one line on
# what was its stdout.
# - It has onnx2tf build the Keras model only (``disable_model_save``) and makes the fp32 .tflite itself, with the
#   settings onnx2tf's own fp32 output uses: onnx2tf would also write a SavedModel and an fp16 .tflite, which nothing
#   here reads, and that is two thirds of its time. tests/test_engine_litert.py checks the file is the same, byte for
#   byte, as the one onnx2tf writes.
# - Each conversion starts from a cleared Keras session; one that fails ends the child (``_Converter``), so a
#   conversion only ever follows conversions that succeeded.
# - The audit hook ends it before it connects anywhere, looks a host up or starts curl or wget (onnx2tf downloads
#   calibration data for its int8 output only, and a schema when flatc is installed, neither asked here;
#   TensorFlow's import makes a local socket pair, which is let be).
_SERVER = """
import json, os, sys, traceback
NETWORK = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.sendmsg")
def _fetches(args):
    argv = args[1] if args[1] else [args[0]]
    first = argv.split()[0] if isinstance(argv, (str, bytes)) else argv[0]
    return os.path.basename(os.fsdecode(first)) in ("curl", "wget")
def _guard(event, args):
    if (event == "subprocess.Popen" and _fetches(args)) or event in NETWORK:
        sys.stderr.write("edgernn: onnx2tf tried " + event + "; stopped\\n")
        sys.stderr.flush()
        os._exit(70)
sys.addaudithook(_guard)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
reply = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
home = os.getcwd()
onnx2tf = tf = tf_keras = None
for line in sys.stdin:
    req = json.loads(line)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    ok = False
    try:
        if onnx2tf is None:
            import onnx2tf
            import tensorflow as tf
            import tf_keras
        tf_keras.backend.clear_session()
        os.chdir(req["cwd"])
        model = onnx2tf.convert(
            input_onnx_file_path=req["src"],
            output_folder_path=req["out"],
            keep_shape_absolutely_input_names=req["names"] or None,
            copy_onnx_input_output_names_to_tflite=True,
            not_use_onnxsim=True,
            non_verbose=True,
            disable_model_save=True,
        )
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.unfold_batchmatmul = False
        made = converter.convert()
        with open(req["tflite"], "wb") as f:
            f.write(made)
        ok = True
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(home)
        os.dup2(null, 1)
        os.dup2(null, 2)
    reply.write("ok\\n" if ok else "failed\\n")
    reply.flush()
"""


class _Converter:
    """The onnx2tf child (``_SERVER``): started on the first conversion, used for up to ``MAX_USES`` conversions
    that succeed, then started anew; ended after any conversion that fails, crashes or times out, and when this
    process exits (its stdin closes: it ends itself)."""

    MAX_USES = 24

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.owner = 0
        self.uses = 0
        self.lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or self.owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and (self.owner != os.getpid() or self.proc.poll() is not None):
            self.proc = None  # a fork's copy, or a child that ended
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=tempfile.gettempdir(),
            )
            self.owner, self.uses = os.getpid(), 0
        return self.proc

    def convert(self, src: str, names: list[str], tmp: str, timeout: float) -> Path:
        """onnx2tf on ``src``, the fp32 .tflite written in ``tmp`` (returned) or ``TargetError``. A kept child found
        ended when asked (killed from outside while it waited) hands the request to a new one."""
        log, out, made = (os.path.join(tmp, name) for name in ("onnx2tf.log", "out", TFLITE))
        asked = {"src": src, "out": out, "tflite": made, "names": names, "cwd": tmp, "log": log}
        request = json.dumps(asked).encode() + b"\n"
        deadline = time.monotonic() + timeout
        with self.lock:
            kept = self.proc is not None
            answer = self._ask(request, deadline, timeout)
            if not answer and kept:
                self.close()
                answer = self._ask(request, deadline, timeout)
            ok = answer == b"ok\n"
            ended = None if answer else self.proc.wait()  # type: ignore[union-attr]  # None: it answered
            self.uses += 1
            if not ok or self.uses >= self.MAX_USES:
                self.close()
            output = Path(log).read_text(errors="replace") if os.path.isfile(log) else ""
        if not ok:
            how = "raised" if ended is None else f"crashed (signal {-ended})" if ended < 0 else f"exit {ended}"
            raise TargetError(f"onnx2tf cannot convert the model ({how}): {converter_error(output)}")
        return Path(made)

    def _ask(self, request: bytes, deadline: float, timeout: float) -> bytes:
        """The child's answer to ``request``, b"" when it ends first; TargetError (the child killed) at the
        deadline."""
        proc = self._start()
        try:
            proc.stdin.write(request)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return _read_line(proc.stdout, deadline)
        except TimeoutError:
            proc.kill()
            self.close()
            raise TargetError(f"onnx2tf did not finish converting the model in {timeout:g} s") from None
        except OSError:
            return b""  # it ended before it read the request


def _read_line(stream: Any, deadline: float) -> bytes:
    """One line from ``stream`` (a pipe), b"" when it closes first; TimeoutError at ``deadline`` (read in a thread:
    ``select`` takes no pipes on Windows)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if reader.is_alive():
        raise TimeoutError  # the caller kills the child, which ends the read
    return got[0] if got else b""  # a read that failed: the pipe is gone


_CONVERTER = _Converter()

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cuda drivers|^I0000|^W0000|oneDNN|rebuild TensorFlow|AVX|^\s*$")
_RAISED = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")  # a Python exception's last line
_ERROR = re.compile(r"error|exception|failed|not supported|unsupported|cannot|can't|invalid", re.IGNORECASE)


def litert_available() -> bool:
    """onnx2tf (the converter, with TensorFlow) and ai-edge-litert (the interpreter) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx2tf", "tensorflow", "ai_edge_litert"))


def _bytes(model: bytes | Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def _proto(model: bytes | Any) -> Any:
    import onnx

    return onnx.load_from_string(model) if isinstance(model, bytes) else model


def converter_error(output: str) -> str:
    """onnx2tf's own error, one line: the exception that stopped it (its log is coloured and prints its advice as
    "ERROR:" lines; TensorFlow's start-up lines are dropped), else its first error line, else the last line it
    printed; with the ONNX node it names when it names one."""
    lines = [ln.strip() for ln in _ANSI.sub("", output).splitlines() if not _NOISE.search(ln)]
    raised = [ln for ln in lines if _RAISED.match(ln)]
    first = raised[0] if raised else next((ln for ln in lines if _ERROR.search(ln)), None)
    if first is None:
        first = lines[-1] if lines else "no output"
    node = next((m.group(1) for ln in lines if (m := re.search(r"onnx_op_name: (\S+)", ln))), None)
    where = f" (node {node})" if node and node not in first else ""
    return (first[:300] + where)[:400]


def to_tflite(model: bytes | Any, workdir: str | os.PathLike[str], *, timeout: float = CONVERT_TIMEOUT_S) -> Path:
    """onnx2tf on ``model`` (ONNX bytes or a ModelProto, converted as written, every input kept at its ONNX
    shape), run in a child process in a temporary folder; ``workdir/model.tflite`` (fp32) is what it leaves.
    ``TargetError`` with onnx2tf's own first error line when it fails, crashes, times out or writes no file;
    ``TargetError(NOT_INSTALLED)`` when it is not installed."""
    if not litert_available():
        raise TargetError(NOT_INSTALLED)
    data = _bytes(model)
    os.makedirs(workdir, exist_ok=True)
    dest = Path(workdir) / "model.tflite"
    key = hashlib.sha256(data).hexdigest()
    if key in _CONVERTED:  # the structure check and the parity runner of one export convert the same bytes
        dest.write_bytes(_CONVERTED[key])
        return dest
    proto = _proto(model)
    weights = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in weights]
    with tempfile.TemporaryDirectory(prefix="edgernn-onnx2tf-") as tmp:
        src = os.path.join(tmp, "model.onnx")
        with open(src, "wb") as f:
            f.write(data)
        os.replace(_CONVERTER.convert(src, names, tmp, timeout), dest)
    _CONVERTED[key] = dest.read_bytes()
    while len(_CONVERTED) > 4:
        del _CONVERTED[next(iter(_CONVERTED))]
    return dest


class _Litert:
    """One ONNX model converted to ``.tflite`` (``to_tflite``, or ``converted``: a .tflite made from it already)
    and loaded in LiteRT's interpreter (CPU, fp32)."""

    def __init__(self, model: bytes | Any, converted: Path | None = None) -> None:
        proto = _proto(model)
        weights = {t.name for t in proto.graph.initializer}
        self.inputs = [v.name for v in proto.graph.input if v.name not in weights]
        self.outputs = [v.name for v in proto.graph.output]
        self.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.output}
        self._dir = tempfile.TemporaryDirectory(prefix="edgernn-litert-")
        path = converted or to_tflite(proto, self._dir.name)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise TargetError(NOT_INSTALLED) from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
            self.runner = self.interpreter.get_signature_runner()
        except Exception as e:
            raise TargetError(f"LiteRT cannot load the converted model: {_first(e)}") from None
        wanted = self.runner.get_input_details()
        missing = [n for n in self.inputs if n not in wanted]
        if missing:
            raise TargetError(
                f"the converted model has no input(s) {', '.join(missing)} (its inputs: {', '.join(wanted)})"
            )
        # the shape each input takes, -1 where the converted model keeps an axis dynamic (a portable file's
        # batch), and its dtype (int64 lengths stay int64)
        self.input_shapes = {
            n: tuple(int(d) for d in wanted[n].get("shape_signature", wanted[n]["shape"])) for n in self.inputs
        }
        self.input_dtypes = {n: np.dtype(wanted[n]["dtype"]) for n in self.inputs}

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TargetError(f"litert: no value for the model's input(s) {', '.join(missing)}")
        values = {}
        for n in self.inputs:
            v = np.asarray(feed[n])
            if v.dtype != self.input_dtypes[n]:
                takes = self.input_dtypes[n]
                raise TargetError(f"litert: input {n} has dtype {v.dtype}; the converted model takes {takes}")
            want = self.input_shapes[n]
            if len(v.shape) != len(want) or any(w not in (-1, d) for d, w in zip(v.shape, want, strict=True)):
                raise TargetError(
                    f"litert: input {n} has shape {tuple(v.shape)}; the converted model takes {want} only (-1: any "
                    "size; fixed shapes: export for the shape you run)"
                )
            values[n] = np.ascontiguousarray(v)
        try:
            got = self.runner(**values)
        except Exception as e:
            raise TargetError(f"LiteRT fails running this model: {_first(e)}") from None
        return [self._shaped(n, np.asarray(got[n])) if n in got else self._absent(n, got) for n in self.outputs]

    def _absent(self, name: str, got: Mapping[str, Any]) -> np.ndarray:
        raise TargetError(f"the converted model has no output {name} (its outputs: {', '.join(got)})")

    def _shaped(self, name: str, value: np.ndarray) -> np.ndarray:
        """``value`` in the ONNX output's shape when the two differ only by where their size-1 axes stand (the
        same values in the same order); TargetError otherwise."""
        want = self.shapes[name]
        if list(value.shape) == want or 0 in want:
            return value
        if [d for d in value.shape if d != 1] == [d for d in want if d != 1]:
            return value.reshape(want)
        raise TargetError(
            f"litert: output {name} comes back in shape {tuple(value.shape)}, the ONNX model's is {tuple(want)} "
            "(onnx2tf moved its axes)"
        )


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def litert_runner(model: bytes | Any, converted: Path | None = None) -> Runner:
    """LiteRT on ``model`` (ONNX bytes or a ModelProto), converted to ``.tflite`` once (``to_tflite``; or
    ``converted``, a .tflite already made from it) and loaded once, as a parity runner: outputs in the graph's
    output order. ``TargetError`` with onnx2tf's or LiteRT's own first error line when either refuses it; naming
    the pip extra when they are not installed."""
    engine = _Litert(model, converted)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return engine.run(feed)

    return run


def litert_structure(model: bytes | Any) -> TargetReport:
    """Does onnx2tf convert ``model`` and LiteRT load the result? The litert target's structure check (no numbers
    compared): passed None when the packages are not installed, False with the tool's own first error line."""
    from ..verify.check import TargetReport

    try:
        _Litert(model)
    except TargetError as e:
        return TargetReport("litert", None if str(e) == NOT_INSTALLED else False, str(e))
    return TargetReport("litert", True, "onnx2tf writes the .tflite and LiteRT's interpreter loads it")
