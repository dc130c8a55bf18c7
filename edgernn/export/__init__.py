"""Export to ONNX: four strategies in one registry, a manifest in every file, parity checked before writing.

The strategy and target registries live in ``edgernn.strategies`` and ``edgernn.targets``; their names are
re-exported here.

``export_model`` exports an edgernn zoo model (``RecurrentModel``); ``export`` takes any ``torch.nn.Module``
that uses ``torch.nn.RNN/LSTM/GRU`` (or edgernn's layers) inside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..files import write_atomic
from ..manifest import TensorSpec
from ..strategies.registry import BUILTIN, Capabilities, Strategy, get_strategy_class, register_strategy, strategy_names
from ..targets import Target, get_target, register_target, target_names

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..model.zoo import RecurrentModel
    from ..verify.parity import Case
    from .core import ExportResult

# importing edgernn.export (e.g. for the registry's names) must not import torch; these load it on first use
_LAZY = {"ExportResult": "core", "export_module": "core"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN",
    "Capabilities",
    "ExportResult",
    "Strategy",
    "export",
    "export_model",
    "get_strategy_class",
    "register_strategy",
    "get_target",
    "register_target",
    "strategy_names",
    "Target",
    "target_names",
    "write_atomic",
]


def export_model(
    model: RecurrentModel,
    path: str | os.PathLike[str] | None = None,
    *,
    strategy: str | None = None,
    lengths: bool | None = None,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[Case] | None = None,
    manifest_extra: dict[str, Any] | None = None,
    golden: bool | str | os.PathLike[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export a zoo model; inputs ``x`` (batch, time, features) and, when ``lengths``, ``lengths`` (batch,).

    ``strategy`` defaults to ``auto`` for onnxruntime (target ``ort``, verified): the fastest correct of native,
    loop (and unroll with ``seq_len``), timed here; ``native`` for other targets (``edgernn.export.auto``).
    ``lengths`` defaults to whether the strategy accepts it (for ``native``, and a target that ignores ONNX's
    sequence_lens, it does not). ``target`` (default ``ort``) and ``batch`` choose the runtime the graph is made
    for (see ``edgernn.targets``). Parity is checked against torch and the numpy oracle. ``golden`` (True
    or a path) also writes the golden file ``edgernn verify`` checks on the device (see ``export_module``).
    """
    import torch

    from ..verify import reference
    from .core import export_module

    if strategy is None:  # auto for onnxruntime, native elsewhere
        from .auto import default_strategy

        strategy = default_strategy(options.get("target"), verify, options)
    if lengths is None and strategy == "auto":  # every candidate (native, loop, unroll) takes lengths
        lengths = True
    elif lengths is None:  # what the strategy takes, where the target can honour it
        caps = get_strategy_class(strategy).caps
        target = get_target(options.get("target") or "ort")
        lengths = caps.lengths and not (strategy == "native" and target.padding != "sequence_lens")
    cfg = model.config
    specs = [TensorSpec("x", "float32", ["batch", "time", cfg.input_size])]
    if lengths:
        specs.append(TensorSpec("lengths", "int64", ["batch"], role="lengths"))
    t = 5  # fixed-length strategies cut the example to their length
    example: tuple[Tensor, ...] = (torch.zeros(2, t, cfg.input_size),)
    if lengths:
        example += (torch.full((2,), t, dtype=torch.int64),)
    return export_module(
        model,
        example,
        specs,
        ["y"],
        strategy=strategy,
        path=path,
        opset=opset,
        verify=verify,
        cases=cases,
        oracle=reference.model_oracle(cfg, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}),
        manifest_extra={
            "model_config": cfg.to_dict(),
            "input_normalization": model.normalization(),
            **(manifest_extra or {}),
        },
        golden=golden,
        **options,
    )


