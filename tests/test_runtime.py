"""The runtime: providers (named, auto, explicit fallback), session options, models with and without a manifest,
and typed input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import cuda_status
from test_stream_models import lengths_model, stateless_model, step_model, third_party_model

from edgernn.errors import ConfigError, InputError, ModelFormatError, ProviderError
from edgernn.runtime import Model, available, providers, resolve
from edgernn.runtime.stream import StreamingModel

HAVE = available()
MISSING = next((p for p in ("cuda", "tensorrt", "openvino", "coreml", "nnapi") if p not in HAVE), None)
HAS_CUDA, NO_CUDA_WHY = cuda_status()


def test_cpu_is_always_available_and_last() -> None:
    assert HAVE[-1] == "cpu"
    assert resolve("cpu").providers == ["CPUExecutionProvider"]


@pytest.mark.skipif(MISSING is None, reason="every accelerator provider is in this onnxruntime build")
def test_unavailable_provider_is_an_error_naming_the_available_ones() -> None:
    with pytest.raises(ProviderError) as e:
        resolve(MISSING)  # type: ignore[arg-type]
    msg = str(e.value)
    assert f"{MISSING!r} is not available" in msg and "available: " + ", ".join(HAVE) in msg
    assert "--fallback cpu" in msg
    with pytest.raises(ProviderError, match="available: "):
        Model(stateless_model(), provider=MISSING)  # type: ignore[arg-type]


@pytest.mark.skipif(MISSING is None, reason="every accelerator provider is in this onnxruntime build")
def test_explicit_fallback_runs_and_is_reported() -> None:
    m = Model(stateless_model(), provider=MISSING, fallback="cpu")  # type: ignore[arg-type]
    c = m.provider_choice
    assert c.fell_back and c.used == "cpu" and c.requested == MISSING and m.provider == "cpu"
    assert f"fell back from {MISSING}" in c.describe()
    assert c.to_dict()["used"] == "cpu" and c.to_dict()["fell_back"] is True
    assert m.run(np.ones((1, 2, 3), np.float32)).shape == (1, 2, 2)


def test_unknown_provider_and_fallback_names() -> None:
    with pytest.raises(ConfigError, match="choose one of: auto, tensorrt"):
        resolve("tpu")
    with pytest.raises(ConfigError, match="unknown fallback"):
        resolve("cpu", fallback="gpu")


def test_auto_takes_what_this_build_has() -> None:
    m = Model(stateless_model(), provider="auto")
    assert m.provider in HAVE and not m.provider_choice.fell_back
    assert m.provider_choice.describe().endswith("(auto)")


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # onnxruntime's note on the simulated provider
def test_provider_that_fails_to_start_is_not_dropped_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime drops a provider that is compiled in but cannot start and carries on with CPU; edgernn does
    not. Simulated by claiming an accelerator this build lacks: onnxruntime then leaves it out of the session."""
    fake = MISSING or "openvino"
    monkeypatch.setattr(providers, "available", lambda: [fake, "cpu"])
    with pytest.raises(ProviderError, match=f"{fake}.*failed to start"):
        Model(stateless_model(), provider=fake)
    m = Model(stateless_model(), provider=fake, fallback="cpu")
    assert m.provider_choice.fell_back and m.provider_choice.used == "cpu"
    assert "failed to start" in m.provider_choice.reason


def test_provider_options_have_defaults_and_overrides() -> None:
    opts = providers.provider_options_for(["CUDAExecutionProvider", "CPUExecutionProvider"], {"cuda": {"device_id": 1}})
    assert opts[0]["device_id"] == "1" and opts[0]["use_tf32"] == "0" and opts[1] == {}
    assert providers.provider_options_for(["OpenVINOExecutionProvider"])[0]["device_type"] == "CPU"


def test_session_options(tmp_path: Path) -> None:
    out = tmp_path / "opt.onnx"
    m = Model(step_model("lstm"), threads=2, optimization="basic", optimized_model_path=out)
    so = m.session.get_session_options()
    assert so.intra_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert out.is_file() and out.stat().st_size > 0
    assert Model(stateless_model()).session.get_session_options().intra_op_num_threads == 1  # the default
    with pytest.raises(ConfigError, match="optimization level"):
        Model(stateless_model(), optimization="max")
    with pytest.raises(ConfigError, match="threads"):
        Model(stateless_model(), threads=0)


def test_model_load_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="no model file"):
        Model(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="cannot load"):
        Model(bad)


def test_model_without_manifest_is_described_by_its_graph() -> None:
    m = Model(third_party_model("lstm", 4, 6))
    assert m.manifest is None
    assert [s.name for s in m.inputs] == ["X", "initial_h", "initial_c"]
    assert m.inputs[0].shape == ["T", "B", 4] and m.inputs[0].dtype == "float32"
    z = np.zeros((1, 2, 6), np.float32)
    out = m.run_feed({"X": np.ones((5, 2, 4), np.float32), "initial_h": z, "initial_c": z})
    assert out["Y"].shape == (5, 1, 2, 6)
    with pytest.raises(InputError, match="B size differs"):
        m.run_feed({"X": np.ones((5, 3, 4), np.float32), "initial_h": z, "initial_c": z})
    with pytest.raises(InputError, match="missing input 'initial_c'"):
        m.run_feed({"X": np.ones((5, 2, 4), np.float32), "initial_h": z})


