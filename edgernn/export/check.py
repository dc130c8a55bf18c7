"""``edgernn check`` as a library function: will a model (edgernn's or not) run on each target? Each target's own
check (``edgernn.targets``: its tool's verdict on the graph, and its runtime's outputs against
onnxruntime CPU where the runtime is here), asked without torch.

- ``nnapi`` / ``coreml``: onnxruntime's mobile usability checker, in process: partitions, coverage, each node left
  out and why (``edgernn.targets.mobile``).
- ``openvino``: the model is read and compiled by OpenVINO (with the fp32 precision hint; its CPU plugin computes
  in bf16 otherwise) and its outputs compared with onnxruntime's.
- ``portable``: onnx's checker (full) and onnx's reference implementation, which follows the specification,
  compared with onnxruntime.
- ``triton``: a step export with batch-first states whose Triton config validates.
- ``ort``: onnxruntime loads and runs the model.

Outputs are compared on random inputs at the manifest's shapes (or the ones given), with the fp32 tolerances.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..errors import TargetError
from ..manifest import MANIFEST_KEY, read_manifest
from ..progress import stage
from ..targets import get_target, structure_report, target_runners
from ..verify.check import TargetReport, check_model_inputs, read_bytes
from ..verify.parity import ParityReport, Runner, check, session_runner


def manifest_target(model: str | os.PathLike[str] | bytes) -> str | None:
    """The target an edgernn export was made for (None for other models); read through onnxruntime."""
    from ..runtime.providers import make_session

    session, _ = make_session(read_bytes(model), "cpu", threads=1)
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

    data = read_bytes(model)
    for t in targets:
        get_target(t)  # ConfigError naming the targets, before any work
    stage(f"reading the model into onnxruntime ({len(data) / 1e6:.1f} MB)")
    check_model_inputs(make_session(data, "cpu", threads=1)[0], shapes)  # a bad --shape fails before any tool runs
    reports = []
    for t in targets:
        stage(f"target {t}: its tool's check")
        report = structure_report(t, data)
        try:
            runners = target_runners(t, data)
        except TargetError as e:
            not_installed = "not installed" in str(e)
            reports.append(TargetReport(t, None if not_installed else False, str(e)))
            continue
        if runners:
            stage(f"target {t}: its outputs against onnxruntime's")
            try:
                par = compare_with_onnxruntime(data, runners, shapes=shapes, seed=seed)
            except TargetError as e:  # an engine that loads lazily (tract, at concrete shapes) refused it there
                reports.append(TargetReport(t, False, str(e)))
                continue
            report.parity = par.summary()
            if not par.passed:
                report.passed = False
                report.summary += f"; outputs differ from onnxruntime's (max abs {par.max_abs:.3g})"
            else:
                report.summary += f"; outputs match onnxruntime's (max abs {par.max_abs:.2e})"
        reports.append(report)
    return reports


def compare_with_onnxruntime(
    model: str | os.PathLike[str] | bytes,
    runners: Mapping[str, Runner],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> ParityReport:
    """``runners`` (other runtimes of ``model``) against onnxruntime CPU on random inputs at the manifest's (or
    the graph's, or ``shapes``') shapes, behind the runtime's input checks, at the fp32 tolerance."""
    from ..runtime.providers import make_session

    session, _ = make_session(read_bytes(model), "cpu", threads=1)
    specs, cases, through_checks = check_model_inputs(session, shapes)
    return check(
        through_checks(session_runner(session)),
        {name: through_checks(run) for name, run in runners.items()},
        specs,
        [o.name for o in session.get_outputs()],
        cases,
        seed=seed,
        states=True,
    )
