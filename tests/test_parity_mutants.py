"""The parity machinery's own numbers, case by case: which cases a model is checked at, the inputs made for them,
where a failing output is reported, and chained (streaming) parity against a whole-sequence reference. Each test
pins a behaviour of edgernn/verify/parity.py that a one-token change to it would alter."""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.errors import ConfigError
from edgernn.manifest import StateSpec, TensorSpec
from edgernn.verify.parity import (
    MAX_INPUT_VALUES,
    Case,
    Comparison,
    ParityReport,
    Tolerance,
    align_chunk,
    case_from_shapes,
    cases_for,
    check,
    check_chained,
    check_input_size,
    first_excess,
    given_inputs,
    make_inputs,
)

X = TensorSpec("x", "float32", ["batch", "time", 2])
LENGTHS = TensorSpec("lengths", "int64", ["batch"], role="lengths")
STATE = TensorSpec("h0", "float32", ["batch", 2], role="state")
TOL = Tolerance(atol=1e-5, rtol=1e-5)


def test_cases_for_each_kind_of_export() -> None:
    shapes = lambda cs: [(c.batch, c.length, c.padded) for c in cs]  # noqa: E731
    assert shapes(cases_for(has_lengths=True)) == [(1, 1, False), (1, 31, False), (3, 17, False), (2, 257, False),
                                                   (3, 17, True)]  # fmt: skip
    # without a lengths input the padded case is dropped, and only it
    assert shapes(cases_for(has_lengths=False)) == [(1, 1, False), (1, 31, False), (3, 17, False), (2, 257, False)]
    assert shapes(cases_for(has_lengths=True, fixed_length=9)) == [(1, 9, False), (3, 9, False), (3, 9, True)]
    assert shapes(cases_for(has_lengths=False, fixed_length=9)) == [(1, 9, False), (3, 9, False)]


def test_given_inputs_read_batch_and_length_from_the_first_input_of_rank_two_or_more() -> None:
    lengths = np.array([4, 2, 1], dtype=np.int64)
    mask = np.ones((3, 5), dtype=np.float32)
    case = given_inputs({"lengths": lengths, "mask": mask, "x": np.zeros((3, 5, 2), dtype=np.float32)})
    assert (case.batch, case.length) == (3, 5)  # the rank-2 mask, not the rank-1 lengths
    case = given_inputs({"lengths": lengths, "mask": mask})
    assert (case.batch, case.length) == (3, 5)
    case = given_inputs({"lengths": lengths})
    assert (case.batch, case.length) == (1, 1)


def test_case_from_shapes_takes_the_time_axis_from_the_shapes_given() -> None:
    case = case_from_shapes([X, LENGTHS], {"x": (4, 11, 2)})
    assert (case.batch, case.length) == (4, 11)
    assert dict(case.dims) == {"batch": 4, "time": 11}
    case = case_from_shapes([X, LENGTHS], {"lengths": (5,)})
    assert (case.batch, case.length) == (5, 17)  # no time given: 17


