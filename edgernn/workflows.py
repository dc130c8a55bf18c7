"""What each CLI command does, as plain functions (so everything the CLI does is reachable from Python)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelFormatError


def train_to_dir(
    *,
    task: str,
    cell: str,
    hidden: int,
    layers: int,
    bidirectional: bool,
    out_dir: str,
    proj_size: int = 0,
    peephole: bool = False,
    dropout: float = 0.0,
    progress: bool = True,
    **train_options: Any,
) -> dict[str, Any]:
    """Train on a built-in task; write OUT/model.ckpt and OUT/history.json; return a summary."""
    from . import checkpoint
    from .data import get_task
    from .train import TrainConfig, fit, model_config_for

    t = get_task(task)
    mcfg = model_config_for(
        t,
        cell=cell,
        hidden_size=hidden,
        num_layers=layers,
        bidirectional=bidirectional,
        dropout=dropout,
        proj_size=proj_size,
        peephole=peephole,
    )
    tcfg = TrainConfig(**train_options)
    model, hist = fit(mcfg, t, tcfg, progress=progress)
    out = Path(out_dir)
    meta = {"task": task, "train_config": tcfg.__dict__, "history": hist.to_dict()}
    ckpt = checkpoint.save(out / checkpoint.DEFAULT_NAME, model, meta)
    from .files import write_atomic

    write_atomic(out / "history.json", json.dumps(hist.to_dict(), indent=2).encode())
    return {
        "checkpoint": str(ckpt),
        "task": task,
        "cell": cell,
        "metric": hist.metric,
        "best_metric": hist.best_metric,
        "best_epoch": hist.best_epoch,
        "epochs_run": len(hist.val_metric),
        "stopped_early": hist.stopped_early,
    }


def export_checkpoint(
    ckpt: str | Path,
    out_path: str | Path,
    *,
    strategy: str = "native",
    opset: int | None = None,
    lengths: bool | None = None,
    no_verify: bool = False,
    **options: Any,
) -> Any:
    """Load a checkpoint safely and export it (see ``edgernn.export.export_model``).

    ``options`` are the strategy's own (seq_len, chunk, fused); None means not given.
    """
    from . import checkpoint
    from .export import export_model

    model = checkpoint.load(ckpt).model()
    return export_model(
        model, out_path, strategy=strategy, lengths=lengths, opset=opset, verify=not no_verify, **options
    )


def parity_check(
    ckpt: str | Path, model_path: str | Path, *, provider: str = "cpu", fallback: str | None = None
) -> Any:
    """Re-check an exported model against its checkpoint on one provider (torch vs onnxruntime vs numpy)."""
    import onnx

    from . import checkpoint, reference
    from .export.core import verify_parity
    from .export.streaming import verify_stream
    from .manifest import TensorSpec, read_manifest
    from .runtime.providers import resolve, short_name

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

    if manifest.states:  # a streaming export: chained step calls against one whole-sequence call
        x = TensorSpec("x", "float32", ["batch", "time", cfg.input_size])
        outputs = [o.name for o in manifest.outputs if o.role != "state"]
        return verify_stream(
            model, proto, [x], manifest.states, outputs, manifest.chunk or 1, oracle=oracle, providers=[used]
        )
    return verify_parity(model, proto, manifest, oracle=oracle, providers=[used])


def demo(
    out_dir: Path, *, cell: str = "lstm", epochs: int = 6, strategy: str = "native", echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train briefly on `sine`, export, run the ONNX model on held-out data and report parity."""
    import numpy as np

    from .data import get_task, make_splits
    from .runtime import Model

    t0 = time.time()
    echo(f"[1/4] training a 2-layer {cell} (hidden 32) on the built-in 'sine' task for up to {epochs} epochs")
    summary = train_to_dir(
        task="sine",
        cell=cell,
        hidden=32,
        layers=2,
        bidirectional=False,
        out_dir=str(out_dir),
        epochs=epochs,
        n_train=512,
        progress=True,
    )
    echo(f"      validation mse {summary['best_metric']:.4g}; checkpoint {summary['checkpoint']}")
    onnx_path = out_dir / "model.onnx"
    echo(f"[2/4] exporting with strategy '{strategy}' and checking parity at shapes other than the traced one")
    result = export_checkpoint(summary["checkpoint"], onnx_path, strategy=strategy)
    echo(result.report.table())
    echo(f"      wrote {onnx_path} ({onnx_path.stat().st_size / 1024:.1f} KiB)")
    echo("[3/4] running the ONNX model with onnxruntime on held-out sequences of mixed lengths")
    task = get_task("sine")
    _, held_out = make_splits(task, n_train=0, n_val=64, min_len=8, max_len=48, seed=1234)
    from .data import collate

    batch = collate(held_out)
    m = Model(onnx_path, provider="cpu")
    pred = (
        m.run(batch.x, batch.lengths)
        if m.manifest.input("lengths")
        else np.stack([m.run(e.x[None])[0] for e in held_out])
    )
    mse = float(((pred - batch.y) ** 2).mean())
    echo(f"      onnxruntime ({m.provider}) held-out mse {mse:.4g} on {len(held_out)} sequences")
    verdict = "PASS" if result.report.passed else "FAIL"
    echo(
        f"[4/4] parity {verdict}: worst |torch - onnxruntime| = {result.report.max_abs:.2e} "
        f"(tolerance atol {result.report.atol:g}) in {time.time() - t0:.0f}s"
    )
    return {"checkpoint": summary["checkpoint"], "model": str(onnx_path), "parity": result.report.summary(), "mse": mse}


