"""Streams over one stateful model: per-stream state, chunks, batched serving, threads, third-party models."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_stream_models import accumulator_model, stateless_model, step_model, third_party_model

from edgernn.errors import ConfigError, InputError, ModelFormatError
from edgernn.runtime import Model
from edgernn.runtime.states import StatePair, parse_state
from edgernn.runtime.stream import Stream, StreamingModel

F, H, L = 3, 8, 2


def frames(n: int, seed: int, features: int = F) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)


def full_sequence(cell: str, x: np.ndarray) -> np.ndarray:
    """The reference: the same weights with a dynamic time axis, run over the whole sequence in one call."""
    full = Model(step_model(cell, F, H, L, time="time"))
    zeros = {n: np.zeros((L, 1, H), np.float32) for n in (["h_in", "c_in"] if cell == "lstm" else ["h_in"])}
    return full.run_feed({"x": x[None], **zeros})["y"][0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("chunk", [1, 4])
def test_chained_steps_equal_one_full_sequence_call(cell: str, chunk: int) -> None:
    x = frames(48, seed=1)
    ref = full_sequence(cell, x)
    sm = StreamingModel(step_model(cell, F, H, L, time=chunk))
    assert sm.chunk == chunk and sm.features == F
    s = sm.stream()
    if chunk == 1:
        got = np.concatenate([s.step(f) for f in x])  # one frame (F,) per call
    else:
        got = np.concatenate([s.step(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert s.steps == len(x) // chunk
    np.testing.assert_allclose(sm.run_sequence(x[None])["y"][0], ref, rtol=0, atol=1e-6)


def test_dynamic_time_axis_takes_any_chunk_length() -> None:
    x = frames(20, seed=2)
    sm = StreamingModel(step_model("lstm", F, H, L, time="time"))
    assert sm.chunk is None
    s = sm.stream()
    got = np.concatenate([s.step(x[:1]), s.step(x[1:8]), s.step(x[8]), s.step(x[9:])])
    np.testing.assert_allclose(got, full_sequence("lstm", x), rtol=0, atol=1e-6)


def test_returned_outputs_are_not_overwritten_by_later_steps() -> None:
    sm = StreamingModel(step_model("gru", F, H, L))
    s = sm.stream()
    ys = [s.step(f) for f in frames(5, seed=3)]  # the later calls run on the bound buffers
    assert len({y.tobytes() for y in ys}) == 5


def test_reset_and_state_round_trip() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    x = frames(10, seed=4)
    s = sm.stream()
    first = [s.step(f) for f in x]
    saved = s.state
    assert set(saved) == {"h_in", "c_in"} and saved["h_in"].shape == (L, 1, H)
    after = [s.step(f) for f in x[:3]]
    s.reset()
    assert all(not v.any() for v in s.state.values()) and s.steps == 0
    np.testing.assert_array_equal(np.stack([s.step(f) for f in x]), np.stack(first))
    s.set_state(saved)
    np.testing.assert_array_equal(np.stack([s.step(f) for f in x[:3]]), np.stack(after))
    with pytest.raises(InputError, match="c_in"):
        s.set_state({"h_in": saved["h_in"]})
    with pytest.raises(InputError, match="shape"):
        s.set_state({"h_in": saved["h_in"][:1], "c_in": saved["c_in"]})


def test_streams_keep_their_own_state() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    a, b = sm.stream(), sm.stream()
    xa, xb = frames(12, seed=5), frames(12, seed=6)
    ya, yb = [], []
    for fa, fb in zip(xa, xb, strict=True):  # interleaved on one session
        ya.append(a.step(fa))
        yb.append(b.step(fb))
    np.testing.assert_allclose(np.concatenate(ya), full_sequence("lstm", xa), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(yb), full_sequence("lstm", xb), rtol=0, atol=1e-6)


def test_eight_threads_on_eight_streams_equal_serial_runs() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    inputs = [frames(500, seed=100 + i) for i in range(8)]
    serial = []
    for x in inputs:
        s = sm.stream()
        serial.append(np.stack([s.step(f) for f in x]))
    streams = [sm.stream() for _ in inputs]
    results: list[list[np.ndarray]] = [[] for _ in inputs]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def drive(i: int) -> None:
        try:
            start.wait()
            for f in inputs[i]:
                results[i].append(streams[i].step(f))
        except BaseException as e:  # surfaced below: a thread's exception must fail the test
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for i in range(8):
        np.testing.assert_array_equal(np.stack(results[i]), serial[i])


def test_threads_sharing_streams_never_lose_a_step_or_deadlock() -> None:
    """Overlapping batched calls and single steps on the same streams from several threads: every step lands
    exactly once. The model sums its frames (order-free), so each stream's final state must equal the number
    of steps the threads gave it, whatever the interleaving; a lost or torn update changes the sum."""
    sm = StreamingModel(accumulator_model(4))
    streams = [sm.stream() for _ in range(6)]
    one = np.ones(4, np.float32)
    counts = np.zeros((4, 6), np.int64)  # per thread, per stream
    errors: list[BaseException] = []

    def drive(k: int) -> None:
        try:
            rng = np.random.default_rng(k)
            for _ in range(200):
                pick = rng.choice(6, size=3, replace=False)
                sm.step_many([streams[j] for j in pick], [one] * 3)
                streams[pick[0]].step(one)
                counts[k, pick] += 1
                counts[k, pick[0]] += 1
        except BaseException as e:  # surfaced below: a thread's exception must fail the test
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), "a thread failed or deadlocked"
    total = counts.sum(axis=0)
    for s, n in zip(streams, total, strict=True):
        np.testing.assert_array_equal(s.state["s_in"], np.full((1, 4), n, np.float32))
        assert s.steps == n


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batched_call_over_different_histories_equals_each_stream_alone(cell: str) -> None:
    sm = StreamingModel(step_model(cell, F, H, L))
    histories = [frames(n, seed=10 + n) for n in (0, 1, 5, 17)]
    batched = [sm.stream() for _ in histories]
    alone = [sm.stream() for _ in histories]
    for group in (batched, alone):
        for s, h in zip(group, histories, strict=True):
            for f in h:
                s.step(f)
    nxt = [frames(6, seed=50 + i) for i in range(len(histories))]
    for t in range(6):
        got = sm.step_many(batched, [x[t] for x in nxt])
        want = [s.step(x[t]) for s, x in zip(alone, nxt, strict=True)]
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    for b, a in zip(batched, alone, strict=True):
        for name, v in a.state.items():
            np.testing.assert_allclose(b.state[name], v, rtol=0, atol=1e-6)
        assert b.steps == a.steps


def test_many_streams_across_pages_and_reused_slots() -> None:
    """Streams keep their state in pages of slots: a batched call over streams of several pages, in any order,
    equals each stream alone; a dead stream's slot starts the next stream from zeros."""
    import gc

    sm = StreamingModel(accumulator_model(2))
    sm._pool.slots = 16  # small pages, so that 40 streams span three
    streams = [sm.stream() for _ in range(40)]
    assert len({s._page for s in streams}) == 3
    for k, s in enumerate(streams):
        s.step(np.full(2, k, np.float32))
    order = np.random.default_rng(0).permutation(40)
    picked = [streams[i] for i in order]
    ys = sm.step_many(picked, [np.full(2, 1000 * i, np.float32) for i in order])
    for i, y in zip(order, ys, strict=True):
        np.testing.assert_array_equal(y, np.full(2, 1001 * i, np.float32))
        np.testing.assert_array_equal(streams[i].state["s_in"], np.full((1, 2), 1001 * i, np.float32))
    slots = {(s._page, s._slot) for s in streams[:5]}
    del streams[:5], picked, s
    gc.collect()
    fresh = [sm.stream() for _ in range(5)]
    assert {(s._page, s._slot) for s in fresh} == slots
    assert all(not s.state["s_in"].any() for s in fresh)
    np.testing.assert_array_equal(sm.step_many(fresh, [np.ones(2, np.float32)] * 5), np.ones((5, 2), np.float32))


