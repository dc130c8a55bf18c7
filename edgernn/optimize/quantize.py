"""int8 and fp16 versions of an exported model, made by onnxruntime's and onnxconverter-common's own tools, judged
by the task and by drift over a long sequence, and refused (nothing written) when over budget.

- ``int8`` (dynamic): ``onnxruntime.quantization.quantize_dynamic`` with subgraphs enabled, so the recurrent
  product inside a ``Scan`` body is quantised too. onnxruntime has no integer GRU or RNN op, so those ops are
  first written as a Scan around the cell (``scan_form``), whose MatMuls become ``MatMulInteger``. LSTM ops
  become ``DynamicQuantizeLSTM`` for int8 weights; for uint8 weights they are written as a Scan too (that op
  stores int8 weights whatever is asked). Weights int8 or uint8 (``schemes``), activations quantised per call.
  A file made for onnxruntime (target ``ort``) is saved as onnxruntime's CPU session optimises it (its fusions
  into ``DynamicQuantizeMatMul`` are in the file); for other targets the standard ops stay. Per tensor; per
  output channel when per tensor is over the task's budget; and when both are, the recurrent products inside the
  Scan bodies (h times R, quantised again at every step) kept in fp32, only the input projections and the rest
  quantised (``how["recurrent"] = "fp32"``, and why); and when all three are, only the weights stored as int8
  (per output channel) with every product in fp32 (``weight_only``: ``how["weight_only"]``, and why).
- ``int8-static`` (QDQ): ``quantize_static`` with ranges calibrated on real inputs (``--data`` or the
  checkpoint's task), the recurrent state's included: a streaming file is stepped through the calibration
  sequences and the states it passes along are calibration inputs too. What NPU delegates (NNAPI, QNN) consume.
- ``fp16``: ``onnxconverter_common.float16`` with fp32 inputs and outputs. ``Transpose`` stays fp32: an fp16
  Transpose feeding an fp16 MatMul crashes onnxruntime 1.32's CPU session at ORT_ENABLE_ALL (SIGSEGV in its
  NchwcTransformer; reproduction in docs/precision.md), and the Transpose only ever moves activations.

Every result is loaded at each onnxruntime optimisation level (in a child process: a crash there must not take
this one down), compared with the fp32 file on the parity cases, measured over a long sequence, and with a task
judged by its validation metric against ``max_metric_drop``. Torch-free.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFormatError, ParityError, TargetError
from ..files import write_atomic
from ..graphs import all_graphs
from ..manifest import MANIFEST_KEY, Manifest, read_manifest, write_manifest
from .schemes import Scheme, scheme_for

PRECISIONS = ("int8", "int8-static", "fp16")
DEFAULT_MAX_METRIC_DROP = 0.01  # 1% relative
# judged on the user's data when no task is known: the largest output difference from fp32, as a share of the
# largest fp32 output magnitude on that data (5%: a logit or a regression value moved by a twentieth of the scale)
DEFAULT_MAX_DRIFT = 0.05
_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _OverBudget(Exception):
    """The reduced model's task metric is over the budget (said as the rest of a sentence)."""


@dataclass(frozen=True)
class _Candidate:
    """One way to make an int8 file: weight scales per output channel or per tensor, whether the recurrent
    products inside the Scan bodies (``scan_form.recurrent_products``) stay fp32, or whether only the weights are
    int8 (``weight_only``)."""

    per_channel: bool
    recurrent_fp32: bool = False
    weight_only: bool = False  # int8 weights dequantised in the graph, every product fp32 (optimize.weight_only)

    def label(self, to: str) -> str:
        if to == "fp16":
            return ""
        if self.weight_only:
            return "(weights only, per channel, products in fp32) "
        scale = "per channel" if self.per_channel else "per tensor"
        return f"({scale}, recurrent products in fp32) " if self.recurrent_fp32 else f"({scale}) "


# tried in turn for int8 (dynamic) judged without a choice of scale, each only when the ones before are over budget.
# The third: a recurrent product is quantised again at every step, with a new activation scale each time, and its
# rounding is carried into every later step; measured on a trained 2-layer rnn-tanh H32 sine model it was the
# largest single share of the loss (quantised alone it lost 6.4% of the MSE, an input projection 1.4%). Its input
# projections stay per tensor: with per channel ones that model lost more (2.8% against 1.4%).
# The fourth, when all three are over: only the weights rounded (per output channel, symmetric), the activations
# never, so nothing is rounded again at each step. On that model: within 1% where the three tries lost 5.3%, 4.4%
# and 1.4%, and its largest error against fp32 on the validation set 0.0076 against their 0.023 to 0.0135.
_CANDIDATES = (
    _Candidate(False),
    _Candidate(True),
    _Candidate(False, recurrent_fp32=True),
    _Candidate(True, weight_only=True),
)


def _because(over: str) -> str:
    """``(per tensor) loses ...`` as ``per tensor loses ...``."""
    label, rest = over.split(") ", 1)
    return f"{label.removeprefix('(')} {rest}"


