"""Export from what a user has on disk: an edgernn checkpoint, or their own module named as ``pkg.mod:factory``
with a weights file. What ``edgernn export`` calls."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def export_checkpoint(
    ckpt: str | Path,
    out_path: str | Path,
    *,
    strategy: str | None = None,
    opset: int | None = None,
    lengths: bool | None = None,
    no_verify: bool = False,
    precision: str | None = None,
    max_metric_drop: float | None = None,
    golden: bool = False,
    cpu: str | None = None,
    **options: Any,
) -> Any:
    """Load a checkpoint safely and export it (see ``edgernn.export.export_model``).

    ``options`` are the strategy's own (seq_len, chunk, fused) and the target's (target, batch, ort_format);
    None means not given. ``precision`` (int8, int8-static, fp16) writes that version instead of the fp32 one,
    judged by the checkpoint's task (``edgernn.optimize.quantize``); the fp32 export is verified first.
    ``golden`` writes ``NAME.golden.npz`` beside the model for ``edgernn verify``: the parity inputs and torch's
    outputs for an fp32 export; the task's validation set, fp32 metric and budget for a reduced one. ``cpu``: the
    CPU a reduced file will run on (``edgernn.optimize.schemes.CPUS``).
    """
    from ..model import checkpoint
    from . import export_model

    if out_path is not None and Path(out_path).resolve() == checkpoint.resolve(ckpt).resolve():
        raise ConfigError(f"--out {str(out_path)!r} is the checkpoint being exported; write the model elsewhere")
    ck = checkpoint.load(ckpt)
    task = checkpoint.task_record(ck.meta)
    extra = {"manifest_extra": {"task": task}} if task else {}
    common = {"strategy": strategy, "lengths": lengths, "opset": opset, "verify": not no_verify}
    if precision is None:
        if cpu is not None:
            raise ConfigError("--cpu chooses a reduced file's integer products; it goes with --precision")
        return export_model(ck.model(), out_path, **common, **extra, golden=golden, **options)
    if options.get("ort_format"):
        raise ConfigError("--ort-format packages an fp32 export; package the reduced file with `edgernn package`")
    from ..optimize.quantize import DEFAULT_MAX_METRIC_DROP
    from ..optimize.workflow import quantize_bytes
    from ..targets import quantize_hooks

    result = export_model(ck.model(), None, **common, **extra, **options)
    budget = DEFAULT_MAX_METRIC_DROP if max_metric_drop is None else max_metric_drop
    result.precision = quantize_bytes(
        result.model_bytes,
        precision,
        out_path,
        max_metric_drop=budget,
        verify=not no_verify,
        cpu=cpu,
        golden=golden,
        **quantize_hooks(),
    )
    result.path = result.precision.path
    result.manifest = result.precision.manifest
    result.model_bytes = result.precision.model_bytes
    return result


def load_user_module(spec: str, weights: str | Path | None = None) -> tuple[Any, tuple[Any, ...] | None]:
    """Import ``pkg.mod:factory`` and call it; it returns a module, or (module, example_inputs).

    ``weights`` (a state_dict saved with torch.save, optionally under a "state_dict" key) is loaded with
    ``torch.load(weights_only=True)``: it can hold only tensors and plain data, never code.
    """
    import importlib

    import torch

    from ..errors import CheckpointError, ConfigError

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"--module must look like 'package.module:factory'; got {spec!r}")
    import sys

    if "" not in sys.path and os.getcwd() not in sys.path:  # as `python -m` does: the user's package beside them
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load {spec!r}: {e} (is the package on PYTHONPATH?)") from None
    if not callable(factory):
        raise ConfigError(f"{spec!r} is a {type(factory).__name__}, not a function that makes the module")
    try:
        made = factory()
    except Exception as e:
        raise ConfigError(f"{spec}() raised {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if isinstance(made, tuple) and len(made) != 2:
        raise ConfigError(f"{spec}() returned a tuple of {len(made)}; return the module, or (module, example_inputs)")
    module, example = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        from ..model.checkpoint import safe_torch_load

        state = safe_torch_load(weights)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"the weights in {str(weights)!r} do not fit {spec}: {str(e).splitlines()[0]}"
            ) from None
    return module.eval(), (tuple(example) if example is not None else None)


INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32")
# the example length of a time axis written as a bare ``T`` (``--input feats:1x40xT``)
DEFAULT_EXAMPLE_STEPS = 8
# the most elements one example input may hold (1 GiB of float32): it is allocated before the module runs
MAX_EXAMPLE_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: its name, example shape, dtype, and the axis marked ``T`` (None: not marked)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    time_axis: int | None = None


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:2x5x3[:dtype]``; one size may be ``T`` or ``T<steps>`` (e.g. ``feats:1x40xT98``): that axis is the
    input's time axis, its example length ``steps`` (default ``DEFAULT_EXAMPLE_STEPS``)."""
    from ..errors import ConfigError

    parts = text.split(":")
    shape: list[int] = []
    time_axis = None
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        for i, d in enumerate(parts[1].split("x")):
            if d[:1] in ("T", "t"):
                if time_axis is not None:
                    raise ValueError
                time_axis = i
                d = d[1:] or str(DEFAULT_EXAMPLE_STEPS)
            shape.append(int(d))
        if any(d < 1 for d in shape):
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--input must look like NAME:2x5x3[:float32|int64] (sizes >= 1; one size may be T or T<steps> to mark "
            f"the time axis, e.g. feats:1x40xT98); got {text!r}"
        ) from None
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in INPUT_DTYPES:
        raise ConfigError(f"--input {text!r}: dtype must be one of {', '.join(INPUT_DTYPES)}")
    n = math.prod(shape)
    if n > MAX_EXAMPLE_ELEMENTS:
        raise ConfigError(
            f"--input {text!r} holds {n:,} elements (about {n * 4 / 2**30:.1f} GiB as float32); an example input "
            f"may hold at most {MAX_EXAMPLE_ELEMENTS:,}: give a smaller example (parity runs at its own shapes)"
        )
    return InputSpec(parts[0], tuple(shape), dtype, time_axis)


