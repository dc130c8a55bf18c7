"""onnxruntime execution providers by short name, and session creation.

Asking for a provider that is not available is an error naming the ones that are; falling back to another is
explicit (``fallback=``), never silent. onnxruntime itself falls back silently in two places -- a provider that
is compiled in but fails to initialise (missing CUDA libraries) is dropped from the session, and an ``EPFail``
during ``run`` re-creates the session on CPU -- so sessions are created with its fallback disabled and the
providers the session really holds are checked against the request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ModelFormatError, ProviderError

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

# Options each provider gets unless the caller overrides them (values are strings, as onnxruntime takes them).
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    # TF32 matmuls drift 3e-5..5e-4 from fp32 on recurrent models (DESIGN.md); parity needs them off.
    "cuda": {"device_id": "0", "use_tf32": "0"},
    # fp16 engines change the numerics; a user who wants them asks (trt_fp16_enable=True).
    "tensorrt": {"device_id": "0", "trt_fp16_enable": "False"},
    # OpenVINO's default device is CPU; GPU/NPU are opt-in because their precision differs (bf16/fp16).
    "openvino": {"device_type": "CPU"},
    # MLProgram is the format that supports the most ops; ALL lets CoreML use the Neural Engine and GPU.
    "coreml": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"},
    # NNAPI's fp16 relaxation is off by default and stays so (parity); CPU-only NNAPI devices are allowed.
    "nnapi": {},
}

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def available() -> list[str]:
    """Short names of the providers this onnxruntime build offers (cpu always last)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def short_name(full: str) -> str:
    return _SHORT.get(full, full)


@dataclass(frozen=True)
class ProviderChoice:
    requested: str  # what the caller asked for (a short name or "auto")
    providers: list[str]  # full onnxruntime names, in priority order, as asked of onnxruntime
    fell_back: bool  # the requested provider is not the one that runs; `used` is the fallback
    used: str = ""  # short name of the provider that runs the session (first in the session's list)
    reason: str = ""  # why it fell back

    def describe(self) -> str:
        """One line for people: which provider ran, and why when it is not the one asked for."""
        used = self.used or short_name(self.providers[0])
        if self.fell_back:
            return f"{used} (fell back from {self.requested}: {self.reason})"
        if self.requested == "auto":
            return f"{used} (auto)"
        return used

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "used": self.used or short_name(self.providers[0]),
            "fell_back": self.fell_back,
            "reason": self.reason,
            "providers": [short_name(p) for p in self.providers],
        }


def resolve(name: str, fallback: str | None = None) -> ProviderChoice:
    """Turn a short name (or `auto`) into onnxruntime provider names; see the module docstring for the rules."""
    have = available()
    if name == "auto":
        return ProviderChoice(name, [PROVIDERS[s] for s in have], False)
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r}; choose one of: auto, {', '.join(PROVIDERS)}")
    if fallback is not None and fallback not in PROVIDERS:
        raise ConfigError(f"unknown fallback provider {fallback!r}; choose one of: {', '.join(PROVIDERS)}")
    if name in have:
        # cpu stays last in the chain: onnxruntime places the nodes the accelerator cannot run there
        chain = [name] + ([fallback] if fallback and fallback not in (name, "cpu") else []) + ["cpu"]
        return ProviderChoice(name, [PROVIDERS[s] for s in dict.fromkeys(chain)], False)
    if fallback is None:
        raise ProviderError(
            f"provider {name!r} is not available in this onnxruntime build; available: {', '.join(have)}"
            f" (ask for one of those, or add a fallback, e.g. --fallback cpu)"
        )
    if fallback not in have:
        raise ProviderError(
            f"neither {name!r} nor the fallback {fallback!r} is available; available: {', '.join(have)}"
        )
    chain = [fallback] + (["cpu"] if fallback != "cpu" else [])
    return ProviderChoice(
        name, [PROVIDERS[s] for s in chain], True, fallback, f"{name} is not in this onnxruntime build"
    )