@dataclass
class QuantizeResult:
    path: Path | None
    model_bytes: bytes
    manifest: Manifest | None
    report: dict[str, Any] = field(default_factory=dict)  # what the manifest's "precision" entry holds
    golden: Path | None = None  # the task golden file written beside the model, when asked for
    speed: dict[str, Any] | None = None  # reduced vs fp32 on this CPU, timed in turns (not kept in the file)

    def to_dict(self) -> dict[str, Any]:
        extra = {"golden": str(self.golden) if self.golden else None, "speed": self.speed}
        return {"path": str(self.path) if self.path else None, **self.report, **extra}


def quantize(
    model: str | os.PathLike[str] | bytes,
    to: str,
    out: str | os.PathLike[str] | None = None,
    *,
    task: Any = None,
    examples: Sequence[Any] | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    max_metric_drop: float = DEFAULT_MAX_METRIC_DROP,
    per_channel: bool | None = None,
    long_steps: int | None = None,
    verify: bool = True,
    cpu: str | None = None,
    golden: bool | str | os.PathLike[str] = False,
    timing: bool = True,
    max_drift: float = DEFAULT_MAX_DRIFT,
    target_check: Callable[[str | None, bytes], dict[str, Any] | None] | None = None,
    target_form: Callable[[str | None, bytes], bytes] | None = None,
    weight_only: bool = False,
    target_int8: Callable[[str | None], str | None] | None = None,
) -> QuantizeResult:
    """Make the ``to`` precision version of an fp32 ONNX file, judge it, and write it to ``out`` (if given).

    ``task``/``examples``: an edgernn task and its validation examples (``edgernn quantize --ckpt`` supplies
    them); the task metric of the fp32 and the reduced file must not differ by more than ``max_metric_drop``
    (relative), or ``ParityError`` and nothing is written. ``data`` (inputs by name) adds the drift on the user's
    own inputs; ``calibration`` (inputs by name) feeds int8-static. ``verify=False`` skips every judgement.
    ``per_channel``: one weight scale per output channel (True) or per tensor (False); None (the default) is per
    tensor, and for int8 judged by a task, per channel when per tensor is over the budget, and then, when both are,
    per tensor with the recurrent products of the Scan bodies kept in fp32.
    ``cpu``: the CPU the file will run on (``edgernn.optimize.schemes.CPUS``; None: ``any``, right on every CPU);
    the int8 scheme follows onnxruntime's guidance for it.
    ``golden`` (True: ``OUT.golden.npz`` beside ``out``; or a path): the task's validation set, its fp32 metric and
    the budget, for ``edgernn verify`` to judge the file on the device itself (needs a task).
    ``timing``: time the reduced file against the fp32 one on this CPU (in turns) and report both.
    ``max_drift``: without a task, the reduced file's outputs on ``data`` may differ from the fp32 file's by at
    most this share of the fp32 outputs' largest magnitude, or ``ParityError`` and nothing is written.
    ``target_form(target, reduced)``: the reduced file in the form its target's engine loads, before it is judged
    (``edgernn.targets.reduced_form``: e.g. no symbolic shapes where tract binds concrete ones).
    ``weight_only``: int8 with only the weights reduced (``edgernn.optimize.weight_only``), the only try; without
    it, that is the last try of int8 judged without a choice of scale.
    ``target_int8(target)``: why the file's target's engine cannot run int8 products (DynamicQuantizeLinear and
    MatMulInteger), or None (``edgernn.targets.int8_products_refused``); where it says why, int8 is the
    weights alone, and the report's ``how`` says so.
    """
    if to not in PRECISIONS:
        raise ConfigError(f"unknown precision {to!r}; choose one of: {', '.join(PRECISIONS)}")
    check_weight_only(to, per_channel, weight_only)
    check_budget(max_metric_drop)
    check_budget(max_drift, "--max-drift")
    if long_steps is not None:
        from ..verify.drift import check_long_steps

        check_long_steps(long_steps)
    source = _read(model)
    proto = _load(source)
    manifest = _manifest(proto)
    if manifest is not None and manifest.precision:
        raise ConfigError("this file is already reduced; quantise the fp32 export")
    product = scheme_for(cpu)
    golden_at = _golden_target(golden, out, task, examples, manifest, verify)
    judged = (task is not None and examples is not None) or data is not None
    refused = _products_refused(to, manifest, target_int8, per_channel)
    candidates = _candidates(to, per_channel, weight_only or refused is not None, verify and judged)
    over: list[str] = []
    tried: list[_Candidate] = []
    for candidate in candidates:
        if candidate.recurrent_fp32 and not _has_recurrent_products(proto, product):
            continue  # no Scan the rewrite writes (or its LSTM kept as onnxruntime's own op): nothing to keep
        tried.append(candidate)
        try:
            reduced, report = _make_and_judge(
                source,
                proto,
                manifest,
                to,
                candidate,
                task,
                examples,
                calibration,
                data,
                max_metric_drop,
                long_steps,
                verify,
                product,
                max_drift,
                target_form,
            )
            break
        except _OverBudget as e:
            over.append(f"{candidate.label(to)}{e}")
    else:
        # --per-channel is worth a try only where it was not tried (and means nothing for fp16)
        budget = "--max-metric-drop" if task is not None and examples is not None else "--max-drift"
        advice = f"raise {budget}, or " + (
            "try --per-channel or another strategy"
            if to != "fp16" and tried == [_Candidate(False)]
            else "try another strategy"
        )
        raise ParityError(f"the {to} model {'; '.join(over)}; nothing was written ({advice})")
    _say_why(report["how"], over, None if weight_only else refused)
    out_bytes, new_manifest = _with_manifest(reduced, manifest, report, target_check)
    # timed on this CPU at this moment: reported, never written into the file
    speed = _speed(source, reduced, manifest) if timing and verify else None
    path = None
    if out is not None:
        path = Path(out)
        write_atomic(path, out_bytes)
    result = QuantizeResult(path, out_bytes, new_manifest, report, speed=speed)
    if golden_at is not None and new_manifest is not None:
        from ..verify.task_golden import write_task_golden

        metric = report["metric"]
        result.golden = write_task_golden(
            golden_at, new_manifest, task, examples, fp32_metric=metric["fp32"], budget=max_metric_drop
        )
    return result


