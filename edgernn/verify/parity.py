"""Numeric parity: the eager torch model against onnxruntime (each provider asked for) and the numpy oracle.

The reference is always the eager torch module the user trained, never an exported program. Cases are taken at
shapes other than the traced one: batch 1 and several, length 1, a prime length, a long length, and a padded
batch when the model takes lengths. One tolerance table, keyed by dtype, decides pass or fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..manifest import TensorSpec
from ..progress import counter, tick


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Elementwise |candidate - reference| <= atol + rtol * |reference|. int8 has no row on purpose: quantised models
# are judged by the task metric on held-out data, not elementwise.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-5),
    "fp16": Tolerance(atol=5e-3, rtol=5e-3),
}


def tolerance(dtype: str) -> Tolerance:
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ConfigError(f"no elementwise tolerance for {dtype!r}; known: {', '.join(TOLERANCES)}") from None


@dataclass(frozen=True)
class Case:
    batch: int
    length: int
    padded: bool = False  # lengths drawn below `length` (the padded length), one sequence kept at full length
    dims: tuple[tuple[str, int], ...] = ()  # sizes of other named axes (a decoder's own time axis, ...)
    sorted_lengths: bool = False  # padded lengths in decreasing order (a model that packs with enforce_sorted)

    @property
    def label(self) -> str:
        from ..runtime.layout import BATCH_NAMES, TIME_NAMES  # those are B= and T=

        shown = [(n, size) for n, size in self.dims if n.lower() not in BATCH_NAMES | TIME_NAMES]
        extra = "".join(f" {name}={size}" for name, size in shown)
        return f"B={self.batch} T={self.length}{extra}" + (" padded" if self.padded else "")


@dataclass(frozen=True, eq=False)
class GivenInputs(Case):
    """A case with the user's own inputs (``--inputs data.npz``) instead of random ones at a shape."""

    feed: Mapping[str, Any] = field(default_factory=dict)
    name: str = "given inputs"

    @property
    def label(self) -> str:
        return self.name


def given_inputs(feed: Mapping[str, Any], name: str = "given inputs") -> GivenInputs:
    """A case of these arrays; its batch and length are read from the first input with two or more axes."""
    arrays = {k: np.asarray(v) for k, v in feed.items()}
    first = next((a for a in arrays.values() if a.ndim >= 2), None)
    batch, length = (int(first.shape[0]), int(first.shape[1])) if first is not None else (1, 1)
    return GivenInputs(batch, length, feed=arrays, name=name)


# (batch, length): one step, batch 1 at a prime length, several at a prime length, a long sequence
DEFAULT_CASES: tuple[Case, ...] = (Case(1, 1), Case(1, 31), Case(3, 17), Case(2, 257), Case(3, 17, padded=True))
# sizes of a model's other named axes, case by case, so that each varies apart from "time" (and 1 is among them)
OTHER_AXIS_SIZES: tuple[int, ...] = (7, 1, 23, 5, 13)


def cases_for(
    *,
    has_lengths: bool,
    fixed_length: int | None = None,
    batch: int | None = None,
    other_axes: Sequence[str] = (),
) -> list[Case]:
    """The default cases for a model; a fixed-length export is checked at its length with several batch sizes,
    a static-batch export (``batch``) at its batch size only. ``other_axes`` are the model's named axes besides
    "batch" and "time" (e.g. a decoder's length): each case gives each a size of its own."""
    if fixed_length is not None:
        base = [Case(1, fixed_length), Case(3, fixed_length), Case(3, fixed_length, padded=True)]
    else:
        base = list(DEFAULT_CASES)
    if batch is not None:
        seen: dict[tuple[int, bool], Case] = {}
        for c in base:  # one case per length and padding at the fixed batch
            seen.setdefault((c.length, c.padded), Case(batch, c.length, c.padded))
        base = list(seen.values())
    base = [c for c in base if has_lengths or not c.padded]
    if other_axes:
        n = len(OTHER_AXIS_SIZES)
        base = [
            replace(c, dims=tuple((a, OTHER_AXIS_SIZES[(i + j) % n]) for j, a in enumerate(other_axes)))
            for i, c in enumerate(base)
        ]
    return base


