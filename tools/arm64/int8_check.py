"""int8 on the device's CPU: train sine models here, quantise them on x86 for a CPU (``--cpu any`` by default, and
``arm64`` for contrast), judge each int8 file by its task in the emulated aarch64 root, and compare how far it is
from its fp32 file on x86 and on aarch64.

    python tools/arm64/int8_check.py [--json] [--cells rnn-tanh,lstm,gru] [--hiddens 32,256] [--strategies native]
                                     [--schemes any,arm64] [--epochs 3] [--out DIR]

For each cell and hidden size (2 layers, the sine task): ``edgernn train`` (a few epochs: a trained model's metric
means something), ``edgernn export RUN --strategy S``, then for each scheme ``edgernn quantize M --to int8 --cpu C
--golden`` here, which must pass the 1% budget. A file over the budget here is made again with the budget lifted
just over the smallest loss quantize reported (so the file measured is the best of its tries: per tensor, per
channel, recurrent products in fp32, weights only), and its golden file's budget set back to 1%: the aarch64 verdict
is then the one a 1% golden would give. In the root: ``edgernn verify INT8 --golden INT8.golden.npz`` (exit 0:
within the budget there), and ``task_outputs.py`` on the fp32 and int8 files (the golden's validation sequences);
the same script here. Reported per file: the task metric (fp32, int8 here, int8 on aarch64), the drop on each, the
max abs error of the int8 predictions against the fp32 ones on each CPU, and their ratio x86 / aarch64.

Exit 0 when every ``any`` file passed the budget here, passed verify in the root, and its x86 error is at most
``RATIO_BOUND`` times its aarch64 error; other schemes are reported, not required. 1 otherwise, 2 when the device
cannot run here. Progress lines go to stderr at least every 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import device  # noqa: E402

CELLS = ("rnn-tanh", "lstm", "gru")
HIDDENS = (32, 256)
STRATEGIES = ("native",)
SCHEMES = ("any", "arm64")
REQUIRED_SCHEME = "any"  # the scheme the issue's bar is about; the others are contrast
LAYERS = 2
BUDGET = 0.01  # quantize's default --max-metric-drop: 1% relative
LIFTED_BUDGET = 1e6  # to make a file that is over budget here anyway, so it can be measured on aarch64
# issue 25: the int8 file's max abs error against fp32 on x86 is at most twice its error on aarch64
RATIO_BOUND = 2.0
TICK = 10.0  # seconds between progress lines


@dataclass
class Row:
    cell: str
    hidden: int
    strategy: str
    scheme: str
    file: str
    per_channel: bool | None = None
    recurrent_fp32: bool = False  # quantize's third try: the recurrent products (h times R) kept in fp32
    weight_only: bool = False  # its fourth: only the weights int8, every product fp32
    quantize_rc: int = -1  # with the 1% budget, here
    quantize_error: str = ""  # quantize's message when it refused
    lifted: bool = False  # made again with the budget lifted (over budget here)
    metric: str = ""
    fp32: float = math.nan  # the fp32 metric recorded at export (x86)
    int8_x86: float = math.nan
    int8_arm: float = math.nan  # computed by verify in the root
    fp32_arm: float = math.nan  # the fp32 file run in the root (task_outputs.py)
    drop_x86: float = math.nan
    drop_arm: float = math.nan
    verify_rc: int = -1
    verify_seconds: float = math.nan
    verify_output: str = ""
    err_x86: float = math.nan  # max |int8 - fp32| on x86, same inputs
    err_arm: float = math.nan  # the same on aarch64
    int8_arm_vs_x86: float = math.nan  # max |int8 on aarch64 - int8 on x86|

    @property
    def ratio(self) -> float:
        if self.err_arm > 0:
            return self.err_x86 / self.err_arm
        return 1.0 if self.err_x86 == 0 else math.inf

    @property
    def passed_x86(self) -> bool:
        return self.quantize_rc == 0

    @property
    def passed_arm(self) -> bool:
        return self.verify_rc == 0

    @property
    def passed_ratio(self) -> bool:
        return self.ratio <= RATIO_BOUND

    @property
    def ok(self) -> bool:
        return self.passed_x86 and self.passed_arm and self.passed_ratio

    def to_json(self) -> dict[str, Any]:
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        ratio = self.ratio
        extra = {"passed_x86": self.passed_x86, "passed_arm": self.passed_arm, "passed_ratio": self.passed_ratio}
        return {**d, "ratio": ratio if math.isfinite(ratio) else None, **extra, "ok": self.ok}


@dataclass
class Report:
    root: str
    rows: list[Row] = field(default_factory=list)
    trained: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def required(self) -> list[Row]:
        return [r for r in self.rows if r.scheme == REQUIRED_SCHEME]

    @property
    def passed(self) -> bool:
        return bool(self.required) and all(r.ok for r in self.required)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "required_scheme": REQUIRED_SCHEME,
            "budget": BUDGET,
            "ratio_bound": RATIO_BOUND,
            "root": self.root,
            "versions": self.versions,
            "trained": self.trained,
            "seconds": self.seconds,
            "rows": [r.to_json() for r in self.rows],
        }


@contextlib.contextmanager
def _ticking(what: str) -> Iterator[None]:
    """A progress line when ``what`` starts and every TICK seconds until it ends."""
    start = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(TICK):
            device._say(f"{what}: {time.monotonic() - start:.0f} s")

    device._say(what)
    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def _edgernn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m edgernn ARGS`` here, with this tree's edgernn."""
    env = {**os.environ, "PYTHONPATH": str(device.REPO)}
    return subprocess.run([sys.executable, "-m", "edgernn", *args], capture_output=True, text=True, cwd=cwd, env=env)


