"""``edgernn compare``: which cell and size fit the device? Train each candidate on the same data with the same
seed and budget, export it the way it would ship, time it on the chosen provider, and set the validation metric
against the latency (the Pareto front: no other candidate is both faster and better).

Each candidate lives in ``OUT/<cell>-h<hidden>/``: its training run (model.ckpt, history), ``model.onnx`` (the
export for the target, strategy ``auto`` by default: the fastest correct one, timed) and, for unidirectional
models, ``step.onnx`` (the streaming export, for the latency per step a live stream pays). ``candidate.json``
records the settings it was made with and the SHA-256 of its checkpoint and exports: a rerun with the same
settings reuses a finished candidate's training and exports (a compare interrupted after three of nine candidates
resumes at the fourth), and a candidate made with other settings is trained again. What a reused candidate
reports is taken from its files, not from the record: a checkpoint that is not the one recorded is trained again,
an export that is not the one recorded is exported again, and the metric comes from the checkpoint (each said on
stderr). A record compare did not write (a field missing or not a number) is refused before anything runs.
Latencies are always measured afresh, all in the same run, so the table's numbers are comparable with each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..progress import stage
from ..train.workflow import check_budget, check_out_of_data, note

FORMAT = "edgernn-compare"


@dataclass
class Candidate:
    cell: str
    hidden: int
    parameters: int
    metric: float  # the best validation metric
    baseline: float  # an input-blind model's metric on the same validation data
    epochs_run: int
    train_seconds: float
    strategy: str  # the export's strategy (auto: what won)
    file_bytes: int
    sequence_ms: float  # p50 of one sequence of bench_len steps, batch 1
    step_us: float | None  # p50 of one streaming step, batch 1 (None: bidirectional, no streaming export)
    reused: bool  # trained and exported by an earlier run with the same settings
    pareto: bool = False
    run_dir: str = ""
    # the fastest and slowest of the bench's rounds (edgernn.verify.bench.Spread): [low, high] in the unit above
    sequence_ms_range: list[float] | None = None
    step_us_range: list[float] | None = None

    @property
    def name(self) -> str:
        return f"{self.cell}-h{self.hidden}"


@dataclass
class Comparison:
    metric: str  # mse (lower is better) or accuracy (higher is better)
    higher_better: bool
    on: str  # the task or data compared on
    bench_len: int
    provider: str
    target: str
    candidates: list[Candidate]
    machine: dict[str, str]
    seconds: float
    rounds: int = 0  # each latency's calls split into this many rounds for its range
    load: dict[str, Any] | None = None  # edgernn.verify.bench.machine_load() after the last latency
    timings_note: str = ""  # timings belong to the machine and moment they were taken

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        return d

    def table(self) -> str:
        """The candidates as a text table, best metric first; '*' marks the Pareto front."""
        head = (
            f"{'':1} {'candidate':<14} {self.metric:>10} {'params':>8} {'file KiB':>8} {'strategy':>8} "
            f"{'ms/seq':>8} {'us/step':>8} {'train s':>8}"
        )
        rows = [head]
        for c in sorted(self.candidates, key=lambda c: -c.metric if self.higher_better else c.metric):
            step = f"{c.step_us:8.1f}" if c.step_us is not None else f"{'-':>8}"
            rows.append(
                f"{'*' if c.pareto else '':1} {c.name:<14} {c.metric:10.4g} {c.parameters:8,d} "
                f"{c.file_bytes / 1024:8.1f} {c.strategy:>8} {c.sequence_ms:8.3f} {step} {c.train_seconds:8.0f}"
            )
        baseline = self.candidates[0].baseline if self.candidates else math.nan
        rows.append(
            f"* on the Pareto front (no candidate both faster and better); input-blind baseline {self.metric} "
            f"{baseline:.4g}; latency: {self.provider}, batch 1, {self.bench_len} steps per sequence" + self._measured()
        )
        return "\n".join(rows)

    def _measured(self) -> str:
        """How the latencies were measured, for the table's last line ("" for a comparison from before it)."""
        if self.load is None:
            return ""
        from ..manifest import load_words

        return (
            f", the median of {self.rounds} rounds (the fastest and slowest round in compare.json); measured: "
            f"{load_words(self.load)}; {self.timings_note}"
        )


