"""Will it run there? Each target's own tool, asked about one ONNX file (edgernn's or not), without torch.

- ``nnapi`` / ``coreml``: onnxruntime's mobile usability checker (``onnxruntime.tools.mobile_helpers``), in
  process: how many partitions the graph splits into on that execution provider, what share of the nodes they
  cover, and each node left out with the reason (op not supported, a shape that is not fixed, a rank too high).
  The checker reads op types against the provider's list; the caveats it attaches to supported ops (e.g. "B must
  be constant") are reported as they are, not checked.
- ``openvino``: the model is read and compiled by OpenVINO (with the fp32 precision hint; its CPU plugin computes
  in bf16 otherwise) and its outputs compared with onnxruntime's.
- ``portable``: onnx's checker (full) and onnx's reference implementation, which follows the specification,
  compared with onnxruntime.
- ``ort``: onnxruntime loads and runs the model.

Outputs are compared on random inputs at the manifest's shapes (or the ones given), with the fp32 tolerances.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFormatError, TargetError
from ..manifest import MANIFEST_KEY, Manifest, TensorSpec, read_manifest
from .parity import Case, Runner, case_from_shapes, cases_for, check, other_axes, session_runner, static_batch

CHECKS = ("ort", "nnapi", "coreml", "openvino", "portable", "triton")

# execution provider -> the op list onnxruntime's checker reads, and the highest tensor rank the provider takes
_MOBILE = {
    "nnapi": ("NNAPI", "nnapi_supported_ops.md", 999),
    "coreml": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md", 5),
}


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


# ------------------------------------------------------------------------------------------- mobile partitions


def mobile_report(model: Any, target: str) -> TargetReport:
    """onnxruntime's usability checker for ``target`` (nnapi, coreml) on an onnx.ModelProto; passes when one
    partition covers every node, which is what "runs on the device's accelerator" means."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    ep, ops_file, max_rank = _MOBILE[target]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        return TargetReport(target, False, f"{ep}: onnx shape inference fails on this model: {_line(e)}")
    ops = uc._SupportedOpsChecker(os.path.join(os.path.dirname(uc.__file__), ops_file))
    info = uc.check_partitioning(inferred.graph, ops, True, max_rank)
    in_groups = {id(n) for group in info.supported_groups for n in group}
    values = {v.name: v for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)}
    weights = {t.name for t in inferred.graph.initializer}
    unsupported = []
    for node in inferred.graph.node:
        if id(node) in in_groups:
            continue
        reasons = []
        if not ops.is_op_supported(node):
            reasons.append(f"{ep} does not support {node.op_type}")
        dynamic = [n for n in node.input if n and n not in weights and not _fixed(values.get(n))]
        if dynamic:
            reasons.append(f"input {dynamic[0]!r} has no fixed shape")
        ranks = [len(values[n].type.tensor_type.shape.dim) for n in node.input if n in values]
        if ranks and max(ranks) > max_rank:
            reasons.append(f"a tensor of rank {max(ranks)} (at most {max_rank})")
        unsupported.append({"node": node.name, "op": node.op_type, "reasons": reasons or ["outside the partitions"]})
    coverage = info.num_supported_nodes / info.num_nodes if info.num_nodes else 1.0
    passed = info.num_partitions == 1 and info.num_supported_nodes == info.num_nodes
    summary = (
        f"{ep}: {info.num_partitions} partition(s), {info.num_supported_nodes}/{info.num_nodes} nodes ({coverage:.0%})"
    )
    if unsupported:
        ops_out = sorted({u["op"] for u in unsupported})
        summary += f"; not on {ep}: {', '.join(ops_out)}"
        if any("no fixed shape" in r for u in unsupported for r in u["reasons"]):
            summary += f" (symbolic dims: export with --target {target}, which fixes the batch and time)"
    return TargetReport(
        target,
        passed,
        summary,
        partitions=info.num_partitions,
        nodes=info.num_nodes,
        supported_nodes=info.num_supported_nodes,
        coverage=coverage,
        unsupported=unsupported,
        caveats=sorted(info.supported_ops_checker.get_caveats()),
    )


def _fixed(vi: Any) -> bool:
    if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in vi.type.tensor_type.shape.dim)


# ---------------------------------------------------------------------------------------------- other runtimes


def openvino_runner(model: bytes, *, threads: int = 1) -> Runner:
    """OpenVINO's CPU plugin on the model, in fp32 (INFERENCE_PRECISION_HINT f32); a parity runner."""
    try:
        import openvino as ov
    except ImportError:
        raise TargetError(
            "the openvino target is checked with OpenVINO itself, which is not installed: "
            "pip install 'edgernn[openvino]'"
        ) from None
    core = ov.Core()
    try:
        compiled = core.compile_model(
            core.read_model(io.BytesIO(model).getvalue()),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)},
        )
    except RuntimeError as e:
        raise TargetError(f"OpenVINO cannot compile this model: {_ov_message(e)}") from None
    names = [o.get_any_name() for o in compiled.outputs]
    wanted = {i.get_any_name() for i in compiled.inputs}

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = compiled({k: v for k, v in feed.items() if k in wanted})
        return [np.asarray(result[n]) for n in names]

    return run


