"""Parity against the eager torch model: the checks every export runs before it writes a file.

``verify_parity`` runs a whole-sequence export on onnxruntime (each provider asked for) against the eager module
and the numpy oracle; ``verify_stream`` chains a streaming export's calls against one eager call on the whole
sequence. The reference is always the module the user trained, never an exported program.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..manifest import Manifest, StateSpec, TensorSpec
from ..model import nn as enn
from .parity import (
    Case,
    Comparison,
    ParityReport,
    Runner,
    Tolerance,
    cases_for,
    check,
    check_chained,
    compare,
    flat_outputs,
    make_inputs,
    module_failed,
    other_axes,
    session_runner,
    tolerance,
    torch_runner,
)

# stream lengths the chained check runs by default: one sequence alone and a batch, 50 steps each
STREAM_CASES: tuple[Case, ...] = (Case(1, 50), Case(3, 50))


def stream_cases(batch: int | None = None) -> list[Case]:
    """The chained check's cases; a static-batch export streams at its batch size only."""
    return list(STREAM_CASES) if batch is None else [Case(batch, 50)]


def _runtimes(
    data: bytes | str, providers: Sequence[str], extra: Mapping[str, Runner] | None, graph_specs: Sequence[TensorSpec]
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


def _session_source(model: Any) -> bytes | str:
    """What onnxruntime loads: a path as it is (its external data is found beside it), bytes, or a proto's bytes."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return model if isinstance(model, bytes) else model.SerializeToString()


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
    tol: Tolerance | None = None,
) -> ParityReport:
    """Eager torch ``module`` against onnxruntime on ``proto`` (a ModelProto, its bytes, or the file's path:
    a path keeps external data beside the model loadable) on each provider, the target's runtimes (``extra``)
    and the optional numpy oracle.

    ``torch_specs`` are the inputs ``module`` takes (default: the graph's); they differ from the graph's when the
    graph takes a float mask where the module takes lengths (named ``lengths_name``).
    """
    data = _session_source(proto)
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
        cases = cases_for(
            has_lengths=has_lengths,
            fixed_length=manifest.seq_len,
            batch=manifest.batch,
            other_axes=other_axes(specs),
        )
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
            tol=tol,
            output_axes={o.name: o.named_shape() for o in manifest.outputs},
        )
    finally:
        module.train(was_training)


def call_error(module: nn.Module, args: Sequence[Any]) -> str | None:
    """What the module's own forward raises on ``args`` (type and first line), or None when it runs; in eval
    mode, without grad."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*args)
    except Exception as e:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    finally:
        module.train(was_training)
    return None


def forward_error(module: nn.Module, specs: Sequence[TensorSpec], case: Case, int_high: int = 2) -> str | None:
    """``call_error`` on a case's random inputs."""
    feed = make_inputs(specs, case, np.random.default_rng(0), int_high)
    return call_error(module, [torch.from_numpy(np.array(feed[s.name])) for s in specs if s.name in feed])


# how far past a refused length fit_cases looks for one the module takes
PROBE_STEPS = 64


def fit_cases(
    module: nn.Module,
    specs: Sequence[TensorSpec],
    cases: Sequence[Case],
    *,
    int_high: int = 2,
    movable: bool = True,
    min_len: int | None = None,
) -> tuple[list[Case], list[str]]:
    """The cases the module's own forward accepts, and notes saying what was moved.

    ``min_len`` lifts shorter cases to it. A case the module refuses (a model that reads blocks of several
    steps, a convolution before the recurrent layer) moves, when ``movable``, to the next length it takes,
    within ``PROBE_STEPS``; otherwise, or when none is found, ``ExportError`` names the case, the module's own
    error and the ways out (``min_len`` / ``--min-len``, ``cases=`` / ``--parity-shape``).
    """
    out: list[Case] = []
    notes: list[str] = []
    for case in cases:
        if min_len is not None and case.length < min_len and movable:
            case = replace(case, length=min_len)
        err = forward_error(module, specs, case, int_high)
        if err is None:
            out.append(case)
            continue
        if case.padded and not case.sorted_lengths:  # a module that packs with enforce_sorted=True
            ordered = replace(case, sorted_lengths=True)
            if forward_error(module, specs, ordered, int_high) is None:
                notes.append(
                    f"case {case.label} ran with lengths in decreasing order: the module refuses others ({err})"
                )
                out.append(ordered)
                continue
        found = None
        if movable:
            for n in range(case.length + 1, case.length + PROBE_STEPS + 1):
                if forward_error(module, specs, replace(case, length=n), int_high) is None:
                    found = replace(case, length=n)
                    break
        if found is None:
            raise ExportError(
                f"the module's own forward failed on parity case {case.label}: {err}. Give the lengths it takes: "
                "cases=[...] or min_len= in Python, --parity-shape NAME:BxTxF or --min-len N on the command line"
            )
        notes.append(f"case {case.label} ran at T={found.length}: the module's forward refuses T={case.length} ({err})")
        out.append(found)
    unique = list(dict.fromkeys(out))
    return unique, notes


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
        args = [torch.from_numpy(np.array(feed[s.name])) for s in specs]
        try:
            with torch.no_grad():
                out = module(*args)
        except Exception as e:
            raise module_failed(e, args) from None
        finally:
            for hnd in handles:
                hnd.remove()
        outs = flat_outputs(out)
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
    tol: Tolerance | None = None,
) -> ParityReport:
    """Chained step calls through onnxruntime (each provider) and the target's runtimes (``extra``) against the
    eager module on the whole sequence.

    ``specs`` are the data inputs with their "time" axis still named (the graph fixes it to ``chunk``);
    ``graph_specs`` the graph's inputs, states included (default: read from ``proto``'s manifest-free graph).
    """
    data = _session_source(proto)
    if graph_specs is None:
        from ..runtime.model import graph_spec
        from ..runtime.providers import make_session

        sess, _ = make_session(data, "cpu", threads=None)
        graph_specs = [graph_spec(a) for a in sess.get_inputs()]
    reference = stream_reference(module, specs)
    # torch returns each state as (layers*directions, batch, hidden); a graph whose states have the batch axis
    # elsewhere (target triton: first) is compared in its own layout
    batch_axes = [s.shape.index("batch") if "batch" in s.shape else 1 for s in states]
    if any(b != 1 for b in batch_axes):
        reference = _states_to(reference, len(output_names), batch_axes)
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
                tol=tol,
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


def _states_to(run: Runner, n_outputs: int, batch_axes: Sequence[int]) -> Runner:
    """``run`` (outputs, then torch-layout states) with each state's batch axis moved from 1 to ``batch_axes``."""

    def moved(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outs = list(run(feed))
        for j, b in enumerate(batch_axes):
            outs[n_outputs + j] = np.moveaxis(outs[n_outputs + j], 1, b)
        return outs

    return moved


def _cell_name(layer: nn.Module) -> str:
    if isinstance(layer, nn.LSTM):
        return "lstm"
    if isinstance(layer, nn.GRU):
        return "gru"
    return "rnn-" + str(getattr(layer, "nonlinearity", "tanh"))


def layer_oracle_check(
    module: nn.Module,
    specs: Sequence[TensorSpec],
    cases: Sequence[Case],
    *,
    dtype: str = "fp32",
    seed: int = 0,
    int_high: int = 2,
    notes: list[str] | None = None,
) -> list[Comparison]:
    """Each recurrent layer of ``module``, as the module calls it, against the numpy oracle on the same inputs.

    A layer whose class defines its own ``forward`` (a library's subclass) is called with that forward's
    arguments, not torch's, so it is left out; ``notes`` is told.

    A user's module cannot be written out in numpy as a whole, but its recurrent layers can: forward hooks
    capture what each layer receives (input, initial state, lengths) and returns during an eager run, and the
    oracle, which shares no code with torch or any strategy, recomputes the layer from its state_dict. With the
    export already matching eager torch, this ties every strategy to an implementation it shares nothing with.
    """
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    from . import reference

    layers = []
    for name, m in module.named_modules():
        if not isinstance(m, nn.RNNBase):
            continue
        base = next((b for b in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(m, b)), None)
        own = type(m).forward is not getattr(base, "forward", None) and type(m).forward.__module__ != enn.__name__
        if own:
            if notes is not None:
                notes.append(
                    f"layer {name!r} ({type(m).__name__}, its own forward) was not checked against the numpy oracle"
                )
            continue
        layers.append((name, m))
    tol = tolerance(dtype)
    rng = np.random.default_rng(seed)
    calls: list[tuple[str, nn.Module, tuple[Any, ...], dict[str, Any], Any]] = []

    def grab(name: str) -> Any:
        def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            calls.append((name, layer, args, kwargs, out))

        return hook

    out: list[Comparison] = []
    was_training = module.training
    module.eval()
    try:
        for case in cases:
            feed = make_inputs(specs, case, rng, int_high)
            calls.clear()
            handles = [m.register_forward_hook(grab(n), with_kwargs=True) for n, m in layers]
            try:
                with torch.no_grad():
                    module(*[torch.from_numpy(np.array(feed[s.name])) for s in specs if s.name in feed])
            finally:
                for hnd in handles:
                    hnd.remove()
            for name, layer, args, kwargs, result in calls:
                x = args[0] if args else kwargs["input"]
                hx = args[1] if len(args) > 1 else kwargs.get("hx")
                lengths = args[2] if len(args) > 2 else kwargs.get("lengths")
                y, state = result
                if isinstance(x, PackedSequence):
                    x, lengths = pad_packed_sequence(x, batch_first=layer.batch_first)
                    y, _ = pad_packed_sequence(y, batch_first=layer.batch_first)
                if x.dim() == 2:  # unbatched (T, I): one sequence, given a batch axis of 1
                    x, y = x.unsqueeze(1), y.unsqueeze(1)
                    state = tuple(s.unsqueeze(1) for s in state) if isinstance(state, tuple) else state.unsqueeze(1)
                    hx = (
                        None
                        if hx is None
                        else (tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(1))
                    )
                    x, y = (x.transpose(0, 1), y.transpose(0, 1)) if layer.batch_first else (x, y)
                xt = x.transpose(0, 1) if layer.batch_first else x
                h0 = c0 = None
                if hx is not None:
                    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
                want_y, want_h, want_c = reference.recurrent_forward(
                    _cell_name(layer),
                    {k: v.detach().cpu().numpy() for k, v in layer.state_dict().items()},
                    xt.detach().cpu().numpy(),
                    num_layers=layer.num_layers,
                    bidirectional=layer.bidirectional,
                    lengths=None
                    if lengths is None
                    else np.asarray(lengths.cpu() if hasattr(lengths, "cpu") else lengths),
                    h0=None if h0 is None else h0.detach().cpu().numpy().astype(np.float64),
                    c0=None if c0 is None else c0.detach().cpu().numpy().astype(np.float64),
                )
                got_y = (y.transpose(0, 1) if layer.batch_first else y).detach().cpu().numpy()
                got_h, got_c = state if isinstance(state, tuple) else (state, None)
                pairs = [("y", want_y, got_y), ("h_n", want_h, got_h.detach().cpu().numpy())]
                if want_c is not None and got_c is not None:
                    pairs.append(("c_n", want_c, got_c.detach().cpu().numpy()))
                for what, want, got in pairs:
                    a, rel, ok = compare(want, got, tol)
                    out.append(
                        Comparison(case.label, f"numpy (layer {name or type(layer).__name__})", what, a, rel, ok)
                    )
    finally:
        module.train(was_training)
    return out
