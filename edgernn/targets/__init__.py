"""The target registry: the runtime an export is made for, and what that runtime needs of the graph.

A *strategy* is the graph form of the recurrence; a *target* is the runtime that will execute it. Each target is one
module here that registers a ``Target``: the strategies it takes, whether the batch axis must be fixed, how padded
batches are expressed in ops it supports, the op forms it needs, the precision its runtime must be asked for, and the
check its own tool runs on every export: the target's ``structure_report`` (what the tool says of the graph) and
``runners`` (the target's runtime as parity candidates beside onnxruntime), which the export and ``edgernn check``
(``edgernn.export.check``) reach through ``structure_report`` and ``target_runners`` here. A new engine target is one
module here, with its check, and its tests. The registry imports neither torch nor onnx, so ``edgernn targets`` and the
CLI's choices are instant.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog import Catalog, module_names
from ..errors import ConfigError, ExportError

if TYPE_CHECKING:
    from ..verify.check import TargetReport
    from ..verify.parity import Runner

# How a target's runtime is told which steps of a padded batch are padding:
#   "sequence_lens"  whatever the strategy emits: ONNX's sequence_lens (native) or Less/Where masking (the others)
#   "masking"        Less/Where masking in plain ops; ONNX's sequence_lens is not relied on (runtimes ignore it)
#   "float-mask"     a float input `mask` (batch, time) of ones and zeros, made on the host from the lengths by
#                    edgernn.runtime, applied with Mul/Sub/Add: for runtimes with no comparison or select ops
PADDING_FORMS = ("sequence_lens", "masking", "float-mask")


@dataclass(frozen=True)
class Target:
    name: str  # registry key: --target NAME
    summary: str  # one line for `edgernn targets`
    strategies: tuple[str, ...]  # strategies it takes, in the order it prefers them
    padding: str  # one of PADDING_FORMS
    static_batch: bool = False  # the batch axis is fixed at export (--batch N)
    default_batch: int | None = None  # the batch a static-batch target exports at when --batch is not given
    fused_step: bool = True  # takes `step --fused` (ONNX RNN/LSTM/GRU ops)
    gather_as_slice: bool = False  # Gather with a constant scalar index rewritten as Slice + Squeeze
    precision_hint: str | None = None  # what the target's runtime must be told to compute fp32 in
    check: str = "ort"  # the target whose check (structure_report, runners) runs on every export for this one
    needs: str | None = None  # the pip extra its check needs, e.g. "openvino"
    bound_shapes: bool = False  # its engine binds concrete shapes: written in edgernn.rewrite.travel's form
    # why its engine cannot run int8 products (onnxruntime's dynamic form: DynamicQuantizeLinear, MatMulInteger),
    # so that `quantize --to int8` for it stores the weights alone (edgernn.optimize.weight_only); None: it can
    int8_products: str | None = None

    def __post_init__(self) -> None:
        if self.padding not in PADDING_FORMS:
            raise ValueError(f"target {self.name!r}: padding must be one of {PADDING_FORMS}; got {self.padding!r}")

    def batch(self, requested: int | None) -> int | None:
        """The static batch size of the export (None: dynamic)."""
        if requested is not None:
            if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
                raise ConfigError(f"batch must be an integer >= 1; got {requested!r}")
            return requested
        return self.default_batch if self.static_batch else None

    def validate(self, strategy: str, *, lengths: bool, fused: bool = False) -> None:
        """ExportError when this target cannot run ``strategy`` in the asked form; the message names the reason
        and what works."""
        if strategy not in self.strategies:
            able = [t for t in target_names() if strategy in get_target(t).strategies]
            raise ExportError(
                f"target {self.name!r} cannot run strategy {strategy!r}: {self.why_not(strategy)}. "
                f"Use one of the strategies {', '.join(self.strategies)} for {self.name}, or target "
                f"{', '.join(able) or 'none'} for {strategy}"
            )
        if fused and not self.fused_step:
            raise ExportError(
                f"target {self.name!r} cannot run `step --fused`: it emits ONNX's RNN/LSTM/GRU operators, which "
                f"{self.name} does not take; export the plain step (without --fused)"
            )
        if lengths and strategy == "native" and self.padding != "sequence_lens":
            raise ExportError(
                f"target {self.name!r} does not honour ONNX's sequence_lens, so a padded batch through strategy "
                "'native' would silently compute the padding as data. Export native without lengths "
                "(--no-lengths: one sequence length per call), or use strategy loop or unroll, which mask padding "
                "in plain ops"
            )

    def default_strategy(self, given: Collection[str] = ()) -> str:
        """The strategy an export for this target takes when none is named, derived from ``strategies`` (its
        order of preference): the first one that runs with the options ``given`` (their names, e.g.
        {"seq_len"}). A fixed-length whole-sequence strategy (unroll) needs its length, so it is taken only when
        one of its options is given; nnapi and coreml thus take unroll with a sequence length, else step."""
        from ..strategies.registry import get_strategy_class

        for name in self.strategies:
            cls = get_strategy_class(name)
            fixed = not cls.caps.dynamic_length and not cls.caps.streaming
            if not fixed or cls.option_names & set(given):
                return name
        return self.strategies[0]

    def why_not(self, strategy: str) -> str:
        return WHY_NOT.get((self.name, strategy), "it is not supported")

    def graph_form(self, proto: Any) -> Any:
        """The exported graph (an onnx.ModelProto, after hygiene) in the form this target's engine loads: for an
        engine that binds concrete shapes, ``edgernn.rewrite.travel.for_bound_shapes``; a target whose engine needs
        more overrides this. Returns the model to write (may be ``proto`` itself)."""
        if not self.bound_shapes:
            return proto
        from ..rewrite.travel import for_bound_shapes

        return for_bound_shapes(proto)

    def reduced_graph_form(self, proto: Any) -> Any:
        """A reduced (int8/fp16) version of one of this target's exports (an onnx.ModelProto, as
        ``edgernn.optimize.quantize`` wrote it) in the form its engine loads: for an engine that binds concrete
        shapes, without the symbolic dims onnxruntime's quantiser writes into value_info (tract refuses
        ``Sym(unk__1)`` against a bound size); a target whose engine needs more overrides this. Returns the model
        to write (may be ``proto`` itself)."""
        return Target.graph_form(self, proto)  # the base form only: a subclass's export passes are not for this

    def structure_report(self, model: Any) -> TargetReport:
        """What the target's tool says of the graph ``model`` (bytes or onnx.ModelProto), before any number is
        compared. Here: onnxruntime's, which loads it (a target with its own tool overrides this)."""
        from ..verify.check import TargetReport

        return TargetReport(self.name, True, "onnxruntime loads the model")

    def runners(self, model: Any) -> dict[str, Runner]:
        """Parity candidates the target adds beside onnxruntime CPU, by name (none here: the runtime is
        onnxruntime's own kernels); TargetError when its runtime cannot take ``model`` or is not installed."""
        return {}


