"""``strategy="auto"``: the fastest correct strategy, measured for the user.

Every whole-sequence strategy the target takes is exported and checked for parity as usual (a strategy that
refuses the model, or fails parity, drops out with its reason); the survivors are timed in this process on the
chosen provider at the profile shape (batch x time; default 1 x 100), in interleaved rounds
(``edgernn.verify.bench.in_turns``) so that a busy machine slows each alike; the chosen one (below) is written to
the path asked for, with the measurements in its manifest (``selection``: the shape, provider, median
microseconds per call of each and its spread (``spread_us``: the median, fastest and slowest of the per-round
medians, and the rounds), the machine's load when measured (``measured``), why the others dropped out, the
winner). ``unroll`` takes part when a ``seq_len`` is given (the caller accepts a fixed length then), and times
at that length; ``step`` serves streams and is not a candidate.

The timings belong to the machine and the moment they were taken (``measured`` says which, with
``TIMINGS_NOTE``): on onnxruntime CPU a Scan's per-iteration cost collapses under CPU contention (``loop`` was
5x slower than ``native`` at a load of 16 and 62x at 37 on one machine, for one file), so one run's ratio is not a
property of the file.

The choice is made to be reproducible: the strategies are ranked by the machinery a runtime needs to run them,
the simpler graph first (``RANKING``): ``native`` (one fused recurrent op per layer), ``loop`` (control flow: a
Scan with a cell body, any length), ``unroll`` (flat, but fixed to one length and growing with it). A
later-ranked strategy displaces an earlier one only when it is clearly faster: its median more than ``MARGIN``
faster *and* its range of per-round medians clear of the earlier one's (``choose``). Two forms the machine
does not tell apart (their ranges overlap) then give the simpler file on every run, and the manifest says they
overlapped; only a form faster beyond the noise (Elman RNNs' ``loop`` on an idle onnxruntime CPU: 1.5-3x)
displaces the simpler one.

It is the default strategy for onnxruntime (target ``ort``) when the export is verified; other targets take the
first strategy they can run (``native``; for nnapi and coreml ``unroll`` with a ``seq_len``, else ``step``),
``step`` when ``chunk`` or ``fused`` is given (``default_strategy``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, EdgeRNNError, ExportError
from ..progress import counter, stage

if TYPE_CHECKING:
    from ..verify.bench import Spread

AUTO = "auto"
DEFAULT_PROFILE: tuple[int, int] = (1, 100)
ROUNDS = 5  # interleaved rounds; each times every candidate
CALLS = 5  # calls per candidate per round (after one warm-up call)
MARGIN = 1.10  # a later-ranked strategy must be more than this much faster than an earlier one to be chosen
RANKING = ("native", "loop", "unroll")  # the simpler graph first (see the module docstring)
STEP_OPTIONS = ("chunk", "fused")  # options that name the streaming strategy


def default_strategy(target: str | None, verify: bool, options: dict[str, Any] | None = None) -> str:
    """The strategy an export uses when none is named: ``step`` when an option only it takes (``chunk``,
    ``fused``) is given; else ``auto`` for onnxruntime (target ``ort``) with the parity check on (auto keeps only
    correct forms, so it needs it); for other targets (auto times on onnxruntime's CPU provider, not on the
    target's runtime) and unverified exports, the first the target takes (``Target.default_strategy``): native
    where it takes native; unroll with a seq_len, else step, for nnapi and coreml."""
    given = {k for k, v in (options or {}).items() if v is not None and v is not False}
    if given & set(STEP_OPTIONS):
        return "step"
    if (target or "ort") == "ort" and verify:
        return AUTO
    from ..targets import get_target

    return get_target(target or "ort").default_strategy(given)


def _spread(t: Spread | float) -> Spread:
    """A timing as a Spread (a bare median, as older callers give it, is a spread of one round)."""
    from ..verify.bench import Spread

    return t if isinstance(t, Spread) else Spread(float(t), float(t), float(t), 1)


def ties(candidate: Spread | float, fastest: Spread | float, margin: float = MARGIN) -> bool:
    """True when ``candidate`` is not clearly slower than ``fastest``: its median within ``margin`` of the
    fastest median, or its range of per-round medians overlapping the fastest one's."""
    a, f = _spread(candidate), _spread(fastest)
    return a.median <= f.median * margin or a.overlaps(f)


def choose(timings: dict[str, Spread] | dict[str, float], margin: float = MARGIN) -> str:
    """The first strategy in ``RANKING`` that ``ties`` with the fastest (by median): a later-ranked one wins only
    when it is faster beyond both the margin and the spread of the rounds."""
    spreads = {n: _spread(t) for n, t in timings.items()}
    fastest = min(spreads, key=lambda n: spreads[n].median)
    ranked = sorted(spreads, key=lambda n: RANKING.index(n) if n in RANKING else len(RANKING))
    return next(n for n in ranked if ties(spreads[n], spreads[fastest], margin))


def spreads_of(selection: dict[str, Any]) -> dict[str, Spread]:
    """The timings a ``selection`` record holds, as Spreads (microseconds); a record from before spreads were
    kept gives each median as a spread of one round."""
    from ..verify.bench import Spread

    kept = selection.get("spread_us") or {}
    out: dict[str, Spread] = {}
    for name, median in (selection.get("median_us") or {}).items():
        s = kept.get(name)
        out[name] = Spread(s["median"], s["low"], s["high"], s["rounds"]) if s else _spread(median)
    return out


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
    from ..targets import get_target

    tgt = get_target(target)
    names = ["native", "loop"] + (["unroll"] if options.get("seq_len") is not None else [])
    allowed = getattr(tgt, "strategies", None)
    return [n for n in names if allowed is None or n in allowed]


def export_auto(
    export_one: Callable[..., Any],
    *,
    target: str,
    verify: bool,
    profile_shape: tuple[int, int] | None,
    options: dict[str, Any],
    manifest_extra: dict[str, Any] | None,
    rounds: int = ROUNDS,
    min_len: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Export with each candidate (``export_one(strategy, manifest_extra=..., **options)``, nothing written),
    time the correct ones and return the chosen one's result (not yet written) with the ``selection`` record for
    its manifest (see the module docstring). ``min_len`` lifts the default profile length to the shortest the model
    takes."""
    if not verify:
        raise ConfigError("strategy auto keeps the fastest *correct* strategy: it cannot skip the parity check")
    options = {k: v for k, v in options.items() if v is not None}  # None: not given
    unknown = set(options) - {"seq_len"}
    if unknown:
        raise ConfigError(f"strategy auto takes no {', '.join(sorted(unknown))} (options of one strategy)")
    batch, steps = profile_shape or DEFAULT_PROFILE
    if profile_shape is None and min_len is not None:  # the default length, lifted to what the model takes
        steps = max(steps, int(min_len))
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
    errors: list[EdgeRNNError] = []
    candidate = counter("strategy auto: candidate", names)
    for name in names:
        candidate.next(name)
        opts = {"seq_len": options["seq_len"]} if name == "unroll" else {}
        try:
            results[name] = export_one(name, manifest_extra=manifest_extra, **opts)
        except ConfigError:  # the caller's mistake, the same for every strategy
            raise
        except EdgeRNNError as e:
            refused[name] = str(e).splitlines()[0][:300]
            errors.append(e)
    if not results:
        raise _every_one_refused(errors, refused, target)
    stage(f"strategy auto: timing {', '.join(results)} at batch {batch} x time {steps} ({rounds} rounds)")
    timings = time_models(
        {n: r.model_bytes for n, r in results.items()},
        batch=batch,
        steps=steps,
        seq_len=options.get("seq_len"),
        rounds=rounds,
        failed=refused,
    )
    if not timings:
        why = "; ".join(f"{n}: {r}" for n, r in refused.items())
        raise ExportError(
            f"strategy auto: no candidate runs at the profile shape batch {batch} x time {steps} on onnxruntime "
            f"({why}); give --profile-shape (profile_shape=) a shape the model takes, or name a strategy"
        )
    from ..verify.bench import TIMINGS_NOTE, machine_load

    load = machine_load()
    spreads = {n: _spread(t) for n, t in timings.items()}
    best = choose(spreads)
    selection = {
        "chosen": best,
        "profile_shape": [batch, steps],
        "provider": "cpu",
        "threads": 1,
        "median_us": {n: round(t.median * 1e6, 1) for n, t in spreads.items()},
        "spread_us": {n: t.scaled(1e6) for n, t in spreads.items()},
        "rounds": rounds,
        "calls_per_round": CALLS,
        "measured": {**load, "note": TIMINGS_NOTE},
        "refused": refused,
        "why": why_chosen(spreads, best, batch, steps),
    }
    return results[best], selection


def why_chosen(spreads: dict[str, Spread], best: str, batch: int, steps: int) -> str:
    """Why ``best`` won, in words: the fastest, or the simpler graph that the faster one did not beat beyond the
    margin and the spread; naming the strategies whose rounds overlapped the winner's."""
    fastest = min(spreads, key=lambda n: spreads[n].median)
    at = f"at batch {batch} x time {steps} on cpu"
    overlapping = [n for n in spreads if n != best and spreads[n].overlaps(spreads[best])]
    if fastest == best:
        why = f"fastest of the correct strategies {at}"
    elif spreads[best].overlaps(spreads[fastest]):
        return (
            f"{best} and {fastest} overlap within their spread {at} ({_range(best, spreads[best])}, "
            f"{_range(fastest, spreads[fastest])}): the runs do not tell them apart, so {best}, the simpler graph "
            "(native, loop, unroll), is kept"
        )
    else:
        return (
            f"{best} is within {round((MARGIN - 1) * 100)}% of the fastest ({fastest}) {at}, and ranks before it "
            "(native, loop, unroll: the simpler graph first)"
        )
    if overlapping:
        ranges = ", ".join(_range(n, spreads[n]) for n in [best, *overlapping])
        why += f"; {', '.join(overlapping)} overlapped it within the spread ({ranges}), and it is the simpler graph"
    return why


def _range(name: str, s: Spread) -> str:
    return f"{name} {s.low * 1e6:.1f}-{s.high * 1e6:.1f} us over {s.rounds} rounds"


def _every_one_refused(errors: list[EdgeRNNError], refused: dict[str, str], target: str) -> EdgeRNNError:
    """The error to raise when no candidate exported: the first one's as it is when every candidate refused alike
    (a bad opset: one message, one fix), else of its kind (exit code) when all share one, naming each reason."""
    first = errors[0]
    if len(set(refused.values())) == 1:
        return first
    why = "; ".join(f"{n}: {r}" for n, r in refused.items())
    message = f"strategy auto: no strategy exports this model correctly for target {target!r}: {why}"
    if all(type(e) is type(first) for e in errors):
        first.args = (message, *first.args[1:])
        return first
    return ExportError(message)


def time_models(
    models: dict[str, bytes],
    *,
    batch: int,
    steps: int,
    seq_len: int | None,
    rounds: int = ROUNDS,
    failed: dict[str, str] | None = None,
) -> dict[str, Spread]:
    """Seconds per call of each model on onnxruntime CPU, 1 thread, on one seeded input at the profile shape (a
    fixed-length model at its own length), interleaved round by round: the median of each round's ``CALLS``
    calls, and over the rounds their median, fastest and slowest (``Spread``). A model that does not run at that
    shape is left out, its reason in ``failed``."""
    import onnxruntime as ort

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
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a shape the model does not take is reported below, not logged
        runs[name] = lambda s=session, f=checked, o=quiet: s.run(None, f, o)
    for name, fn in list(runs.items()):
        try:
            fn()  # warm-up: the first call allocates
        except Exception as e:  # onnxruntime's own error: the model does not take this shape
            del runs[name]
            if failed is not None:
                failed[name] = f"does not run at batch {batch} x time {steps}: {str(e).strip().splitlines()[0][:200]}"
    from ..verify.bench import Spread, in_turns

    def calls(fn: Callable[[], Any]) -> Callable[[], float]:
        def one_round() -> float:
            times = []
            for _ in range(CALLS):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        return one_round

    per_round = in_turns({n: calls(fn) for n, fn in runs.items()}, rounds)
    return {n: Spread.of(v) for n, v in per_round.items()}
