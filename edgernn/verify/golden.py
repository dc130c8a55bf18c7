"""Golden files: the check an engineer runs on the device itself, with numpy and onnxruntime only.

``edgernn export --golden`` (``golden=`` in Python) writes ``MODEL.golden.npz`` beside the model once parity has
passed and the model is written: the inputs of the export's parity cases (the same shapes, drawn from parity's
own seed, so the very inputs parity checked) and the eager torch module's outputs on them, with the tolerance and
a JSON record (edgernn version, the model's ``weights_sha256`` and strategy, case labels, input and output names).
For a ``step`` (streaming) export the golden holds whole sequences, a whole number of chunks long, and the module's
outputs on the whole sequence; states are not part of it.

``edgernn verify MODEL --golden MODEL.golden.npz`` (``verify_golden``) runs MODEL on onnxruntime on each case
(through the runtime's input checks; a step export streamed chunk by chunk from the initial state) and compares
every output with the golden's, after checking that the golden was made from this model's weights.

Layout of the ``.npz``: ``case{i}.in.{name}`` and ``case{i}.out.{name}`` arrays, and ``meta``, a 0-d unicode
array holding the JSON record. It is read with ``np.load(path, allow_pickle=False)`` only: a golden file never
runs code, and one holding an object array is refused. This module imports neither torch nor onnx; writing
imports torch when it runs the module.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..errors import ConfigError, ExportError, InputError, ModelFormatError, ParityError
from ..files import read_npz, write_atomic
from ..manifest import Manifest, TensorSpec
from .parity import TOLERANCES, Case, Comparison, ParityReport, Tolerance, compare, make_inputs

if TYPE_CHECKING:
    from ..runtime.model import Model

FORMAT = "edgernn-golden"
FORMAT_VERSION = 1
META_KEY = "meta"
ADVICE = "edgernn never unpickles a golden file; write a new one with `edgernn export --golden`"
MAX_BYTES = 1 << 30  # a golden file's arrays together, as their headers claim them: checked before any is read
# parity's own seed: drawn case by case in the same order, the golden's inputs are the ones parity checked
GOLDEN_SEED = 0
GOLDEN_DTYPE = "fp32"
# element kinds a golden array may have: bool, integers, floats (never objects, strings or structured data)
_ARRAY_KINDS = "biuf"


@dataclass
class GoldenCase:
    label: str  # parity's label for the case, e.g. "B=3 T=17 padded"
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass
class Golden:
    """A golden file in memory: the JSON record (``meta``) and the cases."""

    meta: dict[str, Any]
    cases: list[GoldenCase] = field(default_factory=list)
    path: Path | None = None

    @property
    def atol(self) -> float:
        return float(self.meta["atol"])

    @property
    def rtol(self) -> float:
        return float(self.meta["rtol"])

    @property
    def dtype(self) -> str:
        return str(self.meta.get("dtype", GOLDEN_DTYPE))

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["weights_sha256"])

    @property
    def strategy(self) -> str:
        return str(self.meta["strategy"])

    @property
    def input_names(self) -> list[str]:
        return [d["name"] for d in self.meta["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return list(self.meta["outputs"])

    def role(self, name: str) -> str:
        """The role an input had in the exported module: data or lengths."""
        return next((str(d.get("role", "data")) for d in self.meta["inputs"] if d["name"] == name), "data")

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes."""
        arrays: dict[str, np.ndarray] = {META_KEY: np.array(json.dumps(self.meta, sort_keys=True))}
        for i, case in enumerate(self.cases):
            arrays.update({f"case{i}.in.{k}": np.asarray(v) for k, v in case.inputs.items()})
            arrays.update({f"case{i}.out.{k}": np.asarray(v) for k, v in case.outputs.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()


def golden_path(model_path: str | os.PathLike[str]) -> Path:
    """Where ``golden=True`` writes: ``m.onnx`` -> ``m.golden.npz``, beside the model."""
    return Path(model_path).with_suffix(".golden.npz")


# ------------------------------------------------------------------------------------------------------ writing


def write_golden(
    path: str | os.PathLike[str],
    module: Any,
    manifest: Manifest,
    cases: Sequence[Case],
    *,
    specs: Sequence[TensorSpec] | None = None,
    output_names: Sequence[str] | None = None,
    int_high: int = 2,
    seed: int = GOLDEN_SEED,
) -> Golden:
    """Run the eager torch ``module`` on each case's inputs and write them, its outputs, the fp32 tolerance and
    the JSON record to ``path`` (atomically); returns what was written.

    ``specs`` are the inputs ``module`` takes (default: the manifest's inputs that are not states); they differ
    from the graph's where the graph takes a float mask and the module lengths, and the golden holds the module's
    (``edgernn verify`` makes the mask from the lengths, as the runtime does). Inputs are drawn as parity draws
    them: ``make_inputs`` case by case from one generator seeded ``seed``. A streaming manifest (states) makes
    whole sequences of ``ceil(length / chunk) * chunk`` steps, as the chained parity check does.
    """
    from .parity import torch_runner  # imports torch when it runs

    specs = list(specs) if specs is not None else [s for s in manifest.inputs if s.role != "state"]
    state_outputs = {s.output for s in manifest.states}
    names = list(output_names or [o.name for o in manifest.outputs if o.name not in state_outputs])
    streamed = bool(manifest.states)
    chunk = int(manifest.chunk or 1)
    if not cases:
        raise ConfigError("a golden file needs at least one case")
    tol = TOLERANCES[GOLDEN_DTYPE]
    rng = np.random.default_rng(seed)
    run = torch_runner(module, specs)
    was_training = bool(getattr(module, "training", False))
    module.eval()
    out: list[GoldenCase] = []
    try:
        for case in cases:
            if streamed:  # whole chunks, labelled as the chained check labels its sequences
                case = Case(case.batch, -(-case.length // chunk) * chunk)
                label = f"B={case.batch} T={case.length}"
            else:
                label = case.label
            feed = make_inputs(specs, case, rng, int_high)
            got = run(feed)
            if len(got) < len(names):
                raise ExportError(
                    f"the module returns {len(got)} output(s) at case {label}; the golden records {len(names)} "
                    f"({', '.join(names)})"
                )
            outputs = {n: np.asarray(v) for n, v in zip(names, got, strict=False)}
            out.append(GoldenCase(label, {s.name: feed[s.name] for s in specs if s.name in feed}, outputs))
    finally:
        module.train(was_training)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgernn_version": __version__,
        "weights_sha256": manifest.weights_sha256,
        "strategy": manifest.strategy,
        "target": manifest.target,
        "chunk": manifest.chunk if streamed else None,
        "streamed": streamed,
        "dtype": GOLDEN_DTYPE,
        "atol": tol.atol,
        "rtol": tol.rtol,
        "seed": seed,
        "cases": [c.label for c in out],
        "inputs": [{"name": s.name, "dtype": s.dtype, "role": s.role, "shape": list(s.shape)} for s in specs],
        "outputs": names,
    }
    golden = Golden(meta, out, Path(path))
    write_atomic(path, golden.to_bytes())
    return golden


# ------------------------------------------------------------------------------------------------------ reading


def read_golden(path: str | os.PathLike[str]) -> Golden:
    """Read a golden file with ``np.load(path, allow_pickle=False)``; ``ConfigError`` when it is missing, not an
    ``.npz`` of plain arrays (pickled data or an object array is refused, never loaded), larger than ``MAX_BYTES``
    by its arrays' headers (checked before any array is allocated), or not edgernn's."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no golden file at {str(p)!r} (write one with `edgernn export ... --golden`)")
    what = f"{str(p)!r} is not a golden file (an .npz written by `edgernn export --golden`)"
    arrays = read_npz(p, None, max_bytes=MAX_BYTES, error=ConfigError, what=what, bound="a golden file",
                      advice=ADVICE)  # fmt: skip
    meta = _meta(arrays.pop(META_KEY, None), what)
    for key, a in arrays.items():
        if a.dtype.kind not in _ARRAY_KINDS:
            raise ConfigError(f"{what}: array {key!r} has dtype {a.dtype}; a golden file holds numbers only")
    cases = []
    for i, label in enumerate(meta["cases"]):
        ins, outs = {}, {}
        for kind, names, into in (("in", _names(meta["inputs"]), ins), ("out", meta["outputs"], outs)):
            for name in names:
                key = f"case{i}.{kind}.{name}"
                if key not in arrays:
                    raise ConfigError(f"{what}: case {label!r} has no array {key!r}")
                into[name] = arrays.pop(key)
        cases.append(GoldenCase(str(label), ins, outs))
    if arrays:
        raise ConfigError(f"{what}: arrays the record does not name: {', '.join(sorted(arrays)[:5])}")
    return Golden(meta, cases, p)


def _names(inputs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(d["name"]) for d in inputs]


def _meta(raw: np.ndarray | None, what: str) -> dict[str, Any]:
    """The JSON record, checked for what reading and verifying need."""
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise ConfigError(f"{what}: it has no {META_KEY!r} record (a 0-d text array)")
    try:
        meta = json.loads(str(raw[()]))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: its record is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{what}: its record does not say format {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{what}: format version {version!r}; this edgernn ({__version__}) reads up to {FORMAT_VERSION}"
        )
    try:
        ok = (
            isinstance(meta["weights_sha256"], str)
            and isinstance(meta["strategy"], str)
            and isinstance(meta["cases"], list)
            and all(isinstance(c, str) for c in meta["cases"])
            and isinstance(meta["inputs"], list)
            and all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in meta["inputs"])
            and isinstance(meta["outputs"], list)
            and all(isinstance(n, str) for n in meta["outputs"])
            and _tolerance_value(meta["atol"])
            and _tolerance_value(meta["rtol"])
        )
    except KeyError as e:
        raise ConfigError(f"{what}: its record lacks {e}") from None
    if not ok or not meta["cases"] or not meta["outputs"]:
        raise ConfigError(f"{what}: its record is malformed (cases, inputs, outputs, tolerance)")
    return meta


def _tolerance_value(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# ---------------------------------------------------------------------------------------------------- verifying


def verify_golden(
    model: Model | str | os.PathLike[str] | bytes,
    golden: Golden | str | os.PathLike[str],
    *,
    provider: str = "cpu",
    fallback: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> ParityReport:
    """Run ``model`` (a path, bytes, or a loaded ``edgernn.runtime.Model``) on onnxruntime on every case of
    ``golden`` and compare each output with the recorded torch output, at the golden's tolerance unless
    ``atol``/``rtol`` are given.

    Before any number: ``ParityError`` when the golden was made from other weights than the model's manifest
    names; ``ConfigError`` when its inputs or outputs do not fit the model (names, ranks, fixed sizes). A model
    with states (a ``step`` export) streams each sequence chunk by chunk from the initial state
    (``StreamingModel.run_sequence``); per-step outputs are compared over the whole sequence, a last-step readout
    by the last chunk's output. The report's candidate names the provider that ran; a fallback is in its notes.
    """
    from ..runtime.model import Model

    m = model if isinstance(model, Model) else Model(model, provider=provider, fallback=fallback)
    g = golden if isinstance(golden, Golden) else read_golden(golden)
    manifest = m.manifest
    if manifest is None:
        raise ModelFormatError(
            f"{m.source} has no edgernn manifest; a golden file checks an edgernn export (its weights_sha256 ties "
            "the golden file to the model)"
        )
    if g.weights_sha256 != manifest.weights_sha256:
        raise ParityError(
            f"golden file made from other weights than this model (weights_sha256 {g.weights_sha256[:16]} in the "
            f"golden file vs {manifest.weights_sha256[:16]} in the model's manifest); export the model and its "
            "golden file together (edgernn export ... --golden)"
        )
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not _tolerance_value(value):
            raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
    tol = Tolerance(g.atol if atol is None else float(atol), g.rtol if rtol is None else float(rtol))
    given = atol is not None or rtol is not None
    report = ParityReport("given tolerance" if given else g.dtype, tol.atol, tol.rtol)
    candidate = f"onnxruntime:{m.provider}"
    if m.choice.fell_back:
        report.notes.append(f"provider {m.choice.describe()}")
    if g.strategy != manifest.strategy:
        report.notes.append(
            f"the golden file was recorded from the {g.strategy} export; this model is the {manifest.strategy} "
            "export of the same weights"
        )
    state_outputs = {s.output for s in manifest.states}
    outputs = [n for n in m.output_names if n not in state_outputs]
    missing = [n for n in g.output_names if n not in outputs]
    if missing:
        raise ConfigError(
            f"golden output(s) {', '.join(map(repr, missing))} are not outputs of this model; it returns "
            f"{', '.join(outputs)}"
        )
    if manifest.states:
        from ..runtime.stream import StreamingModel

        sm = StreamingModel(m)
        k = sm.chunk
        for case in g.cases:
            x = _stream_input(sm, g, case)
            label = f"{case.label} streamed K={k or 'any'}"
            got = _fitting(label, lambda x=x: sm.run_sequence(x))
            _compare(report, label, candidate, case, {n: _last_rows(got[n], w) for n, w in case.outputs.items()}, tol)
    else:
        for case in g.cases:
            feed = _feed(m, g, case)
            got = _fitting(case.label, lambda feed=feed: m.run_feed(feed))
            _compare(report, case.label, candidate, case, got, tol)
    return report


def _fitting(label: str, run: Any) -> dict[str, np.ndarray]:
    """``run()``, with the runtime's input checks' refusal of a golden input reported as the golden's misfit."""
    try:
        return dict(run())
    except InputError as e:
        raise ConfigError(f"golden case {label} does not fit this model: {e}") from None


def _compare(
    report: ParityReport,
    label: str,
    candidate: str,
    case: GoldenCase,
    got: Mapping[str, np.ndarray],
    tol: Tolerance,
) -> None:
    for name, want in case.outputs.items():
        have = np.asarray(got[name])
        if np.shape(have) != np.shape(want):
            report.notes.append(
                f"output {name} at {label}: the model returns shape {np.shape(have)}, the golden holds {np.shape(want)}"
            )
        a, rel, ok = compare(want, have, tol)
        report.comparisons.append(Comparison(label, candidate, name, a, rel, ok))


def _feed(m: Model, g: Golden, case: GoldenCase) -> dict[str, np.ndarray]:
    """A case's inputs by the model's input names: a lengths input goes to a float-mask model as ``lengths``
    (the runtime makes the mask); every name and fixed size is checked against the model first."""
    specs = {s.name: s for s in m.inputs}
    mask = next((s for s in m.inputs if s.role == "mask"), None)
    feed: dict[str, np.ndarray] = {}
    for name, a in case.inputs.items():
        if name in specs:
            _check_shape(case.label, name, a, specs[name])
            feed[name] = a
        elif g.role(name) == "lengths" and mask is not None and "lengths" not in specs:
            feed["lengths"] = a
        else:
            raise ConfigError(
                f"golden input {name!r} is not an input of this model; it takes {', '.join(specs) or 'nothing'}"
            )
    given = set(feed) | ({mask.name} if mask is not None and "lengths" in feed else set())
    absent = [s.name for s in m.inputs if s.name not in given and s.role not in ("lengths", "mask")]
    if absent:
        raise ConfigError(
            f"this model takes input(s) {', '.join(map(repr, absent))}, which the golden file does not hold "
            f"(it holds {', '.join(case.inputs)})"
        )
    return feed


def _stream_input(sm: Any, g: Golden, case: GoldenCase) -> np.ndarray:
    """A streamed case's one input, the model's data input, with its whole time axis: checked for its name, rank,
    fixed sizes and a whole number of chunks."""
    data: TensorSpec = sm.data
    extra = [n for n in case.inputs if n != data.name]
    if extra:
        raise ConfigError(
            f"golden input(s) {', '.join(map(repr, extra))} are not inputs of this streaming model: it takes "
            f"{data.name!r} besides its states"
        )
    if data.name not in case.inputs:
        raise ConfigError(
            f"this streaming model takes {data.name!r} besides its states; the golden file holds "
            f"{', '.join(map(repr, case.inputs))}"
        )
    a = case.inputs[data.name]
    shape = [("time" if i == sm.axes.time else d) for i, d in enumerate(sm.shape)]
    _check_shape(case.label, data.name, a, replace(data, shape=shape, axes=None))
    k = sm.chunk
    if k and sm.axes.time is not None and a.shape[sm.axes.time] % k:
        raise ConfigError(
            f"golden case {case.label}: input {data.name!r} has {a.shape[sm.axes.time]} steps, not a whole number "
            f"of the model's chunks of {k}"
        )
    return a


def _check_shape(label: str, name: str, a: np.ndarray, spec: TensorSpec) -> None:
    fits = a.ndim == len(spec.shape) and all(
        not isinstance(want, int) or want == got for want, got in zip(spec.shape, a.shape, strict=False)
    )
    if not fits:
        shape = "(" + ", ".join(str(d) for d in spec.shape) + ")"
        raise ConfigError(
            f"golden case {label}: input {name!r} has shape {tuple(a.shape)}; this model takes {shape} "
            "(the golden file was made for a model of another shape)"
        )


def _last_rows(streamed: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """A streamed output against the whole-sequence one: where the stream gives more rows along one axis (each
    chunk's last k steps, concatenated), the last rows are the ones the whole sequence gives."""
    streamed = np.asarray(streamed)
    if streamed.shape == whole.shape or streamed.ndim != whole.ndim:
        return streamed
    differ = [i for i, (s, w) in enumerate(zip(streamed.shape, whole.shape, strict=True)) if s != w]
    if len(differ) == 1 and streamed.shape[differ[0]] > whole.shape[differ[0]]:
        axis = differ[0]
        n = streamed.shape[axis]
        return np.take(streamed, np.arange(n - whole.shape[axis], n), axis=axis)
    return streamed
