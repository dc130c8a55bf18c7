"""Run models on a task golden file's validation sequences with onnxruntime and save each prediction: the same script
on this machine (x86) and in the emulated aarch64 root, so an int8 file's error against its fp32 file can be
measured on each CPU. numpy, onnxruntime and edgernn only (no torch): it runs on the device.

    python task_outputs.py OUT_DIR MODEL GOLDEN [MODEL GOLDEN ...]

writes ``OUT_DIR/<model stem>.npz`` with one ``p{i}`` array per validation sequence and ``metric``, the task
metric computed from them. The predictions are those ``edgernn verify --golden`` judges
(``edgernn.verify.drift.task_predictions``: each sequence on its own, a streaming file stepped through it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def predictions(model: str, golden: str) -> dict[str, np.ndarray]:
    from edgernn.runtime.model import Model
    from edgernn.verify.drift import _metric, task_predictions
    from edgernn.verify.task_golden import read_task_golden

    m = Model(model, provider="cpu")
    if m.manifest is None:
        raise SystemExit(f"{model} has no edgernn manifest")
    g = read_task_golden(golden)
    preds = task_predictions(m, g.examples, m.manifest)
    out = {f"p{i}": np.asarray(p) for i, p in enumerate(preds)}
    out["metric"] = np.array(_metric(g.task, preds, g.examples), np.float64)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, golden in zip(argv[1::2], argv[2::2], strict=True):
        arrays = predictions(model, golden)
        with open(out_dir / f"{Path(model).stem}.npz", "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
