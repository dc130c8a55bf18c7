"""``edgernn parity`` as a library function: re-check an exported model against the checkpoint it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelFormatError


def parity_check(
    ckpt: str | Path, model_path: str | Path, *, provider: str = "cpu", fallback: str | None = None
) -> Any:
    """Re-check an exported model against its checkpoint on one provider (torch vs onnxruntime vs numpy)."""
    import onnx

    from ..manifest import TensorSpec, read_manifest
    from ..runtime.providers import resolve, short_name
    from ..train import checkpoint
    from . import reference
    from .against_torch import stream_cases, verify_parity, verify_stream
    from .check import target_runners

    ck = checkpoint.load(ckpt)
    model = ck.model()
    path = Path(model_path)
    if not path.is_file():
        raise ModelFormatError(f"no model file at {str(model_path)!r}")
    try:
        proto = onnx.load(str(path))
    except Exception as e:
        raise ModelFormatError(f"{str(model_path)!r} is not a readable ONNX model: {e}") from None
    manifest = read_manifest({p.key: p.value for p in proto.metadata_props})
    choice = resolve(provider, fallback)
    used = choice.used or short_name(choice.providers[0])
    cfg = ck.config
    oracle = reference.model_oracle(cfg, {k: v.numpy() for k, v in model.state_dict().items()})

    # the zoo model's own inputs: x and, for a padded export, lengths (the graph may take them as a float mask)
    x = TensorSpec("x", "float32", ["batch", "time", cfg.input_size])
    lengths = [TensorSpec("lengths", "int64", ["batch"], role="lengths")] if _takes_lengths(manifest) else []
    extra = target_runners(manifest.target, proto) if manifest.target != "ort" else {}
    if manifest.states:  # a streaming export: chained step calls against one whole-sequence call
        outputs = [o.name for o in manifest.outputs if o.role != "state"]
        report = verify_stream(
            model,
            proto,
            [x],
            manifest.states,
            outputs,
            manifest.chunk or 1,
            graph_specs=manifest.inputs,
            cases=stream_cases(manifest.batch),
            oracle=oracle,
            providers=[used],
            extra=extra,
        )
    else:
        report = verify_parity(
            model, proto, manifest, torch_specs=[x, *lengths], oracle=oracle, providers=[used], extra=extra
        )
    if choice.fell_back:  # never only a candidate's label: the report says it, in the table and in --json
        report.notes.append(f"asked for provider {provider!r}, ran on {used!r} (--fallback): {choice.reason}")
    return report


def _takes_lengths(manifest: Any) -> bool:
    return any(s.role in ("lengths", "mask") for s in manifest.inputs)
