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


def stream_cases(batch: int | None = None) -> list[Case]:
    """The chained check's cases; a static-batch export streams at its batch size only."""
    return list(STREAM_CASES) if batch is None else [Case(batch, 50)]


def _runtimes(
    data: bytes, providers: Sequence[str], extra: Mapping[str, Runner] | None, graph_specs: Sequence[TensorSpec]
) -> dict[str, Runner]:
    """onnxruntime on each provider, then the target's own runtimes (``extra``), each behind the runtime's input
    checks (which make a float-mask model's mask from the feed's lengths, as on a device)."""
    from ..runtime.providers import make_session
    from .check import graph_runner

    if not providers:
        raise ExportError("parity needs at least one onnxruntime provider to run the exported model on; none given")
    out: dict[str, Runner] = {}
    for p in providers:
        sess, _ = make_session(data, p, threads=None)
        out[f"onnxruntime:{p}"] = graph_runner(graph_specs, session_runner(sess))
    for name, run in (extra or {}).items():
        out[name] = graph_runner(graph_specs, run)
    return out


def _renamed(run: Runner, lengths_name: str | None) -> Runner:
    """Feed a model's own name for its lengths to a float-mask graph as ``lengths`` (it makes the mask)."""
    if lengths_name is None or lengths_name == "lengths":
        return run

    def renamed(feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        return run({("lengths" if k == lengths_name else k): v for k, v in feed.items()})

    return renamed


def verify_parity(
    module: nn.Module,
    proto: Any,
    manifest: Manifest,
    *,
    torch_specs: Sequence[TensorSpec] | None = None,
    lengths_name: str | None = None,
    cases: Sequence[Case] | None = None,
    oracle: Runner | None = None,
    providers: Sequence[str] = ("cpu",),
    extra: Mapping[str, Runner] | None = None,
    int_high: int = 2,
) -> ParityReport:
    """Eager torch ``module`` against onnxruntime on ``proto`` (each provider), the target's runtimes
    (``extra``) and the optional numpy oracle.

    ``torch_specs`` are the inputs ``module`` takes (default: the graph's); they differ from the graph's when the
    graph takes a float mask where the module takes lengths (named ``lengths_name``).
    """
    data = proto.SerializeToString() if not isinstance(proto, bytes) else proto
    specs = list(torch_specs or manifest.inputs)
    mask = manifest.input("mask")
    candidates = {
        name: _renamed(run, lengths_name if mask is not None else None)
        for name, run in _runtimes(data, providers, extra, manifest.inputs).items()
    }
    if oracle is not None:
        candidates["numpy"] = oracle
    if cases is None:
        has_lengths = any(s.role in ("lengths", "mask") for s in manifest.inputs)
        cases = cases_for(has_lengths=has_lengths, fixed_length=manifest.seq_len, batch=manifest.batch)
    was_training = module.training
    module.eval()
    try:
        return check(
            torch_runner(module, specs),
            candidates,
            specs,
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
    graph_specs: Sequence[TensorSpec] | None = None,
    cases: Sequence[Case] | None = None,
    oracle: Runner | None = None,
    providers: Sequence[str] = ("cpu",),
    extra: Mapping[str, Runner] | None = None,
    int_high: int = 2,
) -> ParityReport:
    """Chained step calls through onnxruntime (each provider) and the target's runtimes (``extra``) against the
    eager module on the whole sequence.

    ``specs`` are the data inputs with their "time" axis still named (the graph fixes it to ``chunk``);
    ``graph_specs`` the graph's inputs, states included (default: read from ``proto``'s manifest-free graph).
    """
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    if graph_specs is None:
        from ..runtime.model import graph_spec
        from ..runtime.providers import make_session

        sess, _ = make_session(data, "cpu", threads=None)
        graph_specs = [graph_spec(a) for a in sess.get_inputs()]
    reference = stream_reference(module, specs)
    was_training = module.training
    module.eval()
    report: ParityReport | None = None
    try:
        for i, (name, run) in enumerate(_runtimes(data, providers, extra, graph_specs).items()):
            r = check_chained(
                reference,
                run,
                specs,
                states,
                output_names,
                chunk,
                list(cases or STREAM_CASES),
                oracle=oracle if i == 0 else None,
                candidate=name,
                int_high=int_high,
            )
            if report is None:
                report = r
            else:
                report.comparisons.extend(r.comparisons)
    finally:
        module.train(was_training)
    if report is None:
        raise ExportError("no runtime to verify the stream on")
    return report
