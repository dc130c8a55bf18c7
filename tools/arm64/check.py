"""The device CPU in the loop: export fp32 models here (x86, torch), verify them in the emulated aarch64 root, and
measure how far the aarch64 onnxruntime's outputs are from this machine's on the same inputs.

    python tools/arm64/check.py [--json] [--cells rnn-tanh,lstm,gru] [--strategies native,step] [--out DIR]

For each cell and strategy (2 layers, hidden 32, 3 features, a per-step readout): ``export_model(...,
golden=True)`` writes ``CELL-STRATEGY.onnx`` and its golden file; ``edgernn verify MODEL --golden GOLDEN --json``
runs in the root (it must exit 0); then ``outputs.py`` runs every model on its golden's inputs, once in the root and
once here, and the largest absolute difference between the two per file is reported. Exit 0 when every verify
passed and every difference is at most ``ARM_VS_X86_BOUND``, 1 otherwise, 2 when the device cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import device  # noqa: E402

CELLS = ("rnn-tanh", "lstm", "gru")
STRATEGIES = ("native", "step")
HIDDEN = 32
LAYERS = 2
FEATURES = 3
# The largest |aarch64 - x86| allowed on an fp32 output, for the same onnxruntime version on the same inputs. The
# outputs are of order 1 (a linear head on tanh-bounded states), where one fp32 ulp is 1.2e-7; the two builds run
# different kernels (NEON vs AVX, other FMA contraction and summation orders), which may move a result by a few
# ulps, and the recurrence is contractive, so it does not grow them along the sequence. 1e-6 (about 8 ulps at 1) is
# a tenth of the golden files' fp32 tolerance (1e-5): a gap above it eats verify's margin and means the aarch64
# build computes something else, not a rounding. Measured here: see docs/device.md.
ARM_VS_X86_BOUND = 1e-6


@dataclass
class FileResult:
    file: str
    cell: str
    strategy: str
    verify_rc: int
    verify_seconds: float  # the emulated `edgernn verify` process, start to exit
    verify_max_abs_vs_torch: float | None  # verify's own number: aarch64 onnxruntime vs the golden (x86 torch)
    arm_vs_x86_max_abs: float | None  # aarch64 onnxruntime vs x86 onnxruntime, same inputs
    bit_equal: bool | None
    values: int = 0  # numbers compared
    verify_output: str = ""  # verify's stderr, or stdout when it did not exit 0

    @property
    def ok(self) -> bool:
        return (
            self.verify_rc == 0 and self.arm_vs_x86_max_abs is not None and self.arm_vs_x86_max_abs <= ARM_VS_X86_BOUND
        )


@dataclass
class Report:
    root: str
    bound: float
    files: list[FileResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.files) and all(f.ok for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "root": self.root,
            "bound": self.bound,
            "seconds": self.seconds,
            "device": self.device,
            "files": [{**asdict(f), "ok": f.ok} for f in self.files],
        }


def export_models(out: Path, cells: Sequence[str], strategies: Sequence[str]) -> list[tuple[str, str, Path]]:
    """fp32 exports with golden files, here with torch: (cell, strategy, model path) each."""
    import torch

    from edgernn.export import export_model
    from edgernn.model.zoo import ModelConfig, build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models; the machine is shared
    made = []
    try:
        for cell in cells:
            torch.manual_seed(0)
            cfg = ModelConfig(cell=cell, input_size=FEATURES, hidden_size=HIDDEN, num_layers=LAYERS, readout="all")
            model = build_model(cfg).eval()
            for strategy in strategies:
                path = out / f"{cell}-{strategy}.onnx"
                export_model(model, path, strategy=strategy, golden=True)
                made.append((cell, strategy, path))
    finally:
        torch.set_num_threads(threads)
    return made


def _golden(model: Path) -> Path:
    return model.with_suffix(".golden.npz")


def _max_abs(arm: Path, x86: Path) -> tuple[float, bool, int]:
    with np.load(arm, allow_pickle=False) as a, np.load(x86, allow_pickle=False) as b:
        if sorted(a.files) != sorted(b.files):
            raise device.DeviceError(f"{arm.name}: the two runs returned different outputs ({a.files} vs {b.files})")
        worst, equal, n = 0.0, True, 0
        for key in a.files:
            x, y = a[key], b[key]
            if x.shape != y.shape:
                raise device.DeviceError(f"{arm.name} {key}: shape {x.shape} on aarch64, {y.shape} here")
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            equal = equal and bool(np.array_equal(x, y))
            n += x.size
    return worst, equal, n


def check(
    cells: Sequence[str] = CELLS,
    strategies: Sequence[str] = STRATEGIES,
    *,
    out: str | Path | None = None,
    root: str | Path | None = None,
) -> Report:
    """Build (or reuse) the root, export, verify in the root, compare aarch64 and x86 outputs."""
    start = time.monotonic()
    r = device.ensure_root(root)
    report = Report(str(r), ARM_VS_X86_BOUND)
    report.seconds["prepare_root"] = round(time.monotonic() - start, 1)
    report.device = device.describe(r)
    with tempfile.TemporaryDirectory(prefix="edgernn-arm64-") as tmp:
        work = Path(out) if out is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        models = export_models(work, cells, strategies)
        report.seconds["export_x86"] = round(time.monotonic() - t, 1)
        for cell, strategy, model in models:
            device._say(f"edgernn verify {model.name} in the emulated aarch64 root")
            res = device.verify(model, _golden(model), "--json", root=r, prepare=False)
            vs_torch = None
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
                vs_torch = float(json.loads(res.stdout)["max_abs"])
            text = res.stderr if res.returncode == 0 else (res.stdout + res.stderr)
            seconds = round(res.seconds, 2)
            report.files.append(
                FileResult(model.name, cell, strategy, res.returncode, seconds, vs_torch, None, None, 0, text)
            )
        pairs = [str(p) for _, _, m in models for p in (m.name, _golden(m).name)]
        files = {p.name: p for _, _, m in models for p in (m, _golden(m))} | {"outputs.py": HERE / "outputs.py"}
        device._say("the same inputs through onnxruntime on aarch64 (emulated) and here")
        t = time.monotonic()
        arm = device.run_python(["outputs.py", "arm", *pairs], files, root=r, collect=work, prepare=False)
        report.seconds["outputs_aarch64"] = round(time.monotonic() - t, 1)
        if arm.returncode != 0:
            raise device.DeviceError(f"outputs.py failed in the root (exit {arm.returncode}):\n{arm.stderr[-3000:]}")
        t = time.monotonic()
        host = subprocess.run(
            [sys.executable, str(HERE / "outputs.py"), str(work / "x86"), *[str(work / p) for p in pairs]],
            capture_output=True,
            text=True,
            cwd=work,
        )
        report.seconds["outputs_x86"] = round(time.monotonic() - t, 1)
        if host.returncode != 0:
            raise device.DeviceError(f"outputs.py failed here (exit {host.returncode}):\n{host.stderr[-3000:]}")
        for f in report.files:
            stem = Path(f.file).stem
            arm_npz, x86_npz = work / "arm" / f"{stem}.npz", work / "x86" / f"{stem}.npz"
            f.arm_vs_x86_max_abs, f.bit_equal, f.values = _max_abs(arm_npz, x86_npz)
    report.seconds["total"] = round(time.monotonic() - start, 1)
    return report


def _table(report: Report) -> str:
    lines = [f"root {report.root}; bound on |aarch64 - x86| {report.bound:g}"]
    head = ("verify", 8), ("seconds", 9), ("vs torch", 11), ("arm vs x86", 12), ("bit-equal", 11), ("values", 8)
    lines.append(f"{'file':<22}" + "".join(f"{name:>{width}}" for name, width in head))
    for f in report.files:
        vt = "-" if f.verify_max_abs_vs_torch is None else f"{f.verify_max_abs_vs_torch:.2e}"
        ax = "-" if f.arm_vs_x86_max_abs is None else f"{f.arm_vs_x86_max_abs:.2e}"
        lines.append(
            f"{f.file:<22}{'exit ' + str(f.verify_rc):>8}{f.verify_seconds:>9.1f}{vt:>11}{ax:>12}"
            f"{str(f.bit_equal).lower():>11}{f.values:>8}"
        )
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--out", help="keep the models, golden files and outputs in this folder")
    p.add_argument("--root", help="the root's folder (default $EDGERNN_ARM64_ROOT or ~/.cache/edgernn/arm64-root)")
    a = p.parse_args(argv)
    try:
        report = check(a.cells.split(","), a.strategies.split(","), out=a.out, root=a.root)
    except device.DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in report.files:
        if f.verify_rc != 0:
            print(f"{f.file}: edgernn verify exited {f.verify_rc}:\n{f.verify_output}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=1) if a.json else _table(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
