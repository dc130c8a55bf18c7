"""The whole pipeline on the built-in default, for ``edgernn demo``: train briefly, export, run, check parity."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..progress import stage


def demo(
    out_dir: Path, *, cell: str = "lstm", epochs: int = 6, strategy: str = "native", echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train briefly on `sine`, export, run the ONNX model on held-out data and report parity."""
    import numpy as np

    from ..export.sources import export_checkpoint
    from ..runtime import Model, StreamingModel
    from ..train.data import collate, get_task, make_splits
    from ..train.workflow import train_to_dir

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
    options = {"unroll": {"seq_len": 48}}.get(strategy, {})  # unroll: the longest held-out sequence
    result = export_checkpoint(summary["checkpoint"], onnx_path, strategy=strategy, **options)
    echo(result.report.table())
    echo(f"      wrote {onnx_path} ({onnx_path.stat().st_size / 1024:.1f} KiB)")
    echo("[3/4] running the ONNX model with onnxruntime on held-out sequences of mixed lengths")
    stage("running the ONNX model with onnxruntime on held-out sequences")
    task = get_task("sine")
    _, held_out = make_splits(task, n_train=0, n_val=64, min_len=8, max_len=48, seed=1234)
    batch = collate(held_out)
    m = Model(onnx_path, provider="cpu")
    if m.manifest is not None and m.manifest.states:  # a stream: each sequence stepped through from zero state
        sm = StreamingModel(m)
        pred = np.stack([sm.run_sequence(e.x[None])[sm.primary][0] for e in held_out])
    elif m.manifest is not None and m.manifest.seq_len:  # fixed length: padded to it, with the lengths
        x = np.zeros((len(held_out), m.manifest.seq_len, batch.x.shape[2]), np.float32)
        x[:, : batch.x.shape[1]] = batch.x
        pred = m.run(x, batch.lengths)
    else:
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
