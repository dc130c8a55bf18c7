"""The manifest every edgernn export writes into the ONNX model's ``metadata_props``.

The runtime reads input names, dynamic axes and state names/shapes from it instead of asking the user. It is
stored as JSON under one key, ``edgernn.manifest``. This module imports neither torch nor onnx.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelFormatError


def finite(data: Any) -> Any:
    """``data`` with every float that is NaN or infinite replaced by None: what strict JSON can hold."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def json_text(data: Any, **options: Any) -> str:
    """``json.dumps`` that never writes the non-JSON tokens NaN or Infinity (they become null); numpy scalars
    and other objects are written as their ``str`` unless ``default`` says otherwise."""
    options.setdefault("default", str)
    return json.dumps(finite(_plain(data)), allow_nan=False, **options)


def _plain(data: Any) -> Any:
    """numpy floats as Python floats (so ``finite`` sees them), recursively."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if type(data).__module__ == "numpy" and hasattr(data, "item"):
        return data.item()
    return data


MANIFEST_KEY = "edgernn.manifest"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64
    shape: list[int | str]  # ints are fixed sizes, strings name dynamic axes ("batch", "time")
    role: str = "data"  # data | lengths | mask (float padding mask, made from lengths on the host) | state
    axes: list[str | None] | None = None  # each axis's name ("batch", "time") also where the export fixed its size

    def named_shape(self) -> list[int | str]:
        """The shape with every named axis given by its name, fixed or not (how the runtime finds batch/time)."""
        if self.axes is None or len(self.axes) != len(self.shape):
            return list(self.shape)
        return [a if a else d for a, d in zip(self.axes, self.shape, strict=True)]


@dataclass(frozen=True)
class StateSpec:
    input: str  # graph input carrying the state into a step
    output: str  # graph output carrying it out
    shape: list[int | str]  # with "batch" for the dynamic batch axis
    init: str = "zeros"  # the initial value a new stream starts from


@dataclass(frozen=True)
class Manifest:
    strategy: str
    cell: str | None  # None when a module holds several kinds
    num_layers: int
    hidden_size: int
    bidirectional: bool
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[StateSpec] = field(default_factory=list)
    weights_sha256: str = ""
    parameters: int | None = None  # the torch model's parameter count (initializers also hold shapes, indices)
    parity: dict[str, Any] = field(default_factory=dict)
    seq_len: int | None = None  # unroll: the fixed length
    chunk: int | None = None  # step: steps per call
    batch: int | None = None  # the batch size every input is fixed to (static-batch targets); None: dynamic
    proj_size: int = 0
    peephole: bool = False
    model_config: dict[str, Any] | None = None  # edgernn zoo models: the ModelConfig
    task: dict[str, Any] | None = None  # trained on a built-in task: its name and data settings (to judge int8)
    # zoo models trained on the user's data: the per-feature mean and std the graph standardises raw inputs with
    input_normalization: dict[str, Any] | None = None
    target: str = "ort"  # the runtime the graph was made for (edgernn.targets)
    target_check: dict[str, Any] = field(default_factory=dict)  # what the target's own tool said at export
    precision: dict[str, Any] = field(default_factory=dict)  # int8/fp16 files: how made, sizes, drift, metric
    selection: dict[str, Any] | None = None  # strategy auto: what was timed, how fast, and what won
    edgernn_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json_text(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ModelFormatError(
                    f"the edgernn manifest in this model is not a JSON object (got {type(d).__name__})"
                )
            version = d.get("format_version", 0)
            if not isinstance(version, int) or isinstance(version, bool):
                raise ModelFormatError(f"the edgernn manifest's format_version must be an integer; got {version!r}")
            if version > FORMAT_VERSION:
                raise ModelFormatError(
                    f"manifest format {d['format_version']} is newer than this edgernn understands "
                    f"({FORMAT_VERSION}); upgrade edgernn"
                )
            d["inputs"] = [_tensor(t) for t in d["inputs"]]
            d["outputs"] = [_tensor(t) for t in d["outputs"]]
            d["states"] = [StateSpec(**s) for s in d.get("states", [])]
            for s in d["states"]:
                _check_shape(s.input, s.shape)
            return cls(**d)
        except ModelFormatError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFormatError(f"the edgernn manifest in this model is malformed: {e}") from None

    def input(self, role: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the element types edgernn's exports use; a manifest naming another is not one edgernn wrote
DTYPES = ("float32", "float16", "int64", "int32", "bool")


def ranking_note(selection: dict[str, Any]) -> str | None:
    """Why strategy auto chose what it did, when that was not the fastest it timed (the ranking decided: see
    ``edgernn.export.auto.choose``); None when the fastest won."""
    times = selection.get("median_us") or {}
    if not times or min(times, key=times.__getitem__) == selection.get("chosen"):
        return None
    return selection.get("why")


TIMINGS_NOTE = (
    "timings belong to the machine and moment they were taken, not to the file: under another load, or on "
    "another machine, the figures and their ranking change"
)


def load_words(load: dict[str, Any] | None) -> str:
    """``load 3.1 on 2 CPUs at 2026-12-07T06:58:21Z`` from a record of ``edgernn.verify.bench.machine_load``;
    "load not recorded" for a report or manifest from before it was."""
    if not load or not isinstance(load, dict):
        return "load not recorded"
    one = load.get("load_1m")
    words = f"load {one:g}" if _number(one) else "load unknown"
    if load.get("cpus"):
        words += f" on {load['cpus']} CPUs"
    if load.get("at"):
        words += f" at {load['at']}"
    return words


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def selection_lines(selection: dict[str, Any]) -> list[str]:
    """What strategy auto measured, in words (``edgernn inspect``): the chosen strategy, each candidate's median
    and its spread over the rounds, why a simpler one was kept, when and under what load it was measured (with
    ``TIMINGS_NOTE``), and why any dropped out. A manifest from before spreads and load were recorded shows its
    medians and says so."""
    sel = selection
    b, t = sel["profile_shape"]
    spreads = sel.get("spread_us") or {}
    times = []
    for name, us in sorted((sel.get("median_us") or {}).items(), key=lambda kv: kv[1]):
        s = spreads.get(name) if isinstance(spreads, dict) else None
        if isinstance(s, dict) and _number(s.get("low")) and _number(s.get("high")):
            times.append(f"{name} {us:g} us ({s['low']:g}-{s['high']:g})")
        else:
            times.append(f"{name} {us:g} us")
    lines = [f"strategy chosen by auto: {sel['chosen']} ({', '.join(times)} per call at batch {b} x time {t}, "
             f"{sel['provider']})"]  # fmt: skip
    note = ranking_note(sel)
    if note:
        lines.append(f"  {note}")
    measured = sel.get("measured")
    if spreads:
        rounds = sel.get("rounds") if _number(sel.get("rounds")) else "the"
        lines.append(
            f"  median per call and (in brackets) the fastest-slowest of {rounds} interleaved rounds; "
            f"measured: {load_words(measured)}"
        )
    else:
        lines.append("  medians only: no spread or load was recorded (a file from an older edgernn)")
    lines.append(f"  {(measured if isinstance(measured, dict) else {}).get('note') or TIMINGS_NOTE}")
    for name, why in (sel.get("refused") or {}).items():
        lines.append(f"  {name} dropped out: {why}")
    return lines


def _tensor(d: Any) -> TensorSpec:
    if not isinstance(d, dict):
        raise ValueError(f"a tensor entry must be an object; got {type(d).__name__}")
    spec = TensorSpec(**d)
    if spec.dtype not in DTYPES:
        raise ValueError(f"tensor {spec.name!r} has dtype {spec.dtype!r}; edgernn's models use {', '.join(DTYPES)}")
    _check_shape(spec.name, spec.shape)
    return spec


def _check_shape(name: str, shape: Any) -> None:
    if not isinstance(shape, list) or not all(
        (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d) for d in shape
    ):
        raise ValueError(f"{name!r} has shape {shape!r}; a shape is a list of sizes >= 0 and axis names")


def read_manifest(metadata: dict[str, str]) -> Manifest:
    """The manifest from a model's metadata_props (as a dict); ModelFormatError when there is none."""
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        raise ModelFormatError(
            "this ONNX model has no edgernn manifest (it was not exported by edgernn); "
            "name its inputs and states explicitly instead"
        )
    return Manifest.from_json(text)


def write_manifest(proto: Any, manifest: Manifest) -> None:
    """Store ``manifest`` as the model's only metadata entry (an onnx.ModelProto, changed in place)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()
