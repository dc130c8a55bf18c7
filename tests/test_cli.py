"""The CLI through click's CliRunner: the issue's commands as written, JSON output, errors and exit codes, and each
command's numbers checked against values computed here (numpy oracle, eager torch, onnxruntime on the file)."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgernn.cli.main import main


def _train(out: Path, *extra: str) -> None:
    """A tiny `edgernn train` run (one epoch on 64 sequences) into ``out``."""
    args = ["train", "--task", "sine", "--hidden", "8", "--epochs", "1", "--n-train", "64", "--out", str(out), *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _train(out, "--cell", "gru", "--layers", "2", "--bidirectional")
    return out


def test_train_writes_checkpoint_and_history(trained: Path) -> None:
    assert (trained / "model.ckpt").is_file()
    hist = json.loads((trained / "history.json").read_text())
    assert hist["metric"] == "mse" and len(hist["val_metric"]) == 1


def test_export_then_parity(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    r = runner.invoke(main, ["export", str(trained / "model.ckpt"), "--strategy", "native", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "parity PASS" in r.output and out.is_file()
    r = runner.invoke(main, ["parity", str(trained), str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["passed"] is True and report["max_abs"] < 1e-5
    cases = {c["case"] for c in report["comparisons"]}
    assert {"B=1 T=1", "B=3 T=17", "B=2 T=257"} <= cases


def test_export_json(trained: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["parity"]["passed"] is True  # no --strategy: auto, the chosen strategy and its timings recorded
    assert d["manifest"]["strategy"] == d["manifest"]["selection"]["chosen"] in ("native", "loop")


def test_parity_detects_a_different_model(trained: Path, tmp_path: Path) -> None:
    """A model exported from other weights must fail parity against this checkpoint, with exit code 5."""
    other = tmp_path / "other"
    runner = CliRunner()
    _train(other, "--cell", "gru", "--layers", "2", "--bidirectional", "--seed", "9")
    runner.invoke(main, ["export", "--strategy", "native", str(other), "--out", str(tmp_path / "other.onnx")])
    r = runner.invoke(main, ["parity", str(trained), str(tmp_path / "other.onnx")])
    assert r.exit_code == 5 and "parity FAIL" in r.output


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        main, ["export", "--strategy", "native", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "m.onnx")]
    )
    assert r.exit_code == 3
    assert r.output.strip().startswith("error: no checkpoint") and "Traceback" not in r.output
    assert not (tmp_path / "m.onnx").exists()
    r = runner.invoke(main, ["train", "--task", "nope", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "choose one of" in r.output
    r = runner.invoke(main, ["export", "x", "--strategy", "magic", "--out", "m.onnx"])
    assert r.exit_code == 2 and "magic" in r.output


def test_help_on_every_command() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0 and "Exit codes" in r.output
    for name in main.commands:
        r = runner.invoke(main, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, name


def test_demo(tmp_path: Path) -> None:
    """The demo's model file computes what its checkpoint's torch model computes, and the numbers it prints are
    the ones computed here from the files it wrote."""
    import re

    from edgernn.train.data import collate, get_task, make_splits

    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert "parity PASS" in r.output and (out / "model.onnx").is_file() and (out / "model.ckpt").is_file()
    model = _torch_model(out)
    assert (model.config.cell, model.config.num_layers, model.config.hidden_size) == ("lstm", 2, 32)
    x, lengths = _inputs(3, 29, seed=5)
    got = _ort_out(out / "model.onnx", x, lengths)
    np.testing.assert_allclose(got, _torch_out(out, x, lengths), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, _oracle_out(out, x, lengths), atol=1e-5, rtol=1e-5)

    task = get_task("sine")
    printed = {k: float(v) for k, v in re.findall(r"(validation|held-out) mse ([-+0-9.e]+)", r.output)}
    _, val = make_splits(task, n_train=512, n_val=256, min_len=8, max_len=48, seed=0)  # what training validated on
    b = collate(val)
    assert printed["validation"] == pytest.approx(
        float(((_torch_out(out, b.x, b.lengths) - b.y) ** 2).mean()), rel=1e-3
    )
    _, held_out = make_splits(task, n_train=0, n_val=64, min_len=8, max_len=48, seed=1234)
    b = collate(held_out)
    assert printed["held-out"] == pytest.approx(float(((_torch_out(out, b.x, b.lengths) - b.y) ** 2).mean()), rel=1e-3)


def test_strategy_choices_come_from_the_registry() -> None:
    from edgernn.export import BUILTIN, strategy_names

    assert list(BUILTIN) == strategy_names()
    export_cmd = main.commands["export"]
    choice = next(p for p in export_cmd.params if p.name == "strategy").type
    assert list(choice.choices) == [*strategy_names(), "auto"]  # auto: the fastest of the others, timed
    r = CliRunner().invoke(main, ["strategies", "--json"])
    assert r.exit_code == 0
    table = json.loads(r.output)
    assert list(table) == sorted(strategy_names()) and table["step"]["streaming"] is True


def test_strategies_report_the_registrys_data() -> None:
    """Every row of `strategies --json` and of the table is the registered class's summary and capabilities."""
    from dataclasses import asdict

    from edgernn.export import get_strategy_class, strategy_names

    runner = CliRunner()
    table = json.loads(runner.invoke(main, ["strategies", "--json"]).stdout)
    text = runner.invoke(main, ["strategies"]).stdout
    for name in strategy_names():
        cls = get_strategy_class(name)
        caps = asdict(cls.caps)
        row = dict(table[name])
        assert row.pop("summary") == cls.summary
        assert set(row) == set(caps)
        for key, value in caps.items():
            if isinstance(value, (set, frozenset)):  # a JSON list, sorted
                assert row[key] == sorted(value), (name, key)
            else:
                assert row[key] == value, (name, key)
        assert f"{name:<7} {cls.summary}\n        {cls.caps.describe()}" in text
    assert table["native"]["streaming"] is False and table["unroll"]["dynamic_length"] is False