def pareto_front(points: Sequence[tuple[float, float]], higher_better: bool) -> list[bool]:
    """For each (latency, metric): True when no other point is at least as fast and at least as good, and
    strictly one of them."""
    out = []
    for i, (lat, met) in enumerate(points):
        dominated = False
        for j, (lat2, met2) in enumerate(points):
            if i == j:
                continue
            better_or_equal = met2 >= met if higher_better else met2 <= met
            strictly = lat2 < lat or (met2 > met if higher_better else met2 < met)
            if lat2 <= lat and better_or_equal and strictly:
                dominated = True
                break
        out.append(not dominated)
    return out


@dataclass(frozen=True)
class _Plan:
    """What every candidate of one compare is made and timed with: all but its cell and hidden size."""

    out: Path
    layers: int
    bidirectional: bool
    task: str | None
    fingerprint: dict[str, Any] | None  # the user's data (None: a task's)
    data_options: dict[str, Any]
    train_options: dict[str, Any]
    strategy: str
    target: str
    provider: str
    bench_len: int

    def settings(self, cell: str, hidden: int) -> dict[str, Any]:
        """A candidate's settings, as candidate.json records them (a rerun with the same ones reuses it)."""
        return {
            "cell": cell,
            "hidden": hidden,
            "layers": self.layers,
            "bidirectional": self.bidirectional,
            "task": self.task,
            "data": self.fingerprint,
            "data_options": self.data_options,
            "train_options": self.train_options,
            "strategy": self.strategy,
            "target": self.target,
            "bench_len": self.bench_len if self.strategy == "auto" else None,  # auto times at this length
        }


