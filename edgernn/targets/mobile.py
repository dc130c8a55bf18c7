"""The check the mobile targets (``nnapi``, ``coreml``) share: onnxruntime's mobile usability checker
(``onnxruntime.tools.mobile_helpers``), in process: how many partitions the graph splits into on the execution
provider, what share of the nodes they cover, and each node left out with the reason (op not supported, a shape
that is not fixed, a rank too high). The checker reads op types against the provider's list; the caveats it
attaches to supported ops (e.g. "B must be constant") are reported as they are, not checked.

Not a target itself: each mobile target's module names its provider (``MobileProvider``) and calls
``mobile_report``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..verify.check import TargetReport


@dataclass(frozen=True)
class MobileProvider:
    name: str  # the execution provider as onnxruntime's checker says it, e.g. "NNAPI"
    ops_file: str  # the op list the checker reads, beside onnxruntime's usability_checker module
    max_rank: int  # the highest tensor rank the provider takes


def mobile_report(model: Any, target: str, provider: MobileProvider) -> TargetReport:
    """onnxruntime's usability checker for ``provider`` on ``model`` (bytes or onnx.ModelProto), reported for
    ``target``; passes when one partition covers every node, which is what "runs on the device's accelerator"
    means."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    from ..verify.check import TargetReport, as_proto, first_line

    ep, ops_file, max_rank = provider.name, provider.ops_file, provider.max_rank
    model = as_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        return TargetReport(target, False, f"{ep}: onnx shape inference fails on this model: {first_line(e)}")
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
