"""``edgernn train`` as a library function: train on a built-in task and write the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    from ..files import write_atomic
    from . import checkpoint
    from .data import get_task
    from .loop import TrainConfig, fit, model_config_for

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
