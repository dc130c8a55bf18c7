"""Training on the user's own data (`edgernn train --data`): .npz and CSV directories, regression and
classification, per sequence and per step, padded; the statistics come from the training split's real steps and
live in the model, so the exported graph takes raw inputs and matches torch; every bad input is refused before
training and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgernn.errors import InputError
from edgernn.manifest import read_manifest
from edgernn.model import checkpoint
from edgernn.train.dataset import load_dataset, normalization_stats, split_off
from edgernn.train.workflow import train_to_dir

N, T, F = 48, 12, 3
FAST = {"epochs": 2, "batch_size": 16, "patience": 0, "seed": 0}


def _padded(rng: np.random.Generator, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Raw-scale inputs (mean 5, std 3, far from standardised), padded with a junk value that must never be read."""
    x = rng.normal(5.0, 3.0, size=(n, T, F)).astype(np.float32)
    lengths = rng.integers(3, T + 1, size=n)
    lengths[0] = T
    for i, k in enumerate(lengths):
        x[i, k:] = 1e6
    return x, lengths.astype(np.int64)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _kinds(rng: np.random.Generator, tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """One file per kind of target: (path, head, readout)."""
    x, lengths = _padded(rng)
    last = np.array([x[i, k - 1, 0] for i, k in enumerate(lengths)], dtype=np.float32)
    return {
        "regression-last": (
            _npz(tmp / "rl.npz", x=x, lengths=lengths, y=np.stack([last, 2 * last], 1)),
            "regression",
            "last",
        ),
        "classification-last": (
            _npz(tmp / "cl.npz", x=x, lengths=lengths, y=(last > 5).astype(np.int64)),
            "classification",
            "last",
        ),
        "regression-all": (_npz(tmp / "ra.npz", x=x, lengths=lengths, y=x[:, :, :1] * 0.5 + 1), "regression", "all"),
        "classification-all": (
            _npz(tmp / "ca.npz", x=x, lengths=lengths, y=(x[:, :, 1] > 5).astype(np.int64) * 2),
            "classification",
            "all",
        ),
    }


@pytest.mark.parametrize("kind", ["regression-last", "classification-last", "regression-all", "classification-all"])
def test_npz_kinds_are_inferred(tmp_path: Path, kind: str) -> None:
    path, head, readout = _kinds(np.random.default_rng(0), tmp_path)[kind]
    d = load_dataset(path)
    assert (d.head, d.readout, d.input_size) == (head, readout, F)
    assert d.output_size == {"regression-last": 2, "classification-last": 2, "regression-all": 1}.get(kind, 3)
    assert len(d.examples) == N
    assert all(np.all(e.x < 1e5) for e in d.examples)  # padding is cut off, never read


@pytest.mark.parametrize("kind", ["regression-last", "classification-all"])
@pytest.mark.parametrize("strategy", ["native", "step"])
def test_export_takes_raw_inputs_and_matches_torch(tmp_path: Path, kind: str, strategy: str) -> None:
    from edgernn.export.sources import export_checkpoint

    rng = np.random.default_rng(1)
    path, head, readout = _kinds(rng, tmp_path)[kind]
    out = tmp_path / "run"
    summary = train_to_dir(task=None, data=str(path), cell="gru", hidden=8, layers=1, bidirectional=False,
                           out_dir=str(out), progress=False, **FAST)  # fmt: skip
    assert summary["data"]["head"] == head and summary["data"]["readout"] == readout
    ck = checkpoint.load(out)
    model = ck.model()
    # the statistics are those of the training split's real steps (the held-out 20% and the padding excluded)
    train, _ = split_off(load_dataset(path), 0.2, seed=0)
    mean, std = normalization_stats(train.examples)
    np.testing.assert_allclose(ck.state_dict["input_mean"].numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(ck.state_dict["input_std"].numpy(), std, rtol=1e-6)
    assert abs(float(mean[0]) - 5.0) < 0.5 and abs(float(std[0]) - 3.0) < 0.5

    onnx_path = tmp_path / "m.onnx"
    export_checkpoint(out, onnx_path, strategy=strategy)  # checks parity against torch itself
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    manifest = read_manifest(session.get_modelmeta().custom_metadata_map)
    assert manifest.input_normalization is not None
    np.testing.assert_allclose(manifest.input_normalization["mean"], mean, rtol=1e-6)

    x = np.random.default_rng(2).normal(5.0, 3.0, size=(1, 9, F)).astype(np.float32)  # raw values
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    if strategy == "native":
        feed = {"x": x}
        if "lengths" in {i.name for i in session.get_inputs()}:
            feed["lengths"] = np.array([9], dtype=np.int64)
        got = session.run(None, feed)[0]
    else:
        from edgernn.runtime.stream import StreamingModel

        s = StreamingModel(str(onnx_path)).stream()
        steps = [s.step(x[0, t]) for t in range(9)]
        got = np.stack(steps, axis=-2)[None] if readout == "all" else steps[-1][None]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
    # and a model that ignored the statistics would be far off: the check can fail
    plain = ck.model()
    ones = [np.ones(n, np.float32) for n in (F, plain.config.output_size)]
    plain.set_normalization(0 * ones[0], ones[0], 0 * ones[1], ones[1])
    with torch.no_grad():
        assert np.abs(plain(torch.from_numpy(x)).numpy() - want).max() > 1e-2


def test_regression_outputs_in_the_targets_units(tmp_path: Path) -> None:
    """A regression model predicts in the data's units: targets around 1000 are learnt as an offset, not from 0."""
    rng = np.random.default_rng(3)
    x, lengths = _padded(rng)
    y = (1000 + rng.normal(0, 1, size=N)).astype(np.float32)
    path = _npz(tmp_path / "far.npz", x=x, lengths=lengths, y=y)
    summary = train_to_dir(task=None, data=str(path), cell="lstm", hidden=8, layers=1, bidirectional=False,
                           out_dir=str(tmp_path / "run"), progress=False, **FAST)  # fmt: skip
    assert summary["best_metric"] < 10  # an untrained head reading from 0 would be ~1e6 away
    ck = checkpoint.load(tmp_path / "run")
    assert abs(float(ck.state_dict["output_mean"][0]) - float(y[: int(0.8 * N)].mean())) < 1.0


def _csv_dir(root: Path, rng: np.random.Generator, n: int = 10) -> Path:
    root.mkdir()
    for i in range(n):
        k = int(rng.integers(4, 9))
        a, b = rng.normal(10, 2, size=k), rng.normal(-3, 1, size=k)
        label = (a > 10).astype(int)
        rows = ["a,label,b,level"] + [f"{a[t]:.6f},{label[t]},{b[t]:.6f},{a[t] + b[t]:.6f}" for t in range(k)]
        (root / f"seq{i:02d}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_directory_regression_per_step_and_classification_per_sequence(tmp_path: Path) -> None:
    d = _csv_dir(tmp_path / "csv", np.random.default_rng(4))
    reg = load_dataset(d, target_columns=["level"])
    assert (reg.head, reg.readout, reg.input_size, reg.output_size) == ("regression", "all", 3, 1)
    assert reg.feature_names == ["a", "label", "b"] and reg.examples[0].y.shape == (reg.examples[0].x.shape[0], 1)
    cls = load_dataset(d, target_columns=["label"], head="classification", readout="last")
    assert (cls.head, cls.readout, cls.output_size) == ("classification", "last", 2)
    assert cls.feature_names == ["a", "b", "level"] and cls.examples[0].y.shape == ()
    summary = train_to_dir(task=None, data=str(d), target_columns=["level"], cell="rnn-tanh", hidden=4, layers=1,
                           bidirectional=False, out_dir=str(tmp_path / "run"), progress=False, **FAST)  # fmt: skip
    assert summary["data"]["feature_names"] == ["a", "label", "b"] and summary["data"]["n_train"] == 8


def _bad_npz(tmp: Path, case: str) -> tuple[Path, str]:
    rng = np.random.default_rng(5)
    x, lengths = _padded(rng, 10)
    y = rng.normal(size=10).astype(np.float32)
    p = tmp / f"{case}.npz"
    if case == "ragged":
        np.savez(p, x=np.array([np.zeros((3, 2)), np.zeros((4, 2))], dtype=object), y=y[:2])
        return p, "object array"
    if case == "nan":
        x[4, 1, 2] = np.nan
        np.savez(p, x=x, lengths=lengths, y=y)
        return p, "x[4] has a NaN or infinite value at step 1"
    if case == "label-count":
        np.savez(p, x=x, lengths=lengths, y=y[:7])
        return p, "y has 7 row(s) and x 10"
    if case == "length":
        lengths[3] = T + 1
        np.savez(p, x=x, lengths=lengths, y=y)
        return p, f"lengths[3] is {T + 1}"
    if case == "label-not-class":
        np.savez(p, x=x, lengths=lengths, y=np.arange(10) - 1)
        return p, "label -1; class indices start at 0"
    if case == "empty":
        np.savez(p, x=np.zeros((0, T, F), np.float32), y=np.zeros(0, np.float32))
        return p, "nothing to train on"
    if case == "no-y":
        np.savez(p, x=x)
        return p, "has no array 'y'"
    if case == "step-shape":
        np.savez(p, x=x, lengths=lengths, y=np.zeros((10, T - 1, 1), np.float32))
        return p, "per-step targets need y of shape"
    if case == "nan-label":
        y[2] = np.inf
        np.savez(p, x=x, lengths=lengths, y=y)
        return p, "sequence 2's targets hold a NaN"
    raise AssertionError(case)


BAD = ["ragged", "nan", "label-count", "length", "label-not-class", "empty", "no-y", "step-shape", "nan-label"]


@pytest.mark.parametrize("case", BAD)
def test_bad_npz_is_refused_by_name(tmp_path: Path, case: str) -> None:
    path, words = _bad_npz(tmp_path, case)
    with pytest.raises(InputError, match=_re(words)):
        load_dataset(path)


def test_nan_in_padding_is_fine(tmp_path: Path) -> None:
    x, lengths = _padded(np.random.default_rng(6), 10)
    lengths[1] = 4
    x[1, 4:] = np.nan  # beyond the sequence's end: not data
    d = load_dataset(_npz(tmp_path / "p.npz", x=x, lengths=lengths, y=np.zeros(10, np.float32)))
    assert np.all(np.isfinite(d.examples[1].x))


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing-column", "has no column 'nope'"),
        ("widths", "rows of different widths"),
        ("text", "a value is not a number"),
        ("headers", "has columns"),
        ("not-whole", "whole-number class indices"),
        ("nan", "row 3, column 'b' is NaN"),
        ("no-csv", "has no .csv files"),
    ],
)
def test_bad_csv_is_refused_by_name(tmp_path: Path, case: str, words: str) -> None:
    d = _csv_dir(tmp_path / "csv", np.random.default_rng(7), n=3)
    opts: dict = {"target_columns": ["level"]}
    first = d / "seq00.csv"
    lines = first.read_text().splitlines()
    if case == "missing-column":
        opts["target_columns"] = ["nope"]
    elif case == "widths":
        lines[2] += ",1"
    elif case == "text":
        lines[2] = "x,1,2,3"
    elif case == "headers":
        (d / "seq01.csv").write_text("a,label,c,level\n1,0,2,3\n")
    elif case == "not-whole":
        opts = {"target_columns": ["level"], "head": "classification"}
    elif case == "nan":
        lines[2] = "1,0,nan,3"
    elif case == "no-csv":
        for p in d.iterdir():
            p.unlink()
    first.write_text("\n".join(lines) + "\n") if first.exists() else None
    with pytest.raises(InputError, match=_re(words)):
        load_dataset(d, **opts)


def test_validation_file_must_fit_the_training_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x, lengths = _padded(rng, 20)
    train = _npz(tmp_path / "t.npz", x=x, lengths=lengths, y=(x[:, 0, 0] > 5).astype(np.int64))
    wide = _npz(tmp_path / "w.npz", x=np.zeros((4, T, F + 1), np.float32), y=np.zeros(4, np.int64))
    many = _npz(tmp_path / "m.npz", x=x[:4], lengths=lengths[:4], y=np.array([0, 1, 2, 3]))
    one_class = _npz(tmp_path / "o.npz", x=x[:4], lengths=lengths[:4], y=np.zeros(4, np.int64))
    common = {"task": None, "cell": "gru", "hidden": 4, "layers": 1, "bidirectional": False, "progress": False}
    with pytest.raises(InputError, match=r"input_size differs: 3 in .*, 4 in"):
        train_to_dir(data=str(train), val=str(wide), out_dir=str(tmp_path / "a"), **common, **FAST)
    with pytest.raises(InputError, match="label 3, beyond the 2 classes"):
        train_to_dir(data=str(train), val=str(many), out_dir=str(tmp_path / "b"), **common, **FAST)
    # a validation file holding one class is fine: the training data sets the count
    train_to_dir(data=str(train), val=str(one_class), out_dir=str(tmp_path / "c"), **common, **FAST)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert checkpoint.load(tmp_path / "c").config.output_size == 2


def test_too_few_sequences_to_hold_out(tmp_path: Path) -> None:
    x, lengths = _padded(np.random.default_rng(9), 1)
    path = _npz(tmp_path / "one.npz", x=x, lengths=lengths, y=np.zeros(1, np.float32))
    with pytest.raises(InputError, match="too few to hold out"):
        split_off(load_dataset(path), 0.2, seed=0)


def test_cli_train_data_end_to_end(tmp_path: Path) -> None:
    path, _, _ = _kinds(np.random.default_rng(10), tmp_path)["classification-last"]
    run = [sys.executable, "-m", "edgernn", "train", "--data", str(path), "--cell", "gru", "--hidden", "8",
           "--epochs", "1", "--out", str(tmp_path / "run"), "--json"]  # fmt: skip
    r = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["task"] == "data" and summary["metric"] == "accuracy" and summary["data"]["n_val"] == 10
    bad, _ = _bad_npz(tmp_path, "nan")
    r = subprocess.run([*run[:5], str(bad), *run[6:-2], str(tmp_path / "bad")], capture_output=True, text=True)
    assert r.returncode == 7 and "NaN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()
    r = subprocess.run([*run[:-1], "--task", "sine"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "drop --task" in r.stderr
    r = subprocess.run([*run[:-1], "--seq-len", "9"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--seq-len" in r.stderr


def _re(words: str) -> str:
    import re

    return re.escape(words)


def test_csv_numbers_are_plain_ascii_decimals(tmp_path: Path) -> None:
    """Signs, points, exponents and spaces around a value are numbers; digit separators and other scripts' digits,
    which Python's float() would take, are not."""
    d = tmp_path / "csv"
    d.mkdir()
    (d / "a.csv").write_text("f,level\n+.5, 7 \n-0,3e-4\n1E2,12.\n")
    data = load_dataset(d, target_columns=["level"])
    assert data.examples[0].x[:, 0].tolist() == [0.5, 0.0, 100.0]
    assert np.allclose(data.examples[0].y[:, 0], [7.0, 3e-4, 12.0])
    for value in ("1_000", "\u0661\u0662", "\uff11", "0x10"):  # underscore, Arabic-Indic, fullwidth, hex
        (d / "a.csv").write_text(f"f,level\n{value},1\n", encoding="utf-8")
        with pytest.raises(InputError, match="row 2, column 'f': a value is not a number"):
            load_dataset(d, target_columns=["level"])
