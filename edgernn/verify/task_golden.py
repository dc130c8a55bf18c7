"""Task golden files: an int8 or fp16 file judged by its task on the device itself, with numpy and onnxruntime only.

A reduced file's integer products depend on the CPU (edgernn.runtime.cpu): the task metric measured where it was
exported is not the device's. ``edgernn quantize --golden`` (``golden=`` in Python) writes ``OUT.golden.npz``
beside the reduced file: the task's validation sequences and their true targets, the metric's name and how it
is computed, the fp32 model's metric on them, and the budget. ``edgernn verify OUT --golden OUT.golden.npz`` runs
the reduced file there, computes the metric, and fails (exit 5) when it is worse than the fp32 metric by more
than the budget, or not a finite number.

Layout of the ``.npz``: ``x{i}`` (steps, features) and ``y{i}`` arrays, one pair per validation sequence, and
``meta``, a 0-d unicode array holding the JSON record (format ``edgernn-task-golden``). Read with
``np.load(allow_pickle=False)`` only, like every golden file. Torch-free.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..errors import ConfigError, ModelFormatError, ParityError
from ..files import read_npz, write_atomic
from ..manifest import Manifest, json_text
from .drift import metric_drop, task_metric

if TYPE_CHECKING:
    from ..runtime.model import Model

FORMAT = "edgernn-task-golden"
FORMAT_VERSION = 1
META_KEY = "meta"
ADVICE = "edgernn never unpickles a golden file; write a new one with `edgernn quantize --golden`"
MAX_BYTES = 1 << 30  # a task golden file's arrays together, as their headers claim them: checked before any is read
METRICS = ("mse", "accuracy")
HEADS = ("regression", "classification")
READOUTS = ("last", "all")


@dataclass(frozen=True)
class TaskSpec:
    """What ``task_metric`` needs of a task: how the metric is computed."""

    metric: str
    head: str
    readout: str


@dataclass(frozen=True)
class Example:
    x: np.ndarray  # (steps, features)
    y: np.ndarray  # a class id, a target vector, or one per step


@dataclass
class TaskGolden:
    meta: dict[str, Any]
    examples: list[Example]
    path: Path | None = None

    @property
    def task(self) -> TaskSpec:
        return TaskSpec(self.meta["metric"], self.meta["head"], self.meta["readout"])


def write_task_golden(
    path: str | os.PathLike[str],
    manifest: Manifest,
    task: Any,
    examples: Sequence[Any],
    *,
    fp32_metric: float,
    budget: float,
) -> Path:
    """Write the task golden file of a reduced model (its manifest) to ``path``, atomically; returns the path."""
    how = manifest.precision.get("how") or {}
    metric = manifest.precision.get("metric") or {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgernn_version": __version__,
        "weights_sha256": manifest.weights_sha256,
        "strategy": manifest.strategy,
        "precision": manifest.precision.get("precision"),
        "made_for_cpu": how.get("cpu"),
        "scheme": how.get("scheme"),
        "metric": task.metric,
        "head": task.head,
        "readout": task.readout,
        "fp32_metric": float(fp32_metric),
        "budget": float(budget),
        "exported_on": {**(manifest.precision.get("judged_on") or {}), "reduced_metric": metric.get("reduced")},
        "examples": len(examples),
    }
    arrays: dict[str, np.ndarray] = {META_KEY: np.array(json_text(meta, sort_keys=True))}
    for i, e in enumerate(examples):
        arrays[f"x{i}"] = np.asarray(e.x, np.float32)
        arrays[f"y{i}"] = np.asarray(e.y)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    out = Path(path)
    write_atomic(out, buf.getvalue())
    return out


def is_task_golden(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a task golden file (rather than an export's golden file); False for anything else."""
    try:
        raw = _read(path, (META_KEY,), "").get(META_KEY)
        if raw is None or raw.shape != () or raw.dtype.kind != "U":
            return False
        return bool(json.loads(str(raw[()])).get("format") == FORMAT)
    except (ConfigError, ValueError, AttributeError):
        return False


def _read(path: str | os.PathLike[str], names: Sequence[str] | None, what: str) -> dict[str, np.ndarray]:
    """The arrays, read by ``np.load(allow_pickle=False)`` once their headers are checked (``MAX_BYTES``)."""
    return read_npz(path, names, max_bytes=MAX_BYTES, error=ConfigError, what=what, bound="a task golden file",
                    advice=ADVICE)  # fmt: skip