def _say_why(how: dict[str, Any], over: Sequence[str], refused: str | None) -> None:
    """Why the file written is the try it is, into its ``how``: the target's engine that cannot run int8
    products (``refused``), or the tries before it that were ``over`` the budget."""
    if refused is not None:
        how["weight_only_because"] = refused
    elif over and how.get("weight_only"):
        how["weight_only_because"] = "; ".join(_because(o) for o in over)
    elif over and how.get("recurrent") == "fp32":
        how["recurrent_because"] = "; ".join(_because(o) for o in over)
    elif over:
        how["per_channel_because"] = _because(over[0])


def _products_refused(
    to: str, manifest: Manifest | None, target_int8: Callable[[str | None], str | None] | None, per_channel: bool | None
) -> str | None:
    """Why the file's target's engine cannot run int8 products, so that int8 for it is the weights alone (None:
    it can, or the file is not int8 or names no target); ConfigError where --per-tensor asks for products."""
    if to != "int8" or target_int8 is None or manifest is None:
        return None
    why = target_int8(manifest.target)
    if why is not None and per_channel is False:
        raise ConfigError(
            f"int8 for target {manifest.target!r} keeps the weights alone, one scale per output channel ({why}); "
            "drop --per-tensor"
        )
    return None if why is None else f"target {manifest.target}: {why}"


def _candidates(to: str, per_channel: bool | None, weight_only: bool, judged: bool) -> list[_Candidate]:
    """The files to try in turn. int8 (dynamic) judged, without a choice: per tensor; per output channel when per
    tensor is over the budget; when both are, the recurrent products (h times R, once per step) kept in fp32 and
    only the rest quantised; when that is over too, the weights alone (``_CANDIDATES``). Otherwise the one asked."""
    if to == "int8" and per_channel is None and judged and not weight_only:
        return list(_CANDIDATES)
    return [_Candidate(bool(per_channel) or weight_only, weight_only=weight_only)]


def _with_manifest(
    reduced: bytes,
    manifest: Manifest | None,
    report: dict[str, Any],
    target_check: Callable[[str | None, bytes], dict[str, Any] | None] | None,
) -> tuple[bytes, Manifest | None]:
    """The reduced file with the fp32 file's manifest, its ``precision`` entry set to ``report`` and, where
    ``target_check`` gives one, the target's tool's answer on the reduced file; unchanged without a manifest."""
    if manifest is None:
        return reduced, None
    new_manifest = replace(manifest, precision=report)
    # target_check(target, reduced): the target's tool asked again (edgernn.targets.recheck_structure)
    found = target_check(manifest.target, reduced) if target_check is not None else None
    if found is not None:  # its tool asked again: recorded, not fatal
        new_manifest = replace(new_manifest, target_check=found)
    import onnx

    q = onnx.load_from_string(reduced)
    write_manifest(q, new_manifest)
    return q.SerializeToString(deterministic=True), new_manifest


