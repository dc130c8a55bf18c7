"""Bad input fails fast: a missing checkpoint or model file, a strategy's options and a strategy the target cannot
run are refused before torch, onnx or onnxruntime are imported, in about the time `edgernn --version` takes.

The one timed test of the suite (its bound is a generous multiple of `edgernn --version` measured in the same test,
on the same machine, so a busy machine slows both alike); what it guards is checked exactly beside it: the heavy
modules are not in ``sys.modules`` when the command has exited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript")

# runs the CLI in the process, then says which heavy modules it imported (the last line of stdout)
PROBE = f"""
import json, sys
from edgernn.cli.main import main
code = 0
try:
    main(sys.argv[1:], prog_name="edgernn")
except SystemExit as e:
    code = e.code
sys.stdout.write("\\n" + json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}) + "\\n")
"""


def _probe(args: list[str], cwd: Path) -> tuple[float, dict[str, object], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    return seconds, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_bad_paths_and_refusals_fail_before_heavy_imports(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"never read: the target refuses the strategy first")
    cases = [
        (["export", "runs/none", "--out", "a.onnx"], 3, "no checkpoint at 'runs/none'"),
        (["export", str(ckpt), "--target", "nnapi", "--strategy", "native", "--out", "a.onnx"], 9,
         "Use one of the strategies unroll, step for nnapi"),
        (["export", str(ckpt), "--target", "coreml", "--strategy", "loop", "--out", "a.onnx"], 9,
         "cannot run strategy 'loop'"),
        (["export", str(ckpt), "--target", "nnapi", "--fused", "--out", "a.onnx"], 9, "cannot run `step --fused`"),
        (["export", str(ckpt), "--strategy", "loop", "--seq-len", "5", "--out", "a.onnx"], 2,
         "does not take --seq-len"),
        (["export", str(ckpt), "--strategy", "unroll", "--out", "a.onnx"], 2, "needs --seq-len"),
        (["run", "none.onnx", "--random", "--output", "-"], 6, "no model file at 'none.onnx'"),
        (["check", "none.onnx", "--target", "nnapi"], 6, "no model file at 'none.onnx'"),
        (["inspect", "none.onnx"], 6, "no model file at 'none.onnx'"),
        (["quantize", "none.onnx", "--to", "int8", "--out", "b.onnx"], 6, "no model file at 'none.onnx'"),
        (["verify", "none.onnx"], 6, "no model file at 'none.onnx'"),
        (["package", "none.onnx"], 6, "no model file at 'none.onnx'"),
        (["bench", "none.onnx"], 6, "no model file at 'none.onnx'"),
    ]  # fmt: skip
    version = []
    for _ in range(3):
        seconds, result, _ = _probe(["--version"], tmp_path)
        assert result == {"code": 0, "heavy": []}
        version.append(seconds)
    baseline = sorted(version)[1]  # the median
    bound = 3 * baseline + 0.5
    for args, code, says in cases:
        seconds, result, stderr = _probe(args, tmp_path)
        assert result["code"] == code, (args, stderr)
        assert says in stderr, (args, stderr)
        assert result["heavy"] == [], (args, result)
        if seconds >= bound:  # a loaded machine can stall one run: the second try decides
            seconds = min(seconds, _probe(args, tmp_path)[0])
        assert seconds < bound, f"{' '.join(args)}: {seconds:.2f} s; `edgernn --version` {baseline:.2f} s"
    assert not list(tmp_path.glob("*.onnx"))  # nothing written