def parse_time_axis(text: str) -> tuple[str, int]:
    """``--time-axis NAME:AXIS`` -> (name, axis)."""
    from ..errors import ConfigError

    name, sep, axis = text.partition(":")
    try:
        if not sep or not name:
            raise ValueError
        return name, int(axis)
    except ValueError:
        raise ConfigError(f"--time-axis must look like NAME:AXIS (e.g. feats:2); got {text!r}") from None


def time_axes(
    parsed: list[InputSpec],
    given: tuple[str, ...],
    example: tuple[Any, ...],
    lengths_input: str | None,
    time_major: bool,
) -> dict[str, dict[int, str]] | None:
    """Every input's dynamic axes when a time axis was named (``T`` in a shape, ``--time-axis``); None when none
    was (the defaults: batch 0 and time 1, or time 0 and batch 1 with ``time_major``)."""
    from ..errors import ConfigError
    from . import default_axes

    names = [p.name for p in parsed]
    chosen = {p.name: p.time_axis for p in parsed if p.time_axis is not None}
    for text in given:
        name, axis = parse_time_axis(text)
        if name not in names:
            raise ConfigError(f"--time-axis {text!r}: no input is named {name!r} (inputs: {', '.join(names)})")
        rank = example[names.index(name)].dim()
        if not -rank <= axis < rank:
            raise ConfigError(f"--time-axis {text!r}: input {name!r} has {rank} axes (0-{rank - 1})")
        axis %= rank
        if chosen.get(name, axis) != axis:
            raise ConfigError(f"input {name!r}: its shape marks time axis {chosen[name]}, --time-axis says {axis}")
        chosen[name] = axis
    if not chosen:
        return None
    if lengths_input in chosen:
        raise ConfigError(f"{lengths_input!r} holds the lengths (batch,); it has no time axis to name")
    batch = 1 if time_major else 0
    axes = default_axes(names, example, lengths_input, time_major=time_major)
    steps = {int(example[names.index(n)].shape[a]) for n, a in chosen.items()}
    for name, axis in chosen.items():
        if axis == batch:
            raise ConfigError(
                f"input {name!r}: axis {axis} is the batch axis{' (--time-major)' if time_major else ''}; "
                "name another axis as time"
            )
        axes[name] = {batch: "batch", axis: "time"}
    for name, t in zip(names, example, strict=True):  # the other inputs: time where the default put it
        if name in chosen or name == lengths_input or t.dim() < 2:
            continue
        default_t = 0 if time_major else 1
        axes[name] = {batch: "batch", default_t: "time" if int(t.shape[default_t]) in steps else f"time_{name}"}
    return axes