def reference_runner(model: Any) -> Runner:
    """onnx's reference implementation (``onnx.reference.ReferenceEvaluator``), which follows the spec."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(model)
    except Exception as e:
        raise TargetError(f"onnx's reference implementation cannot load this model: {_line(e)}") from None
    wanted = set(evaluator.input_names)

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in evaluator.run(None, {k: v for k, v in feed.items() if k in wanted})]

    return run


def target_runners(target: str, model: Any) -> dict[str, Runner]:
    """Parity candidates a target adds beside onnxruntime CPU: OpenVINO for openvino, onnx.reference for
    portable; none for the others (nnapi/coreml run through onnxruntime's CPU kernels here)."""
    if target == "openvino":
        return {"openvino:cpu": openvino_runner(_bytes(model))}
    if target == "portable":
        return {"onnx.reference": reference_runner(_proto(model))}
    return {}


def structure_report(target: str, model: Any) -> TargetReport:
    """What a target's tool says of the graph itself, before any number is compared."""
    if target in _MOBILE:
        return mobile_report(_proto(model), target)
    if target == "portable":
        import onnx

        try:
            onnx.checker.check_model(_proto(model), full_check=True)
        except Exception as e:
            return TargetReport(target, False, f"onnx checker (full): {_line(e)}")
        return TargetReport(target, True, "onnx checker (full) and strict shape inference pass")
    if target == "openvino":
        return TargetReport(target, True, "OpenVINO compiles the model (fp32 precision hint)")
    if target == "ort":
        return TargetReport(target, True, "onnxruntime loads the model")
    if target == "triton":  # a step export with batch-first states whose Triton config validates
        from ..serve.triton import triton_report

        return triton_report(_bytes(model))
    raise ConfigError(f"unknown target {target!r}; choose one of: {', '.join(CHECKS)}")


# ------------------------------------------------------------------------------------------ `edgernn check`


def manifest_target(model: str | os.PathLike[str] | bytes) -> str | None:
    """The target an edgernn export was made for (None for other models); read through onnxruntime."""
    from ..runtime.providers import make_session

    session, _ = make_session(_read(model), "cpu", threads=1)
    meta = session.get_modelmeta().custom_metadata_map
    return read_manifest(meta).target if MANIFEST_KEY in meta else None


def check_model(
    model: str | os.PathLike[str] | bytes,
    targets: Sequence[str],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> list[TargetReport]:
    """A compatibility report for any ONNX file: per target, the tool's verdict on the graph and the outputs
    against onnxruntime CPU on random inputs (the manifest's shapes, or ``shapes`` by input name)."""
    from ..runtime.providers import make_session

    data = _read(model)
    for t in targets:
        if t not in CHECKS:
            raise ConfigError(f"unknown target {t!r}; choose one of: {', '.join(CHECKS)}")
    session, _ = make_session(data, "cpu", threads=1)
    specs, cases, through_checks = check_model_inputs(session, shapes)
    outputs = [o.name for o in session.get_outputs()]
    reports = []
    for t in targets:
        report = structure_report(t, data)
        try:
            runners = target_runners(t, data)
        except TargetError as e:
            not_installed = "not installed" in str(e)
            reports.append(TargetReport(t, None if not_installed else False, str(e)))
            continue
        if runners:
            par = check(
                through_checks(session_runner(session)),
                {name: through_checks(run) for name, run in runners.items()},
                specs,
                outputs,
                cases,
                seed=seed,
                states=True,
            )
            report.parity = par.summary()
            if not par.passed:
                report.passed = False
                report.summary += f"; outputs differ from onnxruntime's (max abs {par.max_abs:.3g})"
            else:
                report.summary += f"; outputs match onnxruntime's (max abs {par.max_abs:.2e})"
        reports.append(report)
    return reports


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


def _read(model: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelFormatError(f"no model file at {path!r}")
    with open(path, "rb") as f:
        return f.read()


def _bytes(model: Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def _proto(model: Any) -> Any:
    if not isinstance(model, bytes):
        return model
    import onnx

    try:
        return onnx.load_from_string(model)
    except Exception as e:
        raise ModelFormatError(f"not a readable ONNX model: {_line(e)}") from None


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _ov_message(e: BaseException) -> str:
    """OpenVINO's errors are pages of C++ locations; keep the lines that say what is wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return " ".join(lines)[:400] or type(e).__name__