def other_axes(specs: Sequence[TensorSpec]) -> list[str]:
    """The named axes of ``specs`` besides "batch" and "time", in order of first appearance."""
    out: list[str] = []
    for s in specs:
        for d in s.shape:
            if isinstance(d, str) and d not in ("batch", "time") and d not in out:
                out.append(d)
    return out


def case_from_shapes(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]], *, option: str = "--shape"
) -> Case:
    """The one case that feeds inputs of these shapes (``{"x": (3, 17, 5)}``): each named axis takes its size from
    the shapes that have it (they must agree), fixed axes must match the model's; an axis no shape gives is 2 for
    a batch, 17 for a time axis and 1 otherwise. ``option`` names the flag in messages."""
    from ..runtime.layout import BATCH_NAMES, TIME_NAMES

    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise ConfigError(
            f"{option} names unknown input(s) {', '.join(sorted(unknown))}; inputs: " + ", ".join(s.name for s in specs)
        )
    sizes: dict[str, int] = {}
    for s in specs:
        given = shapes.get(s.name)
        if given is None:
            continue
        if len(given) != len(s.shape):
            raise ConfigError(f"{option} {s.name}: {len(given)} dims given, the input has {len(s.shape)}")
        check_input_size(s.name, given, option)
        for d, n in zip(s.shape, given, strict=True):
            if isinstance(d, int) and d != n:
                raise ConfigError(f"{option} {s.name}: the input's size {d} is fixed; got {n}")
            if isinstance(d, str) and sizes.setdefault(d, int(n)) != int(n):
                raise ConfigError(f"{option}: the shapes disagree on axis {d!r} ({sizes[d]} and {n})")
    for s in specs:
        for d in s.shape:
            if isinstance(d, str) and d not in sizes:
                sizes[d] = 2 if d.lower() in BATCH_NAMES else 17 if d.lower() in TIME_NAMES else 1
    batch = next((sizes[d] for d in sizes if d.lower() in BATCH_NAMES), static_batch(specs) or 1)
    length = next((sizes[d] for d in sizes if d.lower() in TIME_NAMES), 1)
    return Case(batch, length, dims=tuple(sorted(sizes.items())))


def static_batch(specs: Sequence[TensorSpec]) -> int | None:
    """The batch size a static-batch export fixes (its data input's named batch axis holds an int), else None."""
    for s in specs:
        if s.role == "data" and "batch" in s.named_shape():
            size = s.shape[s.named_shape().index("batch")]
            return size if isinstance(size, int) else None
    return None


def parse_shape(text: str, *, option: str = "--shape") -> tuple[str, list[int]]:
    """``NAME:3x17x5`` -> ("NAME", [3, 17, 5])."""
    name, sep, dims = text.rpartition(":")
    try:
        if not sep or not name:
            raise ValueError
        shape = [int(d) for d in dims.lower().split("x")]
        if any(d < 1 for d in shape):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{option} must look like NAME:1x50x3 (sizes >= 1); got {text!r}") from None
    check_input_size(name, shape, option)
    return name, shape


MAX_INPUT_VALUES = 1 << 28  # values in one made-up input: 1 GiB of float32


def check_input_size(name: str, shape: Sequence[Any], option: str = "--shape") -> None:
    """A shape random inputs are made at (given, or the model's fixed sizes): whole sizes >= 1, and at most
    ``MAX_INPUT_VALUES`` values, checked before anything is allocated."""
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ConfigError(f"{option} {name}: sizes must be whole numbers >= 1; got {list(shape)}")
    values = math.prod(int(d) for d in shape)
    if values > MAX_INPUT_VALUES:
        size = "x".join(str(d) for d in shape)
        raise ConfigError(
            f"{option} {name}: shape {size} is {values:,} values (~{values * 4 / 2**30:,.1f} GiB as float32); "
            f"inputs made for a comparison hold at most {MAX_INPUT_VALUES:,}: give smaller sizes"
        )


