"""Run models on their golden files' inputs with onnxruntime and save every output: the same script on this machine
(x86) and in the emulated aarch64 root, so the two can be compared number for number. numpy, onnxruntime and
edgernn only (no torch): it runs on the device.

    python outputs.py OUT_DIR MODEL GOLDEN [MODEL GOLDEN ...]

writes ``OUT_DIR/<model stem>.npz`` with ``case{i}.{output}`` arrays. Inputs go through the path ``edgernn verify``
takes (``edgernn.verify.golden``'s feed for a whole-sequence model, ``StreamingModel.run_sequence`` chunk by chunk
for a step export), so what is compared is what verify ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def outputs(model: str, golden: str) -> dict[str, np.ndarray]:
    from edgernn.runtime.model import Model
    from edgernn.runtime.stream import StreamingModel
    from edgernn.verify import golden as g

    m = Model(model, provider="cpu")
    gold = g.read_golden(golden)
    manifest = m.manifest
    out: dict[str, np.ndarray] = {}
    for i, case in enumerate(gold.cases):
        if manifest is not None and manifest.states:
            sm = StreamingModel(m)
            got = sm.run_sequence(g._stream_input(sm, gold, case))
        else:
            got = m.run_feed(g._feed(m, gold, case))
        for name in case.outputs:
            out[f"case{i}.{name}"] = np.asarray(got[name])
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, golden in zip(argv[1::2], argv[2::2], strict=True):
        arrays = outputs(model, golden)
        with open(out_dir / f"{Path(model).stem}.npz", "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
