"""benchmarks/anchors.py at tiny sizes: its JSON has the promised structure, and every candidate it timed was
checked against torch first (no timing is asserted: the machine is shared)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "anchors.py"
CANDIDATES = {"edgernn", "ort_bound", "torch", "executorch", "tract", "openvino"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("anchors-cache")  # ExecuTorch's lowered programs, where it is installed
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cells", "gru", "--features", "3", "--hidden", "4", "--layers", "2",
         "--outputs", "2", "--seq-len", "4", "--rounds", "2", "--calls", "3", "--cache", str(cache), "--json"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_json_structure(report: dict) -> None:
    assert set(report) >= {"step", "sequence", "ratios", "machine", "load", "date", "rounds", "command"}
    assert report["rounds"] == 2
    assert set(report["load"]) == {"before", "after"} and "load_1m" in report["load"]["before"]
    for part in ("step", "sequence"):
        entries = report[part]["gru"]
        assert {f"{c}_us" for c in CANDIDATES} <= set(entries)
        # edgernn and torch are always there; the step also has the bare bound onnxruntime call (the floor)
        assert entries["edgernn"]["status"] == "timed" and entries["torch"]["status"] == "timed"
        assert isinstance(entries["edgernn_us"], float) and entries["edgernn_us"] > 0
    assert report["step"]["gru"]["ort_bound"]["status"] == "timed"
    assert report["sequence"]["gru"]["ort_bound_us"] is None  # a step-only candidate


def test_every_timed_candidate_was_checked_against_torch(report: dict) -> None:
    seen = 0
    for part in ("step", "sequence"):
        for name, entry in report[part]["gru"].items():
            if name.endswith("_us"):  # a figure only for a candidate that was checked and timed
                if entry is not None:
                    assert report[part]["gru"][name[:-3]]["status"] == "timed"
                continue
            assert entry["status"] in {"timed", "missing", "failed", "wrong", "not measured"}, entry
            if entry["status"] == "timed":
                seen += 1
                assert entry["max_abs_diff"] <= 1e-5  # checked, within tolerance, before it was timed
                assert report[part]["gru"][f"{name}_us"] == entry["us"]
                assert entry["spread_us"]["rounds"] == 2
            else:  # not timed: said why, and no figure faked
                assert entry["why"] and report[part]["gru"][f"{name}_us"] is None
            if entry["status"] == "missing":
                assert "pip install" in entry["why"]
    assert seen >= 5


def test_markdown_names_every_candidate(report: dict) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import anchors

    text = anchors.markdown(report)
    assert all(c in text for c in CANDIDATES) and report["command"] in text and "| step | gru |" in text


def _anchors():
    sys.path.insert(0, str(SCRIPT.parent))
    import anchors

    return anchors


DIMS = (3, 4, 2, 2)  # features, hidden, layers, outputs


def test_cache_key_follows_the_model_its_weights_and_t() -> None:
    import torch

    anchors = _anchors()
    shapes = [(1, 4, 3), (2, 1, 4)]
    twin = anchors.plain_twin(anchors.build("gru", *DIMS))
    key = anchors.cache_key(twin, shapes)
    assert anchors.cache_key(anchors.plain_twin(anchors.build("gru", *DIMS)), shapes) == key  # the same model
    assert anchors.cache_key(twin, [(1, 5, 3), (2, 1, 4)]) != key  # another T
    lstm = anchors.plain_twin(anchors.build("lstm", *DIMS))
    assert anchors.cache_key(lstm, [*shapes, (2, 1, 4)]) != key
    assert anchors.cache_key(anchors.plain_twin(anchors.build("gru", 3, 5, 2, 2)), [(1, 4, 3), (2, 1, 5)]) != key
    with torch.no_grad():
        twin.rnn.weight_hh_l1[0, 0] += 1e-6  # one weight, barely changed
    assert anchors.cache_key(twin, shapes) != key


def test_cache_is_never_read_for_another_model(tmp_path: Path) -> None:
    anchors = _anchors()
    path = anchors.cache_path("gru", DIMS, 4, tmp_path)
    path.write_bytes(b"the gru's T=4 program")
    info: dict = {}
    assert anchors.cached_pte("gru", DIMS, 4, tmp_path, 0.001, info) == b"the gru's T=4 program"
    assert info["cached"] is True and info["cache_key"] in path.name
    for cell, dims, seq_len in [("lstm", DIMS, 4), ("gru", (3, 5, 2, 2), 4), ("gru", DIMS, 5), ("gru", DIMS, None)]:
        assert anchors.cache_path(cell, dims, seq_len, tmp_path) != path
        info = {}
        # not in the cache: lowered (not within 1 ms) where ExecuTorch is installed, missing where it is not
        with pytest.raises((anchors.Missing, anchors.NotMeasured)):
            anchors.cached_pte(cell, dims, seq_len, tmp_path, 0.001, info)
        assert info["cached"] is False
    assert [f.name for f in tmp_path.iterdir()] == [path.name]  # nothing half-written beside it