def _make_and_judge(
    source: bytes,
    proto: Any,
    manifest: Manifest | None,
    to: str,
    candidate: _Candidate,
    task: Any,
    examples: Sequence[Any] | None,
    calibration: Mapping[str, np.ndarray] | None,
    data: Mapping[str, np.ndarray] | None,
    max_metric_drop: float,
    long_steps: int | None,
    verify: bool,
    scheme: Scheme,
    max_drift: float,
    target_form: Callable[[str | None, bytes], bytes] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The reduced file and its report; ``_OverBudget`` when its task metric is over the budget (other failures
    raise their own errors)."""
    integer = to != "fp16" and not candidate.weight_only  # whether the file computes integer products
    if to == "int8" and candidate.weight_only:
        reduced, how = _int8_weight_only(proto, scheme)
    elif to == "int8":  # onnxruntime's own fusions only in a file made for onnxruntime (they are its contrib ops)
        fuse = manifest is None or manifest.target in (None, "ort")
        reduced, how = _int8_dynamic(proto, candidate, fuse=fuse, scheme=scheme)
    elif to == "fp16":
        reduced, how = _fp16(proto)
    else:
        reduced, how = _int8_static(proto, manifest, calibration, examples, candidate.per_channel, scheme)
    shrunk = _shrink(_load(reduced))
    tables = _embedding_tables(shrunk)
    if tables:
        how["embeddings"] = tables
    reduced = shrunk.SerializeToString()
    if target_form is not None and manifest is not None:
        reduced = target_form(manifest.target, reduced)
    _loads_at_every_level(reduced)
    report: dict[str, Any] = {"precision": to, "how": how, **_storage(proto, reduced, to)}
    if verify:
        judges = (task, examples, data, max_metric_drop, max_drift)
        report.update(_judge(source, reduced, manifest, to, judges, long_steps))
        report["judged_on"] = _judged_on(scheme if integer else None)
    return reduced, report


def _golden_target(
    golden: bool | str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    task: Any,
    examples: Sequence[Any] | None,
    manifest: Manifest | None,
    verify: bool,
) -> Path | None:
    """Where the task golden file goes (None: not asked for); ConfigError, before any work, when it cannot be
    written: it records the task's validation set and the metric judged here."""
    if golden is False or golden is None:
        return None
    if task is None or examples is None or manifest is None:
        raise ConfigError(
            "a golden file for a reduced model records the task it is judged by: give --ckpt (the checkpoint it was "
            "exported from), or quantise an edgernn export that records its task"
        )
    if not verify:
        raise ConfigError("a golden file records the metric judged before writing; drop --no-verify")
    if golden is True:
        if out is None:
            raise ConfigError("golden=True writes beside the model; give the model a path (--out)")
        from ..verify.golden import golden_path

        return golden_path(out)
    return Path(golden)


def _judged_on(scheme: Scheme | None) -> dict[str, Any]:
    """The CPU the judgement ran on, and a note when its integer products are not the device's."""
    from ..runtime.cpu import host_cpu

    cpu = host_cpu()
    out: dict[str, Any] = {"cpu": cpu["class"], "model": cpu["model"]}
    if scheme is not None and not scheme.exact_on(cpu["class"]):
        out["note"] = (
            f"this {cpu['class']} CPU can saturate {scheme.name} products, which the {scheme.cpu} device does not: "
            "the metric judged here is not the device's; judge it there with a task golden file "
            "(quantize --golden, then edgernn verify on the device)"
        )
    return out


def _timed_shape(manifest: Manifest | None) -> tuple[int, int]:
    """The (sequence length, batch) the speed of a reduced file is timed at: 100 steps at batch 1, or the file's
    own fixed length and batch; a streaming file's length a whole number of its chunks (at least one)."""
    seq_len, batch = 100, 1
    if manifest is not None:
        seq_len = manifest.seq_len or seq_len
        chunk = (manifest.chunk or 1) if manifest.states else 1
        seq_len = max(chunk, seq_len - seq_len % chunk)
        batch = manifest.batch or 1
    return seq_len, batch


def _speed(source: bytes, reduced: bytes, manifest: Manifest | None) -> dict[str, Any]:
    """The reduced file's speed against the fp32 one on this CPU, per step and per sequence, timed in turns (as
    ``edgernn bench --against``); ``measured: False`` with the reason where bench cannot drive the model."""
    from ..errors import EdgeRNNError
    from ..runtime.cpu import host_cpu
    from ..verify.bench import timed_in_turns

    seq_len, batch = _timed_shape(manifest)
    try:
        t = timed_in_turns(source, reduced, rounds=3, steps=50, repeats=5, warmup=5, seq_len=seq_len, batch=batch)
    except EdgeRNNError as e:
        return {"measured": False, "why": str(e)}
    step, seq = t["ratios"]["step_speed"], t["ratios"]["sequence_speed"]
    return {
        "measured": True,
        "cpu": host_cpu()["class"],
        "rounds": t["rounds"],
        "seq_len": seq_len,
        "batch": batch,
        "fp32_ms": {"step": t["model"]["step_p50_ms"], "sequence": t["model"]["sequence_p50_ms"]},
        "reduced_ms": {"step": t["other"]["step_p50_ms"], "sequence": t["other"]["sequence_p50_ms"]},
        "step_speed": step,  # > 1: the reduced file is faster
        "sequence_speed": seq,
        "slower": step < 1 or seq < 1,
    }


def _duplicate_initializers(graph: Any, keep: set[str]) -> dict[str, str]:
    """Drop the main graph's initializers that repeat another's type, shape and bytes; the name of each dropped one
    mapped to the kept one's (onnxruntime's fusions give every step of an unrolled graph its own axes)."""
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    same: dict[str, str] = {}
    kept = []
    for t in graph.initializer:
        key = (t.data_type, tuple(t.dims), t.raw_data)
        if t.name in keep or not t.raw_data:  # an input's default stays its own; typed fields are not compared
            kept.append(t)
        elif key in first:
            same[t.name] = first[key]
        else:
            first[key] = t.name
            kept.append(t)
    if same:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return same


def check_weight_only(to: str, per_channel: bool | None, weight_only: bool) -> None:
    """ConfigError when ``--weights-only`` is combined with what it cannot be."""
    if weight_only and to != "int8":
        raise ConfigError(f"--weights-only makes an int8 file; it cannot be combined with --to {to}")
    if weight_only and per_channel is False:
        raise ConfigError("--weights-only keeps one scale per output channel; drop --per-tensor")


def check_budget(value: Any, option: str = "--max-metric-drop") -> None:
    """ConfigError unless the budget is a relative change >= 0 (0.01 = 1%)."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
        raise ConfigError(f"{option} is a relative change >= 0 (0.01 = 1%); got {value!r}")


# ------------------------------------------------------------------------------------------------ conversions


def _scan_ops(scheme: Scheme) -> tuple[str, ...]:
    """The recurrent ops written as a Scan before dynamic quantisation: onnxruntime has no integer GRU or RNN, and
    its DynamicQuantizeLSTM stores int8 weights whatever is asked, so for uint8 (U8U8) the LSTM too."""
    return ("GRU", "RNN", "LSTM") if scheme.weights == "uint8" else ("GRU", "RNN")


def _has_recurrent_products(proto: Any, scheme: Scheme) -> bool:
    """Whether the Scan rewrite writes recurrent products into this model (its top-level GRU/RNN/LSTM nodes)."""
    ops = _scan_ops(scheme)
    return any(n.op_type in ops and n.domain in ("", "ai.onnx") for n in proto.graph.node)


def _int8_dynamic(proto: Any, candidate: _Candidate, fuse: bool, scheme: Scheme) -> tuple[bytes, dict[str, Any]]:
    from onnxruntime.quantization import quantize_dynamic

    from .scan_form import recurrent_products, rewrite

    work = _compact(proto)
    rewritten = rewrite(work, _scan_ops(scheme))
    # the recurrent products left out by name: quantize_dynamic hands nodes_to_exclude to each subgraph's quantiser
    kept = recurrent_products(work) if candidate.recurrent_fp32 else []
    if candidate.recurrent_fp32 and not kept:
        raise AssertionError("the recurrent products to keep in fp32 were not found in the Scan bodies")
    with tempfile.TemporaryDirectory(prefix="edgernn-q-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(work.SerializeToString())
        _quietly(
            quantize_dynamic,
            src,
            dst,
            per_channel=candidate.per_channel,
            weight_type=_weight_type(scheme),
            nodes_to_exclude=kept,
            extra_options={"EnableSubgraph": True},
        )
        data = dst.read_bytes()
        if fuse:
            data = _fused_by_onnxruntime(data, Path(tmp) / "fused.onnx")
    how = {
        "method": "onnxruntime quantize_dynamic",
        "per_channel": candidate.per_channel,
        "weights": scheme.weights,
        "cpu": scheme.cpu,
        "scheme": scheme.name,
    }
    if kept:
        how["recurrent"] = "fp32"  # h times R in each Scan body; the input projections and the rest quantised
        how["recurrent_products"] = len(kept)
    if fuse:
        how["fused"] = "onnxruntime's extended graph optimisations, saved in the file"
    if rewritten:
        how["rewritten_as_scan"] = rewritten  # ops written as a Scan so their MatMuls quantise: {"GRU": 2}
    return data, how


def _int8_weight_only(proto: Any, scheme: Scheme) -> tuple[bytes, dict[str, Any]]:
    from .weight_only import quantize_weights

    work = _compact(proto)
    count = quantize_weights(work)
    if not count:
        raise AssertionError("no weight matrix to store as int8 was found")
    how = {
        "method": "weight-only: int8 weights (symmetric) turned back into fp32 by DequantizeLinear",
        "per_channel": True,
        "weight_only": True,
        "weights": "int8",
        "products": "fp32",  # no integer product: the same numbers on every CPU
        "weight_matrices": count,
        "cpu": scheme.cpu,
    }
    return work.SerializeToString(), how


def _fused_by_onnxruntime(model: bytes, path: Path) -> bytes:
    """``model`` as onnxruntime's CPU session optimises it at level extended, saved.

    The quantiser writes each integer product as five nodes (quantise the activation, ``MatMulInteger``, cast,
    two rescales); onnxruntime fuses them into one ``DynamicQuantizeMatMul`` when it loads the file anyway.
    Saving its result makes the file smaller (an unrolled graph has a product per step) and quicker to load.
    Dynamic int8 runs on onnxruntime's CPU kernels only, which is what these fusions are made for.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return path.read_bytes()


def _fp16(proto: Any) -> tuple[bytes, dict[str, Any]]:
    from onnxconverter_common import float16

    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, "Transpose"]
    converted = _quietly(
        float16.convert_float_to_float16,
        _compact(proto),
        keep_io_types=True,
        op_block_list=blocked,
        min_positive_val=5.96e-08,  # fp16's smallest subnormal; onnxconverter's defaults clamp far tighter
        max_finite_val=65504.0,
    )
    how = {"method": "onnxconverter_common float16", "io": "float32", "kept_fp32": ["Transpose"]}
    return converted.SerializeToString(), how


