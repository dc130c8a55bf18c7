"""The strategy registry: each export strategy is a class in its own module, registered by name.

A strategy declares what it supports as data (``Capabilities``); the CLI's choices, ``--help`` and the tests
read it from here.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..catalog import Catalog, module_names
from ..errors import ConfigError, ExportError

if TYPE_CHECKING:  # the registry itself stays importable without torch (the CLI reads BUILTIN for --help)
    import onnx
    from torch import Tensor

    from ..model.layout import LayerWeights


@dataclass(frozen=True)
class Stack:
    """What a strategy's ``run_stack`` is given for one call of a recurrent layer: the layer (its module), the
    weights of each of its layers and directions in ONNX layout, time-major ``x`` (T, B, I), the initial states
    ``h0`` (and ``c0`` for an LSTM), and the lengths of a padded batch (None: every sequence is full)."""

    layer: Any
    weights: list[LayerWeights]
    x: Tensor
    h0: Tensor
    c0: Tensor | None
    lengths: Tensor | None

    def cell_args(self) -> tuple[Any, ...]:
        """The arguments of the cell math's stack functions (``edgernn.model.cell_ops.run_stack``, the loop
        strategy's ``scan_stack``): the cell kind, then the weights, x, the states and the lengths."""
        return self.layer.cell_kind, self.weights, self.x, self.h0, self.c0, self.lengths


@dataclass(frozen=True)
class Capabilities:
    dynamic_length: bool  # sequence length is a dynamic axis of the exported graph
    lengths: bool  # can take a `lengths` input for padded batches
    bidirectional: bool  # can export bidirectional layers
    variants: frozenset[str]  # LSTM variants it exports: "peephole", "projection"
    streaming: bool  # state is a graph input and output
    # the opsets it is tested at (lowest, highest) and what it emits when none is asked for: the defaults are the
    # range every built-in is tested over (torch's exporter emits 18)
    opset_min: int = 15
    opset_max: int = 25
    default_opset: int = 18

    def describe(self) -> str:
        parts = ["dynamic length" if self.dynamic_length else "fixed length"]
        if self.lengths:
            parts.append("lengths input")
        if self.streaming:
            parts.append("explicit state")
        parts.append("bidirectional" if self.bidirectional else "unidirectional only")
        if self.variants:
            parts.append("variants: " + ", ".join(sorted(self.variants)))
        parts.append(f"opset {self.opset_min}-{self.opset_max}")
        return "; ".join(parts)


class Strategy(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    caps: ClassVar[Capabilities]
    option_names: ClassVar[frozenset[str]] = frozenset()  # the strategy-specific options it accepts
    # run onnxscript's pattern rewriter over the exported graph (torch's optimize=True); strategies that emit
    # thousands of nodes turn it off, as its matching grows quadratically: constants are still folded
    rewrite_graph: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        # None means "not given" (what a CLI passes for an unset flag); anything else must be an option we know,
        # so that e.g. seq_len given to a dynamic-length strategy is an error rather than silently ignored
        options = {k: v for k, v in options.items() if v is not None}
        unknown = set(options) - self.option_names
        if unknown:
            takes = ", ".join(_flag(o) for o in sorted(self.option_names)) or "no options"
            given = ", ".join(_flag(o) for o in sorted(unknown))
            raise ConfigError(f"strategy {self.name!r} does not take {given}; it takes {takes}")
        self.options = options

    def fixed_length(self) -> int | None:
        """The time steps every graph input is fixed to (unroll: seq_len; step: the chunk); None when dynamic."""
        return None

    def check_layer(self, layer: Any) -> None:
        """Raise ExportError when this strategy cannot export ``layer``; the message names what can."""
        variants = layer_variants(layer)
        missing = variants - self.caps.variants
        if missing:
            able = [s for s in strategy_names() if variants <= get_strategy_class(s).caps.variants]
            raise ExportError(
                f"strategy {self.name!r} cannot export LSTM {', '.join(sorted(missing))}; use one of: {', '.join(able)}"
            )
        if layer.bidirectional and not self.caps.bidirectional:
            able = [s for s in strategy_names() if get_strategy_class(s).caps.bidirectional]
            raise ExportError(
                f"strategy {self.name!r} cannot export a bidirectional layer: "
                f"{self.why_not_bidirectional()}; use one of: {', '.join(able)}"
            )

    def why_not_bidirectional(self) -> str:
        return "it is not supported"

    @abstractmethod
    def run_stack(self, s: Stack) -> tuple[Tensor, Tensor, Tensor | None]:
        """Time-major x (T, B, I) through the layer's stack, as the graph should compute it: y, h_n, c_n."""

    def positive_int_option(self, name: str, default: int | None = None) -> int:
        """An integer option that must be at least 1; ExportError when missing (without a default) or invalid."""
        value = self.options.get(name, default)
        if value is None:
            raise ConfigError(
                f"strategy {self.name!r} needs {_flag(name)} (e.g. {_flag(name)} 100; in Python {name}=100)"
            )
        try:
            number = operator.index(value)  # ints and numpy ints; not floats, strings or bools
        except TypeError:
            number = 0
        if isinstance(value, bool) or number < 1:
            raise ConfigError(f"strategy {self.name!r}: {_flag(name)} must be an integer >= 1; got {value!r}")
        return number

    def translation_table(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        """Custom ops this strategy emits, mapped to their onnxscript translations."""
        return {}

    def postprocess(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The graph torch's exporter traced, rewritten before the opset conversion, the manifest and the parity
        check (unroll writes every Scan out step by step); by default unchanged."""
        return model


def _flag(option: str) -> str:
    """A strategy option as the command line spells it (seq_len -> --seq-len)."""
    return "--" + option.replace("_", "-")


def layer_variants(layer: Any) -> frozenset[str]:
    v = set()
    if getattr(layer, "proj_size", 0):
        v.add("projection")
    if getattr(layer, "peephole", False):
        v.add("peephole")
    return frozenset(v)


# how the CLI and --help list them; a module of this package not named here (a new strategy) comes after, by name
BUILTIN = module_names(__file__, ("native", "loop", "unroll", "step"), helpers={"registry", "native_op"})
_STRATEGIES: Catalog[type[Strategy]] = Catalog("export strategy", __package__, BUILTIN)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    return _STRATEGIES.register(cls.name, cls)


def strategy_names() -> list[str]:
    return _STRATEGIES.names()


def get_strategy_class(name: str) -> type[Strategy]:
    return _STRATEGIES.get(name)
