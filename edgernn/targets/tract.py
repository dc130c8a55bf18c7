"""Target `tract`: Sonos' tract, a Rust inference engine embedded in apps and boards (``pip install tract``).

tract binds concrete shapes: its user sets the input shapes and tract unifies every shape the file states with
them, so the file must not state symbolic shapes beyond its inputs (``edgernn.rewrite.travel.for_bound_shapes``
makes every strategy load, `loop` included). tract refuses ONNX RNN/LSTM/GRU ops with a runtime
``sequence_lens`` ("Non constant seq_len is not supported"), so padded batches are masked in plain ops and
`native` is taken only without lengths. The check on every export: tract loads the file with the parity cases'
concrete input shapes and its outputs match torch's (``tract_report``, or ``tract_runner`` as a parity runner).

What tract does not do (fp16 Gemm, com.microsoft contrib ops, runtime sequence_lens) is in docs/engines/tract.md.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TargetError
from . import Target, register_target

if TYPE_CHECKING:
    from ..verify.check import TargetReport
    from ..verify.parity import Runner, Tolerance


@dataclass(frozen=True)
class TractTarget(Target):
    def structure_report(self, model: Any) -> TargetReport:
        """tract loads the file at the model's own shapes (dynamic axes at small sizes)."""
        return tract_structure(model)

    def runners(self, model: Any) -> dict[str, Runner]:
        """tract, loaded at each parity case's concrete input shapes."""
        return {"tract": tract_runner(model)}


TARGET = register_target(
    TractTarget(
        name="tract",
        summary="Sonos tract (Rust, embedded): every strategy (native only without lengths), loaded at concrete shapes",
        strategies=("native", "loop", "unroll", "step"),
        padding="masking",
        check="tract",
        needs="tract",
        bound_shapes=True,
    )
)

NOT_INSTALLED = "the tract target is checked with tract itself, which is not installed: pip install 'edgernn[tract]'"

# numpy dtype -> the element type in tract's fact syntax ("3,20,3,f32")
_FACT_TYPES = {
    "float32": "f32",
    "float16": "f16",
    "float64": "f64",
    "int64": "i64",
    "int32": "i32",
    "int8": "i8",
    "uint8": "u8",
    "bool": "bool",
}


def tract_available() -> bool:
    try:
        import tract  # noqa: F401
    except ImportError:
        return False
    return True