def _int8_static(
    proto: Any,
    manifest: Manifest | None,
    calibration: Mapping[str, np.ndarray] | None,
    examples: Sequence[Any] | None,
    per_channel: bool,
    scheme: Scheme,
) -> tuple[bytes, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = calibration_feeds(proto.SerializeToString(), manifest, calibration, examples)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="edgernn-q-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(_compact(proto).SerializeToString())
        _quietly(
            quantize_static,
            src,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            # the weight products only: quantising the gates' elementwise arithmetic and the state it carries
            # compounds over the steps (a 2-layer LSTM lost 15% of its task metric over 48 steps that way)
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=_weight_type(scheme),
        )
        data = dst.read_bytes()
    how = {
        "method": "onnxruntime quantize_static (QDQ)",
        "per_channel": per_channel,
        "weights": scheme.weights,
        "cpu": scheme.cpu,
        "scheme": scheme.name,
        "activations": "uint8",
        "calibration_feeds": len(feeds),
    }
    return data, how


def _embedding_tables(model: Any) -> str | None:
    """What became of the model's embedding tables (a Gather reading rows of a 2-D weight), in words; None
    when it has none. onnxruntime's dynamic quantiser stores a table in the weight type and dequantises the rows
    it gathers; the static one and fp16 keep or convert it like any weight."""
    import onnx

    kinds = []
    for g in all_graphs(model.graph):
        weights = {t.name: t for t in g.initializer}
        for n in g.node:
            t = weights.get(n.input[0]) if n.op_type == "Gather" and n.input else None
            if t is not None and len(t.dims) == 2:
                kinds.append(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name)
    if not kinds:
        return None
    return ", ".join(
        f"{kinds.count(k)} table(s) stored in {k}"
        + (", rows dequantised after the Gather" if k in ("int8", "uint8") else "")
        for k in sorted(set(kinds))
    )


def _weight_type(scheme: Scheme) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if scheme.weights == "uint8" else QuantType.QInt8


def calibration_feeds(
    model: bytes,
    manifest: Manifest | None,
    calibration: Mapping[str, np.ndarray] | None,
    examples: Sequence[Any] | None,
) -> list[dict[str, np.ndarray]]:
    """Feeds for the static quantiser: the user's arrays (first axis = batch items) or the task's examples, cut
    to the file's shapes; for a streaming file, every chunk of every sequence with the state it really carries
    there (so the state's ranges are calibrated, not zeros)."""
    from ..runtime.model import Model
    from ..runtime.stream import StreamingModel

    m = Model(model, threads=1)
    data_spec = next((s for s in m.inputs if s.role == "data"), None)
    if data_spec is None:
        raise ConfigError("static quantisation needs a model with a data input")
    if calibration is not None:
        if data_spec.name not in calibration:
            raise ConfigError(f"the calibration data has no array {data_spec.name!r} (the model's data input)")
        sequences = [np.asarray(s, np.float32) for s in np.asarray(calibration[data_spec.name])]
    elif examples is not None:
        sequences = [np.asarray(e.x, np.float32) for e in examples]
    else:
        raise ConfigError("int8-static needs calibration data: --data X.npz, or --ckpt for the task's own data")
    feeds: list[dict[str, np.ndarray]] = []
    batch = manifest.batch if manifest is not None and manifest.batch else 1
    if m.manifest is not None and m.manifest.states:
        sm = StreamingModel(m)
        k = sm.chunk or 1
        for seq in sequences[:64]:
            state = sm.initial_state(batch)
            x = np.repeat(seq[None], batch, axis=0)
            for t in range(0, len(seq) - len(seq) % k, k):
                feed = {data_spec.name: np.ascontiguousarray(x[:, t : t + k]), **state}
                feeds.append(feed)
                results = sm.session.run(sm._output_names, feed, sm._ro)
                state = {st.input: results[st.out_index] for st in sm.states}
        return feeds
    from ..runtime.validate import check_feed

    fixed = manifest.seq_len if manifest is not None else None
    takes_lengths = any(s.role in ("lengths", "mask") for s in m.inputs)
    for seq in sequences[:64]:
        feed: dict[str, np.ndarray] = {}
        if fixed is not None:  # padded to the file's length, with the real length (the padding masked as at run time)
            padded = np.zeros((fixed, seq.shape[-1]), np.float32)
            padded[: min(fixed, len(seq))] = seq[:fixed]
            if takes_lengths:
                feed["lengths"] = np.full(batch, min(fixed, len(seq)), np.int64)
            seq = padded
        feed[data_spec.name] = np.repeat(seq[None], batch, axis=0)
        feeds.append(check_feed(m.inputs, feed))
    return feeds


def _compact(model: Any) -> Any:
    """A copy of ``model`` (an onnx.ModelProto) with every node named ``n{i}``, every value computed in the main
    graph renamed ``t{i}`` (inputs, outputs and initializers keep their names) and the shape annotations
    (``value_info``) dropped.

    Before conversion it gives the tools what they need: the fp16 converter and the quantisers name the nodes
    they insert after existing ones, and onnxruntime 1.32's static quantiser wrote two definitions of one value
    (a DequantizeLinear and the original producer both defining ``slice_20``) for names as torch's exporter
    gives them. After conversion it takes off what only makes the file bigger: an unrolled graph repeats its
    long generated names thousands of times, and the tools' shape annotations are redundant.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {v.name for v in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    for node in graph.node:
        for name in node.output:
            if name and name not in keep and name not in rename:
                rename[name] = f"t{len(rename)}"
    count = 0
    for g in all_graphs(graph):
        del g.value_info[:]
        for node in g.node:
            node.input[:] = [rename.get(x, x) for x in node.input]
            if g is graph:
                node.output[:] = [rename.get(x, x) for x in node.output]
            node.name = f"n{count}"
            count += 1
    return out


def _shrink(model: Any) -> Any:
    """``model`` (an onnx.ModelProto, changed in place and returned) with nothing in it that only takes space: every
    value but the main graph's inputs and outputs renamed to the shortest free name (one-to-one, in every
    subgraph, initializers included), node names and doc strings cleared, shape annotations dropped.

    For a file of small weights most bytes are names: an unrolled graph refers to each weight, scale and zero point
    once per step, and the tools name them ``onnx::Gemm_123_quantized_scale`` and the like. The graph computes
    exactly what it did; only the labels change.
    """
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    same = _duplicate_initializers(graph, keep)
    rename: dict[str, str] = {}
    counter = itertools.count()

    def base62(n: int) -> str:
        text = ""
        while True:
            n, r = divmod(n, 62)
            text = _BASE62[r] + text
            if not n:
                return text

    def short(name: str) -> str:
        if not name or name in keep:  # "" is an absent optional input
            return name
        name = same.get(name, name)
        if name not in rename:
            text = base62(next(counter))
            while text in keep:  # an input or output already called that: take the next
                text = base62(next(counter))
            rename[name] = text
        return rename[name]

    for g in all_graphs(graph):
        del g.value_info[:]
        g.doc_string = ""
        for t in g.initializer:
            t.name = short(t.name)
            t.doc_string = ""
        for v in (*g.input, *g.output):
            v.name = short(v.name)
            v.doc_string = ""
        for node in g.node:
            node.input[:] = [short(x) for x in node.input]
            node.output[:] = [short(x) for x in node.output]
            node.name = ""
            node.doc_string = ""
    return model


# ---------------------------------------------------------------------------------------------------- checks


def _loads_at_every_level(model: bytes) -> None:
    """onnxruntime creates a session and runs the model at every optimisation level, in a child process."""
    with tempfile.TemporaryDirectory(prefix="edgernn-q-") as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(model)
        code = (
            "import sys, numpy as np, onnxruntime as ort\n"
            "L = ort.GraphOptimizationLevel\n"
            "for level in (L.ORT_DISABLE_ALL, L.ORT_ENABLE_BASIC, L.ORT_ENABLE_EXTENDED, L.ORT_ENABLE_ALL):\n"
            "    so = ort.SessionOptions(); so.graph_optimization_level = level; so.log_severity_level = 3\n"
            "    s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n"
            "    feed = {}\n"
            "    for i in s.get_inputs():\n"
            "        shape = [d if isinstance(d, int) else 2 for d in i.shape]\n"
            "        feed[i.name] = np.ones(shape, np.int64) if 'int' in i.type else np.ones(shape, np.float32)\n"
            "    s.run(None, feed)\n"
            "print('ok')\n"
        )
        p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0 or p.stdout.strip() != "ok":
        why = f"signal {-p.returncode}" if p.returncode < 0 else (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        raise TargetError(f"onnxruntime cannot load or run the reduced model at every optimisation level: {why}")


def _storage(fp32: Any, reduced: bytes, to: str) -> dict[str, Any]:
    """Sizes, and the share of the float weight elements stored in the reduced precision."""
    import onnx

    q = onnx.load_from_string(reduced)
    want = {onnx.TensorProto.FLOAT16} if to == "fp16" else {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}

    def elements(model: Any, types: set[int]) -> int:
        return sum(
            int(np.prod(t.dims))
            for g in all_graphs(model.graph)
            for t in g.initializer
            if t.data_type in types and len(t.dims) > 0
        )

    floats = elements(fp32, {onnx.TensorProto.FLOAT})
    stored = elements(q, want)
    size = len(fp32.SerializeToString())
    return {
        "fp32_bytes": size,
        "bytes": len(reduced),
        "size_ratio": size / len(reduced),
        "weights_reduced": min(1.0, stored / floats) if floats else 0.0,
    }


def _judge(
    source: bytes,
    reduced: bytes,
    manifest: Manifest | None,
    to: str,
    judges: tuple[Any, Sequence[Any] | None, Mapping[str, np.ndarray] | None, float, float],
    long_steps: int | None,
) -> dict[str, Any]:
    """Drift on the parity cases, on the user's data and over a long run, and the task metric; ``_OverBudget``
    when the task metric (or, without a task, the drift on the data) is over its budget."""
    task, examples, data, max_metric_drop, max_drift = judges
    from ..runtime.providers import make_session
    from ..verify.check import check_model_inputs
    from ..verify.drift import LONG_STEPS, long_drift, task_metric
    from ..verify.parity import check, session_runner

    out: dict[str, Any] = {}
    a, _ = make_session(source, "cpu", threads=1)
    b, _ = make_session(reduced, "cpu", threads=1)
    specs, cases, through = check_model_inputs(a)
    dtype = "fp16" if to == "fp16" else "fp32"  # int8 is judged by the task, its elementwise drift only reported
    par = check(
        through(session_runner(a)),
        {to: through(session_runner(b))},
        specs,
        [o.name for o in a.get_outputs()],
        cases,
        dtype=dtype,
        states=True,
    )
    out["drift"] = {"max_abs": par.max_abs, "cases": sorted({c.case for c in par.comparisons})}
    _finite_or_refuse("the largest difference from the fp32 model on the parity cases", par.max_abs, to)
    if to == "fp16" and not par.passed:
        raise ParityError(
            f"the fp16 model differs from the fp32 one by {par.max_abs:.3g} (tolerance atol {par.atol:g}, rtol "
            f"{par.rtol:g}) on the parity cases; nothing was written",
            par,
        )
    has_task = task is not None and examples is not None and manifest is not None
    if data is not None:
        out["data_drift"] = _data_drift(a, b, through, data)
        _finite_or_refuse("the largest difference from the fp32 model on your data", out["data_drift"]["max_abs"], to)
        if not has_task:
            out["data_drift"]["budget"] = max_drift
            if out["data_drift"]["relative"] > max_drift:
                d = out["data_drift"]
                raise _OverBudget(
                    f"differs from the fp32 model by up to {d['max_abs']:.3g} on your data, {d['relative']:.2%} of "
                    f"the largest fp32 output ({d['scale']:.3g}), over --max-drift {max_drift:.2%}"
                )
    if manifest is not None:
        out["long_drift"] = long_drift(source, reduced, manifest, steps=long_steps or LONG_STEPS, given=data)
        _finite_or_refuse("the long-run drift", out["long_drift"]["max_abs"], to)
    if has_task:
        fp32 = task_metric(source, task, examples, manifest)
        low = task_metric(reduced, task, examples, manifest)
        out["metric"] = _metric_verdict(task, fp32, low, len(examples), max_metric_drop, to)
    elif to != "fp16":
        out["metric"] = None
    return out


def _metric_verdict(
    task: Any, fp32: float, low: float, examples: int, max_metric_drop: float, to: str
) -> dict[str, Any]:
    """The task's metric of the fp32 and the reduced model (``low``) judged: the report's ``metric``; ParityError
    when either is not a finite number, _OverBudget when the drop is over ``max_metric_drop``."""
    from ..verify.drift import metric_drop

    if not (math.isfinite(fp32) and math.isfinite(low)):
        raise ParityError(
            f"the task's {task.metric} is not a finite number (fp32 {fp32}, {to} {low} on {examples} "
            "validation sequences): a drop cannot be judged from it; nothing was written"
        )
    drop = metric_drop(task, fp32, low)
    if drop > max_metric_drop:
        raise _OverBudget(
            f"loses {drop:.2%} of the task's {task.metric} ({fp32:.4g} -> {low:.4g} on {examples} "
            f"validation sequences), over the budget of {max_metric_drop:.2%}"
        )
    return {"name": task.metric, "fp32": fp32, "reduced": low, "drop": drop, "budget": max_metric_drop,
            "examples": examples}  # fmt: skip


def _data_drift(a: Any, b: Any, through: Any, data: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """How far session ``b``'s outputs are from ``a``'s on the user's inputs (every float output)."""
    from ..verify.parity import session_runner

    feed = {k: np.asarray(v) for k, v in data.items()}
    ya, yb = through(session_runner(a))(feed), through(session_runner(b))(feed)
    pairs = [(u.astype(np.float64), v) for u, v in zip(ya, yb, strict=True) if u.dtype.kind == "f"]
    diff = max(float(np.abs(u - v).max()) for u, v in pairs)
    scale = max(float(np.abs(u).max()) for u, _ in pairs)
    return {"max_abs": diff, "scale": scale, "relative": diff / max(scale, 1e-12)}


def _finite_or_refuse(what: str, value: float, to: str) -> None:
    if not math.isfinite(value):
        raise ParityError(f"{what} is {value}: the {to} model's outputs are not finite numbers; nothing was written")


# ------------------------------------------------------------------------------------------------------ files


def _read(model: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelFormatError(f"no model file at {str(path)!r}")
    return path.read_bytes()


def _load(data: bytes) -> Any:
    import onnx

    try:
        return onnx.load_from_string(data)
    except Exception as e:
        raise ModelFormatError(f"not a readable ONNX model: {str(e).splitlines()[0][:200]}") from None


def _manifest(proto: Any) -> Manifest | None:
    meta = {p.key: p.value for p in proto.metadata_props}
    return read_manifest(meta) if MANIFEST_KEY in meta else None


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The quantisers and converter log and print advice meant for their own debugging; keep the terminal clean."""
    import contextlib
    import io
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        root.setLevel(level)