def provider_options_for(
    providers: list[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, str]]:
    """Options per provider in ``providers``: the defaults above, then the caller's (keyed by short name)."""
    out = []
    for full in providers:
        short = short_name(full)
        opts = dict(DEFAULT_OPTIONS.get(short, {}))
        opts.update({k: str(v) for k, v in (overrides or {}).get(short, {}).items()})
        out.append(opts)
    return out


def session_options(threads: int | None = 1, optimization: str = "all", optimized_model_path: str | None = None) -> Any:
    """onnxruntime SessionOptions: intra-op threads (None: onnxruntime decides), graph optimisation level, and
    where to save the optimised model (None: nowhere)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1 (or None to let onnxruntime decide); got {threads}")
        cap = max(64, 4 * (os.cpu_count() or 1))
        if threads > cap:
            raise ConfigError(f"threads {threads} is more than this machine can use (at most {cap} here)")
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
        so.optimized_model_filepath = str(optimized_model_path)
    so.log_severity_level = 3
    return so


def make_session(
    model: str | bytes,
    provider: str = "cpu",
    *,
    fallback: str | None = None,
    threads: int | None = 1,
    optimization: str = "all",
    optimized_model_path: str | None = None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Any, ProviderChoice]:
    """An onnxruntime InferenceSession on the chosen provider, and a record of which provider runs it.

    ``provider_options`` maps short provider names to option dicts that override ``DEFAULT_OPTIONS``.
    """
    choice = resolve(provider, fallback)
    so = session_options(threads, optimization, optimized_model_path)
    try:
        sess = _create(model, so, choice.providers, provider_options)
    except ProviderError as e:
        if fallback is None or choice.fell_back:
            raise
        # the requested provider is compiled in but could not start (driver, libraries): the explicit fallback
        retry = resolve(fallback)
        sess = _create(model, so, retry.providers, provider_options)
        choice = ProviderChoice(provider, retry.providers, True, "", f"{provider} failed to start: {e}")
    got = [short_name(p) for p in sess.get_providers()]
    wanted = short_name(choice.providers[0])
    if choice.requested != "auto" and wanted not in got:
        # onnxruntime dropped the provider without raising (it logs and continues on CPU)
        if fallback is None or fallback not in got:
            raise ProviderError(
                f"provider {wanted!r} is in this onnxruntime build but failed to start (check its drivers and "
                f"libraries); the session only has: {', '.join(got)}. Add --fallback cpu to run anyway."
            )
        choice = ProviderChoice(provider, choice.providers, True, "", f"{wanted} failed to start")
    return sess, ProviderChoice(choice.requested, choice.providers, choice.fell_back, got[0], choice.reason)


def _create(
    model: str | bytes, so: Any, providers: list[str], overrides: Mapping[str, Mapping[str, Any]] | None
) -> Any:
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    opts = provider_options_for(providers, overrides)
    try:
        # enable_fallback=0: onnxruntime would otherwise retry on CPU by itself and only print about it
        return ort.InferenceSession(
            model, sess_options=so, providers=providers, provider_options=opts, enable_fallback=0
        )
    except state.EPFail as e:
        raise ProviderError(f"provider {short_name(providers[0])!r} failed to start: {_first_line(e)}") from None
    except state.NotImplemented as e:
        raise ModelFormatError(
            f"onnxruntime cannot run this model on {short_name(providers[0])}: {_first_line(e)}"
        ) from None
    except (
        state.InvalidGraph,
        state.InvalidProtobuf,
        state.NoSuchFile,
        state.NoModel,
        state.Fail,
        state.InvalidArgument,
        state.RuntimeException,
        RuntimeError,
        ValueError,
    ) as e:
        msg = _first_line(e)
        if "executionprovider" in msg.lower().replace(" ", ""):
            raise ProviderError(f"provider {short_name(providers[0])!r} failed to start: {msg}") from None
        raise ModelFormatError(f"onnxruntime cannot load this model: {msg}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