def make_inputs(
    specs: Sequence[TensorSpec],
    case: Case,
    rng: np.random.Generator,
    int_high: int = 2,
    *,
    states: bool = False,
) -> dict[str, np.ndarray]:
    """Random inputs at a case's shape: normal floats, ints in [0, int_high), lengths that include 1 and T (as
    a float mask for a model that takes one); states (``states=True``) random too, else left out."""
    if isinstance(case, GivenInputs):
        return {k: np.asarray(v) for k, v in case.feed.items()}
    sizes = {"batch": case.batch, "time": case.length, **dict(case.dims)}
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if s.role == "state" and not states:
            continue
        shape = tuple(sizes.get(d, 1) if isinstance(d, str) else d for d in s.shape)
        check_input_size(s.name, shape, "input")
        if s.role in ("lengths", "mask"):
            batch, steps = (shape[0], shape[1]) if s.role == "mask" else (shape[0], case.length)
            lengths = np.full(batch, steps)
            if case.padded:
                lengths = rng.integers(1, steps + 1, size=batch)
                lengths[-1] = steps  # the longest not first: a real batch comes unsorted
                if batch > 1:
                    lengths[0] = 1
                elif steps > 1:
                    lengths[0] = rng.integers(1, steps)
                if case.sorted_lengths:
                    lengths = np.sort(lengths)[::-1].copy()
            if s.role == "mask":
                out[s.name] = (np.arange(steps)[None, :] < lengths[:, None]).astype(s.dtype)
            else:
                out[s.name] = lengths.astype(s.dtype)
        elif np.dtype(s.dtype).kind == "f":
            scale = 0.5 if s.role == "state" else 1.0
            out[s.name] = (scale * rng.standard_normal(shape)).astype(s.dtype)
        else:
            out[s.name] = rng.integers(0, int_high, size=shape).astype(s.dtype)
    return out


@dataclass
class Comparison:
    case: str
    candidate: str  # e.g. "onnxruntime:cpu", "numpy"
    output: str
    max_abs: float
    max_rel: float
    passed: bool
    first: dict[str, Any] | None = None  # where a failing output first exceeds the tolerance (first_excess)

    def describe(self) -> str:
        """One line: the case, candidate and output, and where and by how much it first exceeds the tolerance."""
        head = f"{self.case} {self.candidate} {self.output}: max abs {self.max_abs:.3g}, rel {self.max_rel:.3g}"
        f = self.first
        if not f:
            return head
        at = ", ".join(f"{k} {f[k]}" for k in ("batch item", "step") if f.get(k) is not None)
        return (
            f"{head}; first exceeds at {at + ' ' if at else ''}index {tuple(f['index'])}: candidate "
            f"{f['candidate']:.6g}, reference {f['reference']:.6g}, |diff| {f['diff']:.3g} > {f['bound']:.3g}"
        )


