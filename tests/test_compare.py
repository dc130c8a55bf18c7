"""`edgernn compare`: a small grid trained, exported and timed; the Pareto front; resuming reuses finished
candidates and retrains changed ones; the user's data; the command line's table, JSON, plot and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    r = subprocess.run([*cmd, "--no-plot", "--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stderr == "" and "Pareto" in r.stdout  # --quiet: the result, no progress
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


def test_a_resumed_candidate_is_taken_from_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """candidate.json records the SHA-256 of the checkpoint and exports: an edited metric is replaced by the
    checkpoint's, a swapped model.onnx is exported again, a swapped checkpoint is trained again; each said on
    stderr."""
    import shutil

    import edgernn.train.workflow as workflow

    out = tmp_path / "cmp"
    args = {"cells": ["gru"], "task": "sign", "strategy": "native", "train_options": BUDGET}
    first = compare(out, hiddens=[4], **args).candidates[0]
    run = out / "gru-h4"
    record = json.loads((run / "candidate.json").read_text())
    assert set(record["sha256"]) == {"model.ckpt", "model.onnx", "step.onnx"}
    exported = (run / "model.onnx").read_bytes()
    compare(tmp_path / "other", hiddens=[8], **args)  # another candidate's files, to swap in
    capsys.readouterr()

    def no_training(**_: object) -> None:
        raise AssertionError("a candidate whose checkpoint is the recorded one was trained again")

    monkeypatch.setattr(workflow, "train_to_dir", no_training)
    record["made"]["best_metric"] = 2.0  # an edited record: better than any accuracy
    (run / "candidate.json").write_text(json.dumps(record))
    shutil.copy(tmp_path / "other" / "gru-h8" / "model.onnx", run / "model.onnx")
    again = compare(out, hiddens=[4], **args).candidates[0]
    err = capsys.readouterr().err
    assert again.reused and again.metric == first.metric
    assert "best_metric differ from its checkpoint's" in err and "model.onnx is not the export" in err
    assert (run / "model.onnx").read_bytes() == exported and again.file_bytes == len(exported)
    assert json.loads((run / "candidate.json").read_text())["made"]["best_metric"] == first.metric
    monkeypatch.undo()
    shutil.copy(tmp_path / "other" / "gru-h8" / "model.ckpt", run / "model.ckpt")
    retrained = compare(out, hiddens=[4], **args).candidates[0]
    assert not retrained.reused and "model.ckpt is not the checkpoint" in capsys.readouterr().err
    assert checkpoint.load(run).config.hidden_size == 4


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda r: r["made"].pop("baseline"), "field 'baseline' is missing"),
        (lambda r: r["made"].update(best_metric="0.99"), "field 'best_metric' is \"0.99\", not a number"),
        (lambda r: r.pop("settings"), "lacks its settings"),
    ],
    ids=["missing", "text", "no-settings"],
)
def test_a_record_compare_did_not_write_is_refused_up_front(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], words: str
) -> None:
    run = tmp_path / "cmp" / "gru-h4"
    run.mkdir(parents=True)
    record: dict[str, Any] = {"settings": {}, "made": {k: 1 for k in ("best_metric", "baseline", "train_seconds",
              "epochs_run", "parameters")} | {"metric": "mse", "strategy": "native", "streams": True}}  # fmt: skip
    edit(record)
    (run / "candidate.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=words):
        compare(tmp_path / "cmp", cells=["gru"], hiddens=[4], task="sine", train_options=BUDGET)
    assert sorted(p.name for p in (tmp_path / "cmp").rglob("*")) == ["candidate.json", "gru-h4"]
