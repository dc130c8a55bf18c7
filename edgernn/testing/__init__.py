"""Parity in your own tests: ``assert_parity`` and a pytest plugin.

>>> from edgernn.testing import assert_parity
>>> assert_parity(my_module, "model.onnx")                       # the torch module against the export
>>> assert_parity("run/model.ckpt", "model.onnx", atol=1e-4)     # a checkpoint
>>> assert_parity("model.onnx", "model.int8.onnx", atol=5e-2)    # another ONNX file
>>> assert_parity("model.golden.npz", "model.onnx")               # a golden file written at export (no torch)

On failure an ``AssertionError`` says, before any number, what makes the sides disagree (other weights, another
architecture), then for the worst outputs where they first leave the tolerance (output, case, batch item, time
step, both values) and, with a torch reference, the recurrent layer, direction and step where the hidden state
first drifts. The pytest plugin (installed with edgernn) adds ``--edgernn-provider`` and the fixtures
``edgernn_provider`` and ``edgernn_parity`` (``assert_parity`` on that provider): see docs/parity-in-tests.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["assert_parity"]


def assert_parity(
    reference: Any,
    model: str | os.PathLike[str] | bytes,
    inputs: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    shapes: Mapping[str, Sequence[int]] | Sequence[Mapping[str, Sequence[int]]] | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    provider: str = "cpu",
    fallback: str | None = None,
    localize: bool = True,
) -> Any:
    """Assert that ``model`` (an ONNX path or bytes) computes what ``reference`` computes; returns the
    ``ParityReport`` when it does.

    ``reference``: a torch module, an edgernn checkpoint (file or training directory), another ONNX file, or a
    golden file (``.npz`` written by ``edgernn export --golden``). ``inputs`` (arrays by input name, or a
    .npz/.npy path) replace the random cases; ``shapes`` (``{"x": (3, 17, 5)}`` or a list of them) give the
    cases' shapes. ``atol``/``rtol`` override the fp32 tolerance. ``localize`` (torch references) adds the layer
    and step where the hidden state first drifts to the failure message.
    """
    from ..workflows.recheck import parity_check

    if isinstance(shapes, Mapping):
        shapes = [shapes]
    module = reference if _is_module(reference) else None
    if module is None and _is_golden(reference):
        from ..verify.golden import verify_golden

        if inputs is not None or shapes:
            raise ValueError("a golden file holds its own inputs; give no inputs or shapes with it")
        report = verify_golden(model, reference, provider=provider, fallback=fallback, atol=atol, rtol=rtol)
    else:
        report = parity_check(
            None if module is not None else reference,
            model,
            module=module,
            providers=[provider],
            fallback=fallback,
            inputs=inputs,
            shapes=list(shapes) if shapes else None,
            atol=atol,
            rtol=rtol,
        )
    if not report.passed:
        first_shape = shapes[0] if shapes else None
        where = _localized(reference, model, report, inputs, provider, first_shape) if localize else None
        raise AssertionError(failure_message(report, where))
    return report


def failure_message(report: Any, where: str | None = None) -> str:
    """The assertion's text: problems first, then where the worst outputs first leave the tolerance."""
    lines = [f"parity FAILED (atol {report.atol:g}, rtol {report.rtol:g})"]
    lines += [f"  {p}" for p in report.problems]
    failures = sorted(report.failures(), key=lambda c: -c.max_abs)
    lines += [f"  {c.describe()}" for c in failures[:5]]
    if len(failures) > 5:
        lines.append(f"  ... and {len(failures) - 5} more failing comparisons")
    if not report.comparisons and not report.problems:
        lines.append("  nothing was compared")
    if where:
        lines.append(f"  {where}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


def _is_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _is_golden(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix.lower() == ".npz"


def _localized(reference: Any, model: Any, report: Any, inputs: Any, provider: str, shape: Any = None) -> str | None:
    """The layer, direction and step where the hidden state first drifts, for a torch reference (a module or a
    checkpoint); None where that cannot be said (another kind of reference, a problem found before numbers)."""
    if report.problems or not report.failures():
        return None
    module = reference if _is_module(reference) else None
    if module is None and (_is_golden(reference) or isinstance(reference, bytes) or _is_onnx_path(reference)):
        return None
    from ..errors import EdgeRNNError
    from ..workflows.recheck import localize_check

    try:
        loc = localize_check(
            None if module is not None else reference,
            model,
            module=module,
            inputs=inputs,
            provider=provider,
            atol=report.atol,
            rtol=report.rtol,
            shape=shape,
        )
    except EdgeRNNError as e:
        return f"where it drifts: not followed layer by layer ({e})"
    return f"where it drifts: {loc.describe()}"


def _is_onnx_path(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix.lower() in (".onnx", ".ort")
