"""Export any module holding recurrent layers: trace with torch's exporter, route the recurrence through the
chosen strategy, write the manifest, check parity, and only then write the file (atomically)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .._version import __version__
from ..errors import ConfigError, ExportError, ParityError, TargetError
from ..files import write_atomic
from ..manifest import Manifest, StateSpec, TensorSpec, write_manifest
from ..model import nn as enn
from ..model.layout import LayerWeights, onnx_weights
from ..progress import stage
from ..rewrite import hygiene
from ..strategies.registry import Stack, Strategy, get_strategy_class
from ..targets import Target, get_target, structure_report, target_runners
from ..verify.against_torch import call_error, fit_cases, layer_oracle_check, stream_cases, verify_parity, verify_stream
from ..verify.parity import Case, ParityReport, Runner, case_from_shapes, cases_for, other_axes
from . import packing
from .graph import (
    check_dynamic_axes,
    default_opset,
    fold,
    normalise,
    output_spec,
    set_opset,
    validate_graph,
)
from .streaming import Probe, StateIO, StepModule, example_states, probe, state_specs


@dataclass
class ExportResult:
    path: Path | None  # None when nothing was written (no path given)
    manifest: Manifest
    report: ParityReport | None  # None with verify=False
    model_bytes: bytes
    package: Any = None  # the ORT Mobile package (edgernn.optimize.ort_format.Package) when one was asked for
    precision: Any = None  # the int8/fp16 version written instead (edgernn.optimize.quantize.QuantizeResult)
    golden: Any = None  # the golden file written beside the model (edgernn.verify.golden.Golden), when asked for
    # write_to(path, ort_format=False, golden=None, **manifest_fields): this checked export written (again) to
    # path with those manifest fields set, without exporting or checking it again
    write_to: Any = field(default=None, repr=False, compare=False)


def weights_sha256(module: nn.Module) -> str:
    """A hash of every parameter and buffer (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Facade(nn.Module):
    """A user's module seen through a thin adapter; its weights (state_dict, and so weights_sha256) stay the
    module's own, under their own names."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)


class RelativeLengths(Facade):
    """A module that takes its lengths as fractions of the padded length (speechbrain's convention), seen from
    outside as one that takes absolute integer lengths: ``lengths / T`` is computed in the graph, T read from
    axis ``time_axis`` of input ``time_from``."""

    def __init__(self, module: nn.Module, lengths_index: int, time_from: int, time_axis: int) -> None:
        super().__init__(module)
        self.lengths_index = lengths_index
        self.time_from = time_from
        self.time_axis = time_axis

    def forward(self, *args: Tensor) -> Any:
        data = args[self.time_from]
        rel = args[self.lengths_index].to(data.dtype) / data.shape[self.time_axis]
        return self.module(*args[: self.lengths_index], rel, *args[self.lengths_index + 1 :])


class WithoutOutputs(Facade):
    """A module's flattened outputs less those at ``drop`` (the final states a step export returns itself)."""

    def __init__(self, module: nn.Module, drop: Sequence[int]) -> None:
        super().__init__(module)
        self.drop = frozenset(drop)

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        from ..verify.parity import flat_outputs

        return tuple(o for i, o in enumerate(flat_outputs(self.module(*args))) if i not in self.drop)


def make_hook(
    strategy: Strategy, weights: Sequence[list[LayerWeights]], states: StateIO | None = None
) -> Callable[..., Any]:
    """The forward that every edgernn recurrent layer runs while the exporter traces; ``weights`` by layer slot
    (``edgernn.model.nn.layer_slot``). The hook's ``ran`` set collects the slots of the layers it ran.

    With ``states`` (a streaming export) each layer starts from the state fed in as a graph input and hands its
    final state back, instead of starting from ``hx`` or zeros.
    """
    ran: set[int] = set()

    def hook(layer: Any, input: Any, hx: Any, lengths: Tensor | None) -> Any:  # noqa: A002
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if not packing.active():
                raise ExportError("a PackedSequence made outside pack_padded_sequence/pack_sequence cannot be exported")
            # the traced pack holds the padded batch, time-major, sorted as the user's pack sorted it
            x = packed.data
            lengths = packing.packed_lengths(packed.batch_sizes, x.shape[1])
            if hx is not None and packed.sorted_indices is not None:  # as torch's layers do: hx in the sorted order
                hx = (
                    tuple(_rows(t, packed.sorted_indices) for t in hx)
                    if isinstance(hx, tuple)
                    else _rows(hx, packed.sorted_indices)
                )
        elif not isinstance(input, Tensor):
            raise ExportError(f"a recurrent layer was called with a {type(input).__name__}; it takes a tensor")
        else:
            x = _swap_batch_and_time(input, time_axis=1) if layer.batch_first else input
        rows = layer.num_layers * layer.num_directions
        if states is not None:
            h0, c0 = states.take(layer, hx, lengths)
        elif hx is None:
            h0 = x.new_zeros(rows, x.shape[1], layer.state_size)
            c0 = x.new_zeros(rows, x.shape[1], layer.hidden_size) if layer.cell_kind.has_cell_state else None
        elif isinstance(hx, tuple):
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        ran.add(enn.layer_slot(layer))
        y, h, c = strategy.run_stack(Stack(layer, weights[enn.layer_slot(layer)], x, h0, c0, lengths))
        if states is not None:
            states.give(layer, h, c)
        if packed is not None:
            out: Any = PackedSequence(y, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            if packed.unsorted_indices is not None:  # the final states back in the caller's order
                h = _rows(h, packed.unsorted_indices)
                c = None if c is None else _rows(c, packed.unsorted_indices)
        else:
            out = _swap_batch_and_time(y, time_axis=0) if layer.batch_first else y
        return (out, (h, c)) if layer.cell_kind.has_cell_state else (out, h)

    hook.ran = ran  # type: ignore[attr-defined]
    return hook


def _swap_batch_and_time(t: Tensor, time_axis: int) -> Tensor:
    """Batch-first (B, T, ...) to time-major (T, B, ...) (``time_axis`` 1), or back (0). When the time axis is
    fixed to one step (a streaming chunk of 1) the swap moves no data: a Squeeze and an Unsqueeze (views) instead
    of a Transpose (a copy). A time axis the exporter keeps dynamic is a symbol, not an int, and is transposed."""
    steps = t.shape[time_axis]
    if type(steps) is int and steps == 1:
        return t.squeeze(time_axis).unsqueeze(1 - time_axis)
    return t.transpose(0, 1)


def _rows(t: Tensor, index: Tensor) -> Tensor:
    return t.index_select(1, index)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporter prints progress and warnings meant for its own debugging; keep the user's terminal clean."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _dims(specs: Sequence[TensorSpec]) -> tuple[dict[int, Any] | None, ...]:
    named: dict[str, Any] = {}
    out: list[dict[int, Any] | None] = []
    for s in specs:
        axes = {}
        for i, d in enumerate(s.shape):
            if isinstance(d, str):
                named.setdefault(d, torch.export.Dim(d, min=1, max=1 << 20))
                axes[i] = named[d]
        out.append(axes or None)
    return tuple(out)


def _by_parameter(module: nn.Module, dims: tuple[Any, ...]) -> tuple[Any, ...]:
    """``dynamic_shapes`` in the structure torch matches them by: one entry per parameter of ``forward``, the
    inputs a ``*args`` parameter takes (StepModule's, or a user's ``forward(self, x, *rest)``) as one tuple."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: one entry per input
        return dims
    out: list[Any] = []
    for i, p in enumerate(params):
        if p.kind == p.VAR_POSITIONAL:
            return (*out, tuple(dims[i:])) if i < len(dims) else tuple(out)
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or i >= len(dims):
            break
        out.append(dims[i])
    return tuple(out) if len(out) == len(dims) else dims


def export_module(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str],
    *,
    strategy: str | None = None,
    target: str = "ort",
    batch: int | None = None,
    path: str | os.PathLike[str] | None = None,
    ort_format: bool = False,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[Case | Mapping[str, Sequence[int]]] | None = None,
    min_len: int | None = None,
    oracle: Runner | None = None,
    int_high: int = 2,
    manifest_extra: dict[str, Any] | None = None,
    golden: bool | str | os.PathLike[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export ``module`` (any nn.Module using torch or edgernn recurrent layers) with one strategy, for one target.
    ``strategy`` None is ``edgernn.export.auto.default_strategy``'s choice (auto for a verified onnxruntime export).

    ``inputs`` name the graph's inputs in ``forward``'s order, with dynamic axes named "batch" and "time" and
    roles ("data", "lengths"). Fixed-length strategies (unroll, step) fix "time" to their length and cut or
    repeat the example inputs to it; a static-batch target (nnapi, coreml) or ``batch`` fixes "batch" the same
    way. A float-mask target takes its padding as a float input ``mask`` (batch, time) in place of lengths. A
    streaming strategy (step) adds every recurrent layer's state as graph inputs after ``inputs`` and outputs
    after ``output_names`` (see ``edgernn.export.streaming``).

    Before anything is written: the target's own tool checks the graph (``TargetError`` when it refuses it), and
    parity is checked against ``module`` itself, unconverted, on onnxruntime and the target's runtime where it
    is not onnxruntime (for step: chained calls against one whole-sequence call); a failure raises
    ``ParityError``. Either leaves ``path`` untouched. ``verify=False`` skips the numbers, not the target's check.
    ``ort_format`` also writes ``NAME.ort`` and ``NAME.required_operators.config`` beside ``path`` for onnxruntime
    Mobile, checked against the ONNX file.

    Parity runs at ``cases`` (``Case`` objects, or ``{input: shape}`` mappings) or by default at several batch
    sizes and lengths; a default case shorter than the module takes (``min_len``, or found by running it) moves
    to a length it takes, and the report's notes say so.

    ``golden`` (True: ``NAME.golden.npz`` beside ``path``; or a path) writes, after parity passed and the model
    was written, the parity cases' inputs and ``module``'s outputs on them for ``edgernn verify`` on the device
    (``edgernn.verify.golden``); it needs ``path`` and ``verify``.
    """
    _package_needs_path(ort_format, path)  # before any export work
    if strategy is None:  # auto for onnxruntime, native elsewhere (edgernn.export.auto.default_strategy)
        from .auto import default_strategy

        strategy = default_strategy(target, verify, options)
    if strategy == "auto":  # each candidate exported and checked, the chosen one written
        from .auto import export_auto, parse_profile_shape

        profile = parse_profile_shape(options.pop("profile_shape", None))
        golden_at = _golden_target(golden, path, verify)

        def one(name: str, *, manifest_extra: dict[str, Any] | None, **opts: Any) -> ExportResult:
            return export_module(
                module,
                example_inputs,
                inputs,
                output_names,
                strategy=name,
                target=target,
                batch=batch,
                path=None,
                opset=opset,
                verify=verify,
                cases=cases,
                min_len=min_len,
                oracle=oracle,
                int_high=int_high,
                manifest_extra=manifest_extra,
                **opts,
            )

        chosen, selection = export_auto(
            one,
            target=target,
            verify=verify,
            profile_shape=profile,
            options=options,
            manifest_extra=manifest_extra,
            min_len=min_len,
        )
        return chosen.write_to(path, ort_format=ort_format, golden=golden_at, selection=selection)
    if options.pop("profile_shape", None) is not None:
        raise ConfigError("profile_shape (--profile-shape) goes with strategy auto")
    golden_out = _golden_target(golden, path, verify)
    # the stages, each a function of the few values it needs
    plan = _plan(strategy, target, batch, opset, inputs, cases, min_len, options)
    form = _module_form(module, tuple(example_inputs), inputs, output_names, plan)
    proto = _trace(form, plan)
    manifest = _manifest(form, plan, proto, manifest_extra)
    checked, proto, manifest, structure, target_extra = _target_check(plan, proto, manifest)
    report, run_cases = None, []
    if verify:
        report, run_cases, engines = _parity(form, plan, checked, proto, manifest, target_extra, oracle, int_high)
        manifest = replace(manifest, parity=report.summary())
        if engines:  # the target's own runtimes' share of the parity report
            structure.parity = report.summary(candidates=engines)
    else:
        manifest = replace(manifest, parity={"passed": None, "skipped": "exported with --no-verify"})
    manifest = replace(manifest, target_check=structure.to_dict())
    written = _Checked(
        proto, manifest, report, form.original, run_cases, list(form.inputs), form.output_names, int_high
    )
    return written.write_to(path, ort_format=ort_format, golden=golden_out)


@dataclass
class _Plan:
    """What is exported how: the strategy and target, checked against each other, and the sizes they fix."""

    name: str  # the strategy's name
    strategy: Strategy
    target: Target
    opset: int
    lengths: TensorSpec | None  # the lengths input, where the module takes one
    static_batch: int | None  # the batch a static-batch target (or ``batch``) fixes
    fixed: int | None  # the time steps a fixed-length strategy fixes
    cases: list[Case] | None  # the parity cases the caller gave
    min_len: int | None


def _plan(
    strategy: str,
    target: str,
    batch: int | None,
    opset: int | None,
    inputs: Sequence[TensorSpec],
    cases: Sequence[Case | Mapping[str, Sequence[int]]] | None,
    min_len: int | None,
    options: dict[str, Any],
) -> _Plan:
    """Stage 1: resolve the target and strategy, and refuse what they cannot do together before any work."""
    tgt = get_target(target)
    strat = get_strategy_class(strategy)(**options)
    caps = strat.caps
    opset = caps.default_opset if opset is None else int(opset)
    if not caps.opset_min <= opset <= caps.opset_max:
        raise ExportError(f"strategy {strategy!r} supports opset {caps.opset_min}-{caps.opset_max}; got {opset}")
    lengths_spec = next((s for s in inputs if s.role == "lengths"), None)
    if lengths_spec is not None and not caps.lengths:
        raise ExportError(f"strategy {strategy!r} takes no lengths input; export without lengths")
    tgt.validate(strategy, lengths=lengths_spec is not None, fused=bool(getattr(strat, "fused", False)))
    if hasattr(strat, "for_target"):  # step: its form, when not asked for, is the target runtime's fastest
        strat.for_target(tgt)
    static_batch = tgt.batch(batch)
    fixed = strat.fixed_length()
    if fixed is not None:
        _require_one_time_axis(inputs, strategy)
    given_cases = None if cases is None else [_as_case(c, inputs) for c in cases]
    if min_len is not None and (isinstance(min_len, bool) or int(min_len) < 1):
        raise ConfigError(f"min_len must be an integer >= 1; got {min_len!r}")
    return _Plan(strategy, strat, tgt, opset, lengths_spec, static_batch, fixed, given_cases, min_len)


@dataclass
class _Form:
    """The module in the form that is traced, and the graph's interface."""

    original: nn.Module  # the user's module (without the outputs a step export returns as its states)
    inputs: list[TensorSpec]  # the module's inputs
    output_names: list[str]  # the module's outputs that the graph returns (before any states)
    layers: list[tuple[str, Any]]
    weights: list[list[LayerWeights]]
    specs: list[TensorSpec]  # the graph's data inputs (a float mask in place of lengths, fixed axes)
    example: tuple[Tensor, ...]  # what the exporter traces with, states included
    traced: nn.Module
    io: StateIO | None
    state_in: list[TensorSpec] = field(default_factory=list)
    state_out: list[TensorSpec] = field(default_factory=list)
    states: list[StateSpec] = field(default_factory=list)

    @property
    def graph_inputs(self) -> list[TensorSpec]:
        return self.specs + self.state_in

    @property
    def names_out(self) -> list[str]:
        return self.output_names + [s.name for s in self.state_out]


def _module_form(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str],
    plan: _Plan,
) -> _Form:
    """Stage 2: a converted copy of the module whose recurrent layers the strategy can take, the graph's inputs in
    the target's form, and for a streaming strategy the step module with its states."""
    stage(f"preparing the {plan.name} export for {plan.target.name}")
    original = module
    work = enn.convert(copy.deepcopy(module)).eval()
    layers = enn.recurrent_layers(work)
    if not layers:
        raise ExportError("the module holds no torch.nn.RNN/LSTM/GRU (or edgernn) recurrent layer to export")
    for _, layer in layers:
        plan.strategy.check_layer(layer)
    enn.number_layers(layers)
    weights = [onnx_weights(layer) for _, layer in layers]
    specs, example = _graph_form(list(inputs), example_inputs, plan.fixed, plan.static_batch, plan.target.padding)
    example = _traceable(original, inputs, specs, example, plan.fixed, plan.static_batch)
    form = _Form(original, list(inputs), list(output_names), layers, weights, specs, example, work, None)
    if plan.strategy.caps.streaming:
        io = StateIO()
        feed = _torch_example(inputs, specs, example)
        found = probe(original, feed) if feed is not None else Probe()
        io.zero_start = found.zero_start
        if found.state_outputs:  # the module returns its layers' final states: the step's state outputs are those
            form.original = WithoutOutputs(original, found.state_outputs)
            form.output_names = [n for i, n in enumerate(output_names) if i not in found.state_outputs]
        dtype = next(layers[0][1].parameters()).dtype
        form.state_in, form.state_out, form.states = state_specs(
            layers, str(torch.empty(0, dtype=dtype).numpy().dtype), plan.static_batch
        )
        form.traced = StepModule(work, layers, len(example), io, drop=found.state_outputs)
        form.example = example + tuple(example_states(layers, plan.static_batch or _batch_of(example, specs), dtype))
        form.io = io
    return form


def _trace(form: _Form, plan: _Plan) -> onnx.ModelProto:
    """Stage 3: torch's exporter with the strategy's hook on every recurrent layer, then the graph cleaned and put
    in the target's form. A failure that torch's exporter shows on the module alone is reported as torch's."""
    dims = _by_parameter(form.traced, _dims(form.graph_inputs))
    hook = make_hook(plan.strategy, form.weights, form.io)
    stage(f"tracing with torch's exporter ({plan.name}, opset {plan.opset})")
    try:
        with _quiet(), torch.no_grad(), enn.export_hook(hook), packing.traced_packing():
            program = torch.onnx.export(
                form.traced,
                form.example,
                dynamo=True,
                input_names=[s.name for s in form.graph_inputs],
                output_names=form.names_out,
                dynamic_shapes=dims,
                custom_translation_table=plan.strategy.translation_table() or None,
                opset_version=plan.opset,
                optimize=plan.strategy.rewrite_graph,
                verbose=False,
            )
            if program is not None:
                fold(program.model)  # every weight in the layout its op reads, whatever its size
    except ExportError:
        raise
    except Exception as e:
        own = _own_error(e)  # edgernn's refusal from inside the trace, wrapped by torch's exporter
        if own is not None:
            raise own from None
        alone = _torch_alone(form.original, form.inputs, form.specs, form.example)
        if alone is not None:
            raise alone from None
        raise ExportError(f"torch's exporter failed on this module: {_root_cause(e)}") from e
    if program is None:  # torch returns None only when asked to write a file itself, which we never do
        raise ExportError("torch's exporter returned no program")
    _require_routed(form.layers, hook.ran)  # type: ignore[attr-defined]
    stage(f"cleaning the {plan.name} graph")
    try:
        proto = set_opset(plan.strategy.postprocess(program.model_proto), plan.opset)
        normalise(proto)
        hygiene.apply(proto, gather_as_slice=plan.target.gather_as_slice)
        hygiene.require_clean(proto)
        proto = plan.target.graph_form(proto)  # what the target's engine needs beyond hygiene (tract: no bound symbols)
        validate_graph(proto)
    except ExportError:
        alone = _torch_alone(form.original, form.inputs, form.specs, form.example)  # torch's own export fails too?
        if alone is not None:
            raise alone from None
        raise
    try:
        check_dynamic_axes(proto, form.graph_inputs)
    except ExportError:
        _time_not_dynamic(proto, form.original, form.inputs, form.specs, form.example)
        raise
    return proto


def _manifest(form: _Form, plan: _Plan, proto: onnx.ModelProto, extra: dict[str, Any] | None) -> Manifest:
    """Stage 4: what the file is, for the runtime and for ``edgernn inspect``."""
    graph_outputs = {o.name for o in proto.graph.output}
    missing = [n for n in form.output_names if n not in graph_outputs]
    if missing and plan.strategy.caps.streaming:  # torch's exporter keeps one name for a tensor returned twice
        raise ExportError(
            f"output {missing[0]!r} of the module is a recurrent state, which a step export already returns as "
            f"{', '.join(s.name for s in form.state_out)}; return only the other outputs (e.g. the output sequence) "
            "from the module you stream"
        )
    first = form.layers[0][1]
    kinds = {layer.cell_kind.name for _, layer in form.layers}
    streaming = plan.strategy.caps.streaming
    return Manifest(
        strategy=plan.name,
        cell=kinds.pop() if len(kinds) == 1 else None,
        num_layers=first.num_layers,
        hidden_size=first.hidden_size,
        bidirectional=bool(first.bidirectional),
        opset=default_opset(proto),
        inputs=form.graph_inputs,
        outputs=[_named_axes(output_spec(proto, n), form.specs) for n in form.output_names] + form.state_out,
        states=form.states,
        weights_sha256=weights_sha256(form.original),
        parameters=sum(p.numel() for p in form.original.parameters()),
        proj_size=int(getattr(first, "proj_size", 0)),
        peephole=bool(getattr(first, "peephole", False)),
        seq_len=plan.fixed if not streaming else None,
        chunk=plan.fixed if streaming else None,
        batch=plan.static_batch,
        target=plan.target.name,
        edgernn_version=__version__,
        **(extra or {}),
    )


def _target_check(
    plan: _Plan, proto: onnx.ModelProto, manifest: Manifest
) -> tuple[onnx.ModelProto, onnx.ModelProto, Manifest, Any, dict[str, Any]]:
    """Stage 5: the target's own tool on the graph (``TargetError`` when it refuses it). A target that changes the
    graph's interface (triton: batch-first states) rewrites it here; parity then runs on the strategy's graph
    (the first graph returned) and, through the target's runners, on the rewritten one that is written."""
    stage(f"target {plan.target.name}'s check of the {plan.name} graph")
    structure = structure_report(plan.target.check, proto)
    if not structure.passed:
        raise TargetError(_target_failure(plan.target.name, plan.name, structure.summary, structure.unsupported))
    checked, target_extra = proto, {}
    rewrite = getattr(plan.target, "rewrite", None)
    if rewrite is not None:
        proto, manifest, structure, target_extra = rewrite(proto, manifest)
        if not structure.passed:
            raise TargetError(_target_failure(plan.target.name, plan.name, structure.summary, structure.unsupported))
    return checked, proto, manifest, structure, target_extra


def _parity(
    form: _Form,
    plan: _Plan,
    checked: onnx.ModelProto,
    proto: onnx.ModelProto,
    manifest: Manifest,
    target_extra: dict[str, Any],
    oracle: Runner | None,
    int_high: int,
) -> tuple[ParityReport, list[Case], list[str]]:
    """Stage 6: the export against the module itself on onnxruntime and the target's runtimes (for a streaming
    strategy: chained calls against one whole-sequence call), and a user's layers against the numpy oracle.
    ``ParityError`` when it fails. Returns the report, the cases it ran and the target's runtimes it ran on."""
    stage(f"parity of the {plan.name} export against torch")
    streaming = plan.strategy.caps.streaming
    if streaming:  # whole chunks: the reference runs on the same steps as the chained calls
        k = int(plan.fixed or 1)
        run_cases = [replace(c, length=-(-c.length // k) * k) for c in plan.cases or stream_cases(plan.static_batch)]
        notes: list[str] = []
    else:
        default = cases_for(
            has_lengths=plan.lengths is not None,
            fixed_length=plan.fixed,
            batch=plan.static_batch,
            other_axes=other_axes(form.inputs),
        )
        run_cases, notes = fit_cases(
            form.original,
            form.inputs,
            plan.cases or default,
            int_high=int_high,
            movable=plan.cases is None and plan.fixed is None,
            min_len=plan.min_len,
        )
    extra = {**target_runners(plan.target.check, proto), **target_extra}
    if streaming:
        report = verify_stream(
            form.original,
            checked,
            form.inputs,
            form.states,
            form.output_names,
            int(plan.fixed or 1),
            graph_specs=form.graph_inputs,
            cases=run_cases,
            oracle=oracle,
            extra=extra,
            int_high=int_high,
        )
    else:
        report = verify_parity(
            form.original,
            proto,
            manifest,
            torch_specs=form.inputs,
            lengths_name=plan.lengths.name if plan.lengths is not None else None,
            cases=run_cases,
            oracle=oracle,
            extra=extra,
            int_high=int_high,
        )
    report.notes.extend(notes)
    if oracle is None:  # a user's module: each recurrent layer against the numpy oracle as well
        stage("each recurrent layer against the numpy oracle")
        report.comparisons.extend(
            layer_oracle_check(form.original, form.inputs, run_cases, int_high=int_high, notes=report.notes)
        )
    if not report.passed:
        worst = report.failures()[:5]
        lines = "; ".join(
            f"{c.case} {c.candidate} {c.output}: max abs {c.max_abs:.3g}, rel {c.max_rel:.3g}" for c in worst
        )
        why = "".join(f" Note: {n}." for n in report.notes)
        raise ParityError(
            f"parity FAILED for strategy {plan.name!r} (atol {report.atol:g}, rtol {report.rtol:g}): {lines}."
            f"{why} Nothing was written.",
            report,
        )
    return report, run_cases, list(extra)


@dataclass
class _Checked:
    """Stage 7: a checked export, written where and when asked (``write_to``: auto writes only the one it chose)."""

    proto: onnx.ModelProto
    manifest: Manifest
    report: ParityReport | None
    original: nn.Module
    run_cases: list[Case]
    inputs: list[TensorSpec]
    output_names: list[str]
    int_high: int

    def write_to(
        self,
        dest: str | os.PathLike[str] | None,
        *,
        ort_format: bool = False,
        golden: Path | None = None,
        **manifest_fields: Any,
    ) -> ExportResult:
        """This checked export, its manifest with ``manifest_fields`` set, written to ``dest`` (with the
        onnxruntime Mobile package and the golden file where asked; None: kept in memory)."""
        final = replace(self.manifest, **manifest_fields)
        write_manifest(self.proto, final)
        data = self.proto.SerializeToString(deterministic=True)
        _package_needs_path(ort_format, dest)
        out = None
        pkg = None
        if dest is not None:
            out = Path(dest)
            stage(f"writing {out}")
            if ort_format:  # checked before anything is written, the .onnx last
                from ..optimize.ort_format import package_bytes

                pkg = package_bytes(data, out.stem, out.parent)
            write_atomic(out, data)
        written = None
        if golden is not None and self.report is not None:
            stage("writing the golden file")
            from ..verify.golden import write_golden

            written = write_golden(
                golden,
                self.original,
                final,
                self.run_cases,
                specs=self.inputs,
                output_names=self.output_names,
                int_high=self.int_high,
            )
        result = ExportResult(out, final, self.report, data, pkg, golden=written)
        result.write_to = self.write_to
        return result


def _package_needs_path(ort_format: bool, path: str | os.PathLike[str] | None) -> None:
    if ort_format and path is None:
        raise ExportError("ort_format needs a path: the .ort file and its operator config are written beside it")


def _golden_target(
    golden: bool | str | os.PathLike[str] | None, path: str | os.PathLike[str] | None, verify: bool
) -> Path | None:
    """Where ``golden=`` writes, checked before anything is exported."""
    if golden is None or golden is False:
        return None
    if not verify:
        raise ConfigError(
            "a golden file records a checked model: --golden (golden=) cannot go with --no-verify (verify=False)"
        )
    if path is None:
        raise ConfigError("golden= writes beside the model: give the model's path too")
    from ..verify.golden import golden_path

    out = golden_path(path) if golden is True else Path(golden)
    if out.resolve() == Path(path).resolve():
        raise ConfigError(f"the golden file {str(out)!r} is the model's own path; write it elsewhere")
    return out


def _as_case(case: Case | Mapping[str, Sequence[int]], inputs: Sequence[TensorSpec]) -> Case:
    return case if isinstance(case, Case) else case_from_shapes(inputs, case, option="parity shape")


def _require_one_time_axis(inputs: Sequence[TensorSpec], strategy: str) -> None:
    """A fixed-length strategy fixes the axis named "time"; another named axis (a decoder's own length) would
    leave a recurrence of unknown length in a graph that must have none."""
    for s in inputs:
        for d in s.shape:
            if isinstance(d, str) and d not in ("batch", "time"):
                raise ExportError(
                    f"strategy {strategy!r} fixes the time axis, but input {s.name!r} has another dynamic axis "
                    f"{d!r}. Give that axis a fixed size (leave it out of dynamic_axes), or export with a "
                    "dynamic-length strategy (native, loop)"
                )


def _traceable(
    module: nn.Module,
    inputs: Sequence[TensorSpec],
    specs: Sequence[TensorSpec],
    example: tuple[Tensor, ...],
    fixed: int | None,
    static_batch: int | None,
) -> tuple[Tensor, ...]:
    """The example the exporter traces with. torch's exporter specialises a dynamic axis of size 1 to the
    constant 1, so such an axis is traced at 2 (the user's own example still sets nothing else: parity runs at
    its own cases). The module's own forward must run on it: a model that refuses the export's shape (a
    fixed length it cannot read) is told here, not by a trace error."""
    safe = example
    for name in {d for s in specs for d in s.shape if isinstance(d, str)}:
        sizes = {int(t.shape[s.shape.index(name)]) for s, t in zip(specs, safe, strict=True) if name in s.shape}
        if sizes == {1}:
            safe = tuple(_fit_axis(t, s, name, 2) for t, s in zip(safe, specs, strict=True))
    torch_feed = _torch_example(inputs, specs, safe)
    if torch_feed is None:
        return safe
    err = call_error(module, torch_feed)
    if err is not None and safe is not example and call_error(module, tuple(example)) is None:
        return example  # the module takes only the user's sizes; torch may then fix an axis (reported later)
    if err is not None:
        shapes = ", ".join(f"{s.name} {tuple(t.shape)}" for s, t in zip(inputs, torch_feed, strict=True))
        why = f" (time fixed to the strategy's length {fixed})" if fixed is not None else ""
        why += f" (batch fixed to {static_batch})" if static_batch is not None else ""
        raise ExportError(f"the module's own forward failed at the export's shapes: {shapes}{why}: {err}")
    return safe


def _torch_example(
    inputs: Sequence[TensorSpec], specs: Sequence[TensorSpec], example: Sequence[Tensor]
) -> tuple[Tensor, ...] | None:
    """The graph's example as the module's own inputs: None where they differ (a float mask for lengths)."""
    if any(a.name != b.name for a, b in zip(inputs, specs, strict=True)):
        return None
    return tuple(example)


def _require_routed(layers: Sequence[tuple[str, Any]], ran: set[int]) -> None:
    """A subclass of a torch layer with its own forward must reach edgernn's (its ``super().forward``); one
    that computes the recurrence some other way would be traced step by step at the example's length."""
    for i, (name, layer) in enumerate(layers):
        cls = enn.overrides_forward(layer)
        if cls is not None and i not in ran:
            base = next(b.__name__ for b in (nn.LSTM, nn.GRU, nn.RNN) if issubclass(cls, b))
            raise ExportError(
                f"layer {name!r} is a {cls.__module__}.{cls.__qualname__}, a subclass of torch.nn.{base} whose own "
                f"forward never calls torch.nn.{base}.forward (super().forward); edgernn exports the recurrence at "
                "that call, so this layer's recurrence cannot be exported. Call super().forward(...) in its forward, "
                f"or use torch.nn.{base} itself"
            )


def _target_failure(target: str, strategy: str, summary: str, unsupported: Sequence[dict[str, Any]]) -> str:
    nodes = "; ".join(f"{u['op']} {u['node']!r}: {', '.join(u['reasons'])}" for u in unsupported[:4])
    more = f" (and {len(unsupported) - 4} more)" if len(unsupported) > 4 else ""
    return (
        f"target {target!r} refuses this {strategy} export: {summary}"
        + (f". Nodes left out: {nodes}{more}" if nodes else "")
        + ". Nothing was written."
    )


def _graph_form(
    specs: list[TensorSpec],
    example: tuple[Tensor, ...],
    fixed: int | None,
    static_batch: int | None,
    padding: str,
) -> tuple[list[TensorSpec], tuple[Tensor, ...]]:
    """The graph's inputs and the trace's example: "time" fixed for fixed-length strategies, "batch" for a
    static-batch target, and lengths replaced by a float mask (batch, time) for a float-mask target. Each spec
    keeps its axis names in ``axes``, so the runtime still knows which fixed axis is the batch or the time."""
    specs = [replace(s, axes=[d if isinstance(d, str) else None for d in s.shape]) for s in specs]
    if padding == "float-mask" and any(s.role == "lengths" for s in specs):
        steps = [int(t.shape[s.shape.index("time")]) for s, t in zip(specs, example, strict=True) if "time" in s.shape]
        if not steps:
            raise ExportError("a lengths input needs a data input with a time axis (named 'time')")
        specs, example = list(specs), list(example)
        k = next(i for i, s in enumerate(specs) if s.role == "lengths")
        specs[k] = TensorSpec("mask", "float32", [specs[k].shape[0], "time"], role="mask", axes=["batch", "time"])
        example[k] = torch.ones(int(example[k].shape[0]), steps[0])
        example = tuple(example)
    for axis, size in (("time", fixed), ("batch", static_batch)):
        if size is None:
            continue
        example = tuple(_fit_axis(t, s, axis, size) for t, s in zip(example, specs, strict=True))
        specs = [replace(s, shape=[size if d == axis else d for d in s.shape]) for s in specs]
    return specs, example


def _named_axes(out: TensorSpec, inputs: Sequence[TensorSpec]) -> TensorSpec:
    """An output's axis names: its dynamic axes name themselves; an axis the export fixed is named after the
    data input's axis at the same position when the sizes agree (outputs follow the input's layout: (batch,
    time, features) in, (batch, time, outputs) or (batch, outputs) out)."""
    data = next((s for s in inputs if s.role == "data" and s.axes), None)
    names: list[str | None] = [d if isinstance(d, str) else None for d in out.shape]
    if data is not None and data.axes is not None:
        for i, (d, name) in enumerate(zip(out.shape, data.axes, strict=False)):
            if names[i] is None and name in ("batch", "time") and d == data.shape[i]:
                names[i] = name if name == "batch" or len(out.shape) >= 3 else None
    return replace(out, axes=names)


def _fit_axis(t: Tensor, spec: TensorSpec, axis_name: str, size: int) -> Tensor:
    """An example input cut or repeated to ``size`` along its ``axis_name`` axis ("time" or "batch": fixed-shape
    exports trace at their sizes, whatever the caller's example has); lengths are capped at a fixed time."""
    if spec.role == "lengths" and axis_name == "time":
        return t.clamp(max=size)
    if axis_name not in spec.shape:
        return t
    axis = spec.shape.index(axis_name)
    if t.shape[axis] == size:
        return t
    if t.shape[axis] == 0:
        raise ExportError(f"example input {spec.name!r} has no {'time steps' if axis_name == 'time' else 'rows'}")
    return t.index_select(axis, torch.arange(size) % t.shape[axis])


def _batch_of(example: Sequence[Tensor], specs: Sequence[TensorSpec]) -> int:
    for t, s in zip(example, specs, strict=True):
        if "batch" in s.shape:
            return int(t.shape[s.shape.index("batch")])
    raise ExportError("a streaming export needs an input with a batch axis (named 'batch') to size the state by")


def _own_error(e: BaseException) -> ExportError | None:
    """An ExportError edgernn raised inside the trace (its hook's refusals), found in the exception's chain."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ExportError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _root_cause(e: BaseException) -> str:
    """torch's exporter wraps the real error in pages of advice; its summary lists the root cause first."""
    for line in str(e).splitlines():
        if line.startswith("<class '"):
            return line[:400]
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:400] if lines else ''}"


def _torch_alone(
    module: nn.Module, inputs: Sequence[TensorSpec], specs: Sequence[TensorSpec], example: Sequence[Tensor]
) -> ExportError | None:
    """When an export fails: does torch's exporter alone, on the module as it is (no edgernn in the call),
    fail too, or write a graph onnx's checker refuses? Then the failure is torch's: an ExportError saying so,
    with the minimal call that shows it. None when torch's own export is sound (or cannot be tried)."""
    feed = _torch_example(inputs, specs, example)
    if feed is None:
        return None
    import onnx

    dims = _by_parameter(module, _dims(inputs))
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module, tuple(feed), dynamo=True, input_names=[s.name for s in inputs], dynamic_shapes=dims
            )
    except Exception as e:
        if _own_error(e) is not None:
            return None
        why = f"torch.onnx.export fails: {_root_cause(e)}"
    else:
        if program is None or program.model_proto.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF:
            return None
        try:
            onnx.checker.check_model(program.model_proto, full_check=True)
            onnx.shape_inference.infer_shapes(program.model_proto, check_type=True, strict_mode=True)
            return None
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = f"torch.onnx.export writes an invalid graph: {' '.join(lines)[:400]}"
    args = ", ".join(
        f"torch.zeros({', '.join(str(int(n)) for n in t.shape)}"
        + (f", dtype=torch.{str(t.dtype).removeprefix('torch.')})" if t.dtype != torch.float32 else ")")
        for t in feed
    )
    shapes = ", ".join(
        "{" + ", ".join(f"{i}: Dim({d!r})" for i, d in enumerate(s.shape) if isinstance(d, str)) + "}" for s in inputs
    )
    call = (
        f"p = torch.onnx.export(module, ({args},), dynamo=True, input_names={[s.name for s in inputs]!r}, "
        f"dynamic_shapes=({shapes},)); onnx.checker.check_model(p.model_proto, full_check=True); "
        "onnx.shape_inference.infer_shapes(p.model_proto, check_type=True, strict_mode=True) "
        "(Dim is torch.export.Dim)"
    )
    return ExportError(
        f"torch's exporter cannot export this module, with or without edgernn: {why}. "
        f"To reproduce it with torch alone: {call}. Change the module's code that torch's exporter mistranslates "
        "(e.g. a squeeze of an axis that is not always 1), or report it to torch"
    )


def _time_not_dynamic(
    proto: Any, module: nn.Module, inputs: Sequence[TensorSpec], specs: Sequence[TensorSpec], example: Sequence[Tensor]
) -> None:
    """When torch's exporter fixed an axis named "time" and the module itself refuses another size there (a
    channels-first model's features axis), that axis is not the module's time axis: an ExportError that says how
    to name the right one. Nothing when the module takes other sizes (torch's exporter state: the caller's
    message says so)."""
    feed = _torch_example(inputs, specs, example)
    if feed is None:
        return
    graph = {i.name: i for i in proto.graph.input}
    for k, s in enumerate(specs):
        if "time" not in s.shape or s.name not in graph:
            continue
        axis = s.shape.index("time")
        dims = graph[s.name].type.tensor_type.shape.dim
        if axis >= len(dims) or dims[axis].dim_param:
            continue
        longer = list(feed)
        longer[k] = torch.cat([feed[k], feed[k].narrow(axis, 0, 1)], dim=axis)
        if call_error(module, tuple(longer)) is None:
            continue
        marked = (
            f" (e.g. {s.name}:2x{dims[1].dim_value}xT for (batch, {dims[1].dim_value}, time))"
            if len(dims) == 3 and axis == 1
            else ""
        )
        raise ExportError(
            f"torch's exporter fixed axis {axis} of input {s.name!r}, taken as its time axis, to "
            f"{dims[axis].dim_value}: the module uses that axis as a fixed size (as a channels-first model, "
            f"(batch, features, time), uses its features), so it is not the time axis. Name the time axis: "
            f"--time-axis {s.name}:AXIS, or a T in --input's shape{marked}; "
            'from Python, dynamic_axes={"' + s.name + '": {0: "batch", AXIS: "time"}}'
        )
