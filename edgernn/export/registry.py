"""The strategy registry: each export strategy is a class in its own module, registered by name.

A strategy declares what it supports as data (``Capabilities``); the CLI's choices, ``--help`` and the tests
read it from here.
"""

from __future__ import annotations

import importlib
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, ExportError

if TYPE_CHECKING:  # the registry itself stays importable without torch (the CLI reads BUILTIN for --help)
    import onnx
    from torch import Tensor

    from ..model.layout import LayerWeights


@dataclass(frozen=True)
class Capabilities:
    dynamic_length: bool  # sequence length is a dynamic axis of the exported graph
    lengths: bool  # can take a `lengths` input for padded batches
    bidirectional: bool  # can export bidirectional layers
    variants: frozenset[str]  # LSTM variants it exports: "peephole", "projection"
    streaming: bool  # state is a graph input and output
    opset_min: int  # lowest ONNX opset it is tested at
    opset_max: int  # highest ONNX opset it is tested at
    default_opset: int  # what it emits when no opset is asked for

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
    def run_stack(
        self,
        layer: Any,
        weights: list[LayerWeights],
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        lengths: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
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


_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    _STRATEGIES[cls.name] = cls
    return cls


BUILTIN = ("native", "loop", "unroll", "step")  # registration order is the order the CLI and --help list them in


def _load_builtin() -> None:
    for name in BUILTIN:  # each strategy module registers itself on import
        importlib.import_module(f"{__package__}.{name}")


def strategy_names() -> list[str]:
    _load_builtin()  # every built-in, whatever was imported first (imports are cached: cheap after the first)
    return [n for n in BUILTIN if n in _STRATEGIES] + [n for n in _STRATEGIES if n not in BUILTIN]


def get_strategy_class(name: str) -> type[Strategy]:
    names = strategy_names()
    if name not in _STRATEGIES:
        raise ConfigError(f"unknown export strategy {name!r}; choose one of: {', '.join(names)}")
    return _STRATEGIES[name]
