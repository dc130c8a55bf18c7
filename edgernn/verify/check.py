"""What every target's check shares, without torch: the report a check returns (``TargetReport``), the inputs a
comparison of runtimes on one model runs (``check_model_inputs``), and the reading of a model as bytes or proto.

The checks themselves belong to the targets (``edgernn.targets``: each target's module owns its check);
``edgernn check`` asks them about any ONNX file (``edgernn.export.check``). Outputs are compared on random
inputs at the manifest's shapes (or the ones given), with the fp32 tolerances.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..manifest import MANIFEST_KEY, Manifest, TensorSpec, read_manifest
from .parity import Case, Runner, case_from_shapes, cases_for, other_axes, static_batch


@dataclass
class TargetReport:
    target: str
    passed: bool | None  # None: not checked here (the target's tool is not installed)
    summary: str  # one line for people
    partitions: int | None = None  # nnapi/coreml: partitions the graph splits into on the provider
    nodes: int | None = None
    supported_nodes: int | None = None
    coverage: float | None = None  # supported_nodes / nodes
    unsupported: list[dict[str, Any]] = field(default_factory=list)  # {"node", "op", "reasons"}
    caveats: list[str] = field(default_factory=list)  # the checker's notes on ops it counted as supported
    parity: dict[str, Any] | None = None  # the target's outputs against onnxruntime's (or torch's at export)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- comparing runtimes on one model


def check_model_inputs(
    session: Any, shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[list[TensorSpec], list[Case], Callable[[Runner], Runner]]:
    """For comparing runtimes on one model (an onnxruntime session of it): its input specs (the manifest's, or
    the graph's), the cases to run, and a wrapper that puts a runner behind the runtime's input checks."""
    meta = session.get_modelmeta().custom_metadata_map
    manifest = read_manifest(meta) if MANIFEST_KEY in meta else None
    specs = _graph_specs(session, manifest)
    return specs, _cases(specs, manifest, shapes), lambda run: graph_runner(specs, run)


def graph_runner(specs: Sequence[TensorSpec], run: Runner) -> Runner:
    """``run`` behind the runtime's input checks: each feed is validated and completed for the graph first (a
    float-mask model gets its mask made from the feed's lengths, as ``edgernn.runtime`` does on a device)."""
    from ..runtime.validate import check_feed

    def adapted(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(run(check_feed(specs, feed)))

    return adapted


def _graph_specs(session: Any, manifest: Manifest | None) -> list[TensorSpec]:
    if manifest is not None:
        return list(manifest.inputs)
    from ..runtime.model import graph_spec

    return [graph_spec(a) for a in session.get_inputs()]


def _cases(
    specs: Sequence[TensorSpec], manifest: Manifest | None, shapes: Mapping[str, Sequence[int]] | None
) -> list[Case]:
    """Cases at the manifest's shapes; with ``shapes``, one case whose named dims are read from them."""
    if shapes:
        return [case_from_shapes(specs, shapes)]
    has_lengths = any(s.role in ("lengths", "mask") for s in specs)
    if manifest is not None:
        batch = static_batch(specs)
        fixed = manifest.seq_len or manifest.chunk
        cases = cases_for(has_lengths=has_lengths, fixed_length=fixed, batch=batch, other_axes=other_axes(specs))
        return [c for c in cases if c.length <= 64] or cases[:1]  # a check, not a soak: short sequences
    return [case_from_shapes(specs, {})]


def read_bytes(model: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelFormatError(f"no model file at {path!r}")
    from ..runtime.model import check_protobuf_size

    check_protobuf_size(path)
    with open(path, "rb") as f:
        return f.read()


def as_bytes(model: Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def as_proto(model: Any) -> Any:
    if not isinstance(model, bytes):
        return model
    import onnx

    try:
        return onnx.load_from_string(model)
    except Exception as e:
        raise ModelFormatError(f"not a readable ONNX model: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