def read_task_golden(path: str | os.PathLike[str]) -> TaskGolden:
    """Read and check a task golden file; ``ConfigError`` when it is missing, pickled, or malformed."""
    p = Path(path)
    what = f"{str(p)!r} is not a task golden file (an .npz written by `edgernn quantize --golden`)"
    if not p.is_file():
        raise ConfigError(f"no golden file at {str(p)!r}")
    arrays = _read(p, None, what)
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise ConfigError(f"{what}: it has no {META_KEY!r} record")
    try:
        meta = json.loads(str(raw[()]))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: its record is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{what}: its record does not say format {FORMAT!r}")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise ConfigError(f"{what}: format version {meta.get('format_version')!r}; this edgernn reads up to 1")
    ok = (
        meta.get("metric") in METRICS
        and meta.get("head") in HEADS
        and meta.get("readout") in READOUTS
        and isinstance(meta.get("weights_sha256"), str)
        and _finite_number(meta.get("fp32_metric"))
        and _finite_number(meta.get("budget"))
        and meta["budget"] >= 0
        and isinstance(meta.get("examples"), int)
        and meta["examples"] >= 1
    )
    if not ok:
        raise ConfigError(f"{what}: its record is malformed (metric, head, readout, fp32_metric, budget, examples)")
    examples = []
    for i in range(meta["examples"]):
        x, y = arrays.pop(f"x{i}", None), arrays.pop(f"y{i}", None)
        if x is None or y is None:
            raise ConfigError(f"{what}: example {i} lacks its x{i} or y{i} array")
        if x.ndim != 2 or x.dtype.kind != "f" or y.dtype.kind not in "biuf":
            raise ConfigError(f"{what}: example {i} is not (steps, features) floats with numeric targets")
        examples.append(Example(x, y))
    if arrays:
        raise ConfigError(f"{what}: arrays the record does not name: {', '.join(sorted(arrays)[:5])}")
    return TaskGolden(meta, examples, p)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def verify_task(model: Model | str | os.PathLike[str] | bytes, golden: TaskGolden | str | os.PathLike[str]) -> dict:
    """The task metric of ``model`` on the golden's validation set, here, against the fp32 metric recorded at
    export; ``passed`` is False when the drop is over the budget. ``ParityError`` when the metric is not finite
    or the golden was made from other weights; the verdict otherwise (the caller decides the exit)."""
    from ..runtime.cpu import host_cpu
    from ..runtime.model import Model

    m = model if isinstance(model, Model) else Model(model)
    g = golden if isinstance(golden, TaskGolden) else read_task_golden(golden)
    manifest = m.manifest
    if manifest is None:
        raise ModelFormatError(f"{m.source} has no edgernn manifest; a task golden file checks an edgernn export")
    if g.meta["weights_sha256"] != manifest.weights_sha256:
        raise ParityError(
            f"golden file made from other weights than this model (weights_sha256 {g.meta['weights_sha256'][:16]} "
            f"in the golden file vs {manifest.weights_sha256[:16]} in the model's manifest); write the reduced file "
            "and its golden file together (edgernn quantize ... --golden)"
        )
    task = g.task
    here = task_metric(m, task, g.examples, manifest)
    fp32 = float(g.meta["fp32_metric"])
    cpu = host_cpu()
    if not math.isfinite(here):
        raise ParityError(f"the task's {task.metric} computed here is {here} (fp32 {fp32:.4g}): not a finite number")
    drop = metric_drop(task, fp32, here)
    return {
        "metric": task.metric,
        "fp32": fp32,
        "here": here,
        "drop": drop,
        "budget": float(g.meta["budget"]),
        "passed": drop <= float(g.meta["budget"]),
        "examples": len(g.examples),
        "cpu": cpu["class"],
        "cpu_model": cpu["model"],
        "made_for_cpu": g.meta.get("made_for_cpu"),
        "exported_on": g.meta.get("exported_on"),
        "provider": m.choice.describe(),
    }


def format_verdict(v: dict[str, Any]) -> str:
    """One line for people."""
    worse = "worse" if v["drop"] > 0 else "better"
    status = "PASS" if v["passed"] else "FAIL"
    return (
        f"task {v['metric']} {v['fp32']:.4g} (fp32, at export) -> {v['here']:.4g} here: {abs(v['drop']):.2%} {worse} "
        f"(budget {v['budget']:.2%} worse) on {v['examples']} validation sequences; {v['cpu']} CPU "
        f"({v['cpu_model']}), file made for {v['made_for_cpu'] or 'any'} CPU: {status}"
    )
