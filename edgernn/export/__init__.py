"""Export to ONNX: four strategies in one registry, a manifest in every file, parity checked before writing.

``export_model`` exports an edgernn zoo model (``RecurrentModel``); ``export`` takes any ``torch.nn.Module``
that uses ``torch.nn.RNN/LSTM/GRU`` (or edgernn's layers) inside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..files import write_atomic
from ..manifest import TensorSpec
from .registry import BUILTIN, Capabilities, Strategy, get_strategy_class, register_strategy, strategy_names
from .targets import Target, get_target, register_target, target_names

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
    strategy: str = "native",
    lengths: bool | None = None,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[Case] | None = None,
    manifest_extra: dict[str, Any] | None = None,
    **options: Any,
) -> ExportResult:
    """Export a zoo model; inputs ``x`` (batch, time, features) and, when ``lengths``, ``lengths`` (batch,).

    ``lengths`` defaults to whether the strategy accepts it (for ``native``, and a target that ignores ONNX's
    sequence_lens, it does not). ``target`` (default ``ort``) and ``batch`` choose the runtime the graph is made
    for (see ``edgernn.export.targets``). Parity is checked against torch and the numpy oracle.
    """
    import torch

    from ..verify import reference
    from .core import export_module

    caps = get_strategy_class(strategy).caps
    if lengths is None:  # what the strategy takes, where the target can honour it
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
        manifest_extra={"model_config": cfg.to_dict(), **(manifest_extra or {})},
        **options,
    )


def export(
    module: nn.Module,
    example_inputs: Sequence[Tensor],
    path: str | os.PathLike[str] | None = None,
    *,
    strategy: str = "native",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    lengths_input: str | None = None,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[Case] | None = None,
    int_high: int | None = None,
    **options: Any,
) -> ExportResult:
    """Export a user's module. Its torch recurrent layers are swapped for edgernn's (same weights) in a copy; the
    module itself is left untouched and is the parity reference.

    ``dynamic_axes`` maps input names to ``{axis: "batch" | "time"}``; by default every input's axis 0 is the
    batch and axis 1 (if any) the time axis. ``lengths_input`` names an input holding sequence lengths.
    Integer inputs (token ids) are drawn in ``[0, int_high)`` for parity; by default up to the smallest
    embedding table in the module.
    """
    import torch
    from torch import nn

    from .core import export_module

    example = tuple(example_inputs)
    names = list(input_names or ([f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["x"]))
    specs = []
    for name, t in zip(names, example, strict=True):
        axes = (dynamic_axes or {}).get(name, {0: "batch", 1: "time"} if t.dim() >= 2 else {0: "batch"})
        shape: list[int | str] = [axes.get(i, int(n)) for i, n in enumerate(t.shape)]
        role = "lengths" if name == lengths_input else "data"
        specs.append(TensorSpec(name, str(t.detach().cpu().numpy().dtype), shape, role))
    if int_high is None:
        sizes = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
        int_high = min(sizes) if sizes else 2
    from ..errors import ExportError

    try:
        with torch.no_grad():
            out = module(*example)
    except Exception as e:  # the user's own forward: say so, with its first line, rather than a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in example)
        raise ExportError(f"the module's own forward failed on the example inputs ({shapes}): {first}") from None
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
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
        int_high=int_high,
        **options,
    )
