"""`edgernn compare`: a small grid trained, exported and timed; the Pareto front; resuming reuses finished
candidates and retrains changed ones; the user's data; the command line's table, JSON, plot and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgernn.errors import ConfigError
from edgernn.model import checkpoint
from edgernn.workflows.compare import compare, pareto_front

BUDGET = {"epochs": 1, "n_train": 64, "n_val": 32, "batch_size": 32, "min_len": 10, "max_len": 10, "patience": 0}


def test_pareto_front_lower_and_higher_better() -> None:
    pts = [(1.0, 0.5), (2.0, 0.2), (3.0, 0.3), (0.5, 0.9), (2.0, 0.2)]
    # lower metric is better: (3.0, 0.3) is slower and worse than (2.0, 0.2); equal points do not dominate each other
    assert pareto_front(pts, higher_better=False) == [True, True, False, True, True]
    # higher is better: (0.5, 0.9) is fastest and best, so it dominates every other point
    assert pareto_front(pts, higher_better=True) == [False, False, False, True, False]


def test_small_grid(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare(out, cells=["rnn-tanh", "gru"], hiddens=[4, 8], task="adding", strategy="native",
                     train_options=BUDGET)  # fmt: skip
    assert [c.name for c in result.candidates] == ["rnn-tanh-h4", "rnn-tanh-h8", "gru-h4", "gru-h8"]
    assert result.metric == "mse" and not result.higher_better and result.bench_len == 10
    for c in result.candidates:
        ck = checkpoint.load(out / c.name)
        assert (ck.config.cell, ck.config.hidden_size) == (c.cell, c.hidden)
        assert c.metric == ck.meta["history"]["best_metric"] and c.parameters == ck.config.parameter_count()
        assert c.file_bytes == (out / c.name / "model.onnx").stat().st_size and c.strategy == "native"
        assert c.sequence_ms > 0 and c.step_us is not None and c.step_us > 0 and not c.reused
        assert 0.1 < c.baseline < 0.25  # the adding problem's input-blind MSE is about 0.167
    front = pareto_front([(c.sequence_ms, c.metric) for c in result.candidates], False)
    assert [c.pareto for c in result.candidates] == front and any(front)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["format"] == "edgernn-compare" and len(saved["candidates"]) == 4
    table = result.table()
    assert table.count("\n") == 5 and "rnn-tanh-h4" in table and "Pareto" in table


def test_resume_reuses_finished_and_retrains_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cmp"
    first = compare(out, cells=["lstm"], hiddens=[4], task="sign", strategy="native", train_options=BUDGET)
    import edgernn.train.workflow as workflow

    def no_training(**_: object) -> None:
        raise AssertionError("a finished candidate was trained again")

    monkeypatch.setattr(workflow, "train_to_dir", no_training)
    again = compare(out, cells=["lstm"], hiddens=[4], task="sign", strategy="native", train_options=BUDGET)
    assert again.candidates[0].reused and again.candidates[0].metric == first.candidates[0].metric
    assert again.metric == "accuracy" and again.higher_better
    monkeypatch.undo()
    changed = compare(out, cells=["lstm"], hiddens=[4], task="sign", strategy="native",
                      train_options={**BUDGET, "seed": 1})  # fmt: skip
    assert not changed.candidates[0].reused
    assert checkpoint.load(out / "lstm-h4").meta["train_config"]["seed"] == 1


def test_compare_on_user_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 9, 2)).astype(np.float32)
    lengths = rng.integers(4, 10, size=40)
    y = (x[:, 0, 0] > 3).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, lengths=lengths, y=y)
    result = compare(tmp_path / "cmp", cells=["gru"], hiddens=[4, 6], data=str(tmp_path / "d.npz"),
                     strategy="native", train_options={"epochs": 1, "patience": 0})  # fmt: skip
    assert result.metric == "accuracy" and result.bench_len == 9 and result.on.endswith("d.npz")
    assert all(checkpoint.load(Path(c.run_dir)).config.normalize for c in result.candidates)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"cells": ["lstn"], "hiddens": [4]}, "unknown cell lstn"),
        ({"cells": ["lstm"], "hiddens": [0]}, "at least 1"),
        ({"cells": ["lstm", "lstm"], "hiddens": [4]}, "listed twice"),
        ({"cells": [], "hiddens": [4]}, "at least one cell"),
    ],
)
def test_bad_grids_are_refused(tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        compare(tmp_path / "cmp", task="adding", train_options=BUDGET, **kwargs)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_cli_compare_auto_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "edgernn", "compare", "--task", "adding", "--seq-len", "10",
           "--cells", "rnn-tanh,lstm", "--hidden", "4", "--epochs", "1", "--n-train", "64",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["plot"] == str(out / "compare.png") and (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert {c["strategy"] for c in d["candidates"]} <= {"native", "loop", "unroll", "step"}
    for c in d["candidates"]:  # auto recorded what it timed in each export's manifest
        from edgernn.runtime.model import Model

        assert Model(str(out / f"{c['cell']}-h4" / "model.onnx")).manifest.selection["chosen"] == c["strategy"]
    r = subprocess.run([*cmd, "--no-plot"], capture_output=True, text=True, timeout=900)  # resumes: a table
    assert r.returncode == 0 and "(reused)" in r.stderr and "Pareto" in r.stdout
    r = subprocess.run([*cmd[:-2], "--cells", "lstn", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown cell lstn" in r.stderr


@pytest.mark.slow
def test_docs_comparison_commands_run(tmp_path: Path) -> None:
    """The commands of docs/choosing-a-cell.md run as written; here on a tiny budget (later options win in click),
    since the full comparison takes the better part of an hour."""
    import shlex

    doc = (Path(__file__).parent.parent / "docs" / "choosing-a-cell.md").read_text()
    commands = [line.strip() for line in doc.splitlines() if line.strip().startswith("edgernn compare ")]
    assert (
        len(commands) == 2
        and any("--seq-len 100" in c for c in commands)
        and any("--seq-len 200" in c for c in commands)
    )
    for i, line in enumerate(commands):
        args = shlex.split(line.split("  #")[0])[1:]
        small = ["--epochs", "1", "--n-train", "32", "--hidden", "4", "--seq-len", "6", "--strategy", "native"]
        out = ["--no-plot", "--out", str(tmp_path / str(i))]
        r = subprocess.run([sys.executable, "-m", "edgernn", *args, *small, *out], capture_output=True, text=True,
                           timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert (
            "Pareto" in r.stdout
            and len(json.loads((tmp_path / str(i) / "compare.json").read_text())["candidates"]) == 3
        )