# reasons a target refuses a strategy, filled in by the target modules
WHY_NOT: dict[tuple[str, str], str] = {}

# `edgernn targets` order; a module of this package not named here (a new target) comes after, by name
BUILTIN = module_names(
    __file__,
    ("ort", "nnapi", "coreml", "openvino", "portable", "triton", "tract", "mnn", "ncnn", "litert"),
    helpers={"mobile"},
)
_TARGETS: Catalog[Target] = Catalog("target", __name__, BUILTIN)


def register_target(target: Target, why_not: dict[str, str] | None = None) -> Target:
    _TARGETS.register(target.name, target)
    for strategy, reason in (why_not or {}).items():
        WHY_NOT[(target.name, strategy)] = reason
    return target


def target_names() -> list[str]:
    return _TARGETS.names()


def get_target(name: str) -> Target:
    return _TARGETS.get(name)


def structure_report(target: str, model: Any) -> TargetReport:
    """What target ``target``'s own tool says of the graph ``model``; ConfigError for an unknown target."""
    return get_target(target).structure_report(model)


def target_runners(target: str, model: Any) -> dict[str, Runner]:
    """Parity candidates target ``target`` adds beside onnxruntime CPU (OpenVINO for openvino, onnx.reference for
    portable; none for the others, and none for a target not registered here)."""
    if target not in target_names():
        return {}
    return get_target(target).runners(model)


def reduced_form(target: str | None, model: bytes) -> bytes:
    """A reduced (int8/fp16) version of one of ``target``'s exports in the form its engine loads (the target's
    ``reduced_graph_form``: e.g. no symbolic shapes where tract binds concrete ones, fp32 fills for MNN);
    ``model`` unchanged for a target with nothing to do or none known. ``edgernn.optimize.quantize`` takes this
    as its ``target_form``."""
    if target is None or target not in target_names():
        return model
    import onnx

    proto = onnx.load_from_string(model)
    formed = get_target(target).reduced_graph_form(proto)
    return model if formed is proto else formed.SerializeToString()


def int8_products_refused(target: str | None) -> str | None:
    """Why ``target``'s engine cannot run int8 products (its ``int8_products``), or None: it can, or the target
    is not known. ``edgernn.optimize.quantize`` takes this as its ``target_int8``."""
    if target is None or target not in target_names():
        return None
    return get_target(target).int8_products


def quantize_hooks() -> dict[str, Any]:
    """What ``edgernn.optimize.quantize`` (and its workflow) takes from the target registry, as keyword arguments: the
    target's check asked again (``target_check``), its engine's form (``target_form``) and why its engine cannot run
    int8 products (``target_int8``). The export room passes these in: optimize, a room of the same tier as targets, does
    not import them."""
    return {"target_check": recheck_structure, "target_form": reduced_form, "target_int8": int8_products_refused}


def recheck_structure(target: str | None, model: bytes) -> dict[str, Any] | None:
    """The target's check of a reduced (int8/fp16) version of one of its exports, as the manifest records it;
    None for onnxruntime's (nothing to ask again) or a file with no known target. ``edgernn.optimize.quantize``
    takes this as its ``target_check``."""
    if target is None or target == "ort" or target not in target_names():
        return None
    return structure_report(target, model).to_dict()
