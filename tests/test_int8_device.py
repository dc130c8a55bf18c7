"""int8 that holds on the device it ships to: the integer products chosen for the device's CPU (`--cpu`), the CPU
the file was judged on recorded, the task judged again on the device from a task golden file, the speed against
fp32 told, and metrics or outputs that are not finite refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import edgernn.verify.drift as drift_mod
from edgernn.cli import main
from edgernn.errors import ConfigError, ParityError
from edgernn.export import export_model
from edgernn.manifest import json_text, read_manifest
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.optimize.quantize import quantize
from edgernn.optimize.schemes import CPUS, SCHEMES, scheme_for
from edgernn.runtime.cpu import CPU_CLASSES, host_cpu
from edgernn.train.data import get_task, make_splits
from edgernn.verify.task_golden import is_task_golden, read_task_golden, verify_task

TASK = get_task("sine")
RECORD = {"name": "sine", "n_train": 0, "n_val": 24, "min_len": 8, "max_len": 24, "seed": 5}


def _strict(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, as a strict JSON parser does."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _fp32(tmp_path: Path, cell: str = "lstm", strategy: str = "step", hidden: int = 24, **kw: Any) -> Path:
    torch.manual_seed(3)
    model = build_model(ModelConfig(cell=cell, input_size=1, hidden_size=hidden, num_layers=2)).eval()
    if strategy == "step":
        kw.setdefault("chunk", 2)
    path = tmp_path / f"{cell}-{strategy}.onnx"
    export_model(model, path, strategy=strategy, manifest_extra={"task": RECORD}, **kw)
    return path


def _examples() -> list:
    return make_splits(TASK, n_train=0, n_val=24, min_len=8, max_len=24, seed=5)[1]


def _weight_types(data: bytes) -> set[int]:
    """The element types of the quantised weights (the integer initializers with more than one element)."""
    m = onnx.load_from_string(data)
    ints = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    from edgernn.graphs import all_graphs

    return {
        t.data_type
        for g in all_graphs(m.graph)
        for t in g.initializer
        if t.data_type in ints and int(np.prod(t.dims)) > 1
    }


def test_the_scheme_follows_the_cpu_and_is_recorded(tmp_path: Path) -> None:
    src = _fp32(tmp_path, "gru", "native").read_bytes()
    judged = {"task": TASK, "examples": _examples(), "long_steps": 50, "timing": False, "max_metric_drop": 1.0}
    want = {"any": onnx.TensorProto.UINT8, "x86-avx2": onnx.TensorProto.UINT8, "arm64": onnx.TensorProto.INT8}
    for cpu, dtype in want.items():
        q = quantize(src, "int8", cpu=cpu, **judged)
        assert _weight_types(q.model_bytes) == {dtype}, cpu
        how = read_manifest({p.key: p.value for p in onnx.load_from_string(q.model_bytes).metadata_props}).precision
        assert how["how"]["cpu"] == cpu and how["how"]["scheme"] == SCHEMES[cpu].name
        assert how["judged_on"]["cpu"] == host_cpu()["class"] and how["judged_on"]["model"]
        # a note exactly when this CPU's products are not those of the device the file is made for
        assert ("note" in how["judged_on"]) == (not SCHEMES[cpu].exact_on(host_cpu()["class"]))
    with pytest.raises(ConfigError, match=r"unknown --cpu 'sparc'.*any, x86-avx2, x86-vnni, arm64"):
        quantize(src, "int8", cpu="sparc", **judged)


def test_a_native_lstm_is_a_scan_for_uint8_weights_and_the_fused_op_for_int8(tmp_path: Path) -> None:
    """onnxruntime's DynamicQuantizeLSTM stores int8 weights whatever weight_type asks: a U8U8 file writes the LSTM
    as a Scan (scan_form), whose products are real U8U8 ones; a U8S8 file keeps the fused op (exact there)."""
    from edgernn.graphs import all_graphs

    src = _fp32(tmp_path, "lstm", "native").read_bytes()
    judged = {"task": TASK, "examples": _examples(), "long_steps": 50, "timing": False}
    for cpu in ("any", "arm64"):
        # U8S8 judged on an x86 without VNNI saturates (this model's arm64 file loses 1.8% on the EPYC here): its
        # budget is for the device it is made for, so here it is only built
        budget = {} if SCHEMES[cpu].exact_on(host_cpu()["class"]) else {"max_metric_drop": 1.0}
        q = quantize(src, "int8", cpu=cpu, **judged, **budget)
        proto = onnx.load_from_string(q.model_bytes)
        ops = {n.op_type for g in all_graphs(proto.graph) for n in g.node}
        how = q.report["how"]
        assert "LSTM" not in ops, cpu  # never left in fp32
        if cpu == "any":
            assert _weight_types(q.model_bytes) == {onnx.TensorProto.UINT8}
            assert "DynamicQuantizeLSTM" not in ops and {"Scan", "DynamicQuantizeMatMul"} <= ops
            assert how["rewritten_as_scan"] == {"LSTM": 2} and how["weights"] == "uint8"
        else:
            assert _weight_types(q.model_bytes) == {onnx.TensorProto.INT8}
            assert "DynamicQuantizeLSTM" in ops and "Scan" not in ops and "rewritten_as_scan" not in how


def test_default_cpu_is_any_for_every_target() -> None:
    assert scheme_for(None).cpu == "any"  # for every target: U8S8 judged on an x86 without VNNI is not the phone's
    assert set(CPUS) == {"any", "x86-avx2", "x86-vnni", "arm64"} and host_cpu()["class"] in CPU_CLASSES
    # 'any' must be exact on every CPU class
    assert all(SCHEMES["any"].exact_on(c) for c in CPU_CLASSES)
    assert not SCHEMES["arm64"].exact_on("x86-avx2") and SCHEMES["arm64"].exact_on("arm64")


def test_cli_shows_the_scheme_the_cpu_and_the_speed(tmp_path: Path) -> None:
    src, out = _fp32(tmp_path, "lstm", "step"), tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "100"])
    assert r.exit_code == 0, r.output
    assert "products   U8U8 (uint8 weights) for any CPUs" in r.output
    assert f"judged on  this {host_cpu()['class']} CPU" in r.output
    assert "per step (" in r.output and "ms fp32)" in r.output and "medians of 3 rounds in turns" in r.output
    text = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "U8U8 products for any CPUs" in text and f"judged on {host_cpu()['class']}" in text
    r = CliRunner().invoke(
        main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "100", "--json"]
    )
    rep = _strict(r.output)
    assert rep["speed"]["measured"] is True and rep["speed"]["step_speed"] > 0 and "slower" in rep["speed"]
    assert rep["speed"]["fp32_ms"]["sequence"] > 0 and rep["speed"]["reduced_ms"]["sequence"] > 0


def test_a_slower_reduced_file_is_said_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgernn.verify.bench as bench_mod

    def slow(*a: Any, **k: Any) -> dict[str, Any]:  # the GRU under load: 0.512 ms fp32, 254.9 ms int8
        return {
            "rounds": 3,
            "model": {"step_p50_ms": 0.01, "sequence_p50_ms": 0.512},
            "other": {"step_p50_ms": 0.5, "sequence_p50_ms": 254.9},
            "ratios": {"step_speed": 0.02, "sequence_speed": 0.512 / 254.9},
        }

    monkeypatch.setattr(bench_mod, "timed_in_turns", slow)
    src, out = _fp32(tmp_path, "gru", "native"), tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "50"])
    assert r.exit_code == 0, r.output
    warn = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert warn == [
        "warning: the int8 file is SLOWER than fp32 on this CPU (50x slower per step, 498x slower per sequence)"
    ]
    r = CliRunner().invoke(
        main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "50", "--json"]
    )
    assert _strict(r.output)["speed"]["slower"] is True


def test_bench_against_reads_naturally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgernn.verify.bench import format_against, ratio_words

    assert ratio_words(0.512 / 254.9, "faster", "slower") == "498x slower"
    assert ratio_words(3.426, "smaller", "larger") == "3.43x smaller"
    assert ratio_words(1.002, "faster", "slower") == "1.00x (the same)"
    assert ratio_words(float("nan"), "faster", "slower").startswith("not measured")
    result = {
        "rounds": 3,
        "model": {"path": "a.onnx", "bytes": 4096, "step_p50_ms": 0.01, "sequence_p50_ms": 0.512},
        "other": {"path": "b.onnx", "bytes": 1024, "step_p50_ms": 0.02, "sequence_p50_ms": 254.9},
        "ratios": {"size": 4.0, "step_speed": 0.5, "sequence_speed": 0.512 / 254.9},
    }
    text = format_against(result)
    assert "against is 4x smaller, 2x slower per step, 498x slower per sequence" in text
    assert "0.00x" not in text


def test_a_metric_that_is_not_finite_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = _fp32(tmp_path, "gru", "native"), tmp_path / "q.onnx"
    calls = iter([float("inf"), 0.5])
    monkeypatch.setattr(drift_mod, "task_metric", lambda *a, **k: next(calls))
    with pytest.raises(ParityError, match=r"not a finite number \(fp32 inf, int8 0.5"):
        quantize(src.read_bytes(), "int8", out, task=TASK, examples=_examples(), long_steps=50, per_channel=False)
    assert not out.exists()
    monkeypatch.setattr(drift_mod, "task_metric", lambda *a, **k: float("nan"))
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--json"])
    assert r.exit_code == 5 and "fp32 nan, int8 nan" in r.output and not out.exists()


def test_json_output_never_holds_nan_or_infinity() -> None:
    text = json_text({"a": float("nan"), "b": [float("inf"), 1.5, np.float32("-inf")], "c": {"d": np.float64(2.0)}})
    assert _strict(text) == {"a": None, "b": [None, 1.5, None], "c": {"d": 2.0}}


def test_task_golden_judges_the_reduced_file_where_it_runs(tmp_path: Path) -> None:
    src, out = _fp32(tmp_path, "rnn-tanh", "native"), tmp_path / "q.onnx"
    args = ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "50", "--golden"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    golden = tmp_path / "q.golden.npz"
    assert f"wrote {out} and {golden}" in r.output and is_task_golden(golden)
    g = read_task_golden(golden)
    assert g.meta["metric"] == "mse" and g.meta["budget"] == 0.01 and len(g.examples) == 24
    assert g.meta["made_for_cpu"] == "any" and g.meta["exported_on"]["cpu"] == host_cpu()["class"]
    # the golden's inputs and targets are the task's validation set
    for e, want in zip(g.examples, _examples(), strict=True):
        np.testing.assert_array_equal(e.x, want.x)
        np.testing.assert_array_equal(e.y, want.y)
    verdict = verify_task(out, golden)
    # computed here from the golden alone, equal to what quantize judged
    assert verdict["here"] == pytest.approx(g.meta["exported_on"]["reduced_metric"], rel=1e-6)
    assert verdict["passed"] and verdict["cpu"] == host_cpu()["class"]
    r = CliRunner().invoke(main, ["verify", str(out), "--golden", str(golden), "--json"])
    assert r.exit_code == 0, r.output
    assert _strict(r.output)["passed"] is True
    # a golden whose fp32 metric says the reduced file is far worse: exit 5
    with np.load(golden, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["fp32_metric"] = verdict["here"] / 2
    arrays["meta"] = np.array(json.dumps(meta))
    worse = tmp_path / "worse.golden.npz"
    np.savez(worse, **arrays)
    r = CliRunner().invoke(main, ["verify", str(out), "--golden", str(worse)])
    assert r.exit_code == 5 and "100.00% worse" in r.output and "FAIL" in r.output
    # the fp32 file is not the file this golden was made for... it has the same weights, so it is judged too
    r = CliRunner().invoke(main, ["verify", str(src), "--golden", str(golden)])
    assert r.exit_code == 0 and "PASS" in r.output
    # other weights: refused before any number
    (tmp_path / "other").mkdir()
    other = _fp32(tmp_path / "other", "rnn-tanh", "native", hidden=16)
    r = CliRunner().invoke(main, ["verify", str(other), "--golden", str(golden)])
    assert r.exit_code == 5 and "other weights" in r.output


def test_task_golden_needs_a_task_and_refuses_pickles(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=1, hidden_size=8, num_layers=1)).eval()
    plain = tmp_path / "plain.onnx"
    export_model(model, plain, strategy="native")  # no task recorded
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((4, 10, 1)).astype(np.float32))
    r = CliRunner().invoke(
        main,
        ["quantize", str(plain), "--to", "int8", "--data", str(data), "--out", str(tmp_path / "q.onnx"), "--golden"],
    )
    assert r.exit_code == 2 and "records the task it is judged by" in r.output
    assert not (tmp_path / "q.onnx").exists()
    bad = tmp_path / "bad.golden.npz"
    np.savez(bad, meta=np.array([{"format": "edgernn-task-golden"}], dtype=object))
    assert not is_task_golden(bad)
    with pytest.raises(ConfigError, match="never unpickles"):
        read_task_golden(bad)


def test_export_precision_writes_the_task_golden(tmp_path: Path) -> None:
    ckpt = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--task",
            "sine",
            "--cell",
            "gru",
            "--hidden",
            "16",
            "--layers",
            "1",
            "--epochs",
            "1",
            "--out",
            str(ckpt),
        ],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.int8.onnx"
    r = CliRunner().invoke(
        main,
        ["export", str(ckpt), "--strategy", "native", "--precision", "int8", "--golden", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    golden = tmp_path / "m.int8.golden.npz"
    assert is_task_golden(golden)
    r = CliRunner().invoke(main, ["verify", str(out)])  # the golden beside the model by default
    assert r.exit_code == 0 and "PASS" in r.output, r.output


class Seven(torch.nn.Module):
    """Seven inputs mixed before one GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.gru, self.head = torch.nn.GRU(4, 16, batch_first=True), torch.nn.Linear(16, 2)

    def forward(self, a, b, c, d, e, f, g):  # type: ignore[no-untyped-def]
        return self.head(self.gru(a + b * c - d + e * f + g)[0])


