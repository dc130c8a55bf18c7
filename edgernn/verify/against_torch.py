"""Parity against the eager torch model: the checks every export runs before it writes a file.

``verify_parity`` runs a whole-sequence export on onnxruntime (each provider asked for) against the eager module
and the numpy oracle; ``verify_stream`` chains a streaming export's calls against one eager call on the whole
sequence. The reference is always the module the user trained, never an exported program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..manifest import Manifest, StateSpec, TensorSpec
from .parity import Case, ParityReport, Runner, cases_for, check, check_chained, session_runner, torch_runner

# stream lengths the chained check runs by default: one sequence alone and a batch, 50 steps each
STREAM_CASES: tuple[Case, ...] = (Case(1, 50), Case(3, 50))


def verify_parity(
    module: nn.Module,
    proto: Any,
    manifest: Manifest,
    *,
    cases: Sequence[Case] | None = None,
    oracle: Runner | None = None,
    providers: Sequence[str] = ("cpu",),
    int_high: int = 2,
) -> ParityReport:
    """Eager torch ``module`` against onnxruntime on ``proto`` (each provider) and the optional numpy oracle."""
    from ..runtime.providers import make_session

    data = proto.SerializeToString() if not isinstance(proto, bytes) else proto
    candidates: dict[str, Runner] = {}
    for p in providers:
        sess, _ = make_session(data, p, threads=None)
        candidates[f"onnxruntime:{p}"] = session_runner(sess)
    if oracle is not None:
        candidates["numpy"] = oracle
    if cases is None:
        cases = cases_for(has_lengths=manifest.input("lengths") is not None, fixed_length=manifest.seq_len)
    was_training = module.training
    module.eval()
    try:
        return check(
            torch_runner(module, manifest.inputs),
            candidates,
            manifest.inputs,
            [o.name for o in manifest.outputs],
            cases,
            int_high=int_high,
        )
    finally:
        module.train(was_training)


def stream_reference(module: nn.Module, specs: Sequence[TensorSpec]) -> Runner:
    """Run the eager (unconverted) module on a whole sequence; its outputs, then each recurrent layer's final
    state (read with forward hooks on the module's own torch layers)."""
    layers = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    final: dict[int, Any] = {}

    def grab(layer: nn.Module, _args: Any, out: Any) -> None:
        final[id(layer)] = out[1]

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        final.clear()
        handles = [m.register_forward_hook(grab) for m in layers]
        try:
            with torch.no_grad():
                out = module(*[torch.from_numpy(np.array(feed[s.name])) for s in specs])
        finally:
            for hnd in handles:
                hnd.remove()
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for m in layers:
            st = final[id(m)]
            outs.extend(st if isinstance(st, tuple) else (st,))
        return [o.detach().cpu().numpy() for o in outs]

    return run


def verify_stream(
    module: nn.Module,
    proto: Any,
    specs: Sequence[TensorSpec],
    states: Sequence[StateSpec],
    output_names: Sequence[str],
    chunk: int,
    *,
    cases: Sequence[Case] | None = None,
    oracle: Runner | None = None,
    providers: Sequence[str] = ("cpu",),
    int_high: int = 2,
) -> ParityReport:
    """Chained step calls through onnxruntime (each provider) against the eager module on the whole sequence.

    ``specs`` are the data inputs with their "time" axis still named (the graph fixes it to ``chunk``).
    """
    from ..runtime.providers import make_session

    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    reference = stream_reference(module, specs)
    was_training = module.training
    module.eval()
    report: ParityReport | None = None
    try:
        for i, p in enumerate(providers):
            sess, _ = make_session(data, p, threads=None)
            r = check_chained(
                reference,
                session_runner(sess),
                specs,
                states,
                output_names,
                chunk,
                list(cases or STREAM_CASES),
                oracle=oracle if i == 0 else None,
                candidate=f"onnxruntime:{p}",
                int_high=int_high,
            )
            if report is None:
                report = r
            else:
                report.comparisons.extend(r.comparisons)
    finally:
        module.train(was_training)
    if report is None:
        raise ExportError("no onnxruntime provider to verify the stream on")
    return report