def load_user_module(spec: str, weights: str | Path | None = None) -> tuple[Any, tuple[Any, ...] | None]:
    """Import ``pkg.mod:factory`` and call it; it returns a module, or (module, example_inputs).

    ``weights`` (a state_dict saved with torch.save, optionally under a "state_dict" key) is loaded with
    ``torch.load(weights_only=True)``: it can hold only tensors and plain data, never code.
    """
    import importlib

    import torch

    from .errors import CheckpointError, ConfigError

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"--module must look like 'package.module:factory'; got {spec!r}")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load {spec!r}: {e} (is the package on PYTHONPATH?)") from None
    made = factory()
    module, example = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        from .checkpoint import safe_torch_load

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


def parse_input_spec(text: str) -> tuple[str, tuple[int, ...], str]:
    """``NAME:2x5x3[:dtype]`` -> (name, shape, dtype)."""
    from .errors import ConfigError

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        shape = tuple(int(d) for d in parts[1].lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input must look like NAME:2x5x3[:float32|int64]; got {text!r}") from None
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in INPUT_DTYPES:
        raise ConfigError(f"--input {text!r}: dtype must be one of {', '.join(INPUT_DTYPES)}")
    return parts[0], shape, dtype


def export_user_module(
    spec: str,
    out_path: str | Path,
    *,
    weights: str | Path | None = None,
    inputs: tuple[str, ...] = (),
    time_major: bool = False,
    lengths_input: str | None = None,
    strategy: str = "native",
    opset: int | None = None,
    no_verify: bool = False,
    **options: Any,
) -> Any:
    """Export a user's module (``pkg.mod:factory``), verified against that module itself; ``options`` as in
    ``export_checkpoint``."""
    import torch

    from .errors import ConfigError
    from .export import export

    module, example = load_user_module(spec, weights)
    names = None
    if inputs:
        parsed = [parse_input_spec(t) for t in inputs]
        names = [p[0] for p in parsed]
        example = tuple(
            torch.zeros(shape, dtype=getattr(torch, dtype))
            if dtype.startswith("float")
            else torch.ones(shape, dtype=getattr(torch, dtype))
            for _, shape, dtype in parsed
        )
    if example is None:
        raise ConfigError(
            "give the module's inputs: --input NAME:SHAPE (e.g. --input x:2x5x3), or have the factory "
            "return (module, example_inputs)"
        )
    axes = {0: "time", 1: "batch"} if time_major else {0: "batch", 1: "time"}
    if names is None:
        names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["x"]
    dyn = {
        n: ({0: "batch"} if n == lengths_input else {a: v for a, v in axes.items() if a < t.dim()})
        for n, t in zip(names, example, strict=True)
    }
    return export(
        module,
        example,
        out_path,
        strategy=strategy,
        input_names=names,
        dynamic_axes=dyn,
        lengths_input=lengths_input,
        opset=opset,
        verify=not no_verify,
        **options,
    )