def test_strategies_json_variants_is_a_list() -> None:
    from edgernn.export import get_strategy_class

    table = json.loads(CliRunner().invoke(main, ["strategies", "--json"]).stdout)
    assert sorted(table["loop"]["variants"]) == sorted(get_strategy_class("loop").caps.variants)


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from edgernn.cli import main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("step", ["--chunk", "4"]), ("step", ["--fused"]), ("unroll", ["--seq-len", "20"]), ("loop", [])],
)
def test_parity_command_on_every_strategy(strategy: str, extra: list[str], tmp_path: Path) -> None:
    _train(tmp_path, "--cell", "lstm", "--task", "denoise")
    out = tmp_path / f"{strategy}.onnx"
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", strategy, *extra, "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["parity", str(tmp_path), str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["passed"] is True


def test_strategy_options_are_checked(trained: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["export", str(trained), "--strategy", "loop", "--seq-len", "9", "--out", "m.onnx"])
    assert r.exit_code == 2 and "does not take --seq-len" in r.output
    r = CliRunner().invoke(main, ["export", str(trained), "--strategy", "unroll", "--out", str(tmp_path / "u.onnx")])
    assert r.exit_code == 2 and "needs --seq-len" in r.output
    r = CliRunner().invoke(main, ["export", str(trained), "--strategy", "step", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 4 and "bidirectional" in r.output and not (tmp_path / "m.onnx").exists()


def test_lstm_variants_from_the_cli(tmp_path: Path) -> None:
    _train(tmp_path, "--cell", "lstm", "--peephole", "--proj-size", "4")
    ckpt = json.loads((tmp_path / "history.json").read_text())
    assert ckpt["metric"] == "mse"
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", "native", "--out", str(tmp_path / "n.onnx")])
    assert r.exit_code == 4 and "use one of: loop, unroll, step" in r.output
    r = runner.invoke(main, ["export", str(tmp_path), "--strategy", "loop", "--out", str(tmp_path / "l.onnx")])
    assert r.exit_code == 0 and "parity PASS" in r.output
    r = runner.invoke(main, ["inspect", str(tmp_path / "l.onnx")])
    assert "projection 4" in r.output and "peepholes" in r.output


# -- each command's result against values computed here, independently of the functions the command calls ------


def _torch_model(ckpt: Path) -> Any:
    from edgernn.model import checkpoint

    return checkpoint.load(ckpt).model()


def _torch_out(ckpt: Path, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _torch_model(ckpt)(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()


def _oracle_out(ckpt: Path, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The numpy oracle (float64) on the checkpoint's own config and weights."""
    from edgernn.model import checkpoint
    from edgernn.verify.reference import model_forward

    ck = checkpoint.load(ckpt)
    return model_forward(ck.config, {k: v.numpy() for k, v in ck.state_dict.items()}, x, lengths)


def _ort_out(model: Path, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """onnxruntime straight on the file, without edgernn's runtime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "lengths"]
    return sess.run(None, {"x": x, "lengths": lengths.astype(np.int64)})[0]


def _inputs(batch: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch: random frames, zero after each sequence's end, lengths from `steps` down to 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, 1)).astype(np.float32)
    lengths = np.linspace(steps, 1, batch).round().astype(np.int64)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`edgernn export --json` of the trained checkpoint (native strategy): the file and the printed report."""
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    r = CliRunner().invoke(
        main, ["export", "--strategy", "native", str(trained / "model.ckpt"), "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


@pytest.mark.parametrize("task", ["sine", "sign"])
def test_train_json_metric_is_the_checkpoints_validation_metric(task: str, tmp_path: Path) -> None:
    """The reported best metric is the saved model's metric on the validation split, computed here from the
    checkpoint: MSE with the numpy oracle for `sine`, accuracy of torch's argmax for `sign`."""
    from edgernn.model import checkpoint
    from edgernn.train.data import collate, get_task, make_splits

    args = ["train", "--task", task, "--cell", "lstm", "--hidden", "6", "--epochs", "2", "--n-train", "64"]
    args += ["--max-len", "16", "--seed", "3", "--patience", "0", "--out", str(tmp_path), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["task"] == task and result["cell"] == "lstm" and result["epochs_run"] == 2
    ck = checkpoint.load(result["checkpoint"])
    assert (ck.config.cell, ck.config.hidden_size, ck.config.num_layers) == ("lstm", 6, 1)
    assert ck.meta["train_config"]["n_train"] == 64 and ck.meta["train_config"]["seed"] == 3
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["best_metric"] == result["best_metric"] and len(hist["val_metric"]) == 2

    t = get_task(task)
    _, val = make_splits(t, n_train=64, n_val=256, min_len=8, max_len=16, seed=3)  # train's default n_val, min_len
    b = collate(val)
    if t.metric == "mse":
        pred = _oracle_out(tmp_path, b.x, b.lengths)
        assert pred.shape == b.y.shape
        assert result["metric"] == "mse"
        assert result["best_metric"] == pytest.approx(float(((pred - b.y) ** 2).mean()), rel=1e-5)
    else:
        logits = _torch_out(tmp_path, b.x, b.lengths)
        assert result["metric"] == "accuracy"
        assert result["best_metric"] == pytest.approx(float((logits.argmax(-1) == b.y).mean()), abs=1e-12)
    assert result["best_metric"] == (max if t.metric == "accuracy" else min)(hist["val_metric"])


def test_export_json_agrees_with_onnxruntime_run_here(trained: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    """The written file, run with onnxruntime directly, matches torch within the tolerance the report states; the
    report's numbers are consistent with each other and with the manifest written into the file."""
    import onnx

    from edgernn.manifest import MANIFEST_KEY

    path, d = exported
    assert d["path"] == str(path) and path.is_file()
    report = d["parity"]
    atol, rtol = report["atol"], report["rtol"]
    assert report["passed"] is True and report["dtype"] == "fp32" and atol <= 1e-5
    rows = report["comparisons"]
    assert {r["candidate"] for r in rows} == {"onnxruntime:cpu", "numpy"}
    assert all(r["passed"] and r["max_abs"] <= atol for r in rows)
    assert report["max_abs"] == max(r["max_abs"] for r in rows)
    for batch, steps in [(1, 1), (3, 17), (2, 40)]:
        x, lengths = _inputs(batch, steps, seed=steps)
        ref = _torch_out(trained, x, lengths)
        got = _ort_out(path, x, lengths)
        assert got.shape == ref.shape == (batch, 1)
        assert np.all(np.abs(got - ref) <= atol + rtol * np.abs(ref)), (batch, steps, np.abs(got - ref).max())
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[MANIFEST_KEY])
    assert meta["parity"]["passed"] is True and meta["parity"]["max_abs"] == report["max_abs"]
    assert meta["strategy"] == d["manifest"]["strategy"] == "native"
    assert [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}] == [
        s["name"] for s in d["manifest"]["inputs"]
    ]


def test_parity_json_measures_a_known_difference(
    trained: Path, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Shift the exported head bias by delta: every onnxruntime output moves by exactly delta, so parity must
    report max_abs == delta for onnxruntime (and fail, exit 5), while the numpy oracle still agrees with torch."""
    import onnx
    from onnx import numpy_helper

    path, _ = exported
    runner = CliRunner()
    r = runner.invoke(main, ["parity", str(trained), str(path), "--json"])
    assert r.exit_code == 0, r.output
    ok = json.loads(r.stdout)
    x, lengths = _inputs(3, 17)
    mine = float(np.abs(_ort_out(path, x, lengths) - _torch_out(trained, x, lengths)).max())
    assert ok["passed"] is True and mine <= ok["atol"] and ok["max_abs"] <= ok["atol"]

    delta = 0.01
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if t.name == "head.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(delta), bias.name))
    shifted = tmp_path / "shifted.onnx"
    onnx.save(proto, str(shifted))
    np.testing.assert_allclose(_ort_out(shifted, x, lengths) - _ort_out(path, x, lengths), delta, atol=1e-6)

    r = runner.invoke(main, ["parity", str(trained), str(shifted), "--json"])
    assert r.exit_code == 5, r.output
    bad = json.loads(r.stdout)
    assert bad["passed"] is False and bad["max_abs"] == pytest.approx(delta, abs=1e-5)
    ort_rows = [c for c in bad["comparisons"] if c["candidate"].startswith("onnxruntime")]
    numpy_rows = [c for c in bad["comparisons"] if c["candidate"] == "numpy"]
    assert ort_rows and all(not c["passed"] and c["max_abs"] == pytest.approx(delta, abs=1e-5) for c in ort_rows)
    assert numpy_rows and all(c["passed"] and c["max_abs"] <= bad["atol"] for c in numpy_rows)


def test_run_output_equals_the_oracle_and_torch(
    trained: Path, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = exported
    x, lengths = _inputs(4, 13, seed=7)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", lengths)
    args = ["run", str(path), "--input", str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "len.npy")]
    r = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "y.npy"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    y = np.load(tmp_path / "y.npy")
    assert report["outputs"][report["primary"]]["shape"] == list(y.shape) == [4, 1]
    np.testing.assert_allclose(y, _oracle_out(trained, x, lengths), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(y, _torch_out(trained, x, lengths), atol=1e-5, rtol=1e-5)
    # the padding is honoured: each sequence alone, unpadded, gives its row
    for i in (0, 3):
        alone = _oracle_out(trained, x[i : i + 1, : lengths[i]], lengths[i : i + 1])
        np.testing.assert_allclose(y[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def _count_ops(graph: Any) -> Counter[str]:
    ops: Counter[str] = Counter()
    for node in graph.node:
        ops[node.op_type] += 1
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                ops.update({f"{node.op_type}/{k}": v for k, v in _count_ops(g).items()})
    return ops


def test_inspect_json_matches_the_file_read_here(trained: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    import onnx
    import onnxruntime as ort

    path, _ = exported
    r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    proto = onnx.load(str(path))
    inits = list(proto.graph.initializer)
    # the model's weights are all in the file: the float initializers hold exactly torch's parameters
    n_torch = sum(p.numel() for p in _torch_model(trained).parameters())
    assert info["parameters"] == n_torch
    assert sum(int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT) == n_torch
    assert info["file_size"] == path.stat().st_size
    assert info["opsets"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    assert info["ops"] == dict(_count_ops(proto.graph))
    assert info["ops"].get("GRU") == 2  # two stacked layers, each bidirectional inside one GRU op
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [(i.name, i.shape) for i in sess.get_inputs()]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [(o.name, o.shape) for o in sess.get_outputs()]
    man = info["manifest"]
    assert (man["cell"], man["num_layers"], man["hidden_size"], man["bidirectional"]) == ("gru", 2, 8, True)


def test_inspect_parameters_is_the_models_parameter_count(trained: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    r = CliRunner().invoke(main, ["inspect", str(exported[0]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["parameters"] == sum(p.numel() for p in _torch_model(trained).parameters())


def test_bench_json_reports_the_calls_asked_for(trained: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    import time

    import torch

    path, _ = exported
    args = ["bench", str(path), "--ckpt", str(trained), "--steps", "7", "--repeats", "3", "--seq-len", "6"]
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        r = CliRunner().invoke(main, [*args, "--batch", "2", "--json"])
    finally:
        torch.set_num_threads(threads)  # bench --ckpt sets torch's thread count for the process
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["seq_len"], rep["batch"], rep["features"], rep["streaming"]) == (6, 2, 1, False)
    for lat, n in [(rep["step"], 7), (rep["sequence"], 3), (rep["torch"]["step"], 7), (rep["torch"]["sequence"], 3)]:
        assert lat["n"] == n
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] and lat["mean_ms"] > 0
        assert lat["mean_ms"] * n < wall_ms  # the timed calls fit inside the command's own run time
    assert rep["frames_per_s"] == pytest.approx(2 * 6 / (rep["sequence"]["p50_ms"] / 1e3))
    assert rep["sequences_per_s"] == pytest.approx(2 / (rep["sequence"]["p50_ms"] / 1e3))
    assert rep["ratios"]["step"] == pytest.approx(rep["torch"]["step"]["p50_ms"] / rep["step"]["p50_ms"])
    assert rep["max_abs_diff"] is not None and rep["max_abs_diff"] < 1e-5  # torch and onnxruntime, same input
    assert rep["provider"]["used"] == "cpu" and rep["threads"] == 1


def test_train_seq_len_sets_the_lag(tmp_path: Path) -> None:
    _train(tmp_path / "m", "--task", "memory", "--seq-len", "20")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["task"] == "memory" and cfg["model_config"]["output_size"] == 4
    assert cfg["train_config"]["min_len"] == cfg["train_config"]["max_len"] == 20
    r = CliRunner().invoke(main, ["train", "--seq-len", "20", "--min-len", "5", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--seq-len sets both lengths; drop --min-len" in r.output
    assert not (tmp_path / "x").exists()


def test_help_lists_the_commands_in_the_order_of_the_work() -> None:
    from edgernn.cli.main import SECTIONS

    out = CliRunner().invoke(main, ["--help"]).output
    headings = [line[: -len(" commands:")] for line in out.splitlines() if line.endswith(" commands:")]
    assert headings[:6] == ["Train", "Export", "Run", "Check", "Quantize", "Serve"]
    assert [title for title, _ in SECTIONS] == headings[: len(SECTIONS)]
    listed = [n for n in (line.split()[0] for line in out.splitlines() if line.startswith("  ")) if n in main.commands]
    assert sorted(listed) == sorted(main.commands)  # every command, once
    order = [listed.index(n) for n in ("train", "export", "run", "check", "quantize", "serve")]
    assert order == sorted(order)


def test_a_command_in_no_section_is_still_listed() -> None:
    import click

    from edgernn.cli.main import SectionedGroup

    group = SectionedGroup("g")
    group.add_command(click.Command("export", help="Export it."))
    group.add_command(click.Command("zzz", help="Something new."))
    out = CliRunner().invoke(group, ["--help"]).output
    assert out.index("Export commands:") < out.index("Other commands:") < out.index("zzz")


def test_task_and_init_choices_are_the_registries() -> None:
    from edgernn.train.data import TASKS
    from edgernn.train.loop import INITS

    params = {p.name: p for p in main.commands["train"].params}
    assert list(params["task"].type.choices) == list(TASKS)
    assert list(params["init"].type.choices) == list(INITS)
    out = CliRunner().invoke(main, ["train", "--help"]).output
    assert f"[{'|'.join(TASKS)}]" in out and f"[{'|'.join(INITS)}]" in out
    r = CliRunner().invoke(main, ["train", "--init", "zeros", "--out", "r"])
    assert r.exit_code == 2 and f"unknown init 'zeros'; choose one of: {', '.join(INITS)}" in r.output


def test_a_targets_default_strategy_comes_from_what_it_takes() -> None:
    from edgernn.export.auto import default_strategy
    from edgernn.targets import Target, get_target, target_names

    for name in target_names():
        t = get_target(name)
        assert t.default_strategy() in t.strategies and t.default_strategy({"seq_len"}) in t.strategies
    assert get_target("nnapi").default_strategy() == "step"
    assert get_target("coreml").default_strategy({"seq_len"}) == "unroll"
    assert get_target("tract").default_strategy() == "native"
    made_up = Target("made-up", "for the test", ("unroll", "loop", "native"), "masking")
    assert made_up.default_strategy() == "loop" and made_up.default_strategy({"seq_len"}) == "unroll"
    assert default_strategy("nnapi", True, {"seq_len": None}) == "step"
    assert default_strategy("nnapi", True, {"seq_len": 20}) == "unroll"
    assert default_strategy("ort", True, {}) == "auto" and default_strategy("ort", False, {}) == "native"


def test_train_help_lists_the_choices_without_importing_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from edgernn.cli import main; "
        "out = CliRunner().invoke(main, ['train', '--help']).output; "
        "print('[default|xavier|he|orthogonal|identity]' in out, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