def test_step_many_all_and_chunks() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L, time=4))
    a, b = sm.stream(), sm.stream()
    xa, xb = frames(8, seed=20), frames(8, seed=21)
    out = sm.step_many_all([a, b], [xa[:4], xb[:4]])
    out += sm.step_many_all([a, b], [xa[4:], xb[4:]])
    assert set(out[0]) == {"y"} and out[0]["y"].shape == (4, 2)
    np.testing.assert_allclose(np.concatenate([out[0]["y"], out[2]["y"]]), full_sequence("lstm", xa), atol=1e-6)
    np.testing.assert_allclose(np.concatenate([out[1]["y"], out[3]["y"]]), full_sequence("lstm", xb), atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stream_group_equals_each_stream_alone_and_restarts_a_member(cell: str) -> None:
    sm = StreamingModel(step_model(cell, F, H, L))
    group = sm.group(3)
    alone = [sm.stream() for _ in range(3)]
    xs = [frames(9, seed=60 + i) for i in range(3)]
    for t in range(9):
        if t == 5:  # member 1's sequence ends; a new one takes its place
            group.reset(1)
            alone[1] = sm.stream()
        got = group.step(np.stack([x[t] for x in xs]))
        want = [s.step(x[t]) for s, x in zip(alone, xs, strict=True)]
        assert got.shape == (3, *want[0].shape)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
        if t == 0:
            first = got  # a returned array is the caller's: later steps do not overwrite it
    assert not np.array_equal(first, got)
    np.testing.assert_allclose(first[0], sm.stream().step(xs[0][0]), atol=1e-6)
    for i, s in enumerate(alone):
        for name, v in s.state.items():
            np.testing.assert_allclose(group.state(i)[name], v, rtol=0, atol=1e-6)
    assert group.steps == 9
    group.reset()
    assert not any(v.any() for i in range(3) for v in group.state(i).values())


def test_stream_group_chunks_and_every_output() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L, time=4))
    group = sm.group(2)
    xa, xb = frames(8, seed=20), frames(8, seed=21)
    out = [group.step_all(np.stack([xa[k : k + 4], xb[k : k + 4]])) for k in (0, 4)]
    assert set(out[0]) == {"y"} and out[0]["y"].shape == (2, 4, 2)
    np.testing.assert_allclose(np.concatenate([o["y"][0] for o in out]), full_sequence("lstm", xa), atol=1e-6)
    np.testing.assert_allclose(np.concatenate([o["y"][1] for o in out]), full_sequence("lstm", xb), atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_stream_group_errors_change_nothing() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    with pytest.raises(ConfigError, match="at least one member"):
        sm.group(0)
    group = sm.group(2)
    x = frames(2, seed=0)
    group.step(x)
    before = [group.state(i) for i in range(2)]
    with pytest.raises(InputError, match="takes 2 frames"):
        group.step(x[:1])
    with pytest.raises(InputError, match="non-finite"):
        group.step(np.full((2, F), np.nan, np.float32))
    with pytest.raises(InputError):
        group.step(np.ones((2, F + 1), np.float32))
    with pytest.raises(InputError, match=r"member must be 0\.\.1"):
        group.reset(2)
    with pytest.raises(InputError, match=r"member must be 0\.\.1"):
        group.state(-1)
    assert group.steps == 1
    for i in range(2):
        for name, v in before[i].items():
            np.testing.assert_array_equal(group.state(i)[name], v)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_batched_call_errors() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    other = StreamingModel(step_model("lstm", F, H, L))
    a, b = sm.stream(), sm.stream()
    x = frames(1, seed=0)[0]
    with pytest.raises(InputError, match="twice"):
        sm.step_many([a, a], [x, x])
    with pytest.raises(InputError, match="2 streams but 1 frames"):
        sm.step_many([a, b], [x])
    with pytest.raises(ConfigError, match="this StreamingModel"):
        sm.step_many([a, other.stream()], [x, x])
    with pytest.raises(InputError, match="share a shape"):
        sm.step_many([a, b], [x, x[:2]])
    with pytest.raises(InputError, match="non-finite"):
        sm.step_many([a, b], [x, np.full(F, np.nan, np.float32)])
    assert a.steps == b.steps == 0  # nothing ran
    assert sm.step_many([], []) == []


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_third_party_model_streams_when_states_are_named(cell: str) -> None:
    """A model other tools export: one ONNX recurrent node, time-major, no manifest, ONNX's own names."""
    model = third_party_model(cell, input_size=4, hidden=6)
    names = [("initial_h", "Y_h")] + ([("initial_c", "Y_c")] if cell == "lstm" else [])
    x = frames(30, seed=30, features=4)
    full = Model(model)
    assert full.manifest is None
    ref = full.run_feed({"X": x[:, None], **{i: np.zeros((1, 1, 6), np.float32) for i, _ in names}})["Y"]
    sm = StreamingModel(model, states=[f"{i}:{o}:1x1x6" for i, o in names])
    assert sm.axes.batch == 1 and sm.axes.time == 0  # read from the graph's dim names T, B
    s = sm.stream()
    got = np.stack([s.step(f) for f in x])  # each (1, 1, 6): Y (T=1, directions=1, H) of one stream
    np.testing.assert_allclose(got.reshape(30, 6), ref.reshape(30, 6), rtol=0, atol=1e-6)
    # the same model served batched, streams started at different times
    sm2 = StreamingModel(model, states=[StatePair(i, o, (1, 1, 6), batch_axis=1) for i, o in names])
    s1, s2 = sm2.stream(), sm2.stream()
    for f in x[:10]:
        s1.step(f)
    ys = [sm2.step_many([s1, s2], [x[10 + t], x[t]]) for t in range(20)]
    np.testing.assert_allclose(np.stack([y[0] for y in ys]).reshape(20, 6), ref[10:].reshape(20, 6), atol=1e-6)
    np.testing.assert_allclose(np.stack([y[1] for y in ys]).reshape(20, 6), ref[:20].reshape(20, 6), atol=1e-6)
    np.testing.assert_allclose(sm.run_sequence(x[:, None])["Y"], ref, rtol=0, atol=1e-6)


def test_third_party_model_with_unnamed_axes_needs_a_layout() -> None:
    import onnx

    proto = onnx.load_from_string(third_party_model("gru", 4, 6))
    for vi in [*proto.graph.input, *proto.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = {"T": "dim_a", "B": "dim_b"}[d.dim_param]
    model = proto.SerializeToString()
    # the state's dynamic axis (dim_b) still tells the data input's batch axis apart from its time axis
    assert StreamingModel(model, states=["initial_h:Y_h:1x1x6"]).axes.batch == 1
    for d in proto.graph.input[1].type.tensor_type.shape.dim:
        d.dim_param = "" if d.dim_param else d.dim_param
    unnamed = proto.SerializeToString()
    with pytest.raises(ConfigError, match="layout"):  # an option the caller must give: exit 2
        StreamingModel(unnamed, states=["initial_h:Y_h:1xbx6"])
    sm = StreamingModel(unnamed, states=["initial_h:Y_h:1xbx6"], layout="tbf")
    assert sm.axes.batch == 1 and sm.states[0].batch_axis == 1
    assert sm.stream().step(frames(1, 0, 4)[0]).shape == (1, 1, 6)


def test_models_that_cannot_stream_say_how_to_fix_it() -> None:
    with pytest.raises(ModelFormatError, match="--strategy step"):
        StreamingModel(stateless_model())
    with pytest.raises(ModelFormatError, match=r"--state h_in:h_out"):
        StreamingModel(third_party_model())
    with pytest.raises(ConfigError, match="not an input"):
        StreamingModel(third_party_model(), states=["h0:Y_h:1x1x6"])
    with pytest.raises(ConfigError, match="not an output"):
        StreamingModel(third_party_model(), states=["initial_h:out:1x1x6"])
    with pytest.raises(ConfigError, match="axis 2 is 6"):
        StreamingModel(third_party_model(), states=["initial_h:Y_h:1x1x5"])
    with pytest.raises(ConfigError, match="3 dimensions"):
        StreamingModel(third_party_model(), states=["initial_h:Y_h:1x6"])


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("h_in:h_out:2x1x64", StatePair("h_in", "h_out", (2, 1, 64), None)),
        ("h_in:h_out:2xbx64", StatePair("h_in", "h_out", (2, 1, 64), 1)),
        ("a::b:c:1xB", StatePair("a::b", "c", (1, 1), 1)),
    ],
)
def test_parse_state(text: str, pair: StatePair) -> None:
    assert parse_state(text) == pair


