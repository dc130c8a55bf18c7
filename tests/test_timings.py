"""Timings a user can trust: each figure with its spread over rounds and the machine's load when measured
(``edgernn bench``, ``--against``), things timed in interleaved rounds. No assertion here is about how fast
anything is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgernn.cli.main import main
from edgernn.errors import ConfigError
from edgernn.export import export_model
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.verify.bench import Spread, in_turns, machine_load


def test_spread_of_rounds() -> None:
    s = Spread.of([3.0, 1.0, 2.0, 10.0, 2.5])
    assert (s.median, s.low, s.high, s.rounds) == (2.5, 1.0, 10.0, 5)
    calls = Spread.of_calls([1.0, 1.0, 5.0, 5.0, 9.0, 9.0], rounds=3)  # consecutive rounds: medians 1, 5, 9
    assert (calls.low, calls.median, calls.high, calls.rounds) == (1.0, 5.0, 9.0, 3)
    assert Spread.of_calls([2.0, 4.0], rounds=5).rounds == 2  # never more rounds than calls
    assert Spread(2.0, 1.0, 3.0, 5).overlaps(Spread(4.0, 3.0, 5.0, 5))
    assert not Spread(2.0, 1.0, 2.9, 5).overlaps(Spread(4.0, 3.0, 5.0, 5))
    assert Spread(2e-4, 1.5e-4, 4e-4, 5).scaled(1e6) == {"median": 200.0, "low": 150.0, "high": 400.0, "rounds": 5}
    with pytest.raises(ValueError):
        Spread.of([])


def test_in_turns_interleaves_round_by_round() -> None:
    calls: list[str] = []

    def run(name: str):
        return lambda: calls.append(name) or len(calls)

    out = in_turns({"a": run("a"), "b": run("b"), "c": run("c")}, rounds=3)
    assert calls == ["a", "b", "c"] * 3
    assert out == {"a": [1, 4, 7], "b": [2, 5, 8], "c": [3, 6, 9]}
    with pytest.raises(ConfigError, match="rounds must be at least 1"):
        in_turns({"a": run("a")}, rounds=0)


def test_machine_load_names_the_load_and_cpus() -> None:
    load = machine_load()
    assert load["cpus"] == os.cpu_count() and load["at"].endswith("Z")
    if hasattr(os, "getloadavg"):
        assert all(isinstance(load[k], float) and load[k] >= 0 for k in ("load_1m", "load_5m", "load_15m"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("timings")
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=4))
    export_model(model, d / "native.onnx", strategy="native")
    export_model(model, d / "loop.onnx", strategy="loop")
    return d / "native.onnx", d / "loop.onnx"


def test_bench_json_has_spread_rounds_and_load(files: tuple[Path, Path]) -> None:
    native, _ = files
    args = ["bench", str(native), "--steps", "12", "--repeats", "6", "--seq-len", "5", "--rounds", "3"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    for key, n in (("step", 12), ("sequence", 6)):
        s = rep["spread_ms"][key]
        assert s["rounds"] == 3 and 0 < s["low"] <= s["median"] <= s["high"]
        assert rep[key]["n"] == n
    assert rep["load"]["cpus"] == os.cpu_count() and "load_1m" in rep["load"]
    assert "belong to the machine and moment" in rep["timings_note"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "over 3 rounds" in r.output and f"on {os.cpu_count()} CPUs" in r.output
    assert "timings belong to the machine and moment they were taken" in r.output


def test_bench_against_json_has_spread_overlap_and_load(files: tuple[Path, Path]) -> None:
    native, loop = files
    args = ["bench", str(native), "--against", str(loop), "--steps", "5", "--repeats", "2", "--seq-len", "4"]
    r = CliRunner().invoke(main, [*args, "--rounds", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["rounds"] == 2 and out["load"]["cpus"] == os.cpu_count()
    for which in ("model", "other"):
        s = out[which]["spread_ms"]["sequence"]
        assert s["rounds"] == 2 and s["low"] <= out[which]["sequence_p50_ms"] <= s["high"]
    assert set(out["overlap"]) == {"step", "sequence"} and all(isinstance(v, bool) for v in out["overlap"].values())
    r = CliRunner().invoke(main, [*args, "--rounds", "2"])
    assert r.exit_code == 0 and "measured: load" in r.output and "belong to the machine" in r.output


def test_against_says_when_the_two_overlap() -> None:
    from edgernn.verify.bench import format_against

    side = {"path": "m.onnx", "bytes": 2048, "step_p50_ms": 0.05, "sequence_p50_ms": 1.0}
    result = {
        "model": side,
        "other": {**side, "path": "q.onnx", "sequence_p50_ms": 0.5},
        "ratios": {"size": 1.0, "step_speed": 1.0, "sequence_speed": 2.0},
        "rounds": 3,
        "overlap": {"step": False, "sequence": True},
        "load": {"load_1m": 16.0, "cpus": 2, "at": "2026-12-07T06:00:00Z"},
    }
    text = format_against(result)
    assert "2x faster per sequence" in text
    assert "per sequence the two overlap within their spread" in text and "per step the two" not in text
    assert "measured: load 16 on 2 CPUs at 2026-12-07T06:00:00Z; timings belong to the machine" in text
    old = {k: v for k, v in result.items() if k not in ("overlap", "load")}  # a result saved before these
    assert "measured: load not recorded" in format_against(old)


def test_compare_records_each_latency_with_its_range_and_the_load(tmp_path: Path) -> None:
    from edgernn.workflows.compare import compare

    budget = {"epochs": 1, "n_train": 32, "n_val": 16, "batch_size": 32, "min_len": 6, "max_len": 6, "patience": 0}
    result = compare(tmp_path / "cmp", cells=["gru"], hiddens=[4], task="adding", strategy="native",
                     train_options=budget)  # fmt: skip
    (c,) = result.candidates
    ns = 1e-6  # the ranges are kept to the nanosecond
    low, high = c.sequence_ms_range
    assert 0 < low <= high and low - ns / 2 <= c.sequence_ms <= high + ns / 2  # the median lies within the rounds
    assert c.step_us_range is not None and c.step_us_range[0] - 5e-4 <= c.step_us <= c.step_us_range[1] + 5e-4
    assert result.rounds == 5 and result.load["cpus"] == os.cpu_count()
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["candidates"][0]["sequence_ms_range"] == [low, high] and saved["load"] == result.load
    assert "belong to the machine and moment" in saved["timings_note"]
    table = result.table()
    assert f"on {os.cpu_count()} CPUs" in table and "the median of 5 rounds" in table