def test_the_input_bound_message_gives_the_size_in_gib() -> None:
    with pytest.raises(ConfigError) as e:
        check_input_size("x", [2, MAX_INPUT_VALUES // 2, 2])  # 2**29 values of 4 bytes: 2 GiB
    assert "~2.0 GiB" in str(e.value) and "536,870,912 values" in str(e.value)
    check_input_size("x", [1, MAX_INPUT_VALUES])  # at the bound: accepted


def test_made_inputs_leave_states_out_and_draw_ints_from_zero() -> None:
    tokens = TensorSpec("tokens", "int64", ["batch", "time"])
    feed = make_inputs([tokens, X, LENGTHS, STATE], Case(4, 50), np.random.default_rng(0), int_high=3)
    assert set(feed) == {"tokens", "x", "lengths"}
    assert set(np.unique(feed["tokens"]).tolist()) == {0, 1, 2}
    assert feed["x"].shape == (4, 50, 2) and feed["x"].dtype == np.float32
    assert feed["lengths"].tolist() == [50, 50, 50, 50]
    padded = make_inputs([X, LENGTHS], Case(3, 17, padded=True), np.random.default_rng(0))["lengths"]
    assert padded[0] == 1 and padded[-1] == 17 and np.all((padded >= 1) & (padded <= 17))


def test_check_feeds_states_only_when_asked() -> None:
    seen: list[set[str]] = []

    def reference(feed):
        seen.append(set(feed))
        return [feed["x"].sum(axis=2)]

    report = check(reference, {"same": reference}, [X, STATE], ["y"], [Case(2, 3)])
    assert report.passed and seen[0] == {"x"}
    seen.clear()
    report = check(reference, {"same": reference}, [X, STATE], ["y"], [Case(2, 3)], states=True)
    assert report.passed and seen[0] == {"x", "h0"}


def test_first_excess_names_the_step_of_a_rank_three_output() -> None:
    ref = np.zeros((2, 4, 3))
    got = ref.copy()
    got[1, 2, 0] = 1.0
    got[0, 3, 2] = 1.0
    f = first_excess(ref, got, TOL)
    assert f is not None
    assert f["index"] == [1, 2, 0] and f["step"] == 2 and f["batch item"] == 1  # the earliest step first
    assert f["candidate"] == 1.0 and f["reference"] == 0.0 and f["diff"] == 1.0
    f2 = first_excess(ref[:, 0, :], got[:, 2, :], TOL)  # rank 2: (batch, ...), no step
    assert f2 is not None and f2["index"] == [1, 0] and f2["step"] is None and f2["batch item"] == 1


def test_the_table_shows_where_at_most_five_failures_first_leave_the_tolerance() -> None:
    first = {
        "index": [0, 0],
        "batch item": 0,
        "step": 0,
        "candidate": 1.0,
        "reference": 0.0,
        "diff": 1.0,
        "bound": 1e-5,
    }
    report = ParityReport("fp32", 1e-5, 1e-5)
    report.comparisons = [Comparison(f"case{i}", "onnxruntime:cpu", "y", 1.0, 1.0, False, first) for i in range(7)]
    lines = report.table().splitlines()
    assert sum(line.startswith("where: ") for line in lines) == 5
    assert lines[-1].startswith("parity FAIL")


def test_align_chunk_compares_the_prefix_calls_last_steps() -> None:
    want = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(align_chunk(want, np.zeros((2, 3, 3))), want[:, 2:, :])
    # a chunk call longer than the prefix call, or two axes that differ: compared whole (and reported as a mismatch)
    np.testing.assert_array_equal(align_chunk(want[:, :2], np.zeros((2, 3, 3))), want[:, :2])
    np.testing.assert_array_equal(align_chunk(want, np.zeros((1, 3, 3))), want)


# A leaky sum as the model: h_t = 0.5 h_{t-1} + x_t, y_t = h_t (a real recurrence: chunks must carry the state)
H = StateSpec("h_in", "h_out", ["batch", 2])


def _run(x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys = []
    for t in range(x.shape[1]):
        h = 0.5 * h + x[:, t]
        ys.append(h)
    return np.stack(ys, axis=1).astype(np.float32), h.astype(np.float32)


def _reference(feed):
    x = feed["x"]
    return list(_run(x, np.zeros((x.shape[0], 2), dtype=np.float32)))


def _step(feed):
    return list(_run(feed["x"], feed["h_in"]))


def test_chained_parity_of_a_real_recurrence_passes_and_notes_nothing() -> None:
    report = check_chained(_reference, _step, [X], [H], ["y"], 3, [Case(2, 7)], oracle=lambda f: _reference(f)[:1])
    assert report.passed and report.notes == []
    assert [(c.case, c.candidate, c.output) for c in report.comparisons] == [
        ("B=2 T=9 chained K=3", "onnxruntime:cpu", "y"),
        ("B=2 T=9 chained K=3", "onnxruntime:cpu", "h_out"),
        ("B=2 T=9", "numpy", "y"),
    ]
    assert all(c.max_abs == 0.0 for c in report.comparisons)


def test_chained_parity_fails_a_step_that_forgets_its_state() -> None:
    forgets = lambda feed: _step({**feed, "h_in": np.zeros_like(feed["h_in"])})  # noqa: E731
    report = check_chained(_reference, forgets, [X], [H], ["y"], 3, [Case(2, 7)])
    assert not report.passed and {c.output for c in report.failures()} == {"y", "h_out"}


def test_chained_parity_on_given_inputs_streams_whole_chunks() -> None:
    x = np.random.default_rng(1).standard_normal((2, 7, 2)).astype(np.float32)
    report = check_chained(_reference, _step, [X], [H], ["y"], 3, [given_inputs({"x": x}, "mine")])
    assert report.passed and [c.case for c in report.comparisons] == ["mine chained K=3"] * 2


def test_chained_parity_notes_an_output_the_stream_cannot_give() -> None:
    def last_only(feed):  # the module returns only the last step, the step call every step of its chunk
        y, h = _reference(feed)
        return [y[:, -1:], h]

    def step_all(feed):
        y, h = _step(feed)
        return [np.concatenate([y, y], axis=2), h]

    report = check_chained(last_only, step_all, [X], [H], ["y"], 3, [Case(2, 6)])
    assert not report.passed
    assert len(report.notes) == 1 and report.notes[0].startswith(
        "output y: a call on 3 step(s) returns shape (2, 3, 4)"
    )


def test_chained_parity_refuses_an_oracle_with_too_few_outputs() -> None:
    two = TensorSpec("x", "float32", ["batch", "time", 2])

    def reference(feed):
        y, h = _reference(feed)
        return [y, 2 * y, h]

    def step(feed):
        y, h = _step(feed)
        return [y, 2 * y, h]

    with pytest.raises(ValueError):  # a silently shorter comparison would pass outputs nobody checked
        check_chained(reference, step, [two], [H], ["y", "z"], 3, [Case(2, 6)], oracle=lambda f: _reference(f)[:1])
