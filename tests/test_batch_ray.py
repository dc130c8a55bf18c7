"""Batch inference: `edgernn run --input DIR --output DIR [--ray]` and Ray Data's ``map_model``, each checked
against `edgernn run` on every shard, bit for bit.

The directory tests without Ray use small ONNX graphs (no torch, quick). The Ray tests share one local cluster of
2 CPUs for the module, run edgernn exports of a 2-layer LSTM (native with lengths, and step) and are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from test_stream_models import lengths_model, stateless_model, step_model

from edgernn.cli.runtime import run
from edgernn.errors import ConfigError

FEATURES = 3


def invoke(args: list[Any]) -> Result:
    result = CliRunner().invoke(run, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def make_shards(folder: Path, sizes: list[tuple[int, int]], *, seed: int = 0, npz: bool = False) -> dict[str, Any]:
    """Shards of (batch, time, FEATURES) float32, named s0.npy, s1.npy, ... (the last one a .npz with x when
    ``npz``); returns each shard's array by file name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (b, t) in enumerate(sizes):
        x = rng.standard_normal((b, t, FEATURES)).astype(np.float32)
        if npz and k == len(sizes) - 1:
            name = f"s{k}.npz"
            np.savez(folder / name, x=x)
        else:
            name = f"s{k}.npy"
            np.save(folder / name, x)
        out[name] = x
    return out