class FourD(torch.nn.Module):
    """A (batch, time, 2, 3) input flattened into an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = torch.nn.LSTM(6, 16, batch_first=True), torch.nn.Linear(16, 2)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.lstm(x.flatten(2))[0])


class Tokens(torch.nn.Module):
    """int64 token ids through an embedding into a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.gru, self.head = (
            torch.nn.Embedding(50, 8),
            torch.nn.GRU(8, 16, batch_first=True),
            torch.nn.Linear(16, 3),
        )

    def forward(self, ids):  # type: ignore[no-untyped-def]
        return self.head(self.gru(self.emb(ids))[0])


def _own(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    """An export of one of the modules above, a data file for it, and the layout the error must show."""
    from edgernn.export import export

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind == "seven":
        module, example, names = Seven(), tuple(torch.randn(2, 5, 4) for _ in range(7)), list("abcdefg")
        arrays = {k: rng.standard_normal((3, 9, 4)).astype(np.float32) for k in names}
        layout = "'a' (N, T, 4) float32; 'b' (N, T, 4) float32"
    elif kind == "four":
        module, example, names = FourD(), (torch.randn(2, 5, 2, 3),), ["x"]
        arrays = {"x": rng.standard_normal((3, 9, 2, 3)).astype(np.float32)}
        layout = "'x' (N, T, 2, 3) float32"
    else:
        module, example, names = Tokens(), (torch.randint(0, 50, (2, 5)),), ["ids"]
        arrays = {"ids": rng.integers(0, 50, (3, 9)).astype(np.int64)}
        layout = "'ids' (N, T) int64"
    path, data = tmp_path / f"{kind}.onnx", tmp_path / f"{kind}.npz"
    export(module.eval(), example, path, strategy="native", input_names=names)
    np.savez(data, **arrays)
    return path, data, layout


@pytest.mark.parametrize("kind", ["seven", "four", "tokens"])
def test_every_export_quantises_judged_by_the_drift_on_its_data(tmp_path: Path, kind: str) -> None:
    src, data, layout = _own(tmp_path, kind)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(src), "--to", "int8", "--out", str(out)])
    assert r.exit_code == 2 and layout in r.output and "named as the input" in r.output, r.output
    base = ["quantize", str(src), "--to", "int8", "--data", str(data), "--out", str(out), "--long-steps", "300"]
    r = CliRunner().invoke(main, [*base, "--max-drift", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    rep = _strict(r.output)
    d = rep["data_drift"]
    assert d["budget"] == 0.5 and 0 < d["relative"] <= 0.5 and d["max_abs"] == pytest.approx(d["relative"] * d["scale"])
    assert rep["long_drift"]["form"] == "inputs" and rep["long_drift"]["steps"] == 300
    assert rep["weights_reduced"] > 0.8
    # the drift on the data is real: measured here again from the written file against the fp32 one
    from edgernn.runtime.model import Model

    with np.load(data) as z:
        feed = {k: z[k] for k in z.files}
    a, b = Model(src).run_feed(feed), Model(out).run_feed(feed)
    assert max(float(np.abs(a[n] - b[n]).max()) for n in a) == pytest.approx(d["max_abs"], rel=1e-5)
    if kind == "tokens":
        assert rep["how"]["embeddings"] == "1 table(s) stored in uint8, rows dequantised after the Gather"
    # a budget under the measured drift: refused, nothing written
    out.unlink()
    r = CliRunner().invoke(main, [*base, "--max-drift", str(d["relative"] / 10), "--per-tensor"])
    assert r.exit_code == 5 and "over --max-drift" in r.output and "raise --max-drift" in r.output, r.output
    assert not out.exists()


def test_the_long_run_is_bounded_before_any_work(tmp_path: Path) -> None:
    src, out = _fp32(tmp_path, "gru", "native"), tmp_path / "q.onnx"
    r = CliRunner().invoke(
        main, ["quantize", str(src), "--to", "int8", "--out", str(out), "--long-steps", "1000000000"]
    )
    assert r.exit_code == 2 and "--long-steps must be from 1 to 1,000,000" in r.output and "GiB" in r.output
    assert not out.exists()
    with pytest.raises(ConfigError, match="--long-steps must be from 1"):
        quantize(src.read_bytes(), "int8", long_steps=0, verify=False)


def _max_error(fp32: bytes, reduced: bytes, examples: list) -> float:
    """The largest difference between two files' predictions on the task's validation sequences."""
    from edgernn.verify.drift import task_predictions

    man = read_manifest({p.key: p.value for p in onnx.load_from_string(fp32).metadata_props})
    pairs = zip(task_predictions(fp32, examples, man), task_predictions(reduced, examples, man), strict=True)
    return max(float(np.abs(a - b).max()) for a, b in pairs)


@pytest.fixture(scope="module")
def trained_rnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools/arm64/int8_check.py's rnn-tanh H32 model (the sine task, 2 layers, 3 epochs of 512 sequences, seed 0),
    exported native: trained, its MSE is sensitive to int8 rounding (untrained weights' is not)."""
    tmp = tmp_path_factory.mktemp("trained")
    run = tmp / "run"
    train = ["train", "--task", "sine", "--cell", "rnn-tanh", "--hidden", "32", "--layers", "2", "--epochs", "3"]
    r = CliRunner().invoke(main, [*train, "--n-train", "512", "--seed", "0", "--out", str(run)])
    assert r.exit_code == 0, r.output
    path = tmp / "rnn.onnx"
    r = CliRunner().invoke(main, ["export", str(run), "--strategy", "native", "--out", str(path)])
    assert r.exit_code == 0, r.output
    return path


def test_weights_only_asked_for_is_the_only_try(trained_rnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.onnx"
    bad_options = [(["--to", "fp16"], "cannot be combined with --to fp16"), (["--to", "int8", "--per-tensor"], "drop")]
    for bad, says in bad_options:
        r = CliRunner().invoke(main, ["quantize", str(trained_rnn), *bad, "--weights-only", "--out", str(out)])
        assert r.exit_code == 2 and says in r.output, r.output
        assert not out.exists()
    args = ["quantize", str(trained_rnn), "--to", "int8", "--weights-only", "--long-steps", "50", "--json"]
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = _strict(r.output[r.output.index("{") :])
    how = rep["how"]
    assert how["weight_only"] is True and "weight_only_because" not in how  # asked for: nothing else was tried
    assert rep["metric"]["drop"] <= rep["metric"]["budget"]
    inits = onnx.load(str(out)).graph.initializer
    int8 = [int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.INT8]
    fp32 = [int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT]
    assert len(int8) == 5 and sum(int8) > 10 * sum(fp32)  # W and R of 2 layers and the head; biases and scales fp32


def test_recurrent_products_stay_fp32_when_per_tensor_and_per_channel_are_over_budget(
    trained_rnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgernn.cli.optimize import format_precision
    from edgernn.graphs import all_graphs
    from edgernn.optimize.workflow import judge_task
    from edgernn.verify.drift import metric_drop, task_metric

    src = trained_rnn.read_bytes()
    man = read_manifest({p.key: p.value for p in onnx.load_from_string(src).metadata_props})
    task, examples = judge_task(man, None)
    judged = {"task": task, "examples": examples, "long_steps": 50, "timing": False}
    # the premise, measured: this model loses more than a budget under both plain schemes
    plain = [quantize(src, "int8", per_channel=pc, max_metric_drop=1.0, **judged) for pc in (False, True)]
    drops = [q.report["metric"]["drop"] for q in plain]
    budget = min(drops) / 2
    assert budget > 0, drops
    out = tmp_path / "q.onnx"
    q = quantize(src, "int8", out, max_metric_drop=budget, **judged)
    how = q.report["how"]
    assert how["recurrent"] == "fp32" and how["recurrent_products"] == 2 and how["per_channel"] is False
    assert "per tensor loses" in how["recurrent_because"] and "per channel loses" in how["recurrent_because"]
    assert "per_channel_because" not in how
    # recorded in the file's manifest, and judged again here from the written file by the task's own metric
    written = onnx.load(str(out))
    assert read_manifest({p.key: p.value for p in written.metadata_props}).precision["how"] == how
    fp32, low = task_metric(src, task, examples, man), task_metric(out.read_bytes(), task, examples, man)
    assert metric_drop(task, fp32, low) == pytest.approx(q.report["metric"]["drop"], rel=1e-6)
    assert q.report["metric"]["drop"] <= budget < min(drops)
    # the Scan bodies multiply by R in fp32 (a MatMul, or the Gemm onnxruntime fuses it into with its bias); the
    # input projections outside them are integer products
    bodies = [a.g for n in written.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"]
    assert len(bodies) == 2
    integer = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    for body in bodies:
        ops = {n.op_type for n in body.node}
        assert ops & {"MatMul", "Gemm"} and not ops & integer, ops
    assert integer & {n.op_type for n in written.graph.node}
    # the size told as it is: fewer weights reduced, a smaller ratio than the all-int8 file's
    assert 0 < q.report["weights_reduced"] < plain[0].report["weights_reduced"]
    assert 1 < q.report["size_ratio"] < plain[0].report["size_ratio"]
    assert "recurrent  the 2 recurrent products (h times R, every step) kept in fp32" in format_precision(q.report)
    text = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "one scale per tensor, recurrent products in fp32" in text
    # under what that loses too: the weights alone in int8, every product in fp32 (the fourth try)
    recurrent_drop = q.report["metric"]["drop"]
    tight = recurrent_drop / 2
    w = quantize(src, "int8", out, max_metric_drop=tight, **judged)
    how = w.report["how"]
    assert how["weight_only"] is True and how["products"] == "fp32" and how["per_channel"] is True
    assert how["weight_matrices"] == 5  # two layers' W and R, and the head
    for label in ("per tensor loses", "per channel loses", "per tensor, recurrent products in fp32 loses"):
        assert label in how["weight_only_because"], how["weight_only_because"]
    assert w.report["metric"]["drop"] <= tight
    assert w.report["judged_on"].get("note") is None  # no integer product: the same numbers on every CPU
    written = onnx.load(str(out))
    assert read_manifest({p.key: p.value for p in written.metadata_props}).precision["how"] == how
    fp32, low = task_metric(src, task, examples, man), task_metric(out.read_bytes(), task, examples, man)
    assert metric_drop(task, fp32, low) == pytest.approx(w.report["metric"]["drop"], rel=1e-6)
    ops = {n.op_type for g in all_graphs(written.graph) for n in g.node}
    assert not ops & (integer | {"DequantizeLinear", "DynamicQuantizeLinear"}), ops
    int8 = [t for g in all_graphs(written.graph) for t in g.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 5 and w.report["size_ratio"] > q.report["size_ratio"]
    assert "weights    only the 5 weight matrices int8" in format_precision(w.report)
    assert (
        "weights only (one scale per output channel), products in fp32"
        in CliRunner().invoke(main, ["inspect", str(out)]).output
    )
    # and it is the closest of the four to the fp32 file on the validation set
    errors = [_max_error(src, x.model_bytes, examples) for x in (*plain, q, w)]
    assert errors[-1] == min(errors), errors
    # a budget every try is over: all four told, nothing written
    out.unlink()
    with monkeypatch.context() as mp:
        mp.setattr(drift_mod, "metric_drop", lambda task, a, b: 0.5)
        with pytest.raises(
            ParityError, match=r"\(per channel\) loses .*\(weights only, per channel, products in fp32\) loses"
        ):
            quantize(src, "int8", out, max_metric_drop=budget, **judged)
    assert not out.exists()
    # a scale asked for: no fallback
    with pytest.raises(ParityError, match="try --per-channel"):
        quantize(src, "int8", out, per_channel=False, max_metric_drop=budget, **judged)