def export_user_module(
    spec: str,
    out_path: str | Path,
    *,
    weights: str | Path | None = None,
    inputs: tuple[str, ...] = (),
    time_major: bool = False,
    time_axis: tuple[str, ...] = (),
    lengths_input: str | None = None,
    lengths_relative: bool = False,
    output_names: list[str] | None = None,
    strategy: str | None = None,
    opset: int | None = None,
    no_verify: bool = False,
    min_len: int | None = None,
    parity_shapes: tuple[str, ...] = (),
    golden: bool = False,
    **options: Any,
) -> Any:
    """Export a user's module (``pkg.mod:factory``), verified against that module itself; ``options`` and
    ``golden`` as in ``export_checkpoint``. ``parity_shapes`` are cases as ``NAME:SHAPE[,NAME:SHAPE]`` (one input
    each).

    ``inputs`` are ``NAME:SHAPE[:DTYPE]``, where one size may be ``T``/``T<steps>`` to mark the time axis;
    ``time_axis`` entries ``NAME:AXIS`` name it too. ``lengths_relative``: the module takes ``lengths_input`` as
    fractions of the padded length (0..1]; the exported model's lengths input still takes absolute integer
    lengths (int64), divided by the padded length inside the graph."""
    import torch

    from ..errors import ConfigError
    from . import default_axes, export

    module, example = load_user_module(spec, weights)
    names = None
    parsed: list[InputSpec] = []
    if inputs:
        parsed = [parse_input_spec(t) for t in inputs]
        names = [p.name for p in parsed]
        example = tuple(
            torch.zeros(p.shape, dtype=getattr(torch, p.dtype))
            if p.dtype.startswith("float")
            else torch.ones(p.shape, dtype=getattr(torch, p.dtype))
            for p in parsed
        )
    if example is None:
        raise ConfigError(
            "give the module's inputs: --input NAME:SHAPE (e.g. --input x:2x5x3), or have the factory "
            "return (module, example_inputs)"
        )
    if names is None:
        names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["x"]
        parsed = [
            InputSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""))
            for n, t in zip(names, example, strict=True)
        ]
    if lengths_input is not None and lengths_input not in names:
        raise ConfigError(f"--lengths-input {lengths_input!r}: no input is named so (inputs: {', '.join(names)})")
    dyn = time_axes(parsed, time_axis, example, lengths_input, time_major)
    if dyn is None and time_major:
        dyn = default_axes(names, example, lengths_input, time_major=time_major)
    if lengths_relative:
        module, example = _relative(module, names, example, lengths_input, dyn, time_major)
    return export(
        module,
        example,
        out_path,
        strategy=strategy,
        input_names=names,
        dynamic_axes=dyn,
        lengths_input=lengths_input,
        output_names=output_names,
        opset=opset,
        verify=not no_verify,
        min_len=min_len,
        cases=[_parse_case(text) for text in parity_shapes] or None,
        golden=golden,
        **options,
    )


def _relative(
    module: Any,
    names: list[str],
    example: tuple[Any, ...],
    lengths_input: str | None,
    dyn: dict[str, dict[int, str]] | None,
    time_major: bool,
) -> tuple[Any, tuple[Any, ...]]:
    """``module`` behind ``RelativeLengths``, and the example with absolute int64 lengths (the full length)."""
    import torch

    from ..errors import ConfigError

    if lengths_input is None:
        raise ConfigError("--lengths-relative goes with --lengths-input NAME (the input the fractions are fed to)")
    from . import default_axes
    from .core import RelativeLengths

    k = names.index(lengths_input)
    axes_of = dyn or default_axes(names, example, lengths_input, time_major=time_major)
    data = [
        (i, next(a for a, n in axes_of[name].items() if n == "time"))
        for i, name in enumerate(names)
        if i != k and "time" in axes_of[name].values()
    ]
    if not data:
        raise ConfigError("--lengths-relative needs a data input with a time axis to take the padded length from")
    i, axis = data[0]
    full = torch.full(example[k].shape, int(example[i].shape[axis]), dtype=torch.int64)
    return RelativeLengths(module, k, i, axis), (*example[:k], full, *example[k + 1 :])


def _parse_case(text: str) -> dict[str, list[int]]:
    """``x:3x17x5`` or ``src:2x9x3,tgt:2x4x2`` -> the shapes of one parity case."""
    from ..errors import ConfigError
    from ..verify.parity import parse_shape

    shapes: dict[str, list[int]] = {}
    for part in text.split(","):
        name, shape = parse_shape(part.strip(), option="--parity-shape")
        if name in shapes:
            raise ConfigError(f"--parity-shape {text!r} gives {name!r} twice")
        shapes[name] = shape
    return shapes