def tract_error(e: BaseException) -> str:
    """tract's error, one line: the root cause and the node it names (tract's errors are an anyhow chain,
    "Failed analyse for node #26 "node_transpose" PermuteAxes / Caused by: ... / Stack backtrace: ...")."""
    text = str(e).split("Stack backtrace:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    below = lines.index("Caused by:") + 1 if "Caused by:" in lines else len(lines)
    causes = [re.sub(r"^\d+:\s*", "", ln) for ln in lines[below:]]
    root = causes[-1] if causes else lines[0]
    node = next((m.group(0) for ln in lines if (m := re.search(r'node #\d+ "[^"]*"(?: \S+)?', ln))), None)
    return (f"{root} (at {node})" if node and node not in root else root)[:400]


def _fact(value: np.ndarray) -> str:
    dtype = _FACT_TYPES.get(str(value.dtype))
    if dtype is None:
        raise TargetError(f"tract: no fact type for an input of dtype {value.dtype}")
    return ",".join([*(str(int(d)) for d in value.shape), dtype])


def _bytes(model: bytes | Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


class _Tract:
    """One model file for tract, loaded once per set of concrete input shapes."""

    def __init__(self, model: bytes | Any) -> None:
        try:
            import tract
        except ImportError:
            raise TargetError(NOT_INSTALLED) from None
        self._tract = tract
        fd, self.path = tempfile.mkstemp(suffix=".onnx", prefix="edgernn-tract-")
        with os.fdopen(fd, "wb") as f:
            f.write(_bytes(model))
        try:
            probe = tract.onnx().load(self.path)
        except Exception as e:
            os.unlink(self.path)
            raise TargetError(f"tract cannot read this model: {tract_error(e)}") from None
        self.inputs = [probe.input_name(i) for i in range(probe.input_count())]
        self.outputs = [probe.output_name(i) for i in range(probe.output_count())]
        self._loaded: dict[tuple[tuple[str | int, ...], ...], Any] = {}

    def close(self) -> None:
        path = getattr(self, "path", None)
        if path and os.path.exists(path):
            os.unlink(path)

    def __del__(self) -> None:
        self.close()

    def runnable(self, feed: Sequence[np.ndarray]) -> Any:
        key: tuple[tuple[str | int, ...], ...] = tuple((str(v.dtype), *(int(d) for d in v.shape)) for v in feed)
        if key not in self._loaded:
            try:
                model = self._tract.onnx().load(self.path)
                for i, value in enumerate(feed):
                    model.set_input_fact(i, _fact(value))
                self._loaded[key] = model.into_model().into_runnable()
            except TargetError:
                raise
            except Exception as e:
                shapes = ", ".join(f"{n} {_fact(v)}" for n, v in zip(self.inputs, feed, strict=True))
                raise TargetError(f"tract cannot load this model at {shapes}: {tract_error(e)}") from None
        return self._loaded[key]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TargetError(f"tract: no value for the model's input(s) {', '.join(missing)}")
        values = [np.ascontiguousarray(feed[n]) for n in self.inputs]
        runnable = self.runnable(values)
        try:
            outs = runnable.run(values)
        except Exception as e:
            raise TargetError(f"tract fails running this model: {tract_error(e)}") from None
        return [np.asarray(o.to_numpy()) for o in outs]


def tract_runner(model: bytes | Any) -> Runner:
    """tract on ``model`` (bytes or an onnx.ModelProto, taken as written) as a parity runner: each feed's shapes
    are set as concrete input facts (loaded once per shape set), and the outputs come back in the graph's output
    order. ``TargetError`` with tract's own first error line and the node it names when tract cannot read, load
    or run it; ``TargetError`` naming the pip extra when tract is not installed."""
    engine = _Tract(model)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return engine.run(feed)

    return run


def _probe(model: Any) -> dict[str, np.ndarray]:
    """Zeros at concrete shapes for each graph input: a batch-named dim 2, a time-named one 5, others 1."""
    from onnx import helper

    from ..runtime.layout import BATCH_NAMES, TIME_NAMES

    weights = {t.name for t in model.graph.initializer}
    feed: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = []
        for d in tensor.shape.dim:
            name = d.dim_param.lower()
            dims.append(
                d.dim_value if d.HasField("dim_value") else 2 if name in BATCH_NAMES else 5 if name in TIME_NAMES else 1
            )
        feed[value.name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return feed


def tract_structure(model: bytes | Any, shapes: Mapping[str, Sequence[int]] | None = None) -> TargetReport:
    """Does tract load ``model`` as written at concrete input shapes (``shapes`` by input name, else a batch of 2
    and 5 steps for the dims named so, 1 for other named dims)? The tract target's structure check: passed None
    when tract is not installed (the summary names the pip extra), False with tract's own first error line and
    the node it names."""
    import onnx

    from ..verify.check import TargetReport

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    feed = _probe(proto)
    for name, shape in (shapes or {}).items():
        if name in feed:
            feed[name] = np.zeros(tuple(int(d) for d in shape), feed[name].dtype)
    try:
        engine = _Tract(proto)
        missing = [n for n in engine.inputs if n not in feed]
        if missing:
            raise TargetError(f"tract reads inputs the graph does not declare: {', '.join(missing)}")
        engine.runnable([feed[n] for n in engine.inputs])
    except TargetError as e:
        return TargetReport("tract", None if str(e) == NOT_INSTALLED else False, str(e))
    at = ", ".join(f"{n} {_fact(v)}" for n, v in feed.items())
    return TargetReport("tract", True, f"tract loads the model at concrete shapes ({at})")


def tract_report(
    model: bytes | Any,
    feeds: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Sequence[np.ndarray]],
    *,
    tolerance: Tolerance | None = None,
    labels: Sequence[str] | None = None,
) -> TargetReport:
    """The tract target's check: ``model`` loaded in tract at each feed's concrete input shapes, its outputs
    compared with ``expected`` (per feed, the reference outputs in the graph's output order: torch's at export,
    onnxruntime's for a file from elsewhere) within ``tolerance`` (fp32's by default).

    passed None: tract is not installed (the summary names the pip extra). passed False: tract refuses the file
    (its own first error line and the node it names) or an output differs (the worst one named).
    """
    from ..verify.check import TargetReport
    from ..verify.parity import compare
    from ..verify.parity import tolerance as tolerance_for

    tol = tolerance or tolerance_for("fp32")
    if len(feeds) != len(expected):
        raise ValueError(f"tract_report: {len(feeds)} feeds but {len(expected)} expected output lists")
    names = list(labels) if labels is not None else [f"case {i}" for i in range(len(feeds))]
    try:
        run = tract_runner(model)
    except TargetError as e:
        return TargetReport("tract", None if str(e) == NOT_INSTALLED else False, str(e))
    worst = 0.0
    cases: list[dict[str, Any]] = []
    for label, feed, want in zip(names, feeds, expected, strict=True):
        try:
            got = run(feed)
        except TargetError as e:
            return TargetReport("tract", False, f"{label}: {e}", parity={"cases": cases, "passed": False})
        if len(got) < len(want):
            return TargetReport("tract", False, f"{label}: tract returned {len(got)} outputs, expected {len(want)}")
        for i, (w, g) in enumerate(zip(want, got, strict=False)):
            max_abs, max_rel, ok = compare(w, g, tol)
            cases.append({"case": label, "output": i, "max_abs": max_abs, "max_rel": max_rel, "passed": ok})
            worst = max(worst, max_abs)
            if not ok:
                shape = f" (shape {tuple(g.shape)} vs {tuple(np.shape(w))})" if np.shape(w) != g.shape else ""
                return TargetReport(
                    "tract",
                    False,
                    f"tract: {label} output {i} differs from the reference: max abs {max_abs:.3g}, rel {max_rel:.3g}"
                    f" over atol {tol.atol:g}{shape}",
                    parity={"cases": cases, "passed": False, "max_abs": worst},
                )
    summary = f"tract loads the model at {len(feeds)} concrete shape set(s); outputs match (max abs {worst:.2e})"
    return TargetReport("tract", True, summary, parity={"cases": cases, "passed": True, "max_abs": worst})
