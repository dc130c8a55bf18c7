"""onnxruntime execution providers by short name, and session creation.

Asking for a provider that is not available is an error naming the ones that are; falling back to another is
explicit (``fallback=``), never silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ProviderError

# short name -> onnxruntime provider name, in the order `auto` prefers them
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT = {v: k for k, v in PROVIDERS.items()}


def available() -> list[str]:
    """Short names of the providers this onnxruntime build offers (cpu always last)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def short_name(full: str) -> str:
    return _SHORT.get(full, full)


@dataclass(frozen=True)
class ProviderChoice:
    requested: str
    providers: list[str]  # full onnxruntime names, in priority order
    fell_back: bool


def resolve(name: str, fallback: str | None = None) -> ProviderChoice:
    """Turn a short name (or `auto`) into onnxruntime provider names; see the module docstring for the rules."""
    have = available()
    if name == "auto":
        return ProviderChoice(name, [PROVIDERS[s] for s in have], False)
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r}; choose one of: auto, {', '.join(PROVIDERS)}")
    if name in have:
        chain = [PROVIDERS[name]] + ([PROVIDERS["cpu"]] if name != "cpu" else [])
        return ProviderChoice(name, chain, False)
    if fallback is None:
        raise ProviderError(
            f"provider {name!r} is not available in this onnxruntime build; available: {', '.join(have)}"
            f" (ask for one of those, or add a fallback, e.g. --fallback cpu)"
        )
    if fallback not in have:
        raise ProviderError(f"neither {name!r} nor the fallback {fallback!r} is available; available: {', '.join(have)}")
    return ProviderChoice(name, [PROVIDERS[fallback]], True)


def make_session(
    model: str | bytes,
    provider: str = "cpu",
    *,
    fallback: str | None = None,
    threads: int | None = 1,
    optimization: str = "all",
    optimized_model_path: str | None = None,
    provider_options: dict[str, Any] | None = None,
) -> tuple[Any, ProviderChoice]:
    """An onnxruntime InferenceSession on the chosen provider; threads=None lets onnxruntime decide."""
    import onnxruntime as ort

    choice = resolve(provider, fallback)
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ConfigError(f"unknown optimization level {optimization!r}; choose one of: {', '.join(levels)}")
    so.graph_optimization_level = levels[optimization]
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    so.log_severity_level = 3
    opts = [dict((provider_options or {}).get(short_name(p), {})) for p in choice.providers]
    try:
        sess = ort.InferenceSession(model, sess_options=so, providers=choice.providers, provider_options=opts)
    except (ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as e:
        from ..errors import ModelFormatError

        raise ModelFormatError(f"onnxruntime cannot load this model: {e}") from None
    return sess, choice
