"""``strategy="auto"``: the fastest correct strategy, measured for the user.

Every whole-sequence strategy the target takes is exported and checked for parity as usual (a strategy that
refuses the model, or fails parity, drops out with its reason); the survivors are timed in this process on the
chosen provider at the profile shape (batch x time; default 1 x 100), in interleaved rounds so that a busy
machine slows each alike; the fastest is exported again to the path asked for, with the measurements in its
manifest (``selection``: the shape, provider, median microseconds per call of each, why the others dropped out,
the winner). ``unroll`` takes part when a ``seq_len`` is given (the caller accepts a fixed length then), and
times at that length; ``step`` serves streams and is not a candidate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgeRNNError, ExportError

AUTO = "auto"
DEFAULT_PROFILE: tuple[int, int] = (1, 100)
ROUNDS = 5  # interleaved rounds; each times every candidate
CALLS = 5  # calls per candidate per round (after one warm-up call)


def parse_profile_shape(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"1x100"`` or (1, 100) -> (batch, time)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")] if isinstance(text, str) else [int(p) for p in text]
        if len(parts) != 2 or min(parts) < 1:
            raise ValueError
    except (ValueError, TypeError):
        raise ConfigError(f"--profile-shape must look like BATCHxTIME, e.g. 1x100 (sizes >= 1); got {text!r}") from None
    return parts[0], parts[1]


def candidates(target: str, options: dict[str, Any]) -> list[str]:
    """The strategies auto compares for ``target``: native and loop, and unroll when a seq_len is given."""
    from .targets import get_target

    tgt = get_target(target)
    names = ["native", "loop"] + (["unroll"] if options.get("seq_len") is not None else [])
    allowed = getattr(tgt, "strategies", None)
    return [n for n in names if allowed is None or n in allowed]


def export_auto(
    export_one: Callable[..., Any],
    *,
    target: str,
    path: Any,
    verify: bool,
    profile_shape: tuple[int, int] | None,
    options: dict[str, Any],
    manifest_extra: dict[str, Any] | None,
    rounds: int = ROUNDS,
) -> Any:
    """Export with each candidate (``export_one(strategy, path=None, **options)``), time the correct ones,
    export the fastest to ``path`` with the measurements in its manifest (see the module docstring)."""
    if not verify:
        raise ConfigError("strategy auto keeps the fastest *correct* strategy: it cannot skip the parity check")
    options = {k: v for k, v in options.items() if v is not None}  # None: not given
    unknown = set(options) - {"seq_len"}
    if unknown:
        raise ConfigError(f"strategy auto takes no {', '.join(sorted(unknown))} (options of one strategy)")
    batch, steps = profile_shape or DEFAULT_PROFILE
    if options.get("seq_len") is not None:  # every candidate timed at the one length unroll can run
        steps = int(options["seq_len"])
    names = candidates(target, options)
    if not names:
        raise ConfigError(
            f"strategy auto compares whole-sequence strategies (native, loop, unroll); target {target!r} takes none "
            "of them: export with --strategy step"
        )
    results: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name in names:
        opts = {"seq_len": options["seq_len"]} if name == "unroll" else {}
        try:
            results[name] = export_one(name, path=None, manifest_extra=manifest_extra, **opts)
        except EdgeRNNError as e:
            refused[name] = str(e).splitlines()[0][:300]
    if not results:
        why = "; ".join(f"{n}: {r}" for n, r in refused.items())
        raise ExportError(f"strategy auto: no strategy exports this model correctly for target {target!r}: {why}")
    timings = time_models(
        {n: r.model_bytes for n, r in results.items()},
        batch=batch,
        steps=steps,
        seq_len=options.get("seq_len"),
        rounds=rounds,
    )
    best = min(timings, key=lambda n: timings[n])
    selection = {
        "chosen": best,
        "profile_shape": [batch, steps],
        "provider": "cpu",
        "threads": 1,
        "median_us": {n: round(t * 1e6, 1) for n, t in timings.items()},
        "refused": refused,
        "why": f"fastest of the correct strategies at batch {batch} x time {steps} on cpu",
    }
    opts = {"seq_len": options["seq_len"]} if best == "unroll" else {}
    extra = {**(manifest_extra or {}), "selection": selection}
    return export_one(best, path=path, manifest_extra=extra, **opts)


def time_models(
    models: dict[str, bytes], *, batch: int, steps: int, seq_len: int | None, rounds: int = ROUNDS
) -> dict[str, float]:
    """Median seconds per call of each model on onnxruntime CPU, 1 thread, on one seeded input at the profile
    shape (a fixed-length model at its own length), interleaved round by round."""
    from ..manifest import read_manifest
    from ..runtime.model import Model
    from ..runtime.validate import check_feed

    runs: dict[str, Callable[[], Any]] = {}
    for name, data in models.items():
        import onnx

        proto = onnx.load_from_string(data)
        manifest = read_manifest({p.key: p.value for p in proto.metadata_props})
        model = Model(data, provider="cpu", threads=1)
        t = manifest.seq_len or steps
        feed: dict[str, np.ndarray] = {}
        for spec in manifest.inputs:
            if spec.role in ("lengths", "mask"):
                continue
            shape = [batch if d == "batch" else t if d == "time" else d for d in spec.named_shape()]
            shape = [s if isinstance(s, int) else 1 for s in shape]
            rng = np.random.default_rng(0)
            feed[spec.name] = (
                rng.standard_normal(shape).astype(spec.dtype)
                if np.dtype(spec.dtype).kind == "f"
                else rng.integers(0, 2, size=shape).astype(spec.dtype)
            )
        checked = check_feed(model.inputs, feed)  # lengths (or a mask) filled in: every sequence full length
        session = model.session
        runs[name] = lambda s=session, f=checked: s.run(None, f)
    samples: dict[str, list[float]] = {n: [] for n in runs}
    for fn in runs.values():
        fn()  # warm-up: the first call allocates
    for _ in range(rounds):
        for name, fn in runs.items():
            for _ in range(CALLS):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in samples.items()}
