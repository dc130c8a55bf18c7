"""int8 made for ``--cpu any`` holds on the emulated aarch64 device (issue 25): quantised here with the default CPU
it passes the 1% task budget, ``edgernn verify --golden`` passes in the aarch64 root, and its error against the
fp32 file on this x86 is at most twice the error on aarch64 (tools/arm64/int8_check.py measures the same on trained
models at H32 and H256).

Runs where the machine allows it (see tests/test_arm64.py); skips with the reason otherwise. Untrained weights with
a task record (2 layers, H32, the sine task's validation set of 24 sequences), native exports: about two minutes on
2 shared cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "arm64"))

import device  # noqa: E402
import int8_check  # noqa: E402
import task_outputs  # noqa: E402

from edgernn.export import export_model  # noqa: E402
from edgernn.model.zoo import ModelConfig, build_model  # noqa: E402
from edgernn.optimize.quantize import DEFAULT_MAX_METRIC_DROP, quantize  # noqa: E402
from edgernn.train.data import get_task, make_splits  # noqa: E402

# the quick run (-m "not slow") leaves these out: an emulated aarch64 root takes minutes under qemu
pytestmark = pytest.mark.slow

CELLS = ("rnn-tanh", "lstm", "gru")
TASK = get_task("sine")
RECORD = {"name": "sine", "n_train": 0, "n_val": 24, "min_len": 8, "max_len": 24, "seed": 5}
# The x86 error may be 0 only where the aarch64 one is too; a floor keeps "<= 2 x 0" from failing on rounding alone.
# 1e-6 is tools/arm64/check.py's bound on |aarch64 - x86| for the same fp32 file (a few fp32 ulps at outputs of
# order 1): below it two errors are the same number computed by two CPUs' kernels. Every int8 error measured here is
# of order 1e-2, four orders above it, so the floor never decides a real case.
ERROR_FLOOR = 1e-6
# onnxruntime's LSTM quantiser (onnxruntime/quantization/operators/lstm.py) stores DynamicQuantizeLSTM's weights as
# int8 whatever weight_type asks, so a --cpu any file writes the LSTM as a Scan (edgernn.optimize.scan_form) whose
# products are really U8U8 (with the fused op its error against fp32 was 0.0038 here against 0.00064 on aarch64).


WEIGHTS_ONLY = "rnn-tanh, weights only"


def _need_device() -> None:
    ok, why = device.machine_status()
    if not ok:
        pytest.skip(f"the emulated aarch64 device cannot run on this machine: {why}")


def _weight_types(path: Path) -> set[int]:
    """The element types of a file's integer weights (its 8-bit initializers of more than one element)."""
    from edgernn.graphs import all_graphs

    m = onnx.load(str(path))
    ints = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return {t.data_type for g in all_graphs(m.graph) for t in g.initializer if t.data_type in ints and t.dims
            and int(np.prod(t.dims)) > 1}  # fmt: skip