def first_excess(
    reference: np.ndarray, candidate: np.ndarray, tol: Tolerance, axes: Sequence[str | None] | None = None
) -> dict[str, Any] | None:
    """Where ``candidate`` first leaves the tolerance: the element at the earliest time step (the earliest batch
    item at that step), with both values. ``axes`` names the output's axes ("batch", "time"); by default an
    output of rank 3 or more is (batch, time, ...) and one of rank 2 (batch, ...)."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape or ref.size == 0:
        return None
    bound = tol.atol + tol.rtol * np.abs(ref)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(got - ref) <= bound)
    if not bad.any():
        return None
    names = list(axes) if axes is not None and len(axes) == ref.ndim else None
    if names is None:
        names = ["batch", "time"] + [None] * (ref.ndim - 2) if ref.ndim >= 3 else ["batch"] + [None] * (ref.ndim - 1)
    order = [names.index("time")] if "time" in names else []
    order += [names.index("batch")] if "batch" in names else []
    order += [a for a in range(ref.ndim) if a not in order]
    flat = np.transpose(bad, order).reshape(-1)
    pos = np.unravel_index(int(np.argmax(flat)), tuple(ref.shape[a] for a in order))
    index = [0] * ref.ndim
    for a, i in zip(order, pos, strict=True):
        index[a] = int(i)
    t = tuple(index)
    return {
        "index": index,
        "batch item": index[names.index("batch")] if "batch" in names else None,
        "step": index[names.index("time")] if "time" in names else None,
        "reference": float(ref[t]),
        "candidate": float(got[t]),
        "diff": float(abs(got[t] - ref[t])),
        "bound": float(bound[t]),
    }


@dataclass
class ParityReport:
    dtype: str
    atol: float
    rtol: float
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the numbers do not say (e.g. a provider fell back)
    # why the two sides cannot agree, found before any number (other weights, another architecture): a failure
    problems: list[str] = field(default_factory=list)
    reference: str = "torch"  # what the candidates were compared with

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons) and not self.problems

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.comparisons), default=0.0)

    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["max_abs"] = self.max_abs
        return d

    def summary(self, candidates: Sequence[str] | None = None) -> dict[str, Any]:
        """What the manifest records: verdict, tolerance, worst diff, and the cases that were checked; of the
        named ``candidates`` only, when given."""
        rows = [c for c in self.comparisons if candidates is None or c.candidate in candidates]
        return {
            "passed": bool(rows) and all(c.passed for c in rows),
            "dtype": self.dtype,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs": max((c.max_abs for c in rows), default=0.0),
            "cases": sorted({c.case for c in rows}),
            "candidates": sorted({c.candidate for c in rows}),
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def table(self) -> str:
        rows = [("case", f"vs {self.reference}", "output", "max abs", "max rel", "")]
        for c in self.comparisons:
            mark = "ok" if c.passed else "FAIL"
            rows.append((c.case, c.candidate, c.output, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", mark))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"problem: {p}" for p in self.problems]
        if self.comparisons:
            lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines += [f"where: {c.describe()}" for c in self.failures() if c.first][:5]
        verdict = "PASS" if self.passed else "FAIL"
        tol = f"{self.dtype}: atol {self.atol:g}, rtol {self.rtol:g}"
        worst = f"worst {self.max_abs:.2e}" if self.comparisons else "nothing compared"
        lines.append(f"parity {verdict} ({tol}; {worst})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def compare(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> tuple[float, float, bool]:
    """max abs diff, max diff relative to the reference's largest magnitude, and the tolerance verdict."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape:
        return float("inf"), float("inf"), False
    if ref.size == 0:
        return 0.0, 0.0, True
    diff = np.abs(got - ref)
    if not np.all(np.isfinite(got)):
        return float("inf"), float("inf"), False
    max_abs = float(diff.max())
    max_rel = max_abs / max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
    return max_abs, max_rel, bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref)))


Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


def check(
    reference: Runner,
    candidates: Mapping[str, Runner],
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    cases: Sequence[Case],
    *,
    dtype: str = "fp32",
    seed: int = 0,
    int_high: int = 2,
    states: bool = False,
    tol: Tolerance | None = None,
    output_axes: Mapping[str, Sequence[str | None]] | None = None,
) -> ParityReport:
    """Run ``reference`` and every candidate on each case's random inputs and compare every output; at least
    one candidate must be compared (torch against the oracle alone proves nothing about a file). ``tol``
    overrides the table's tolerance for ``dtype``; ``output_axes`` names each output's axes for the report of
    where a failing output first leaves it."""
    if not candidates:
        raise ConfigError("a parity check needs at least one runtime to compare; none was given")
    tol = tol or tolerance(dtype)
    report = ParityReport(dtype, tol.atol, tol.rtol)
    rng = np.random.default_rng(seed)
    numbered = counter("parity case", cases)
    for case in cases:
        numbered.next(case.label)
        feed = make_inputs(specs, case, rng, int_high, states=states)
        want = reference(feed)
        for cname, run in candidates.items():
            got = run(feed)
            for name, r, g in zip(output_names, want, got, strict=True):
                if np.shape(r) != np.shape(g):
                    shapes = f"{cname} returns shape {np.shape(g)}, the reference {np.shape(r)}"
                    report.notes.append(f"output {name} at {case.label}: {shapes}")
                a, rel, ok = compare(r, g, tol)
                where = None if ok else first_excess(r, g, tol, (output_axes or {}).get(name))
                report.comparisons.append(Comparison(case.label, cname, name, a, rel, ok, where))
    return report


