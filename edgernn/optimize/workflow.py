"""``edgernn quantize`` as a library function: the task to judge by (from the checkpoint or the manifest), the
user's data, then ``quantize``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, InputError
from ..manifest import MANIFEST_KEY, Manifest, read_manifest
from ..progress import stage
from ..verify.drift import check_long_steps
from .quantize import (
    DEFAULT_MAX_DRIFT,
    DEFAULT_MAX_METRIC_DROP,
    QuantizeResult,
    check_budget,
    check_weight_only,
    quantize,
)
from .schemes import scheme_for

# (target, reduced model bytes) -> the target's check as the manifest records it, or None (nothing to record)
TargetCheck = Callable[[str | None, bytes], dict[str, Any] | None]
TargetForm = Callable[[str | None, bytes], bytes]
# target -> why its engine cannot run int8 products (DynamicQuantizeLinear + MatMulInteger), or None: it can
TargetInt8 = Callable[[str | None], str | None]


def quantize_file(
    model: str | os.PathLike[str],
    to: str,
    out: str | os.PathLike[str] | None,
    *,
    ckpt: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    max_metric_drop: float = DEFAULT_MAX_METRIC_DROP,
    per_channel: bool | None = None,
    long_steps: int | None = None,
    no_verify: bool = False,
    cpu: str | None = None,
    golden: bool | str | os.PathLike[str] = False,
    max_drift: float = DEFAULT_MAX_DRIFT,
    target_check: TargetCheck | None = None,
    target_form: TargetForm | None = None,
    weights_only: bool = False,
    target_int8: TargetInt8 | None = None,
) -> QuantizeResult:
    path = Path(model)
    if not path.is_file():
        from ..errors import ModelFormatError

        raise ModelFormatError(f"no model file at {str(path)!r}")
    if out is not None and Path(out).resolve() == path.resolve():
        raise ConfigError(f"--out {str(out)!r} is the model being quantised; write the reduced file elsewhere")
    return quantize_bytes(
        path.read_bytes(),
        to,
        out,
        ckpt=ckpt,
        data=data,
        max_metric_drop=max_metric_drop,
        per_channel=per_channel,
        long_steps=long_steps,
        verify=not no_verify,
        cpu=cpu,
        golden=golden,
        max_drift=max_drift,
        target_check=target_check,
        target_form=target_form,
        weights_only=weights_only,
        target_int8=target_int8,
    )


def quantize_bytes(
    model: bytes,
    to: str,
    out: str | os.PathLike[str] | None,
    *,
    ckpt: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    max_metric_drop: float = DEFAULT_MAX_METRIC_DROP,
    per_channel: bool | None = None,
    long_steps: int | None = None,
    verify: bool = True,
    cpu: str | None = None,
    golden: bool | str | os.PathLike[str] = False,
    max_drift: float = DEFAULT_MAX_DRIFT,
    target_check: TargetCheck | None = None,
    target_form: TargetForm | None = None,
    weights_only: bool = False,
    target_int8: TargetInt8 | None = None,
) -> QuantizeResult:
    """``quantize`` with its judges found: the task from ``ckpt`` or the file's manifest, ``data`` from .npz.
    ``target_check`` asks the target's tool about the reduced file (``edgernn.targets.recheck_structure``;
    the export room above passes it in), and ``target_form`` puts the reduced file in the form its target's engine
    loads (``edgernn.targets.reduced_form``); ``target_int8`` says why a target's engine cannot run int8
    products (``edgernn.targets.int8_products_refused``), where int8 stores the weights alone."""
    check_budget(max_metric_drop)  # before the task is rebuilt: a bad option fails fast
    check_weight_only(to, per_channel, weights_only)
    check_budget(max_drift, "--max-drift")
    if long_steps is not None:
        check_long_steps(long_steps)
    if cpu is not None:
        scheme_for(cpu)
    stage(f"reading the model ({len(model) / 1e6:.1f} MB)")
    manifest = _manifest(model)
    stage("finding the task to judge by" + (f" in {ckpt}" if ckpt is not None else ""))
    task, examples = judge_task(manifest, ckpt)
    if data is not None:
        stage(f"reading {data}")
    arrays = _npz(data) if data is not None else None
    if to == "int8" and verify and examples is None and arrays is None:
        raise ConfigError(
            "int8 is judged by the task: give --ckpt (the checkpoint it was exported from), or --data X.npz, "
            f"judged by the drift on it (--max-drift): {npz_layout(model)} (or --no-verify to skip judging)"
        )
    stage(f"quantizing to {to}" + (" and judging the result" if verify else ""))
    return quantize(
        model,
        to,
        out,
        task=task,
        examples=examples,
        calibration=arrays,
        data=arrays,
        max_metric_drop=max_metric_drop,
        per_channel=per_channel,
        long_steps=long_steps,
        verify=verify,
        cpu=cpu,
        golden=golden,
        max_drift=max_drift,
        target_check=target_check,
        target_form=target_form,
        weight_only=weights_only,
        target_int8=target_int8,
    )


def npz_layout(model: bytes) -> str:
    """What ``--data`` must hold for this model, in words: one array per input, named as the input."""
    from ..runtime.model import Model

    specs = [s for s in Model(model, threads=1).inputs if s.role in ("data", "lengths")]
    arrays = []
    for s in specs:
        dims = [
            "N" if d == "batch" else ("T" if isinstance(d, str) and d.startswith("time") else str(d)) for d in s.shape
        ]
        arrays.append(f"{s.name!r} ({', '.join(dims)}) {s.dtype}" + (" (optional)" if s.role == "lengths" else ""))
    return f"an .npz with one array per input, named as the input, N sequences on the batch axis: {'; '.join(arrays)}"


def judge_task(manifest: Manifest | None, ckpt: str | os.PathLike[str] | None) -> tuple[Any, list[Any] | None]:
    """The built-in task and its validation examples: from the checkpoint's record (needs torch), else from the
    manifest's (exports of edgernn checkpoints carry it); (None, None) when neither knows one. Examples are cut
    to what the file takes: a fixed-length file's longest sequence is its length."""
    from ..train.data import get_task, make_splits

    record = None
    if ckpt is not None:
        from ..model import checkpoint

        record = checkpoint.task_record(checkpoint.load(ckpt).meta)
        if record is None:
            raise CheckpointError(f"{str(ckpt)!r} records no built-in task to judge the model by; use --data")
    elif manifest is not None and manifest.task:
        record = manifest.task
    if record is None:
        return None, None
    task = get_task(record["name"])
    max_len = record["max_len"]
    fixed = manifest.seq_len if manifest is not None else None
    if fixed is not None:
        max_len = min(max_len, fixed)
    min_len = min(record["min_len"], max_len)
    _, val = make_splits(
        task, n_train=record["n_train"], n_val=record["n_val"], min_len=min_len, max_len=max_len, seed=record["seed"]
    )
    return task, val


def _manifest(model: bytes) -> Manifest | None:
    from ..runtime.providers import make_session

    session, _ = make_session(model, "cpu", threads=1)
    meta = session.get_modelmeta().custom_metadata_map
    return read_manifest(meta) if MANIFEST_KEY in meta else None


def _npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no data file at {str(p)!r}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError) as e:
        raise InputError(f"{str(p)!r} is not a readable .npz of arrays: {str(e).splitlines()[0][:200]}") from None