def _examples() -> list[Any]:
    return make_splits(TASK, n_train=0, n_val=24, min_len=8, max_len=24, seed=5)[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """For each cell: the fp32 export, its int8 file quantised here with the default CPU, and its task golden; the
    verdict of ``edgernn verify --golden`` in the root; the predictions of both files on both CPUs."""
    _need_device()
    device.ensure_root()
    out = tmp_path_factory.mktemp("int8arm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models; the machine is shared
    files: dict[str, dict[str, Any]] = {}
    try:
        for cell in CELLS:
            torch.manual_seed(7)
            model = build_model(ModelConfig(cell=cell, input_size=1, hidden_size=32, num_layers=2)).eval()
            fp32 = out / f"{cell}.onnx"
            export_model(model, fp32, strategy="native", manifest_extra={"task": RECORD})
            int8 = out / f"{cell}.int8.onnx"
            # the default CPU (None: 'any'); raises ParityError, writing nothing, when over the 1% budget here
            q = quantize(fp32.read_bytes(), "int8", int8, task=TASK, examples=_examples(), golden=True,
                         long_steps=200, timing=False)  # fmt: skip
            files[cell] = {"fp32": fp32, "int8": int8, "golden": q.golden, "report": q.report}
        # quantize's last try, asked for: only the weights int8, every product fp32
        fp32 = files["rnn-tanh"]["fp32"]
        int8 = out / "rnn-tanh-weights.int8.onnx"
        q = quantize(fp32.read_bytes(), "int8", int8, task=TASK, examples=_examples(), golden=True, long_steps=200,
                     timing=False, weight_only=True)  # fmt: skip
        files[WEIGHTS_ONLY] = {"fp32": fp32, "int8": int8, "golden": q.golden, "report": q.report}
    finally:
        torch.set_num_threads(threads)
    for f in files.values():
        r = device.verify(f["int8"], f["golden"], "--json", prepare=False)
        f["verify"] = r
    pairs = [(f[k], f["golden"]) for f in files.values() for k in ("fp32", "int8")]
    argv = [p.name for pair in pairs for p in pair]
    copies = {p.name: p for pair in pairs for p in pair} | {"task_outputs.py": ROOT / "tools/arm64/task_outputs.py"}
    arm = device.run_python(["task_outputs.py", "arm", *argv], copies, collect=out, prepare=False)
    assert arm.returncode == 0, arm.stderr[-3000:]
    for f in files.values():
        for k in ("fp32", "int8"):
            x86 = task_outputs.predictions(str(f[k]), str(f["golden"]))
            f[f"{k}_x86"] = [x86[f"p{i}"].astype(np.float64) for i in range(RECORD["n_val"])]
            f[f"{k}_arm"], f[f"{k}_arm_metric"] = int8_check._predictions(out / "arm" / f"{f[k].stem}.npz")
    return files


def test_default_cpu_is_any_and_passes_the_budget_here(made: dict[str, Any]) -> None:
    for cell in CELLS:
        rep = made[cell]["report"]
        assert rep["how"]["cpu"] == "any" and rep["how"]["scheme"] == "U8U8", cell
        metric = rep["metric"]
        assert metric["budget"] == DEFAULT_MAX_METRIC_DROP == 0.01
        assert np.isfinite(metric["drop"]) and metric["drop"] <= metric["budget"], (cell, metric)


def test_verify_golden_passes_in_the_aarch64_root(made: dict[str, Any]) -> None:
    for cell, f in made.items():
        r = f["verify"]
        assert r.returncode == 0, f"{cell}: {r.stdout}{r.stderr}"
        v = json.loads(r.stdout)
        assert v["passed"] is True and v["cpu"] == "arm64" and v["made_for_cpu"] == "any", (cell, v)
        assert v["drop"] <= v["budget"] == 0.01, (cell, v)
        # the metric verify computed there is the one task_outputs.py computes from the aarch64 predictions
        assert f["int8_arm_metric"] == pytest.approx(v["here"], rel=1e-6), cell


@pytest.mark.parametrize("cell", CELLS)
def test_any_stores_uint8_weights_only(made: dict[str, Any], cell: str) -> None:
    """U8U8 means uint8 weights in every integer product, the LSTM's included (a Scan, not the fused op)."""
    assert _weight_types(made[cell]["int8"]) == {onnx.TensorProto.UINT8}


@pytest.mark.parametrize("cell", CELLS)
def test_x86_error_is_at_most_twice_the_aarch64_error(made: dict[str, Any], cell: str) -> None:
    f = made[cell]
    # the fp32 file gives the same predictions on both CPUs (tools/arm64/check.py's bound)
    assert int8_check.max_abs(f["fp32_x86"], f["fp32_arm"]) <= ERROR_FLOOR
    err_x86 = int8_check.max_abs(f["int8_x86"], f["fp32_x86"])
    err_arm = int8_check.max_abs(f["int8_arm"], f["fp32_arm"])
    assert err_arm > 0 and err_x86 > 0, (err_x86, err_arm)  # int8 is not fp32: a measured error
    assert err_x86 <= int8_check.RATIO_BOUND * err_arm + ERROR_FLOOR, (err_x86, err_arm)


def test_weights_only_computes_the_same_on_both_cpus(made: dict[str, Any]) -> None:
    """No integer product: the weights-only file's predictions on aarch64 are x86's within the fp32 files' bound,
    its error against fp32 is the same on both, and verify passed there (test_verify_golden_passes_in_the_aarch64_root
    runs it too)."""
    f = made[WEIGHTS_ONLY]
    how = f["report"]["how"]
    assert how["weight_only"] is True and how["products"] == "fp32" and how["cpu"] == "any"
    assert _weight_types(f["int8"]) == {onnx.TensorProto.INT8}
    assert int8_check.max_abs(f["int8_x86"], f["int8_arm"]) <= ERROR_FLOOR
    err_x86 = int8_check.max_abs(f["int8_x86"], f["fp32_x86"])
    err_arm = int8_check.max_abs(f["int8_arm"], f["fp32_arm"])
    assert err_arm > 0 and err_x86 > 0, (err_x86, err_arm)  # the weights were rounded: a measured error
    assert abs(err_x86 - err_arm) <= 2 * ERROR_FLOOR, (err_x86, err_arm)
    assert f["verify"].returncode == 0, f["verify"].stdout + f["verify"].stderr


def test_an_impossible_golden_fails_in_the_root(made: dict[str, Any], tmp_path: Path) -> None:
    """The check can fail: a golden whose fp32 metric is half what the int8 file scores exits 5 on the device."""
    f = made["rnn-tanh"]
    here = json.loads(f["verify"].stdout)["here"]
    with np.load(f["golden"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["fp32_metric"] = here / 2
    arrays["meta"] = np.array(json.dumps(meta))
    worse = tmp_path / "worse.golden.npz"
    np.savez(worse, **arrays)  # type: ignore[arg-type]
    r = device.verify(f["int8"], worse, prepare=False)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "100.00% worse" in r.stdout + r.stderr and "FAIL" in r.stdout + r.stderr


def test_a_file_over_budget_is_measured_at_the_best_of_quantizes_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8_check.py makes a file that quantize refused again, with the budget just over the smallest loss the
    refusal reports: the file measured on aarch64 is the best quantize made, not its first try. The refusal is
    quantize's own (its losses faked, 3% then 2% then 1.5% then 1.8%), and needs no device."""
    import edgernn.verify.drift as drift_mod
    from edgernn.errors import ParityError

    losses = iter([0.03, 0.02, 0.015, 0.018])
    monkeypatch.setattr(drift_mod, "metric_drop", lambda task, a, b: next(losses))
    torch.manual_seed(7)
    model = build_model(ModelConfig(cell="gru", input_size=1, hidden_size=8, num_layers=1)).eval()
    fp32 = tmp_path / "gru.onnx"
    export_model(model, fp32, strategy="native", manifest_extra={"task": RECORD})
    with pytest.raises(ParityError) as e:
        quantize(fp32.read_bytes(), "int8", task=TASK, examples=_examples(), long_steps=20, timing=False)
    assert "recurrent products in fp32) loses 1.50%" in str(e.value)
    assert "(weights only, per channel, products in fp32) loses 1.80%" in str(e.value)  # the last try is not the best
    assert int8_check.lifted_budget(str(e.value)) == pytest.approx(0.0151)
    assert int8_check.lifted_budget("error: no model file at 'x.onnx'") == int8_check.LIFTED_BUDGET