def run_each(model: Path, shards: Path, names: list[str], out: Path) -> dict[str, Path]:
    """`edgernn run MODEL --input SHARD --output OUT/SHARD` for each shard: the reference outputs."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        r = invoke([model, "--input", shards / name, "--output", out / name])
        assert r.exit_code == 0, r.output
        paths[name] = out / name
    return paths


def same_files(a: Path, b: Path) -> None:
    if a.suffix == ".npz":
        with np.load(a) as x, np.load(b) as y:
            assert set(x.files) == set(y.files)
            for k in x.files:
                assert np.array_equal(x[k], y[k]), (a.name, k)
    else:
        assert np.array_equal(np.load(a), np.load(b)), a.name


# --------------------------------------------------------------------------------------- a directory, no Ray


@pytest.fixture
def small_models(tmp_path: Path) -> dict[str, Path]:
    models = {
        "stateless": stateless_model(FEATURES),
        "lengths": lengths_model(FEATURES),
        "step": step_model("gru", FEATURES, 8, 2, time=1),
    }
    out = {}
    for name, data in models.items():
        out[name] = tmp_path / f"{name}.onnx"
        out[name].write_bytes(data)
    return out


def test_a_directory_runs_each_shard_as_run_does(small_models: dict[str, Path], tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    arrays = make_shards(shards, [(2, 5), (3, 7), (1, 4)], npz=True)
    np.savez(shards / "padded.npz", x=arrays["s0.npy"], lengths=np.array([5, 2]))  # a shard with its own lengths
    (shards / "notes.txt").write_text("not a shard")
    (shards / "sub").mkdir()
    np.save(shards / "sub" / "inner.npy", np.zeros((1, 2, FEATURES), np.float32))  # subfolders are not entered
    names = [*sorted(arrays), "padded.npz"]
    want = run_each(small_models["lengths"], shards, names, tmp_path / "want")
    out = tmp_path / "out"
    r = invoke([small_models["lengths"], "--input", shards, "--output", out])
    assert r.exit_code == 0, r.output
    assert "wrote 4 of 4 shard output(s)" in r.output and "skipped 2 other file(s)" in r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for n in names:
        same_files(want[n], out / n)
    r = invoke([small_models["lengths"], "--input", shards, "--output", tmp_path / "o", "--json"])
    report = json.loads(r.stdout)  # stdout alone: Ray may log to stderr while actors stop
    assert report["written"] == 4 and report["failed"] == 0 and report["skipped"] == ["notes.txt", "sub"]
    assert report["shards"][0]["name"] == "padded.npz" and report["shards"][0]["shape"] == [2, 5, FEATURES]
    # without lengths; and a stateful model, each shard from the initial state as `run` runs it
    plain = tmp_path / "plain"
    arrays = make_shards(plain, [(2, 5), (3, 7)], seed=1)
    for name in ("stateless", "step"):
        want = run_each(small_models[name], plain, sorted(arrays), tmp_path / f"want-{name}")
        r = invoke([small_models[name], "--input", plain, "--output", tmp_path / f"out-{name}"])
        assert r.exit_code == 0, r.output
        for n in arrays:
            same_files(want[n], tmp_path / f"out-{name}" / n)


def test_a_refused_shard_is_reported_and_the_others_written(small_models: dict[str, Path], tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    make_shards(shards, [(2, 5), (1, 3)])
    np.save(shards / "wide.npy", np.zeros((1, 4, FEATURES + 1), np.float32))
    r = invoke([small_models["stateless"], "--input", shards, "--output", tmp_path / "out"])
    assert r.exit_code == 7, r.output  # the refused shard's own exit code (input data)
    assert "wrote 2 of 3" in r.output and "error: wide.npy:" in r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0.npy", "s1.npy"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{shards}"], "is the input directory"),
        (["--output", "{tmp}/y.npy"], "looks like a file"),
        (["--output", "-"], "needs --output DIR"),
        (["--output", "{tmp}/o", "--actors", "2"], "--actors goes with --ray"),
        (["--output", "{tmp}/o", "--stream"], "drop --stream"),
    ],
)
def test_directory_option_errors(small_models: dict[str, Path], tmp_path: Path, extra: list[str], message: str) -> None:
    shards = tmp_path / "shards"
    make_shards(shards, [(1, 2)])
    args = [a.format(shards=shards, tmp=tmp_path) for a in extra]
    r = invoke([small_models["stateless"], "--input", shards, *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_ray_options_need_a_directory(small_models: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 2, FEATURES), np.float32))
    r = invoke([small_models["stateless"], "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--ray"])
    assert r.exit_code == 2 and "--input DIR --output DIR" in r.output


# ---------------------------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray = pytest.importorskip("ray", reason="Ray Data tests need ray: pip install 'edgernn[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data tests need ray[data]: pip install 'edgernn[ray]'")
    from edgernn.serve.ray import local_ray_options

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", **local_ray_options())  # 127.0.0.1 only
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """edgernn exports of one 2-layer LSTM with a per-step readout: native (x, lengths) and step."""
    pytest.importorskip("torch", reason="the exports are made with torch")
    import torch

    from edgernn import ModelConfig, build_model
    from edgernn.export import export_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(cell="lstm", input_size=FEATURES, hidden_size=16, num_layers=2, output_size=2, readout="all")
    )
    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for strategy in ("native", "step"):
        out[strategy] = folder / f"{strategy}.onnx"
        export_model(model, out[strategy], strategy=strategy, verify=False)  # parity is tested elsewhere
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy, mode", [("native", "sequence"), ("step", "step")])
def test_map_model_equals_run_on_each_shard(
    cluster: Any, exports: dict[str, Path], tmp_path: Path, strategy: str, mode: str
) -> None:
    from edgernn.batch.ray import map_model

    shards = tmp_path / "shards"
    arrays = make_shards(shards, [(3, 7), (2, 12), (4, 5), (1, 9)], seed=1)
    want = run_each(exports[strategy], shards, sorted(arrays), tmp_path / "want")
    rows = [{"shard": n, "row": j, "x": x[j]} for n, x in arrays.items() for j in range(len(x))]
    ds = cluster.data.from_items(rows)
    # batches of 4 rows cross shards: rows of different lengths share a call (padded, with lengths / by length)
    got = map_model(ds, exports[strategy], batch_size=4, concurrency=2, mode=mode).take_all()
    assert len(got) == len(rows)
    for r in got:
        ref = np.load(want[r["shard"]])[r["row"]]
        assert r["y"].shape == ref.shape and np.array_equal(r["y"], ref), (r["shard"], r["row"])
        assert np.array_equal(r["x"], arrays[r["shard"]][r["row"]])  # the other columns pass through
    # rows stored padded to one length, with their real lengths in a column: the same outputs
    longest = max(x.shape[1] for x in arrays.values())
    padded = [{**r, "x": np.pad(r["x"], ((0, longest - len(r["x"])), (0, 0))), "n": len(r["x"])} for r in rows]
    got = map_model(
        cluster.data.from_items(padded), exports[strategy], batch_size=5, lengths_column="n", output_column="out"
    ).take_all()
    for r in got:
        assert np.array_equal(r["out"], np.load(want[r["shard"]])[r["row"]]), (r["shard"], r["row"])
    other = "step" if mode == "sequence" else "sequence"
    with pytest.raises(ConfigError, match=f"use mode='{mode}'"):
        map_model(ds, exports[strategy], mode=other)


@pytest.mark.slow
def test_run_ray_directory_equals_run_on_each_shard(cluster: Any, exports: dict[str, Path], tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    arrays = make_shards(shards, [(2, 6), (3, 4), (1, 11), (2, 3), (4, 8)], seed=2, npz=True)
    for strategy in ("native", "step"):
        want = run_each(exports[strategy], shards, sorted(arrays), tmp_path / f"want-{strategy}")
        out = tmp_path / f"out-{strategy}"
        r = invoke([exports[strategy], "--input", shards, "--output", out, "--ray", "--actors", "2", "--json"])
        assert r.exit_code == 0, r.output
        report = json.loads(r.stdout)  # stdout alone: Ray may log to stderr while actors stop
        assert report["written"] == len(arrays) and report["where"] == "ray (2 actor(s))"
        assert sorted(p.name for p in out.iterdir()) == sorted(arrays)  # no temporary files left behind
        for name in arrays:
            same_files(want[name], out / name)