def flat_outputs(out: Any) -> list[Any]:
    """A module's outputs in the order the exported graph lists them: nested tuples and lists flattened
    (``nn.LSTM`` returns ``(y, (h, c))``: three outputs)."""
    if isinstance(out, (tuple, list)):
        return [leaf for o in out for leaf in flat_outputs(o)]
    return [out]


def torch_runner(module: Any, specs: Sequence[TensorSpec]) -> Runner:
    """Call an eager torch module with a feed (inputs in the order of ``specs``), in eval mode, without grad."""
    import torch

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.array(feed[s.name])) for s in specs if s.name in feed]
        with torch.no_grad():
            try:
                out = module(*args)
            except Exception as e:
                raise module_failed(e, args) from None
        outs = flat_outputs(out)
        return [o.detach().cpu().numpy() for o in outs]

    return run


def module_failed(e: BaseException, args: Sequence[Any]) -> Exception:
    """The error to raise when the reference module's own forward fails on parity inputs: it names the shapes
    and the ways to give the module inputs it takes."""
    from ..errors import ExportError

    shapes = ", ".join(f"{tuple(a.shape)} {str(a.dtype).replace('torch.', '')}" for a in args)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return ExportError(
        f"the module's own forward failed on parity inputs ({shapes}): {type(e).__name__}: {first}. Give the shapes "
        "it takes: cases=[...] or min_len= in Python, --parity-shape NAME:BxTxF or --min-len N on the command line"
    )


def session_runner(session: Any) -> Runner:
    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = {i.name for i in session.get_inputs()}
        return list(session.run(None, {k: v for k, v in feed.items() if k in names}))

    return run


def _slice_time(
    feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], start: int, stop: int
) -> dict[str, np.ndarray]:
    """Steps start..stop of every input that has a "time" axis; other inputs whole."""
    out = {}
    for s in specs:
        a = feed[s.name]
        if "time" in s.shape:
            axis = s.shape.index("time")
            a = np.take(a, np.arange(start, stop), axis=axis)
        out[s.name] = a
    return out