@pytest.mark.parametrize("text", ["h_in:h_out", "h_in:h_out:", "h_in:h_out:2x0x4", "h:o:2xbxb", "h:o:2x-1"])
def test_parse_state_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_state(text)


# numpy flags the inf in the finiteness check (x . 0) before the InputError; the CLI silences it
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_frame_validation_is_typed() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L))
    s = sm.stream()
    with pytest.raises(InputError, match="expects 3 features; got 2"):
        s.step(np.zeros(2, np.float32))
    with pytest.raises(InputError, match="floating point"):
        s.step(np.zeros(F, np.int64))
    with pytest.raises(InputError, match="1 non-finite"):
        s.step(np.array([0, np.inf, 0], np.float32))
    with pytest.raises(InputError, match="non-finite"):
        s.step(np.array([np.nan, 0, 0], np.float32))
    with pytest.raises(InputError, match="step_many"):
        s.step(np.zeros((2, 1, F), np.float32))
    with pytest.raises(InputError, match="chunks of 1 steps"):
        s.step(np.zeros((3, F), np.float32))
    with pytest.raises(InputError, match="must be"):
        s.step(np.zeros((1, 1, 1, F), np.float32))
    assert s.steps == 0 and not s.state["h_in"].any()
    # huge finite values pass: the finiteness check cannot overflow
    s.step(np.full(F, 3e38, np.float32))
    chunked = StreamingModel(step_model("lstm", F, H, L, time=4)).stream()
    with pytest.raises(InputError, match="pass 4 frames"):
        chunked.step(np.zeros(F, np.float32))
    with pytest.raises(InputError, match="chunks of 4 steps per call; got 3"):
        chunked.step(np.zeros((3, F), np.float32))
    # a float64 frame is converted, as onnxruntime would need
    assert chunked.step(np.zeros((4, F), np.float64)).shape == (4, 2)