def compare(
    out_dir: str | os.PathLike[str],
    *,
    cells: Sequence[str],
    hiddens: Sequence[int],
    layers: int = 1,
    bidirectional: bool = False,
    strategy: str = "auto",
    target: str = "ort",
    provider: str = "cpu",
    bench_len: int | None = None,
    task: str | None = None,
    data: str | None = None,
    data_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> Comparison:
    """Train, export and time every (cell, hidden) candidate; write OUT/compare.json; return the comparison.

    ``data_options`` are train_to_dir's data keywords (val, head, readout, target_columns, classes, val_fraction,
    normalize); ``train_options`` its training ones (epochs, lr, seed, ...), the same for every candidate.
    ``progress(i, name)`` is called before each candidate; ``echo`` gets one line per finished candidate."""
    import time

    _check_grid(cells, hiddens)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a directory")
    data_options = dict(data_options or {})
    train_options = dict(train_options or {})
    check_budget(train_options)
    if data is not None:
        check_out_of_data(out, data, data_options.get("val"))
    grid = [(c, h) for c in cells for h in hiddens]
    records = {f"{c}-h{h}": _read_record(out / f"{c}-h{h}") for c, h in grid}  # every record checked up front
    started = time.perf_counter()
    if bench_len is None:
        bench_len = int(train_options.get("max_len", 48)) if data is None else _longest(data, data_options)
    if bench_len < 1:
        raise ConfigError(f"the benchmark length must be at least 1; got {bench_len}")
    plan = _Plan(
        out=out,
        layers=layers,
        bidirectional=bidirectional,
        task=task,
        # read the data's bytes once, not per candidate
        fingerprint=_fingerprint(data, data_options.get("val")) if data is not None else None,
        data_options=data_options,
        train_options=train_options,
        strategy=strategy,
        target=target,
        provider=provider,
        bench_len=bench_len,
    )
    results: list[Candidate] = []
    metric_name = "mse"
    for i, (cell, hidden) in enumerate(grid):
        name = f"{cell}-h{hidden}"
        stage(f"candidate {i + 1}/{len(grid)} ({name})")
        if progress is not None:
            progress(i, name)
        c, metric_name = _candidate(plan, cell, hidden, records[name])
        results.append(c)
        if echo is not None:
            echo(_finished_line(c, metric_name))
    on = (task or "sine") if data is None else str(data)
    return _write_comparison(plan, results, metric_name, on, started)


def _check_grid(cells: Sequence[str], hiddens: Sequence[int]) -> None:
    """ConfigError unless the cells are known and the hidden sizes at least 1, each listed once."""
    from ..model.cells import cell_names

    if not cells or not hiddens:
        raise ConfigError("give at least one cell and one hidden size to compare")
    unknown = [c for c in cells if c not in cell_names()]
    if unknown:
        raise ConfigError(f"unknown cell {', '.join(unknown)}; choose from: {', '.join(cell_names())}")
    if any(h < 1 for h in hiddens):
        raise ConfigError(f"hidden sizes must be at least 1; got {list(hiddens)}")
    if len(set(cells)) != len(cells) or len(set(hiddens)) != len(hiddens):
        raise ConfigError("a cell or hidden size is listed twice")


def _candidate(plan: _Plan, cell: str, hidden: int, record: dict[str, Any] | None) -> tuple[Candidate, str]:
    """One candidate made (or reused: ``record``, its checked candidate.json) and timed, and its metric's name."""
    run = plan.out / f"{cell}-h{hidden}"
    made = _made(run, plan.settings(cell, hidden), record)
    seq_ms, step_us, ranges = _latency(run, made, plan.provider, plan.bench_len)
    c = Candidate(
        cell=cell,
        hidden=hidden,
        parameters=made["parameters"],
        metric=made["best_metric"],
        baseline=made["baseline"],
        epochs_run=made["epochs_run"],
        train_seconds=made["train_seconds"],
        strategy=made["strategy"],
        file_bytes=(run / "model.onnx").stat().st_size,
        sequence_ms=seq_ms,
        step_us=step_us,
        reused=made["reused"],
        run_dir=str(run),
        sequence_ms_range=ranges["sequence_ms_range"],
        step_us_range=ranges["step_us_range"],
    )
    return c, made["metric"]


def _finished_line(c: Candidate, metric_name: str) -> str:
    """The line ``echo`` gets for a finished candidate."""
    step = f", {c.step_us:.1f} us/step" if c.step_us is not None else ""
    return (
        f"{c.name}: {metric_name} {c.metric:.4g}, {c.parameters:,} parameters, {c.strategy}, "
        f"{c.sequence_ms:.3f} ms/sequence{step}{' (reused)' if c.reused else ''}"
    )


def _write_comparison(plan: _Plan, results: list[Candidate], metric_name: str, on: str, started: float) -> Comparison:
    """The comparison of ``results`` with its Pareto front marked, the machine, its load and the seconds since
    ``started`` (``time.perf_counter()``); written to OUT/compare.json."""
    import time

    from ..files import write_atomic
    from ..manifest import TIMINGS_NOTE
    from ..verify.bench import ROUNDS, machine_info, machine_load

    higher_better = metric_name == "accuracy"
    front = pareto_front([(c.sequence_ms, c.metric) for c in results], higher_better)
    for c, on_front in zip(results, front, strict=True):
        c.pareto = on_front
    comparison = Comparison(
        metric=metric_name,
        higher_better=higher_better,
        on=on,
        bench_len=plan.bench_len,
        provider=plan.provider,
        target=plan.target,
        candidates=results,
        machine=machine_info(),
        seconds=time.perf_counter() - started,
        rounds=ROUNDS,
        load=machine_load(),
        timings_note=TIMINGS_NOTE,
    )
    stage(f"writing {plan.out / 'compare.json'}")
    write_atomic(plan.out / "compare.json", json.dumps(comparison.to_dict(), indent=2).encode())
    return comparison


HASHED = ("model.ckpt", "model.onnx", "step.onnx")  # a candidate's files, recorded by SHA-256 in candidate.json
FIELDS: dict[str, tuple[Any, str]] = {  # what candidate.json's "made" holds: (the JSON kind, said as)
    **{k: ((float, int), "a number") for k in ("best_metric", "baseline", "train_seconds")},
    **{k: (int, "a whole number") for k in ("epochs_run", "parameters")},
    **{k: (str, "text") for k in ("metric", "strategy")},
    "streams": (bool, "true or false"),
}


def _made(run: Path, settings: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Train and export the candidate in ``run`` unless a finished one with the same settings is there (``record``,
    its candidate.json, already checked); a reused one is verified against its files first."""
    import time

    from ..files import write_atomic
    from ..model import checkpoint

    record_path = run / "candidate.json"
    if (
        record is not None
        and record["settings"] == settings
        and (run / "model.onnx").is_file()
        and (run / checkpoint.DEFAULT_NAME).is_file()
    ):
        made = _verified(run, record, settings)
        if made is not None:
            return {**made, "reused": True}
    from ..train.workflow import train_to_dir

    stage(f"{run.name}: training")
    t0 = time.perf_counter()
    summary = train_to_dir(
        task=settings["task"],
        data=None if settings["data"] is None else settings["data"]["path"],
        cell=settings["cell"],
        hidden=settings["hidden"],
        layers=settings["layers"],
        bidirectional=settings["bidirectional"],
        out_dir=str(run),
        progress=False,
        **settings["data_options"],
        **settings["train_options"],
    )
    train_seconds = time.perf_counter() - t0
    stage(f"{run.name}: exporting")
    strategy = _export(run, settings)
    ck = checkpoint.load(run)
    made = {
        "metric": summary["metric"],
        "best_metric": summary["best_metric"],
        "baseline": summary["baseline"],
        "epochs_run": summary["epochs_run"],
        "train_seconds": train_seconds,
        "parameters": ck.config.parameter_count(),
        "strategy": strategy,
        "streams": (run / "step.onnx").is_file(),
    }
    write_atomic(record_path, _record_bytes(run, settings, made))
    return {**made, "reused": False}


def _record_bytes(run: Path, settings: dict[str, Any], made: dict[str, Any]) -> bytes:
    hashes = {f: _sha256(run / f) for f in HASHED if (run / f).is_file()}
    return json.dumps({"settings": settings, "made": made, "sha256": hashes}, indent=2).encode()


def _verified(run: Path, record: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    """What a finished candidate reports, taken from its files: None (train it again) when its checkpoint is not
    the one recorded; its exports made again when they are not the ones recorded; the metric, baseline, epochs and
    parameters read from the checkpoint, the strategy from model.onnx, streaming from the settings. Each mismatch
    is said on stderr and the record rewritten."""
    from ..files import write_atomic
    from ..model import checkpoint

    name = run.name
    recorded = record.get("sha256") or {}
    if not recorded:
        note(f"{name}: candidate.json records no hashes of its files (an older edgernn wrote it); training again")
        return None
    if _sha256(run / checkpoint.DEFAULT_NAME) != recorded.get(checkpoint.DEFAULT_NAME):
        note(f"{name}: model.ckpt is not the checkpoint this candidate was trained to; training it again")
        return None
    ck = checkpoint.load(run)
    hist: Any = ck.meta.get("history")
    try:
        derived = {
            "metric": str(hist["metric"]),
            "best_metric": float(hist["best_metric"]),
            "baseline": float(hist["baseline"]),
            "epochs_run": len(hist["val_metric"]),
            "parameters": ck.config.parameter_count(),
            "streams": not settings["bidirectional"],  # a unidirectional candidate has its step.onnx
        }
    except (KeyError, TypeError, ValueError):
        note(f"{name}: model.ckpt does not record its training history; training it again")
        return None
    made = dict(record["made"])
    differ = [k for k, v in derived.items() if not _same(made.get(k), v)]
    if differ:
        note(f"{name}: candidate.json's {', '.join(differ)} differ from its checkpoint's; reporting the checkpoint's")
    made.update(derived)
    exports = ["model.onnx", *(["step.onnx"] if made.get("streams") else [])]
    swapped = [f for f in exports if not (run / f).is_file() or _sha256(run / f) != recorded.get(f)]
    if swapped:
        are = "is not the export" if len(swapped) == 1 else "are not the exports"
        note(f"{name}: {' and '.join(swapped)} {are} made from its checkpoint; exporting again")
        made["strategy"] = _export(run, settings)
        made["streams"] = (run / "step.onnx").is_file()
    else:
        strategy = _strategy_of(run / "model.onnx")
        if strategy != made.get("strategy"):
            differ.append("strategy")
            note(f"{name}: candidate.json's strategy differs from model.onnx's; reporting model.onnx's")
        made["strategy"] = strategy
    if differ or swapped:
        write_atomic(run / "candidate.json", _record_bytes(run, settings, made))
    return made


def _read_record(run: Path) -> dict[str, Any] | None:
    """RUN/candidate.json, checked: None when there is none; ``ConfigError`` when it is not a record compare wrote
    (not JSON, a field missing or of the wrong kind), before anything is trained or written."""
    path = run / "candidate.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        problem = _record_problem(record)
    except (OSError, ValueError) as e:
        problem = f"it is not JSON ({str(e).splitlines()[0][:100]})"
    if problem is not None:
        raise ConfigError(
            f"{str(path)!r} is not a record edgernn compare wrote: {problem}; delete the folder {str(run)!r} to make "
            "that candidate again"
        )
    return record  # type: ignore[no-any-return]


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "it is not a JSON object"
    made, settings = record.get("made"), record.get("settings")
    if not isinstance(settings, dict) or not isinstance(made, dict):
        return "it lacks its settings or what was made"
    for key, (kind, what) in FIELDS.items():
        if key not in made:
            return f"field {key!r} is missing"
        v = made[key]
        if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
            return f"field {key!r} is {json.dumps(v)[:40]}, not {what}"
    hashes = record.get("sha256", {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        return "its sha256 entry is not a mapping of file names to hashes"
    return None


def _same(a: Any, b: Any) -> bool:
    nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return nan or bool(a == b)


def _strategy_of(path: Path) -> str:
    import onnx

    from ..manifest import read_manifest

    proto = onnx.load(str(path), load_external_data=False)
    return str(read_manifest({p.key: p.value for p in proto.metadata_props}).strategy)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _export(run: Path, settings: dict[str, Any]) -> str:
    """model.onnx with the chosen strategy for the target (parity-checked), and step.onnx for streaming."""
    from ..export.sources import export_checkpoint

    opts: dict[str, Any] = {"strategy": settings["strategy"], "target": settings["target"]}
    if settings["strategy"] == "auto":
        opts["profile_shape"] = (1, settings["bench_len"])
    result = export_checkpoint(run, run / "model.onnx", **opts)
    if not settings["bidirectional"]:
        export_checkpoint(run, run / "step.onnx", strategy="step", target=settings["target"])
    return str(result.manifest.strategy)


def _latency(
    run: Path, made: dict[str, Any], provider: str, bench_len: int
) -> tuple[float, float | None, dict[str, list[float] | None]]:
    """p50 ms per sequence (model.onnx, batch 1) and p50 us per streaming step (step.onnx), one thread, with
    the fastest and slowest round of each (``sequence_ms_range``, ``step_us_range``)."""
    from ..verify.bench import bench

    stage(f"{run.name}: timing on {provider}")
    seq = bench(run / "model.onnx", provider=provider, threads=1, steps=1, seq_len=bench_len, repeats=20, warmup=3)
    ranges: dict[str, list[float] | None] = {
        "sequence_ms_range": [seq.spread_ms["sequence"]["low"], seq.spread_ms["sequence"]["high"]],
        "step_us_range": None,
    }
    step_us = None
    if made.get("streams"):
        st = bench(run / "step.onnx", provider=provider, threads=1, steps=300, seq_len=1, repeats=1, warmup=30)
        step_us = st.step.p50_ms * 1e3
        ranges["step_us_range"] = [round(st.spread_ms["step"][k] * 1e3, 3) for k in ("low", "high")]
    return seq.sequence.p50_ms, step_us, ranges


def _fingerprint(path: str, val: str | None = None) -> dict[str, Any]:
    """What identifies the user's data for resuming: its path and the SHA-256 of the bytes that are read (the
    .npz, or a CSV directory's .csv files in name order; the same of the validation data, when given)."""
    from ..train.dataset import data_files

    h = hashlib.sha256()
    for source in (path, val):
        if source is None:
            continue
        for f in data_files(source):
            h.update(f.name.encode())
            h.update(bytes.fromhex(_sha256(f)))
    return {"path": str(path), "sha256": h.hexdigest()}


def _longest(data: str, data_options: dict[str, Any]) -> int:
    from ..train.dataset import load_dataset

    stage(f"reading {data}")
    keys = ("head", "readout", "target_columns", "classes")
    d = load_dataset(data, **{k: data_options.get(k) for k in keys})
    return max(e.x.shape[0] for e in d.examples)


def plot_comparison(comparison: Comparison, out: str | os.PathLike[str]) -> Path:
    """Metric against latency per sequence, one labelled point per candidate, the Pareto front joined, the
    input-blind baseline dashed; written as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import write_atomic

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for c in comparison.candidates:
        colour = colours.setdefault(c.cell, f"C{len(colours)}")
        ax.scatter(c.sequence_ms, c.metric, color=colour, s=30 + c.hidden / 2, zorder=3,
                   edgecolors="black" if c.pareto else "none")  # fmt: skip
        ax.annotate(c.name, (c.sequence_ms, c.metric), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((c.sequence_ms, c.metric) for c in comparison.candidates if c.pareto)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", linestyle="-", zorder=2,
                label="Pareto front")  # fmt: skip
    if comparison.candidates:
        ax.axhline(comparison.candidates[0].baseline, color="grey", linestyle="--", label="input-blind baseline")
    for cell, colour in colours.items():
        ax.scatter([], [], color=colour, label=cell)
    better = "higher" if comparison.higher_better else "lower"
    ax.set(
        xlabel=f"latency per sequence (ms, {comparison.bench_len} steps, batch 1, {comparison.provider})",
        ylabel=f"validation {comparison.metric} ({better} is better)",
        title=f"edgernn compare on {comparison.on}",
    )
    if not comparison.higher_better and all(c.metric > 0 for c in comparison.candidates):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    target = Path(out)
    write_atomic(target, buf.getvalue())
    return target
