"""What a new user meets in the first hour: training that says what it does and leaves a record, files written
with normal permissions, every demo strategy working, inputs to start from, and small errors named as the
command line spells them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli import main
from edgernn.errors import ConfigError
from edgernn.files import write_atomic
from edgernn.train.loop import TrainConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("first") / "run"
    r = CliRunner().invoke(main, ["train", "--epochs", "3", "--n-train", "64", "--hidden", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, r.output


def test_training_logs_one_line_per_epoch_when_not_on_a_terminal(run: tuple[Path, str]) -> None:
    _, output = run
    lines = [ln for ln in output.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss" in ln and "val mse" in ln and ln.endswith("s") for ln in lines)


def test_training_leaves_config_and_history_that_agree(run: tuple[Path, str]) -> None:
    out, output = run
    hist = json.loads((out / "history.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "sine" and config["model_config"]["hidden_size"] == 8
    assert config["train_config"]["epochs"] == 3
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_mse,seconds" and len(rows) == 4
    assert [float(r.split(",")[2]) for r in rows[1:]] == pytest.approx(hist["val_metric"])
    # the best epoch is counted from 1 everywhere: the message, history.json and the csv
    best = hist["best_epoch"]
    assert f"at epoch {best} (input-blind baseline" in output
    assert float(rows[best].split(",")[2]) == pytest.approx(hist["best_metric"])


def test_plot_draws_the_history(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    png = tmp_path / "h.png"
    r = CliRunner().invoke(main, ["plot", str(out), "--out", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    r = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert r.exit_code == ConfigError.exit_code and "no training history" in r.output


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize("option", ["--lr", "--clip", "--l1", "--weight-decay"])
def test_non_finite_training_options_are_refused(option: str, value: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["train", option, value, "--epochs", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == ConfigError.exit_code and "must be a finite number" in r.output
    assert not (tmp_path / "r").exists()


def test_an_empty_training_set_is_refused() -> None:
    with pytest.raises(ConfigError, match="n_train and n_val must be at least 1"):
        TrainConfig(n_train=0)


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["loop", "unroll", "step"])
def test_every_demo_strategy_works(strategy: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["demo", "--strategy", strategy, "--epochs", "1", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "[4/4] parity PASS" in r.output


@pytest.fixture(scope="module")
def unroll(run: tuple[Path, str]) -> Path:
    out, _ = run
    path = out.parent / "u.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "--strategy", "unroll", "--seq-len", "12", "--out", str(path)])
    assert r.exit_code == 0, r.output
    return path


def test_run_an_unroll_export_at_its_length_without_lengths(unroll: Path, tmp_path: Path) -> None:
    from edgernn.model import checkpoint

    x = np.random.default_rng(0).standard_normal((2, 12, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(
        main, ["run", str(unroll), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]
    )
    assert r.exit_code == 0, r.output
    model = checkpoint.load(unroll.parent / "run").model()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5)
    np.save(tmp_path / "l.npy", np.array([13, 3]))
    r = CliRunner().invoke(
        main,
        [
            "run",
            str(unroll),
            "--input",
            str(tmp_path / "x.npy"),
            "--lengths",
            str(tmp_path / "l.npy"),
            "--output",
            str(tmp_path / "z.npy"),
        ],
    )
    assert r.exit_code == 7 and "every length must be in 1..12" in r.output


def test_run_random_prints_an_output_to_start_from(unroll: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(unroll), "--random", "--output", "-"])
    assert r.exit_code == 0, r.output
    header, row = r.output.strip().splitlines()
    assert header == "# y (1, 1)"
    values = [float(v) for v in row.split(",")]
    assert len(values) == 1 and np.isfinite(values).all()
    again = CliRunner().invoke(main, ["run", str(unroll), "--random", "--output", "-"])
    assert again.output == r.output  # seeded
    bare = CliRunner().invoke(main, ["run", str(unroll), "--random", "--output", "-", "--no-header"])
    assert bare.exit_code == 0 and bare.output.strip() == row


@pytest.fixture(scope="module")
def nnapi_step(run: tuple[Path, str]) -> tuple[Path, str]:
    """`export --target nnapi` with no --strategy: the strategy nnapi takes, said on stderr."""
    out, _ = run
    path = out.parent / "nnapi.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "--target", "nnapi", "--out", str(path)])
    assert r.exit_code == 0, r.output
    return path, r.stderr


def test_export_for_nnapi_without_a_strategy_takes_step(nnapi_step: tuple[Path, str]) -> None:
    from edgernn.runtime.model import Model

    path, stderr = nnapi_step
    assert "note: --target nnapi: strategy step (nnapi takes unroll, step; unroll needs --seq-len" in stderr
    assert Model(path).manifest.strategy == "step"


def test_export_for_coreml_with_a_length_takes_unroll(run: tuple[Path, str], tmp_path: Path) -> None:
    from edgernn.runtime.model import Model

    out, _ = run
    path = tmp_path / "c.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "--target", "coreml", "--seq-len", "6", "--out", str(path)])
    assert r.exit_code == 0, r.output
    assert "note: --target coreml: strategy unroll" in r.stderr
    assert Model(path).manifest.strategy == "unroll"


def test_printed_outputs_are_named_with_their_shapes(nnapi_step: tuple[Path, str], tmp_path: Path) -> None:
    """Every output under its `# NAME (SHAPE)` line, with the numbers the .npz of the same run holds."""
    path, _ = nnapi_step
    r = CliRunner().invoke(main, ["run", str(path), "--random", "--output", "-"])
    assert r.exit_code == 0, r.output
    blocks: dict[str, tuple[str, list[list[float]]]] = {}
    for line in r.output.strip().splitlines():
        if line.startswith("# "):
            name, shape = line[2:].split(" ", 1)
            blocks[name] = (shape, [])
        else:
            blocks[name][1].append([float(v) for v in line.split(",")])
    f = CliRunner().invoke(main, ["run", str(path), "--random", "--output", str(tmp_path / "all.npz")])
    assert f.exit_code == 0, f.output
    saved = np.load(tmp_path / "all.npz")
    assert next(iter(blocks)) == "y" and sorted(blocks) == sorted(saved.files) and len(blocks) > 1
    for name, (shape, rows) in blocks.items():
        assert shape == str(tuple(saved[name].shape))
        want = saved[name].reshape(-1, saved[name].shape[-1])
        np.testing.assert_allclose(np.array(rows), want, rtol=1e-7)
    j = CliRunner().invoke(main, ["run", str(path), "--random", "--output", str(tmp_path / "y.npy"), "--json"])
    assert j.exit_code == 0 and json.loads(j.stdout)["primary"] == "y"
    bad = CliRunner().invoke(main, ["run", str(path), "--random", "--output", str(tmp_path / "z.npy"), "--no-header"])
    assert bad.exit_code == 2 and "--no-header goes with --output -" in bad.output


def test_inspect_states_the_feature_size_first(unroll: Path) -> None:
    lines = CliRunner().invoke(main, ["inspect", str(unroll)]).output.splitlines()
    assert lines[3] == "feeds: x (batch, 12, 1): 1 feature(s) per step"


def test_a_stream_that_ends_inside_a_chunk_says_so(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    path = tmp_path / "s.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "--strategy", "step", "--chunk", "4", "--out", str(path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", str(path), "--stream"], input="0.1\n0.2\n0.3\n0.4\n0.5\n")
    assert r.exit_code == 0
    assert len(r.stdout.strip().splitlines()) == 1  # one chunk of 4 run: the last-step readout, once
    assert "ended 1 frame(s) into a chunk of 4; they were not run" in r.stderr


def test_export_says_what_it_replaced_and_names_outputs(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    target = tmp_path / "m.onnx"
    first = CliRunner().invoke(main, ["export", "--strategy", "native", str(out), "--out", str(target)])
    second = CliRunner().invoke(main, ["export", "--strategy", "native", str(out), "--out", str(target)])
    assert "wrote " + str(target) in first.output and "replaced " + str(target) in second.output
    r = CliRunner().invoke(
        main, ["export", "--strategy", "native", str(out), "--output-name", "z", "--out", str(target)]
    )
    assert r.exit_code == ConfigError.exit_code and "--output-name goes with --module" in r.output