def _json_out(text: str) -> dict[str, Any]:
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def train(work: Path, cell: str, hidden: int, epochs: int, n_train: int) -> tuple[Path, dict[str, Any]]:
    run = work / f"run-{cell}-h{hidden}"
    args = ["train", "--task", "sine", "--cell", cell, "--hidden", str(hidden), "--layers", str(LAYERS)]
    args += ["--epochs", str(epochs), "--n-train", str(n_train), "--seed", "0", "--out", str(run), "--json"]
    with _ticking(f"training {cell} H{hidden} ({epochs} epochs, {n_train} sequences)"):
        p = _edgernn(*args, cwd=work)
    if p.returncode != 0:
        raise RuntimeError(f"edgernn train {cell} H{hidden} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    out = _json_out(p.stdout)
    summary = {k: out.get(k) for k in ("best_metric", "best_epoch", "baseline", "metric") if k in out}
    return run, summary or {"result": out}


def export(work: Path, run: Path, stem: str, strategy: str) -> Path:
    path = work / f"{stem}.onnx"
    with _ticking(f"exporting {path.name}"):
        p = _edgernn("export", str(run), "--strategy", strategy, "--out", str(path), cwd=work)
    if p.returncode != 0:
        raise RuntimeError(f"edgernn export {path.name} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return path


def _set_budget(golden: Path, budget: float) -> None:
    """Rewrite a task golden file's budget (its record's "budget")."""
    with np.load(golden, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["budget"] = budget
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with open(golden, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def lifted_budget(refusal: str) -> float:
    """The budget that lets quantize write the file closest to the real one: a hair over the smallest loss its
    refusal reports (each try's "loses X.XX%"), so the file measured is the best of its tries, not the first;
    LIFTED_BUDGET when the refusal reports none."""
    losses = [float(x) / 100 for x in re.findall(r"loses (-?\d+(?:\.\d+)?)%", refusal)]
    return min(losses) + 1e-4 if losses else LIFTED_BUDGET  # the refusal prints two decimals of a percent


def quantize(work: Path, fp32: Path, row: Row) -> tuple[Path, Path]:
    """``edgernn quantize FP32 --to int8 --cpu SCHEME --golden`` here, with the 1% budget; over it, made again with
    the budget lifted (``lifted_budget``) and its golden's budget set back to 1%. Fills the row's x86 side."""
    out = work / row.file
    args = ["quantize", str(fp32), "--to", "int8", "--cpu", row.scheme, "--golden", "--out", str(out), "--json"]
    with _ticking(f"quantizing {fp32.name} --cpu {row.scheme}"):
        p = _edgernn(*args, cwd=work)
    row.quantize_rc = p.returncode
    if p.returncode == 5:
        row.quantize_error = (p.stderr.strip() or p.stdout.strip())[-1000:]
        row.lifted = True
        lifted = lifted_budget(row.quantize_error)
        with _ticking(f"over budget here; {row.file} again with the budget lifted to {lifted:.4%}, to measure it"):
            p = _edgernn(*args, "--max-metric-drop", str(lifted), cwd=work)
    if p.returncode != 0:
        raise RuntimeError(f"edgernn quantize {row.file} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    rep = _json_out(p.stdout)
    golden = Path(rep["golden"])
    if row.lifted:
        _set_budget(golden, BUDGET)
    row.per_channel = bool(rep["how"]["per_channel"])
    row.recurrent_fp32 = rep["how"].get("recurrent") == "fp32"
    row.weight_only = bool(rep["how"].get("weight_only"))
    row.metric = rep["metric"]["name"]
    row.fp32, row.int8_x86, row.drop_x86 = rep["metric"]["fp32"], rep["metric"]["reduced"], rep["metric"]["drop"]
    return out, golden


def verify_on_arm(root: Path, model: Path, golden: Path, row: Row) -> None:
    with _ticking(f"edgernn verify {model.name} --golden in the emulated aarch64 root"):
        r = device.verify(model, golden, "--json", root=root, prepare=False)
    row.verify_rc, row.verify_seconds = r.returncode, round(r.seconds, 1)
    row.verify_output = "\n".join(ln for ln in r.stderr.splitlines() if "cpuinfo" not in ln)[-1000:]
    with contextlib.suppress(ValueError, KeyError, TypeError):
        v = _json_out(r.stdout)
        row.int8_arm, row.drop_arm = float(v["here"]), float(v["drop"])
    if r.returncode != 0 and not row.verify_output:
        row.verify_output = r.stdout[-1000:]


def _predictions(npz: Path) -> tuple[list[np.ndarray], float]:
    with np.load(npz, allow_pickle=False) as z:
        n = sum(1 for k in z.files if k.startswith("p"))
        return [z[f"p{i}"].astype(np.float64) for i in range(n)], float(z["metric"])


def max_abs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """The largest |a - b| over matching arrays (shapes must match)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions against {len(b)}")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"shape {x.shape} against {y.shape}")
        if x.size:
            worst = max(worst, float(np.abs(x - y).max()))
    return worst


def outputs_both(root: Path, work: Path, pairs: list[tuple[Path, Path]]) -> tuple[Path, Path]:
    """``task_outputs.py`` on (model, golden) pairs in the root and here: the folders holding their .npz files."""
    argv = [str(p.name) for pair in pairs for p in pair]
    files = {p.name: p for pair in pairs for p in pair} | {"task_outputs.py": HERE / "task_outputs.py"}
    with _ticking(f"task_outputs.py on {len(pairs)} files in the emulated aarch64 root"):
        r = device.run_python(["task_outputs.py", "arm", *argv], files, root=root, collect=work, prepare=False)
    if r.returncode != 0:
        raise device.DeviceError(f"task_outputs.py failed in the root (exit {r.returncode}):\n{r.stderr[-3000:]}")
    with _ticking(f"task_outputs.py on {len(pairs)} files here"):
        env = {**os.environ, "PYTHONPATH": str(device.REPO)}
        host = subprocess.run(
            [sys.executable, str(HERE / "task_outputs.py"), "x86", *argv],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
        )
    if host.returncode != 0:
        raise RuntimeError(f"task_outputs.py failed here (exit {host.returncode}):\n{host.stderr[-3000:]}")
    return work / "arm", work / "x86"


def _versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    out = {"python_x86": platform.python_version(), "machine_x86": platform.machine()}
    for name in ("onnxruntime", "numpy", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        out["cpu_x86"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return out


def check(
    cells: Sequence[str] = CELLS,
    hiddens: Sequence[int] = HIDDENS,
    strategies: Sequence[str] = STRATEGIES,
    schemes: Sequence[str] = SCHEMES,
    *,
    epochs: int = 3,
    n_train: int = 512,
    out: str | Path | None = None,
    root: str | Path | None = None,
) -> Report:
    start = time.monotonic()
    with _ticking("preparing the emulated aarch64 root"):
        r = device.ensure_root(root)
    report = Report(str(r), versions=_versions())
    site = device.describe(r).get("site") or {}
    report.versions["aarch64_site"] = ", ".join(
        x for x in site.get("installed", []) if x.split("==")[0] in ("onnxruntime", "numpy")
    )
    with tempfile.TemporaryDirectory(prefix="edgernn-int8arm-") as tmp:
        work = Path(out) if out is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        made: list[tuple[Row, Path, Path, Path]] = []  # row, fp32, int8, golden
        for cell in cells:
            for hidden in hiddens:
                run, summary = train(work, cell, hidden, epochs, n_train)
                report.trained[f"{cell}-h{hidden}"] = summary
                for strategy in strategies:
                    stem = f"{cell}-h{hidden}-{strategy}"
                    fp32 = export(work, run, stem, strategy)
                    for scheme in schemes:
                        row = Row(cell, hidden, strategy, scheme, f"{stem}.{scheme}.int8.onnx")
                        int8, golden = quantize(work, fp32, row)
                        report.rows.append(row)
                        made.append((row, fp32, int8, golden))
        report.seconds["x86_train_export_quantize"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        for row, _, int8, golden in made:
            verify_on_arm(r, int8, golden, row)
        report.seconds["aarch64_verify"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        pairs: dict[str, tuple[Path, Path]] = {}
        for _, fp32, int8, golden in made:
            pairs.setdefault(fp32.stem, (fp32, golden))  # the fp32 file on its int8 golden's sequences
            pairs[int8.stem] = (int8, golden)
        arm, x86 = outputs_both(r, work, list(pairs.values()))
        report.seconds["outputs_aarch64_and_x86"] = round(time.monotonic() - t, 1)
        for row, fp32, int8, _ in made:
            f_arm, fp32_metric_arm = _predictions(arm / f"{fp32.stem}.npz")
            f_x86, _ = _predictions(x86 / f"{fp32.stem}.npz")
            q_arm, _ = _predictions(arm / f"{int8.stem}.npz")
            q_x86, _ = _predictions(x86 / f"{int8.stem}.npz")
            row.fp32_arm = fp32_metric_arm
            row.err_x86, row.err_arm = max_abs(q_x86, f_x86), max_abs(q_arm, f_arm)
            row.int8_arm_vs_x86 = max_abs(q_arm, q_x86)
    report.seconds["total"] = round(time.monotonic() - start, 1)
    return report


def _g(v: float, spec: str = ".4g") -> str:
    return "-" if not math.isfinite(v) else format(v, spec)


def table(report: Report) -> str:
    lines = [
        f"root {report.root}; budget {BUDGET:.0%} (task metric, relative); bar for {REQUIRED_SCHEME}: x86 error "
        f"<= {RATIO_BOUND:g}x aarch64 error",
        "| cell | H | strategy | scheme | weights | metric fp32 / int8 x86 / int8 arm | drop x86 / arm "
        "| max abs err vs fp32 x86 / arm | ratio | int8 arm vs x86 | x86 budget | verify in root |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        weights = ("per channel" if r.per_channel else "per tensor") + (", recurrent fp32" if r.recurrent_fp32 else "")
        if r.weight_only:
            weights = "weights only, per channel"
        lines.append(
            f"| {r.cell} | {r.hidden} | {r.strategy} | {r.scheme} | {weights} "
            f"| {_g(r.fp32)} / {_g(r.int8_x86)} / {_g(r.int8_arm)} "
            f"| {_g(r.drop_x86 * 100, '+.2f')}% / {_g(r.drop_arm * 100, '+.2f')}% "
            f"| {_g(r.err_x86, '.3g')} / {_g(r.err_arm, '.3g')} | {_g(r.ratio, '.2f')} "
            f"| {_g(r.int8_arm_vs_x86, '.3g')} "
            f"| {'pass' if r.passed_x86 else 'FAIL'} | exit {r.verify_rc} |"
        )
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
    failed = [r for r in report.required if not r.ok]
    for r in failed:
        why = [w for w, bad in (("over budget on x86", not r.passed_x86), ("verify failed in the root",
               not r.passed_arm), (f"ratio {r.ratio:.2f} > {RATIO_BOUND:g}", not r.passed_ratio)) if bad]  # fmt: skip
        lines.append(f"FAIL {r.file}: {'; '.join(why)}")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="int8_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--hiddens", default=",".join(str(h) for h in HIDDENS))
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="native, step, ... (comma-separated)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help=f"--cpu values; {REQUIRED_SCHEME} is the one judged")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--out", help="keep the runs, models, golden files and outputs in this folder")
    p.add_argument("--root", help="the root's folder (default $EDGERNN_ARM64_ROOT or ~/.cache/edgernn/arm64-root)")
    a = p.parse_args(argv)
    try:
        report = check(
            a.cells.split(","),
            [int(h) for h in a.hiddens.split(",")],
            a.strategies.split(","),
            a.schemes.split(","),
            epochs=a.epochs,
            n_train=a.n_train,
            out=a.out,
            root=a.root,
        )
    except device.DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in report.rows:
        if r.quantize_rc != 0:
            print(f"{r.file}: quantize here exited {r.quantize_rc}: {r.quantize_error}", file=sys.stderr)
        if r.verify_rc != 0:
            print(f"{r.file}: edgernn verify in the root exited {r.verify_rc}:\n{r.verify_output}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=1) if a.json else table(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