def align_chunk(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """The part of a prefix call's output that one chunk call must equal.

    An output that does not depend on the length (a readout of the last state) is compared whole. An output
    with a time axis holds more steps in the prefix call than in the chunk call: one row per step (``done``
    against ``chunk`` rows), or the last k steps (``min(k, done)`` against ``min(k, chunk)``). Either way the
    chunk call's rows are the prefix call's last ones, and those are compared.
    """
    if want.shape == got.shape or want.ndim != got.ndim:
        return want
    differ = [a for a, (w, g) in enumerate(zip(want.shape, got.shape, strict=True)) if w != g]
    if len(differ) == 1 and got.shape[differ[0]] < want.shape[differ[0]]:
        axis = differ[0]
        return np.take(want, np.arange(want.shape[axis] - got.shape[axis], want.shape[axis]), axis=axis)
    return want  # shapes disagree: compare() reports the mismatch as a failure, and a note says why


def check_chained(
    reference: Runner,
    step: Runner,
    specs: Sequence[TensorSpec],
    states: Sequence[Any],
    output_names: Sequence[str],
    chunk: int,
    cases: Sequence[Case],
    *,
    oracle: Runner | None = None,
    candidate: str = "onnxruntime:cpu",
    dtype: str = "fp32",
    seed: int = 0,
    int_high: int = 2,
    tol: Tolerance | None = None,
) -> ParityReport:
    """Streaming parity: chained ``step`` calls against one call of ``reference`` on the whole sequence.

    ``specs`` are the data inputs with their "time" axis named; ``states`` the model's ``StateSpec`` list.
    ``reference(feed)`` runs the eager model on a whole (prefix of a) sequence and returns its outputs followed
    by its final states; ``step(feed)`` runs one chunk of ``chunk`` steps with the states fed in and returns
    the outputs followed by the next states. Each case streams ``ceil(length / chunk)`` chunks from zero states;
    after chunk j, every output and state must equal the reference on the first (j+1)*chunk steps (the last
    chunk's reference call is the one full-sequence call). Each output's worst chunk is reported.
    """
    tol = tol or tolerance(dtype)
    report = ParityReport(dtype, tol.atol, tol.rtol)
    rng = np.random.default_rng(seed)
    names = [*output_names, *(s.output for s in states)]
    shape_notes: dict[str, str] = {}
    numbered = counter("parity case", cases)
    for case in cases:
        if isinstance(case, GivenInputs):  # the caller's sequence, in whole chunks
            n_chunks = max(1, case.length // chunk)
            total = n_chunks * chunk
            label = f"{case.label} chained K={chunk}"
            feed = _slice_time(make_inputs(specs, case, rng), specs, 0, total)
        else:
            n_chunks = -(-case.length // chunk)
            total = n_chunks * chunk
            label = f"B={case.batch} T={total} chained K={chunk}"
            feed = make_inputs(specs, Case(case.batch, total), rng, int_high)
        numbered.next(label)
        state = {
            s.input: np.zeros([case.batch if d == "batch" else d for d in s.shape], dtype=np.float32) for s in states
        }
        worst: dict[str, tuple[float, float, bool]] = {}
        for j in range(n_chunks):
            tick(f"parity case {numbered.done}: chunk {j + 1}/{n_chunks}")
            done = (j + 1) * chunk
            got = list(step({**_slice_time(feed, specs, j * chunk, done), **state}))
            want = list(reference(_slice_time(feed, specs, 0, done)))
            if len(got) != len(names) or len(want) != len(names):
                raise ValueError(f"expected {len(names)} outputs ({', '.join(names)}); got {len(got)} and {len(want)}")
            for name, w, g in zip(names, want, got, strict=True):
                w = align_chunk(np.asarray(w), np.asarray(g))
                if w.shape != np.shape(g) and name not in shape_notes:
                    shape_notes[name] = (
                        f"output {name}: a call on {chunk} step(s) returns shape {np.shape(g)}, where the module "
                        f"on the first {done} steps returns {tuple(np.shape(want[names.index(name)]))}; "
                        "the stream cannot give this output"
                    )
                a, rel, ok = compare(w, g, tol)
                prev = worst.get(name)
                worst[name] = (max(a, prev[0]), max(rel, prev[1]), ok and prev[2]) if prev else (a, rel, ok)
            state = {s.input: np.asarray(v) for s, v in zip(states, got[len(output_names) :], strict=True)}
        for name in names:
            a, rel, ok = worst[name]
            report.comparisons.append(Comparison(label, candidate, name, a, rel, ok))
        report.notes.extend(n for n in shape_notes.values() if n not in report.notes)
        if oracle is not None:  # the third implementation, on the whole sequence
            want = list(reference(feed))[: len(output_names)]
            for name, w, g in zip(output_names, want, oracle(feed), strict=True):
                a, rel, ok = compare(w, g, tol)
                report.comparisons.append(Comparison(f"B={case.batch} T={total}", "numpy", name, a, rel, ok))
    return report