def test_the_bound_hot_path_keeps_every_check() -> None:
    """After a frame shape has been validated and bound, later frames of that shape skip the shape checks but not
    the finiteness check: a NaN or inf frame is refused with the same message and the state does not move; other
    shapes and dtypes still take the checked path."""
    sm = StreamingModel(step_model("lstm", F, H, L))
    s, ref = sm.stream(), sm.stream()
    xs = frames(6, 3)
    for f in xs[:3]:  # the first call binds, the second remembers the shape, the third runs hot
        s.step(f)
        ref.step(f.astype(np.float64))  # converted: never the hot path
    assert (F,) in s._fast and not ref._fast
    before = s.state
    for bad, count in ((np.array([0, np.inf, 0], np.float32), 1), (np.full(F, np.nan, np.float32), 3)):
        with pytest.raises(InputError, match=f"{count} non-finite"):
            s.step(bad)
        assert s.steps == 3
        assert all(np.array_equal(before[k], v) for k, v in s.state.items())
    with pytest.raises(InputError, match="expects 3 features; got 2"):
        s.step(np.zeros(2, np.float32))
    for f in xs[3:]:  # after the refusals the stream goes on from where it was, as one never refused
        np.testing.assert_array_equal(s.step(f), ref.step(f.astype(np.float64)))
    out = s.step(xs[0][None])  # a chunk of one: another shape, checked, then hot as well
    assert out.shape == (1, 2) and (1, F) in s._fast
    strided = np.repeat(xs[:1], 2, axis=1)[:, ::2][0]  # a non-contiguous frame of the bound shape
    s.step(strided)


