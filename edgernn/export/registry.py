"""The strategy registry: each export strategy is a class in its own module, registered by name.

A strategy declares what it supports as data (``Capabilities``); the CLI's choices, ``--help`` and the tests
read it from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..errors import ConfigError, ExportError
from .layout import LayerWeights


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

    def __init__(self, **options: Any) -> None:
        self.options = options

    def check_layer(self, layer: Any) -> None:
        """Raise ExportError when this strategy cannot export ``layer``; the message names what can."""
        variants = layer_variants(layer)
        missing = variants - self.caps.variants
        if missing:
            able = [s for s in strategy_names() if variants <= get_strategy_class(s).caps.variants]
            raise ExportError(
                f"strategy {self.name!r} cannot export LSTM {', '.join(sorted(missing))}; "
                f"use one of: {', '.join(able)}"
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

    def translation_table(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        """Custom ops this strategy emits, mapped to their onnxscript translations."""
        return {}


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


def _load_builtin() -> None:
    from . import native  # noqa: F401  (each strategy module registers itself on import)


def strategy_names() -> list[str]:
    if not _STRATEGIES:
        _load_builtin()
    return list(_STRATEGIES)


def get_strategy_class(name: str) -> type[Strategy]:
    names = strategy_names()
    if name not in _STRATEGIES:
        raise ConfigError(f"unknown export strategy {name!r}; choose one of: {', '.join(names)}")
    return _STRATEGIES[name]