def export(
    module: nn.Module,
    example_inputs: Sequence[Tensor],
    path: str | os.PathLike[str] | None = None,
    *,
    strategy: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    lengths_input: str | None = None,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[Case | dict[str, Sequence[int]]] | None = None,
    min_len: int | None = None,
    int_high: int | None = None,
    golden: bool | str | os.PathLike[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export a user's module. Its torch recurrent layers (and subclasses of them) are swapped for edgernn's
    (same weights) in a copy; the module itself is left untouched and is the parity reference. ``strategy``
    defaults as in ``export_model`` (auto for onnxruntime, native for other targets).

    ``dynamic_axes`` maps input names to ``{axis: name}``: "batch", "time", or a name of its own for another
    length (a decoder's). By default axis 0 of every input is the batch and axis 1 (if any) a time axis: "time"
    for the first input and those of the same example length, ``time_NAME`` for an input whose example length
    differs (an encoder and a decoder input). ``lengths_input`` names an input holding sequence lengths; a module
    that packs its sequences (``pack_padded_sequence``) with one integer input of shape (batch,) has it found.
    Parity runs at ``cases`` (``Case`` objects or ``{input: shape}`` dicts) or the defaults, lengths below
    ``min_len`` lifted to it. Integer inputs (token ids) are drawn in ``[0, int_high)`` for parity; by default up
    to the smallest embedding table in the module. ``golden`` (True: ``NAME.golden.npz`` beside ``path``, or a
    path) also writes the parity cases' inputs and the module's outputs for ``edgernn verify`` on the device.
    """
    import torch
    from torch import nn

    from ..errors import ExportError
    from ..verify.parity import flat_outputs
    from .core import export_module
    from .packing import PackingSpy

    example = tuple(example_inputs)
    names = list(input_names or ([f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["x"]))
    if len(names) != len(example):
        raise ExportError(f"{len(names)} input names for {len(example)} example inputs")
    try:
        with torch.no_grad(), PackingSpy() as spy:
            out = module(*example)
    except Exception as e:  # the user's own forward: say so, with its first line, rather than a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in example)
        raise ExportError(f"the module's own forward failed on the example inputs ({shapes}): {first}") from None
    if lengths_input is None and spy.packs:
        lengths_input = _packed_lengths_input(names, example)
    axes_of = {**default_axes(names, example, lengths_input), **(dynamic_axes or {})}
    specs = []
    for name, t in zip(names, example, strict=True):
        axes = axes_of[name]
        shape: list[int | str] = [axes.get(i, int(n)) for i, n in enumerate(t.shape)]
        role = "lengths" if name == lengths_input else "data"
        specs.append(TensorSpec(name, str(t.detach().cpu().numpy().dtype), shape, role))
    if int_high is None:
        sizes = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
        int_high = min(sizes) if sizes else 2
    n_out = len(flat_outputs(out))
    outs = list(output_names or (["y"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
    return export_module(
        module,
        example,
        specs,
        outs,
        strategy=strategy,
        path=path,
        opset=opset,
        verify=verify,
        cases=cases,
        min_len=min_len,
        int_high=int_high,
        golden=golden,
        **options,
    )


def default_axes(
    names: Sequence[str], example: Sequence[Tensor], lengths_input: str | None = None, *, time_major: bool = False
) -> dict[str, dict[int, str]]:
    """Each input's dynamic axes when the caller names none: the batch axis, and the time axis of inputs with
    one: "time" for the first such input and every input of the same example length, ``time_NAME`` for an
    input of another length (a decoder's own). A lengths input has only the batch axis."""
    b, t = (1, 0) if time_major else (0, 1)
    first = next(
        (int(x.shape[t]) for n, x in zip(names, example, strict=True) if x.dim() >= 2 and n != lengths_input), None
    )
    out: dict[str, dict[int, str]] = {}
    for name, x in zip(names, example, strict=True):
        if x.dim() < 2 or name == lengths_input:
            out[name] = {0: "batch"}
        else:
            out[name] = {b: "batch", t: "time" if int(x.shape[t]) == first else f"time_{name}"}
    return out


def _packed_lengths_input(names: Sequence[str], example: Sequence[Tensor]) -> str:
    """The input a packing module takes its lengths from: its one integer input of shape (batch,)."""
    from ..errors import ExportError

    batch = next((int(t.shape[0]) for t in example if t.dim() >= 2), None)
    found = [
        n
        for n, t in zip(names, example, strict=True)
        if t.dim() == 1 and not t.dtype.is_floating_point and (batch is None or int(t.shape[0]) == batch)
    ]
    if len(found) != 1:
        raise ExportError(
            "the module packs its sequences (pack_padded_sequence); name the input that holds their lengths: "
            "lengths_input= (--lengths-input NAME)"
        )
    return found[0]