def test_the_hot_path_computes_what_the_checked_path_and_the_public_call_compute() -> None:
    """The hot path calls onnxruntime's bound entry point directly where that is the public method's own call; a
    stream made to use the public method, and one fed an equal dtype spelled otherwise (always the checked path),
    step to the same outputs and states bit for bit; a session whose wrapper is not the one expected, or that
    captures WebGPU graphs, gets the public method."""
    from types import SimpleNamespace

    from edgernn.runtime.stream import _bound_call

    sm = StreamingModel(step_model("lstm", F, H, L))
    hot, public, checked = sm.stream(), sm.stream(), sm.stream()
    native = np.dtype("float32").newbyteorder("=")  # equal to float32, but not numpy's float32 object
    assert native == np.float32 and native is not np.dtype(np.float32)
    for i, f in enumerate(frames(10, seed=9)):
        if i == 3:  # both hot by now: make one of them call the public method
            view, dot, zeros, _, run, ro, primary = public._fast[(F,)]
            assert ro is sm.model.run_options  # one RunOptions for every call
            assert run != sm.session.run_with_iobinding  # the direct entry point was taken
            bound = public._bound[(1, 1, F)]
            public._fast[(F,)] = (view, dot, zeros, bound.io, sm.session.run_with_iobinding, ro, primary)
        ys = [hot.step(f), public.step(f), checked.step(f.astype(native))]
        assert all(np.array_equal(ys[0], y) for y in ys[1:])
    assert not checked._fast and hot.steps == public.steps == checked.steps == 10
    assert all(np.array_equal(hot.state[k], s.state[k]) for s in (public, checked) for k in hot.state)
    ios = list(public._bound[(1, 1, F)].io)
    foreign = SimpleNamespace(run_with_iobinding=lambda io, options=None: None)
    assert _bound_call(foreign, ios) == (foreign.run_with_iobinding, ios)
    for capture in (False, True):
        inner = SimpleNamespace(run_with_iobinding=print, is_webgpu_graph_capture_enabled=lambda c=capture: c)
        wrapper = SimpleNamespace(_sess=inner, run_with_iobinding=foreign.run_with_iobinding)
        theirs = [SimpleNamespace(_iobinding=k, _session=inner) for k in (0, 1)]
        assert _bound_call(wrapper, theirs) == ((wrapper.run_with_iobinding, theirs) if capture else (print, [0, 1]))
        assert _bound_call(wrapper, ios)[0] is wrapper.run_with_iobinding  # bindings of another session