@pytest.mark.parametrize(
    ("feed", "match"),
    [
        ({"x": np.ones((1, 4, 3), np.int32)}, "floating point"),
        ({"x": np.ones((4, 3), np.float32)}, "3 dimensions"),
        ({"x": np.ones((1, 4, 5), np.float32)}, "axis 2 must be 3"),
        ({"x": np.full((1, 4, 3), np.nan, np.float32)}, "12 non-finite"),
        ({"x": np.ones((2, 4, 3), np.float32), "lengths": np.array([4, 5])}, r"1\.\.4"),
        ({"x": np.ones((2, 4, 3), np.float32), "lengths": np.array([0, 4])}, r"1\.\.4"),
        ({"x": np.ones((2, 4, 3), np.float32), "lengths": np.array([4.0, 4.0])}, "integer"),
        ({"x": np.ones((2, 4, 3), np.float32), "lengths": np.array([4, 4, 4])}, "batch size differs"),
        ({"x": np.ones((1, 4, 3), np.float32), "h": np.ones(1)}, "unknown input"),
    ],
)
def test_input_validation_errors_are_typed(feed: dict[str, np.ndarray], match: str) -> None:
    m = Model(lengths_model())
    with pytest.raises(InputError, match=match):
        m.run_feed(feed)


def test_missing_lengths_are_filled_with_the_full_length() -> None:
    out = Model(lengths_model()).run_feed({"x": np.ones((2, 7, 3), np.float32)})
    assert out["n"].tolist() == [7, 7]


def test_run_with_lengths_on_a_model_without_them_says_so() -> None:
    with pytest.raises(ModelFormatError, match="without a lengths input"):
        Model(stateless_model()).run(np.ones((1, 2, 3), np.float32), lengths=np.array([2]))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_WHY or "CUDA runs")
def test_streams_on_cuda_equal_cpu() -> None:
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    ys = {}
    for p in ("cpu", "cuda"):
        sm = StreamingModel(step_model("lstm", 3, 16, 2), provider=p)
        assert sm.provider == p
        s = sm.stream()
        ys[p] = np.stack([s.step(f) for f in x])
        batch = sm.step_many([sm.stream(), sm.stream()], [x[0], x[0]])
        np.testing.assert_allclose(batch[0], ys[p][0], atol=1e-6)
    np.testing.assert_allclose(ys["cuda"], ys["cpu"], rtol=0, atol=1e-5)


def _gather_model() -> bytes:
    """ids -> Cast(int32) -> Unsqueeze -> Gather(table of 9 rows) and ids -> Gather(table of 5 rows, axis 1 of a
    (2, 5) Constant), summed; ``pos`` -> Gather from a computed (not constant) tensor: no table the graph shows."""
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.arange(9 * 2, dtype=np.float32).reshape(9, 2), "big")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["ids32", "axes"], ["ids2"]),
        helper.make_node("Gather", ["big", "ids2"], ["a"]),
        helper.make_node(
            "Constant", [], ["small"], value=numpy_helper.from_array(np.ones((2, 5), np.float32), "small")
        ),
        helper.make_node("Gather", ["small", "ids"], ["b"], axis=1),  # (2, n)
        helper.make_node("Transpose", ["b"], ["bt"]),  # (n, 2)
        helper.make_node("Unsqueeze", ["bt", "axes"], ["b2"]),
        helper.make_node("Add", ["a", "b2"], ["y"]),
        helper.make_node("Relu", ["big"], ["computed"]),
        helper.make_node("Gather", ["computed", "pos"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gathers",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("pos", TensorProto.INT64, ["m"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["m", 2]),
        ],
        [big, axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_index_limits_follow_ids_to_every_constant_table_they_read() -> None:
    m = Model(_gather_model())
    assert m.index_limits == {"ids": 5}  # the smaller of 9 rows (through Cast, Unsqueeze) and 5 columns (axis 1)
    m.run_feed({"ids": np.array([0, 4]), "pos": np.array([-1])})  # pos reads a computed tensor: ONNX's own rules
    for bad in ([5], [-1], [0, 8]):
        with pytest.raises(InputError, match=r"ids must be in 0\.\.4"):
            m.run_feed({"ids": np.array(bad), "pos": np.array([0])})
    assert Model(lengths_model()).index_limits == {}  # lengths are not ids: the graph is not read for them


def test_every_call_is_given_one_run_options_that_means_the_defaults() -> None:
    """A session's calls share one RunOptions (faster than None); its graph annotation id is written as the one an
    unset id means, so that onnxruntime's Python wrapper reads it without raising inside (and captures nothing)."""
    m = Model(step_model("lstm", 3, 4, 1))
    assert m.run_options.get_run_config_entry("gpu_graph_id") == "0"
    assert (m.run_options.terminate, m.run_options.logid, m.run_options.only_execute_path_to_fetches) == (
        False,
        "",
        False,
    )
    sm = StreamingModel(m)
    assert sm._ro is m.run_options
    s = sm.stream()
    frames = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    ys = [s.step(f) for f in frames]  # the hot path, given the options from its second frame
    state = sm.initial_state(1)
    for f, y in zip(frames, ys, strict=True):  # a plain session.run with no options computes the same
        out = m.session.run(None, {sm.data.name: f.reshape(1, 1, 3), **state})
        np.testing.assert_array_equal(y, out[0].reshape(y.shape))
        state = {st.input: out[st.out_index] for st in sm.states}
