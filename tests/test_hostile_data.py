"""Hostile and careless data for the commands that read the user's data (`train --data`, `compare --data`,
golden files) and compare's resumable state: each case gets its typed error as one line with its documented exit
code (never an internal error), and the folder it ran in is left byte for byte as it was. Helpers and style as in
tests/test_hostile.py."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgernn.train.dataset as dataset
from edgernn.cli import main
from edgernn.errors import ConfigError, InputError
from edgernn.export import export_model
from edgernn.model.zoo import ModelConfig, build_model

SECRET = "root:x:0:0:root:/root:/bin/bash"  # what a file outside the data folder holds: never to be printed


def _forged_member(shape: tuple[int, ...], header_bytes: int | None = None) -> bytes:
    """A .npy member whose header claims ``shape`` of float32 over a few bytes of data (``header_bytes``: padded
    to that size, beyond what numpy reads safely)."""
    hdr = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    if header_bytes is None:
        hdr += " " * (64 - (len(hdr) + 11) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + bytes(16)
    hdr += " " * (header_bytes - len(hdr) - 1) + "\n"
    return b"\x93NUMPY\x02\x00" + len(hdr).to_bytes(4, "little") + hdr.encode() + bytes(16)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _csv_dir(d: Path, n: int = 3) -> Path:
    d.mkdir()
    for i in range(n):
        rows = "\n".join(f"{0.1 * t + i:.2f},{t % 2}" for t in range(6))
        (d / f"s{i}.csv").write_text(f"level,f\n{rows}\n")
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile-data")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 6, 2)).astype(np.float32)
    y = rng.standard_normal(10).astype(np.float32)
    np.savez(d / "ok.npz", x=x, y=y)
    ok = (d / "ok.npz").read_bytes()
    (d / "empty.npz").write_bytes(b"")
    (d / "trunc.npz").write_bytes(ok[: len(ok) // 2])
    (d / "npy.npz").write_bytes(_npy(x))  # a .npy named .npz
    (d / "pickle.npz").write_bytes(pickle.dumps({"x": x, "y": y}))
    np.savez(d / "obj.npz", x=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=y)
    with zipfile.ZipFile(d / "forged.npz", "w") as z:  # a header claiming 10^12 elements
        z.writestr("x.npy", _forged_member((1000000, 1000000, 1)))
        z.writestr("y.npy", _npy(y))
    with zipfile.ZipFile(d / "bighdr.npz", "w") as z:  # a 20 KB header
        z.writestr("x.npy", _forged_member((10, 6, 2), header_bytes=20_000))
        z.writestr("y.npy", _npy(y))
    with zipfile.ZipFile(d / "short.npz", "w") as z:  # a header claiming more than the member holds
        z.writestr("x.npy", _forged_member((10, 6, 2)))
        z.writestr("y.npy", _npy(y))
    np.savez_compressed(d / "long.npz", x=np.zeros((1, 2_000_000, 1), np.float32), y=np.zeros(1, np.float32))
    # golden files
    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=4))
    torch.manual_seed(0)
    export_model(model, d / "m.onnx", strategy="native")
    with zipfile.ZipFile(d / "forged.golden.npz", "w") as z:
        z.writestr("meta.npy", _npy(np.array("{}")))
        z.writestr("case0.in.x.npy", _forged_member((1000000, 1000000, 1)))
    (d / "pickle.golden.npz").write_bytes(pickle.dumps({"meta": "{}"}))
    # CSV folders
    _csv_dir(d / "seqs")
    (d / "secret.txt").write_text(SECRET + "\n1\n")
    leak = _csv_dir(d / "leak")
    (leak / "zz.csv").symlink_to(d / "secret.txt")  # a link leading out of the data folder
    loop = _csv_dir(d / "loop")
    (loop / "x.csv").symlink_to("y.csv")  # links that lead nowhere
    (loop / "y.csv").symlink_to("x.csv")
    for name, text in {
        "wide": "level,f\n1," + "9" * 200_000 + "\n",  # a cell over csv's 131,072-byte field limit
        "separator": "level,f\n1,1_000\n",
        "arabic": "level,f\n1,\u0661\u0662\n",  # Arabic-Indic digits: float() takes them
        "garbage": SECRET + "\n1\n",  # a file in the folder that is no sequence: its header is not quoted
    }.items():
        bad = _csv_dir(d / name)
        (bad / "s1.csv").write_text(text)
    # compare's records
    for name, edit in {"missing": ("pop", "baseline"), "text": ("set", "best_metric")}.items():
        run = d / f"cmp-{name}" / "gru-h4"
        run.mkdir(parents=True)
        made = {k: 1 for k in ("best_metric", "baseline", "train_seconds", "epochs_run", "parameters")}
        made.update(metric="mse", strategy="native", streams=True)
        if edit[0] == "pop":
            made.pop(edit[1])
        else:
            made[edit[1]] = "good"
        (run / "candidate.json").write_text(json.dumps({"settings": {}, "made": made}))
    return d


def _snapshot(d: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


TRAIN = ["train", "--cell", "gru", "--hidden", "4", "--epochs", "1"]
CSV = ["--target-columns", "level"]
COMPARE = ["compare", "--cells", "gru", "--hidden", "4", "--epochs", "1", "--no-plot"]

CASES = [
    # (args, exit code, a phrase of the one-line error)
    # data read from outside its folder
    ([*TRAIN, "--data", "leak", *CSV, "--out", "r"], InputError.exit_code, "is a link that leads outside"),
    ([*TRAIN, "--data", "loop", *CSV, "--out", "r"], InputError.exit_code, "is a link that leads outside"),
    ([*TRAIN, "--data", "garbage", *CSV, "--out", "r"], InputError.exit_code, "has columns that differ from"),
    # the run's files among the user's sequences
    ([*TRAIN, "--data", "seqs", *CSV, "--out", "seqs"], ConfigError.exit_code, "is your data"),
    ([*TRAIN, "--data", "seqs", *CSV, "--out", "seqs/run"], ConfigError.exit_code, "inside your data folder"),
    ([*TRAIN, "--data", "ok.npz", "--val", "seqs", "--out", "seqs/run"], ConfigError.exit_code, "inside your data"),
    ([*COMPARE, "--data", "seqs", *CSV, "--out", "seqs"], ConfigError.exit_code, "is your data"),
    ([*COMPARE, "--data", "seqs", *CSV, "--out", "seqs/cmp"], ConfigError.exit_code, "inside your data folder"),
    # sizes a file claims
    ([*TRAIN, "--data", "forged.npz", "--out", "r"], InputError.exit_code, "3,725.3 GiB, over edgernn's bound of 2"),
    ([*TRAIN, "--data", "short.npz", "--out", "r"], InputError.exit_code, "truncated or forged"),
    ([*TRAIN, "--data", "long.npz", "--out", "r"], InputError.exit_code, "over edgernn's bound of 100,000"),
    (["verify", "m.onnx", "--golden", "forged.golden.npz"], ConfigError.exit_code, "over edgernn's bound of 1 GiB"),
    (["verify", "m.onnx", "--golden", "pickle.golden.npz"], ConfigError.exit_code, "never unpickles"),
    # files that are not what they claim, each by its true reason
    ([*TRAIN, "--data", "empty.npz", "--out", "r"], InputError.exit_code, "it is empty (0 bytes)"),
    ([*TRAIN, "--data", "trunc.npz", "--out", "r"], InputError.exit_code, "not a complete .npz (zip) archive"),
    ([*TRAIN, "--data", "npy.npz", "--out", "r"], InputError.exit_code, "a single .npy array, not an .npz"),
    ([*TRAIN, "--data", "pickle.npz", "--out", "r"], InputError.exit_code, "a Python pickle, not an .npz"),
    ([*TRAIN, "--data", "bighdr.npz", "--out", "r"], InputError.exit_code, "20,000-byte header"),
    ([*TRAIN, "--data", "obj.npz", "--out", "r"], InputError.exit_code, "holds Python objects"),
    ([*TRAIN, "--data", "wide", *CSV, "--out", "r"], InputError.exit_code, "field larger than field limit"),
    # numbers: plain ASCII decimals only
    ([*TRAIN, "--data", "separator", *CSV, "--out", "r"], InputError.exit_code, "a value is not a number"),
    ([*TRAIN, "--data", "arabic", *CSV, "--out", "r"], InputError.exit_code, "a value is not a number"),
    # options no run can use
    ([*TRAIN, "--patience", "-1", "--out", "r"], ConfigError.exit_code, "--patience must be"),
    ([*COMPARE, "--task", "sine", "--patience", "-1", "--out", "c"], ConfigError.exit_code, "--patience must be"),
    # compare's resumable state
    ([*COMPARE, "--task", "sine", "--out", "cmp-missing"], ConfigError.exit_code, "field 'baseline' is missing"),
    ([*COMPARE, "--task", "sine", "--out", "cmp-text"], ConfigError.exit_code, "field 'best_metric' is \"good\""),
]


@pytest.mark.parametrize(("args", "code", "phrase"), CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_hostile_data_case(
    folder: Path, args: list[str], code: int, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    r = CliRunner().invoke(main, args)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln and not ln.startswith("note: ")]
    assert r.exit_code == code, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], r.stderr
    assert SECRET not in r.output and "root:x" not in r.output  # nothing of a file that is not a sequence
    assert _snapshot(folder) == before  # nothing written, nothing replaced


def test_only_x_lengths_and_y_are_read(folder: Path, tmp_path: Path) -> None:
    """Another member of the .npz is never decompressed: one whose header claims 10^12 elements is no matter."""
    with zipfile.ZipFile(tmp_path / "extra.npz", "w") as z:
        with zipfile.ZipFile(folder / "ok.npz") as ok:
            for name in ok.namelist():
                z.writestr(name, ok.read(name))
        z.writestr("junk.npy", _forged_member((1000000, 1000000, 1)))
    assert len(dataset.load_dataset(tmp_path / "extra.npz").examples) == 10


@pytest.mark.parametrize(
    ("bound", "value", "words"),
    [
        ("MAX_CSV_FILES", 2, "holds more than 2 .csv files"),
        ("MAX_CSV_BYTES", 20, "MiB for one CSV file"),
        ("MAX_DATA_BYTES", 100, "GiB of training data"),
        ("MAX_STEPS", 4, "more than 4 rows"),
    ],
)
def test_csv_folders_are_bounded(
    folder: Path, monkeypatch: pytest.MonkeyPatch, bound: str, value: int, words: str
) -> None:
    """The bounds are checked before the files are read; here lowered so that a small folder passes them."""
    monkeypatch.setattr(dataset, bound, value)
    monkeypatch.chdir(folder)
    r = CliRunner().invoke(main, [*TRAIN, "--data", "seqs", *CSV, "--out", "r"])
    assert r.exit_code == InputError.exit_code and r.stderr.startswith("error: ") and words in r.stderr, r.stderr
    assert not (folder / "r").exists()


def test_reading_many_csv_files_says_how_far_it_got(folder: Path) -> None:
    """While progress is on, reading a CSV folder writes how far it got at least every 10 s (a clock that jumps
    4 s a look stands in for a slow disk)."""
    from edgernn.progress import reporting

    now = [0.0]

    def clock() -> float:
        now[0] += 4.0
        return now[0]

    out = io.StringIO()
    with reporting(stream=out, clock=clock, heartbeat=False, tty=False):
        dataset.load_dataset(folder / "seqs", target_columns=["level"])
    lines = [ln for ln in out.getvalue().splitlines() if "CSV files read" in ln]
    assert lines and all(f"reading {folder / 'seqs'}: " in ln and "of 3 CSV files read" in ln for ln in lines)


def test_the_corpus_covers_the_review() -> None:
    assert len(CASES) >= 25