def test_run_sequence_checks_its_input() -> None:
    sm = StreamingModel(step_model("lstm", F, H, L, time=4))
    with pytest.raises(InputError, match="whole number of chunks of 4"):
        sm.run_sequence(np.zeros((1, 6, F), np.float32))
    with pytest.raises(InputError, match="3 dimensions"):
        sm.run_sequence(np.zeros((6, F), np.float32))
    with pytest.raises(InputError, match="non-finite"):
        sm.run_sequence(np.full((1, 4, F), np.nan, np.float32))
    out = sm.run_sequence(np.zeros((3, 8, F), np.float32))
    assert out["y"].shape == (3, 8, 2) and out["h_out"].shape == (L, 3, H)


def test_stream_is_its_own_class() -> None:
    sm = StreamingModel(step_model("gru", F, H, 1))
    assert isinstance(sm.stream(), Stream)
    assert sm.provider == "cpu"
    assert set(sm.initial_state(5)) == {"h_in"} and sm.initial_state(5)["h_in"].shape == (1, 5, H)


@pytest.fixture(scope="module", params=["lstm", "gru"])
def fixed_batch_2(request: pytest.FixtureRequest) -> tuple[object, bytes]:
    """A small zoo model and its `step` export for NNAPI with a fixed batch of 2 (`edgernn export --target nnapi
    --batch 2`): every input and state of the graph has batch 2, as NNAPI and CoreML need."""
    import torch

    from edgernn.export import export_model
    from edgernn.model.zoo import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(cell=request.param, input_size=F, hidden_size=H, num_layers=L, readout="all", output_size=2)
    model = build_model(cfg).eval()
    res = export_model(model, None, strategy="step", target="nnapi", batch=2, chunk=1, verify=False)
    assert res.manifest.batch == 2 and res.model_bytes is not None
    return model, res.model_bytes


def torch_streamed(model: object, x: np.ndarray) -> np.ndarray:
    """torch's own stream: one frame (1, 1, F) per call of the zoo model's recurrent layers, the state carried from
    call to call, the head on each step's output; (steps, outputs)."""
    import torch

    ys, state = [], None
    with torch.inference_mode():
        for f in x:
            y, state = model.rnn(torch.from_numpy(f.reshape(1, 1, -1)), state)  # type: ignore[attr-defined]
            ys.append(model.head(y).numpy().reshape(-1))  # type: ignore[attr-defined]
    return np.stack(ys)


def test_a_fixed_batch_export_streams_its_batch_together_or_one_stream_alone(fixed_batch_2: tuple) -> None:
    """A `--batch 2` step file: each stream's spec has batch 1; step_many over exactly 2 streams is one call, a
    lone Stream.step runs its stream as row 0 of a padded call; every stream's outputs are torch's own stream's."""
    from edgernn.verify.parity import TOLERANCES

    tol = TOLERANCES["fp32"]
    model, data = fixed_batch_2
    sm = StreamingModel(data)
    assert sm.batch == 2 and all(st.shape == (L, 1, H) for st in sm.states)
    xa, xb = frames(12, seed=21), frames(12, seed=22)
    a, b = sm.stream(), sm.stream()
    got_a, got_b = [], []
    for t in range(4):  # both streams in one call
        ya, yb = sm.step_many([a, b], [xa[t], xb[t]])
        got_a.append(ya)
        got_b.append(yb)
    for t in range(4, 8):  # each alone, interleaved: padded calls that leave the other stream's state alone
        got_a.append(a.step(xa[t]))
        got_b.append(b.step_all(xb[t])["y"])
    for t in range(8, 12):  # together again, in the other order
        yb, ya = sm.step_many_all([b, a], [xb[t], xa[t]])
        got_a.append(ya["y"])
        got_b.append(yb["y"])
    assert a.steps == b.steps == 12
    for got, x in ((got_a, xa), (got_b, xb)):
        np.testing.assert_allclose(np.concatenate(got), torch_streamed(model, x), atol=tol.atol, rtol=tol.rtol)

    group = sm.group(2)  # two streams that stay together, on bound batch-2 buffers
    ys = np.stack([group.step(np.stack([xb[t], xa[t]])) for t in range(12)], axis=1)  # (member, step, 1, out)
    np.testing.assert_allclose(ys[0, :, 0], torch_streamed(model, xb), atol=tol.atol, rtol=tol.rtol)
    np.testing.assert_allclose(ys[1, :, 0], torch_streamed(model, xa), atol=tol.atol, rtol=tol.rtol)
    whole = sm.run_sequence(np.stack([xa, xb]))["y"]  # a whole batch-2 sequence, chunk by chunk
    np.testing.assert_allclose(whole[1], torch_streamed(model, xb), atol=tol.atol, rtol=tol.rtol)


def test_edgernn_run_streams_and_runs_a_fixed_batch_export(fixed_batch_2: tuple) -> None:
    """`edgernn run --stream` (one stream, padded) and `edgernn run --random` (a seeded batch of the file's 2)."""
    import io

    from edgernn.runtime.io import run_file, run_stream
    from edgernn.verify.parity import TOLERANCES

    tol = TOLERANCES["fp32"]
    model, data = fixed_batch_2
    x = frames(6, seed=23)
    out = io.StringIO()
    lines = io.StringIO("\n".join(",".join(map(repr, f.tolist())) for f in x))
    assert run_stream(StreamingModel(data), lines, out) == 6
    got = np.array([[float(v) for v in line.split(",")] for line in out.getvalue().splitlines()], np.float32)
    np.testing.assert_allclose(got, torch_streamed(model, x), atol=tol.atol, rtol=tol.rtol)
    res = run_file(Model(data), None, random_steps=5)
    assert res.streaming and res.outputs["y"].shape == (2, 5, 2) and res.outputs["h_out"].shape == (L, 2, H)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_fixed_batch_export_refuses_other_counts_and_bad_frames_changing_nothing(fixed_batch_2: tuple) -> None:
    _, data = fixed_batch_2
    sm = StreamingModel(data)
    a, b, c = sm.stream(), sm.stream(), sm.stream()
    x = frames(1, seed=5)[0]
    a.step(x)
    before = a.state
    with pytest.raises(InputError, match="fixed batch of 2: step exactly 2 streams"):
        sm.step_many([a, b, c], [x, x, x])
    with pytest.raises(ConfigError, match="a group must have 2"):
        sm.group(3)
    with pytest.raises(InputError, match="1 non-finite"):
        a.step(np.array([0, np.nan, 0], np.float32))
    with pytest.raises(InputError, match="expects 3 features; got 2"):
        a.step(np.zeros(2, np.float32))
    with pytest.raises(InputError, match="one sequence, but 'x' has batch 2"):
        a.step(np.zeros((2, 1, F), np.float32))
    assert a.steps == 1 and b.steps == c.steps == 0
    assert all(np.array_equal(before[k], v) for k, v in a.state.items())
