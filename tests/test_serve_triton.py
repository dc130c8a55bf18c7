"""Triton Inference Server: the `triton` export target (batch-first states), the model repository and its config
(built with Triton's config protobuf, validated against the graph), an emulation of the sequence batcher's
implicit state checked against edgernn's own streams, the client's requests, and `edgernn serve triton`.

No Triton server runs here (its onnxruntime backend ships only in the server container): what Triton would do is
emulated in-process (edgernn.serve.triton_emulate) and the requests are built with tritonclient's own code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgernn.cli import main
from edgernn.errors import ConfigError, ExportError, InputError, ModelFormatError, TargetError
from edgernn.export import ExportResult, export_model
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model
from edgernn.runtime.stream import StreamingModel
from edgernn.verify.parity import TOLERANCES, compare

NEEDS_TRITONCLIENT = "tritonclient[grpc] builds and reads Triton's model config: pip install 'edgernn[triton]'"
F, H, OUT = 3, 8, 2
TOL = TOLERANCES["fp32"]
# Batched calls (several streams stacked on the batch axis) and single-stream calls may take different GEMM
# kernels or blockings in onnxruntime's MLAS, so sums can round differently in the last ulp of float32; the
# values here are O(1), so 1e-6 allows a few ulps and nothing more (a wrong state or row would be off by ~0.1).
ATOL_BATCHED = 1e-6


def _hide_tritonclient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing tritonclient fails from here on in this test, as where it is not installed."""
    for name in [m for m in sys.modules if m == "tritonclient" or m.startswith("tritonclient.")] + ["tritonclient"]:
        monkeypatch.setitem(sys.modules, name, None)


def _tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc", reason=NEEDS_TRITONCLIENT)


@cache
def _model(cell: str, layers: int) -> RecurrentModel:
    torch.manual_seed(10 * layers + len(cell))
    cfg = ModelConfig(cell=cell, input_size=F, hidden_size=H, num_layers=layers, output_size=OUT)
    return build_model(cfg).eval()


@cache
def _export(cell: str, layers: int, target: str = "triton", chunk: int = 1, **options: Any) -> ExportResult:
    return export_model(_model(cell, layers), None, strategy="step", target=target, chunk=chunk, **options)


def _graph_shapes(data: bytes) -> dict[str, list[int | str]]:
    g = onnx.load_model_from_string(data).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*g.input, *g.output]}


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, F)).astype(np.float32)


def _local(data: bytes, x: np.ndarray) -> np.ndarray:
    """One stream over ``x`` with edgernn's own runtime, a frame per call: the outputs Triton must reproduce."""
    s = StreamingModel(data).stream()
    return np.stack([s.step(f) for f in x])


# ------------------------------------------------------------------------------------------ the export target


CELLS_LAYERS = [("lstm", 2), ("gru", 1), ("lstm", 1), ("gru", 2)]


@pytest.mark.parametrize(("cell", "layers"), CELLS_LAYERS)
def test_triton_export_has_batch_first_states_and_passes_parity(cell: str, layers: int) -> None:
    _tritonclient()
    res = _export(cell, layers)
    m = res.manifest
    assert m.target == "triton" and m.strategy == "step" and m.batch is None
    names = [("h_in", "h_out")] + ([("c_in", "c_out")] if cell == "lstm" else [])
    assert [(s.input, s.output) for s in m.states] == names
    assert all(s.shape == ["batch", layers, H] for s in m.states)
    shapes = _graph_shapes(res.model_bytes)
    for a, b in names:
        assert shapes[a] == shapes[b] == ["batch", layers, H]
    assert shapes["x"] == ["batch", 1, F]
    # parity ran on the batch-first graph itself (its runner), against torch, and passed
    assert res.report is not None and res.report.passed
    assert "triton-layout:onnxruntime:cpu" in {c.candidate for c in res.report.comparisons}
    assert m.target_check["passed"] is True and "validates" in m.target_check["summary"]
    assert m.target_check["parity"]["passed"] is True

    # the same weights exported for onnxruntime in the same (plain) form: the same numbers, states transposed
    ref = _export(cell, layers, target="ort", fused=False)
    x = _frames(9, seed=layers)
    np.testing.assert_array_equal(_local(res.model_bytes, x), _local(ref.model_bytes, x))
    # and edgernn's streams over the triton file match torch on the whole sequence
    with torch.no_grad():
        want = _model(cell, layers)(torch.from_numpy(x[None])).numpy()[0]
    a, _, ok = compare(want, _local(res.model_bytes, x)[-1], TOL)
    assert ok, f"max abs {a:.3g}"


def test_stream_state_of_a_triton_export_is_batch_first() -> None:
    _tritonclient()
    data = _export("lstm", 2).model_bytes
    sm = StreamingModel(data)
    assert [(s.input, s.shape, s.batch_axis) for s in sm.states] == [("h_in", (1, 2, H), 0), ("c_in", (1, 2, H), 0)]
    streams = [sm.stream() for _ in range(3)]
    x = np.random.default_rng(3).standard_normal((3, 5, F)).astype(np.float32)
    for t in range(5):
        batched = sm.step_many(streams, list(x[:, t]))
    for i in range(3):
        np.testing.assert_allclose(batched[i], _local(data, x[i])[-1], rtol=0, atol=ATOL_BATCHED)
    assert streams[0].state["h_in"].shape == (1, 2, H)


@pytest.mark.parametrize("strategy", ["native", "loop", "unroll"])
def test_triton_target_takes_step_only(strategy: str) -> None:
    options = {"seq_len": 10} if strategy == "unroll" else {}
    with pytest.raises(ExportError, match=r"--strategy step"):
        export_model(_model("lstm", 1), None, strategy=strategy, target="triton", **options)


def test_triton_target_refuses_a_fixed_batch() -> None:
    with pytest.raises(ExportError, match="dynamic batch"):
        export_model(_model("lstm", 1), None, strategy="step", target="triton", batch=2)


def test_triton_export_without_tritonclient_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgernn.errors import MissingPackageError

    _hide_tritonclient(monkeypatch)
    with pytest.raises(MissingPackageError, match=r"pip install 'edgernn\[triton\]'") as e:
        export_model(_model("lstm", 1), None, strategy="step", target="triton")
    assert e.value.exit_code == 10 and isinstance(e.value, ModuleNotFoundError)


def test_triton_report_judges_any_model() -> None:
    _tritonclient()
    from edgernn.targets.triton import triton_report

    ok = triton_report(_export("gru", 1).model_bytes)
    assert ok.target == "triton" and ok.passed is True and "h_in/h_out ['batch', 1, 8]" in ok.summary
    bad = triton_report(_export("lstm", 1, target="ort").model_bytes)
    assert bad.passed is False and "--target triton" in bad.summary


# ------------------------------------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    ("cell", "layers", "chunk"), [("lstm", 2, 1), ("gru", 1, 1), ("lstm", 1, 1), ("gru", 2, 1), ("lstm", 2, 4)]
)
def test_config_is_built_from_the_model_and_validates(cell: str, layers: int, chunk: int) -> None:
    _tritonclient()
    from edgernn.serve.triton import config_problems, config_text, model_config, parse_config, validate_config

    data = _export(cell, layers, chunk=chunk).model_bytes
    cfg = parse_config(config_text(model_config(data, name="m")))  # what Triton reads
    assert cfg.name == "m" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("x", [chunk, F])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("y", [OUT])]
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "direct" and not seq.control_input
    pairs = [("h_in", "h_out")] + ([("c_in", "c_out")] if cell == "lstm" else [])
    assert [(s.input_name, s.output_name) for s in seq.state] == pairs
    for s in seq.state:
        assert list(s.dims) == [layers, H] and len(s.initial_state) == 1
        init = s.initial_state[0]
        assert init.zero_data and list(init.dims) == [layers, H] and init.data_type == s.data_type
    assert config_problems(cfg, data) == []
    validate_config(config_text(cfg), data)


def test_config_options_land_in_their_fields() -> None:
    _tritonclient()
    from edgernn.serve.triton import config_pb2, config_problems, model_config

    data = _export("lstm", 2).model_bytes
    cfg = model_config(
        data, name="s", max_batch_size=8, instances=3, kind="KIND_GPU", idle_us=250_000, strategy="oldest"
    )
    assert cfg.max_batch_size == 8
    kinds = config_pb2().ModelInstanceGroup.Kind
    assert [(g.count, kinds.Name(g.kind)) for g in cfg.instance_group] == [(3, "KIND_GPU")]
    seq = cfg.sequence_batching
    assert seq.max_sequence_idle_microseconds == 250_000
    assert seq.WhichOneof("strategy_choice") == "oldest" and seq.oldest.max_candidate_sequences == 16
    assert (
        model_config(
            data, name="s", strategy="oldest", max_candidates=5
        ).sequence_batching.oldest.max_candidate_sequences
        == 5
    )
    assert config_problems(cfg, data) == []
    for bad in ({"max_batch_size": 0}, {"strategy": "fifo"}, {"kind": "KIND_TPU"}, {"max_candidates": 4}):
        with pytest.raises(ConfigError):
            model_config(data, name="s", **bad)
    with pytest.raises(ConfigError, match="model name"):
        model_config(data, name="../escape")


def _edited(data: bytes, edit: Callable[[Any], None]) -> Any:
    from edgernn.serve.triton import model_config

    cfg = model_config(data, name="m")
    edit(cfg)
    return cfg


def test_validator_catches_wrong_names_dtypes_and_dims() -> None:
    _tritonclient()
    from edgernn.serve.triton import config_pb2, config_problems, config_text, validate_config

    pb = config_pb2()
    data = _export("lstm", 2).model_bytes

    def state_dim(c: Any) -> None:
        c.sequence_batching.state[1].dims[0] = 3

    def input_name(c: Any) -> None:
        c.input[0].name = "frames"

    def output_dtype(c: Any) -> None:
        c.output[0].data_type = pb.TYPE_FP16

    def state_output_name(c: Any) -> None:
        c.sequence_batching.state[0].output_name = "c_out"

    def no_initial_state(c: Any) -> None:
        del c.sequence_batching.state[0].initial_state[:]

    def control_the_model_lacks(c: Any) -> None:
        ctl = c.sequence_batching.control_input.add()
        ctl.name = "START"
        ctl.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, fp32_false_true=[0, 1])

    def no_batching(c: Any) -> None:
        c.max_batch_size = 0

    cases = {
        state_dim: "state input 'c_in' has dims [3, 8] in the config, [2, 8] in the graph",
        input_name: "input 'frames' is not a graph input",
        output_dtype: "output 'y' is TYPE_FP16 in the config, float32 in the graph",
        state_output_name: "are not the model's",
        no_initial_state: "initial_state entries",
        control_the_model_lacks: "control input 'START' is not a graph input",
        no_batching: "max_batch_size is 0",
    }
    for edit, message in cases.items():
        cfg = _edited(data, edit)
        problems = config_problems(cfg, data)
        assert any(message in p for p in problems), (edit.__name__, problems)
        with pytest.raises(ConfigError, match="does not fit the model"):
            validate_config(config_text(cfg), data)
    with pytest.raises(ConfigError, match="does not parse"):
        validate_config("max_batch_size: [", data)


def _state_model(names_in: list[str], names_out: list[str]) -> bytes:
    """A batch-first stateful graph without a manifest: x [b, 1] -> y; each state s_out = s_in + x."""
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])]
    for a, b in zip(names_in, names_out, strict=True):
        nodes.append(helper.make_node("Add", [a, "x"], [b]))
        ins.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, ["batch", 1]))
        outs.append(helper.make_tensor_value_info(b, TensorProto.FLOAT, ["batch", 1]))
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs), opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def _hand_config(names_in: list[str], names_out: list[str]) -> Any:
    from edgernn.serve.triton import config_pb2

    pb = config_pb2()
    cfg = pb.ModelConfig(name="m", backend="onnxruntime", max_batch_size=4)
    cfg.input.add(name="x", data_type=pb.TYPE_FP32, dims=[1])
    cfg.output.add(name="y", data_type=pb.TYPE_FP32, dims=[1])
    for a, b in zip(names_in, names_out, strict=True):
        st = cfg.sequence_batching.state.add(input_name=a, output_name=b, data_type=pb.TYPE_FP32, dims=[1])
        st.initial_state.add(data_type=pb.TYPE_FP32, dims=[1], zero_data=True, name=a)
    return cfg


def test_validator_catches_state_names_that_triton_pairs_wrongly() -> None:
    """Triton pairs states by position in name-sorted maps (server issue #8586): the case from that issue."""
    _tritonclient()
    from edgernn.serve.triton import config_problems

    bad_in, bad_out = (
        ["cache_last_channel", "cache_last_channel_len"],
        ["cache_last_channel_next", "cache_last_channel_len_next"],
    )
    problems = config_problems(_hand_config(bad_in, bad_out), _state_model(bad_in, bad_out))
    assert len(problems) == 2 and all("#8586" in p for p in problems), problems
    assert "would feed 'cache_last_channel_len_next' to 'cache_last_channel'" in " ".join(problems)
    good_in, good_out = ["h_in", "c_in", "h_in_1"], ["h_out", "c_out", "h_out_1"]
    assert config_problems(_hand_config(good_in, good_out), _state_model(good_in, good_out)) == []


# ------------------------------------------------------------------------------------------------ the repository


def test_write_repository_writes_config_and_model(tmp_path: Path) -> None:
    _tritonclient()
    from edgernn.serve.triton import validate_config, write_repository

    model = tmp_path / "sine stream.onnx"
    data = _export("lstm", 2).model_bytes
    model.write_bytes(data)
    written = write_repository(model, tmp_path / "repo", max_batch_size=4)
    assert written.name == "sine_stream"
    assert written.config_path == tmp_path / "repo" / "sine_stream" / "config.pbtxt"
    assert written.model_path.read_bytes() == data
    cfg = validate_config(written.config_path, written.model_path)
    assert cfg.name == "sine_stream" and cfg.max_batch_size == 4
    assert not [p for p in (tmp_path / "repo").rglob("*.tmp")]


def test_write_repository_refuses_models_triton_cannot_serve(tmp_path: Path) -> None:
    _tritonclient()
    from edgernn.serve.triton import write_repository

    ort_step = tmp_path / "ort.onnx"
    ort_step.write_bytes(_export("lstm", 1, target="ort").model_bytes)
    with pytest.raises(ModelFormatError, match=r"batch axis first.*--strategy step --target triton"):
        write_repository(ort_step, tmp_path / "repo")
    native = tmp_path / "native.onnx"
    native.write_bytes(export_model(_model("gru", 1), None, strategy="native").model_bytes)
    with pytest.raises(ModelFormatError, match=r"native export.*--strategy step --target triton"):
        write_repository(native, tmp_path / "repo")
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(_state_model(["h_in"], ["h_out"]))
    with pytest.raises(ModelFormatError, match="no edgernn manifest"):
        write_repository(plain, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------------------------------------------------------ emulation


def _interleaved(lengths: list[int], seed: int) -> list[tuple[int, int]]:
    """(stream, step) pairs: every stream's steps in order, the streams interleaved at random."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    rng.shuffle(order)
    seen = [0] * len(lengths)
    out = []
    for i in order:
        out.append((int(i), seen[i]))
        seen[i] += 1
    return out


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
def test_emulated_sequence_batcher_equals_local_streams(tmp_path: Path, strategy: str) -> None:
    _tritonclient()
    from edgernn.serve.triton import write_repository
    from edgernn.serve.triton_emulate import SequenceBatcherEmulator

    data = _export("lstm", 2).model_bytes
    (tmp_path / "m.onnx").write_bytes(data)
    options = {"max_candidates": 6} if strategy == "oldest" else {}
    write_repository(
        tmp_path / "m.onnx", tmp_path / "repo", name="lstm", max_batch_size=4, strategy=strategy, **options
    )
    emu = SequenceBatcherEmulator(tmp_path / "repo", "lstm")
    lengths = [3, 17, 9, 25, 1, 12, 30, 6]
    xs = [_frames(n, seed=100 + i) for i, n in enumerate(lengths)]
    ids: dict[int, tuple[int, int]] = {}
    for i, t in _interleaved(lengths, seed=5):
        rid = emu.submit(1000 + i, {"x": xs[i][t][None, None]}, start=t == 0, end=t == lengths[i] - 1)
        ids[rid] = (i, t)
    results = emu.drain()
    assert sorted(results) == sorted(ids)
    got = [np.zeros((n, OUT), np.float32) for n in lengths]
    for rid, (i, t) in ids.items():
        assert results[rid]["y"].shape == (1, OUT)
        got[i][t] = results[rid]["y"][0]
    for i in range(len(lengths)):
        np.testing.assert_allclose(got[i], _local(data, xs[i]), rtol=0, atol=ATOL_BATCHED, err_msg=f"stream {i}")
    assert max(emu.batch_sizes) == 4 and min(emu.batch_sizes) >= 1  # batched, never past max_batch_size
    assert sum(emu.batch_sizes) == sum(lengths)
    assert not emu._active  # every END freed its sequence


def test_emulated_restart_starts_from_zero_state(tmp_path: Path) -> None:
    _tritonclient()
    from edgernn.serve.triton import write_repository
    from edgernn.serve.triton_emulate import SequenceBatcherEmulator

    data = _export("gru", 2).model_bytes
    (tmp_path / "m.onnx").write_bytes(data)
    write_repository(tmp_path / "m.onnx", tmp_path / "repo", name="gru", max_batch_size=2)
    emu = SequenceBatcherEmulator(tmp_path / "repo", "gru")
    a, b = _frames(5, seed=1), _frames(4, seed=2)
    outs = []
    for t, f in enumerate(a):  # sequence 7 runs 5 steps and ends ...
        rid = emu.submit(7, {"x": f[None, None]}, start=t == 0, end=t == len(a) - 1)
        outs.append(emu.drain()[rid]["y"][0])
    np.testing.assert_allclose(np.stack(outs), _local(data, a), rtol=0, atol=ATOL_BATCHED)
    restarted = []
    for t, f in enumerate(b):  # ... and id 7 is used again: a new sequence, from zeros
        rid = emu.submit(7, {"x": f[None, None]}, start=t == 0)
        restarted.append(emu.drain()[rid]["y"][0])
    np.testing.assert_allclose(np.stack(restarted), _local(data, b), rtol=0, atol=ATOL_BATCHED)
    rid = emu.submit(7, {"x": a[0][None, None]}, start=True)  # START on a live sequence restarts it too
    np.testing.assert_allclose(emu.drain()[rid]["y"][0], _local(data, a[:1])[0], rtol=0, atol=ATOL_BATCHED)
    one = StreamingModel(data).stream()
    one.step(a[0])
    np.testing.assert_allclose(emu.state(7)["h_in"], one.state["h_in"], rtol=0, atol=ATOL_BATCHED)
    with pytest.raises(InputError, match="START flag"):
        emu.submit(8, {"x": a[0][None, None]})
    emu.submit(9, {"x": a[0][None, None]}, start=True, end=True)  # a one-request sequence, still queued ...
    with pytest.raises(InputError, match="START flag"):  # ... after which 9 must start again
        emu.submit(9, {"x": a[1][None, None]})


# ------------------------------------------------------------------------------------------------ the client


class _EmulatedServer:
    """tritonclient.grpc's ``infer`` over the emulator: the request is built by tritonclient's own code into the
    gRPC message a server receives."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.requests: list[Any] = []

    def infer(self, **kwargs: Any) -> Any:
        from tritonclient.grpc._utils import _get_inference_request

        request = _get_inference_request(
            model_name=kwargs["model_name"],
            inputs=kwargs["inputs"],
            model_version="",
            request_id="",
            outputs=kwargs["outputs"],
            sequence_id=kwargs["sequence_id"],
            sequence_start=kwargs["sequence_start"],
            sequence_end=kwargs["sequence_end"],
            priority=0,
            timeout=None,
            parameters=None,
        )
        self.requests.append(request)
        rid = self.emu.submit_request(request)
        out = self.emu.drain()[rid]

        class Result:
            def as_numpy(self, name: str) -> np.ndarray:
                return out[name]

        return Result()


def test_client_requests_carry_the_frame_and_the_sequence_flags(tmp_path: Path) -> None:
    _tritonclient()
    from edgernn.serve.triton import TritonStreamClient, write_repository
    from edgernn.serve.triton_emulate import SequenceBatcherEmulator

    data = _export("lstm", 2).model_bytes
    (tmp_path / "m.onnx").write_bytes(data)
    written = write_repository(tmp_path / "m.onnx", tmp_path / "repo", name="lstm")
    server = _EmulatedServer(SequenceBatcherEmulator(tmp_path / "repo", "lstm"))
    client = TritonStreamClient("lstm", config=written.config_path, client=server)
    x = _frames(6, seed=9)
    kw = client.request(42, x[0], start=True)
    assert kw["model_name"] == "lstm" and kw["sequence_id"] == 42
    assert kw["sequence_start"] is True and kw["sequence_end"] is False
    (item,) = kw["inputs"]
    assert (item.name(), item.datatype(), item.shape()) == ("x", "FP32", [1, 1, F])
    assert np.frombuffer(item._get_content(), np.float32).tolist() == x[0].tolist()
    assert [o.name() for o in kw["outputs"]] == ["y"]
    assert client.request(42, x[0][None], end=True)["sequence_end"] is True  # (1, F) frames are taken too

    ys = [client.step(42, f, start=t == 0, end=t == len(x) - 1)["y"] for t, f in enumerate(x)]
    np.testing.assert_allclose(np.stack(ys), _local(data, x), rtol=0, atol=ATOL_BATCHED)
    wire = server.requests[0].parameters
    assert wire["sequence_id"].int64_param == 42 and wire["sequence_start"].bool_param
    assert server.requests[-1].parameters["sequence_end"].bool_param

    for bad in (0, -3, True, ""):
        with pytest.raises(ConfigError, match="sequence id"):
            client.request(bad, x[0])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="takes dims"):
        client.request(1, np.zeros(F + 1, np.float32))
    with pytest.raises(InputError, match="non-finite"):
        client.request(1, np.full(F, np.nan, np.float32))


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgernn export CKPT --strategy step --target triton` as the docs run it."""
    pytest.importorskip("tritonclient.grpc", reason=NEEDS_TRITONCLIENT)
    from edgernn.model.checkpoint import save

    d = tmp_path_factory.mktemp("cli")
    save(d / "model.ckpt", _model("lstm", 2))
    out = d / "stream.onnx"
    r = CliRunner().invoke(
        main, ["export", str(d / "model.ckpt"), "--strategy", "step", "--target", "triton", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "target triton: onnxruntime loads the model" in r.output and "parity PASS" in r.output
    return out


def test_cli_export_refuses_other_strategies_for_triton(tmp_path: Path) -> None:
    from edgernn.model.checkpoint import save

    save(tmp_path / "model.ckpt", _model("lstm", 1))
    args = ["export", str(tmp_path / "model.ckpt"), "--strategy", "native", "--target", "triton"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == TargetError.exit_code, r.output
    assert "--strategy step" in r.output and not (tmp_path / "m.onnx").exists()


def test_cli_serve_triton_writes_a_repository(cli_export: Path, tmp_path: Path) -> None:
    from edgernn.serve.triton import validate_config

    repo = tmp_path / "repo"
    args = ["serve", "triton", str(cli_export), "--repo", str(repo), "--name", "sine", "--max-batch-size", "16"]
    r = CliRunner().invoke(main, [*args, "--instances", "2", "--idle-ms", "750", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["name"] == "sine" and info["max_batch_size"] == 16 and info["instances"] == 2
    assert info["kind"] == "KIND_CPU" and info["strategy"] == "direct" and info["idle_us"] == 750_000
    assert [(s["input"], s["output"], s["dims"]) for s in info["states"]] == [
        ("h_in", "h_out", [2, H]),
        ("c_in", "c_out", [2, H]),
    ]
    assert Path(info["config"]) == repo / "sine" / "config.pbtxt"
    assert (repo / "sine" / "1" / "model.onnx").read_bytes() == cli_export.read_bytes()
    validate_config(repo / "sine" / "config.pbtxt", cli_export)
    r = CliRunner().invoke(main, ["serve", "triton", str(cli_export), "--repo", str(repo), "--gpu"])
    assert r.exit_code == 0, r.output
    assert (
        "KIND_GPU" in (repo / "stream" / "config.pbtxt").read_text() and "tritonserver --model-repository" in r.output
    )


def test_cli_serve_triton_refuses_a_non_triton_export(tmp_path: Path) -> None:
    _tritonclient()
    model = tmp_path / "ort.onnx"
    model.write_bytes(_export("lstm", 1, target="ort").model_bytes)
    r = CliRunner().invoke(main, ["serve", "triton", str(model), "--repo", str(tmp_path / "repo")])
    assert r.exit_code == ModelFormatError.exit_code, r.output
    assert r.output.startswith("error: ") and "--strategy step --target triton" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "repo").exists()


def test_cli_serve_triton_without_tritonclient_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(_state_model(["h_in"], ["h_out"]))
    _hide_tritonclient(monkeypatch)
    r = CliRunner().invoke(main, ["serve", "triton", str(model), "--repo", str(tmp_path / "repo")])
    assert r.exit_code == 10, r.output
    assert "pip install 'edgernn[triton]'" in r.output and len(r.output.strip().splitlines()) == 1


# the commands that re-check a file compare states in the graph's own layout and know the target
def test_cli_parity_rechecks_a_triton_export(cli_export: Path) -> None:
    r = CliRunner().invoke(main, ["parity", str(cli_export.parent / "model.ckpt"), str(cli_export)])
    assert r.exit_code == 0, r.output


def test_cli_check_knows_the_triton_target(cli_export: Path) -> None:
    r = CliRunner().invoke(main, ["check", str(cli_export)])
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------------ control state (model.py)


def test_control_config_validates_and_its_checks_catch_edits() -> None:
    _tritonclient()
    from edgernn.serve.triton import config_problems, config_text, model_config, parse_config

    data = _export("lstm", 2).model_bytes
    cfg = parse_config(config_text(model_config(data, name="c", state="control", max_batch_size=8, warmup=2)))
    assert cfg.backend == "python" and not cfg.platform and cfg.default_model_filename == "model.py"
    assert [(i.name, i.optional) for i in cfg.input] == [("x", False), ("h_in", True), ("c_in", True)]
    assert [o.name for o in cfg.output] == ["y", "h_out", "c_out"]
    seq = cfg.sequence_batching
    assert not seq.state and [c.name for c in seq.control_input] == ["START", "END", "READY", "CORRID"]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["edgernn_max_sequences"] == "16" and params["edgernn_idle_us"] == "5000000"
    assert json.loads(params["edgernn_states"]) == [
        {"input": "h_in", "output": "h_out", "dims": [2, H], "dtype": "float32"},
        {"input": "c_in", "output": "c_out", "dims": [2, H], "dtype": "float32"},
    ]
    assert cfg.model_warmup[0].count == 2 and set(cfg.model_warmup[0].inputs) == {
        "x",
        "START",
        "END",
        "READY",
        "CORRID",
    }
    assert config_problems(cfg, data) == []

    def edited(edit: Callable[[Any], None]) -> list[str]:
        c = parse_config(config_text(cfg))
        edit(c)
        return config_problems(c, data)

    assert any("control inputs" in p for p in edited(lambda c: c.sequence_batching.control_input.pop()))
    assert any("optional" in p for p in edited(lambda c: setattr(c.input[1], "optional", False)))
    assert any("edgernn_states" in p for p in edited(lambda c: c.parameters.pop("edgernn_states")))
    assert any(
        "edgernn_idle_us" in p
        for p in edited(lambda c: setattr(c.sequence_batching, "max_sequence_idle_microseconds", 7))
    )
    assert any("graph output" in p for p in edited(lambda c: c.output.pop()))
    assert any("warm-up" in p for p in edited(lambda c: c.model_warmup[0].inputs.pop("x")))


def test_batcher_knobs_land_in_their_fields_and_are_bounded() -> None:
    _tritonclient()
    from edgernn.serve.triton import config_problems, model_config

    data = _export("lstm", 2).model_bytes
    cfg = model_config(
        data, name="k", max_batch_size=8, strategy="oldest", preserve_ordering=True, preferred_batch_sizes=[4, 8]
    )
    assert cfg.sequence_batching.oldest.preserve_ordering and list(
        cfg.sequence_batching.oldest.preferred_batch_size
    ) == [4, 8]
    assert config_problems(cfg, data) == []
    cfg.sequence_batching.oldest.preferred_batch_size.append(9)
    assert any("preferred_batch_size" in p for p in config_problems(cfg, data))
    d = model_config(data, name="k", minimum_slot_utilization=0.5)
    assert d.sequence_batching.direct.minimum_slot_utilization == 0.5 and config_problems(d, data) == []
    bad: list[dict[str, Any]] = [
        {"preferred_batch_sizes": [4]},  # direct
        {"strategy": "oldest", "preferred_batch_sizes": [65], "max_batch_size": 64},
        {"strategy": "oldest", "preferred_batch_sizes": [2, 2]},
        {"strategy": "oldest", "minimum_slot_utilization": 0.5},
        {"minimum_slot_utilization": 1.5},
        {"warmup": 1001},
        {"warmup": -1},
        {"state": "shared"},
        {"max_sequences": 4},  # implicit
    ]
    for kw in bad:
        with pytest.raises(ConfigError):
            model_config(data, name="k", **kw)
    with pytest.raises(ConfigError, match=r"max_sequences is at most 1,048,576 .* bytes of state per instance"):
        model_config(data, name="k", state="control", max_sequences=1_048_577)


class _FakePbUtils:
    """The few names of Triton's ``triton_python_backend_utils`` that model.py uses, over plain dicts."""

    class Tensor:
        def __init__(self, name: str, a: np.ndarray) -> None:
            self.name, self.a = name, a

        def as_numpy(self) -> np.ndarray:
            return self.a

        @classmethod
        def from_dlpack(cls, name: str, a: np.ndarray) -> Any:
            return cls(name, np.from_dlpack(a))

    class InferenceResponse:
        def __init__(self, output_tensors: list[Any], error: Any = None) -> None:
            self.outputs = {t.name: t.a for t in output_tensors}
            self.error = error

    class TritonError(Exception):
        pass

    @staticmethod
    def get_input_tensor_by_name(request: dict[str, Any], name: str) -> Any:
        return _FakePbUtils.Tensor(name, request[name]) if name in request else None


class _ControlServer:
    """tritonclient.grpc's ``infer`` over ``model.py`` of a control-state repository, in this process: the
    batcher's controls set from the sequence flags as Triton sets them."""

    def __init__(self, repo: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib.util

        monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils)
        spec = importlib.util.spec_from_file_location("control_model", repo / name / "1" / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.model = module.TritonPythonModel()
        cfg = (repo / name / "config.pbtxt").read_text()
        from google.protobuf import json_format

        from edgernn.serve.triton import parse_config

        self.model.initialize(
            {
                "model_config": json.dumps(
                    json_format.MessageToDict(parse_config(cfg), preserving_proto_field_name=True)
                ),
                "model_repository": str(repo / name),
                "model_version": "1",
            }
        )

    def infer(self, **kw: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        req = {i.name(): np.frombuffer(i._get_content(), np.float32).reshape(i.shape()) for i in kw["inputs"]}
        req.update(
            START=np.array([[int(kw["sequence_start"])]], np.int32),
            END=np.array([[int(kw["sequence_end"])]], np.int32),
            READY=np.array([[1]], np.int32),
            CORRID=np.array([[kw["sequence_id"]]], np.uint64),
        )
        (resp,) = self.model.execute([req])
        if resp.error is not None:
            raise InferenceServerException(str(resp.error), status="StatusCode.INVALID_ARGUMENT")

        class Result:
            def as_numpy(self, name: str) -> np.ndarray:
                return resp.outputs[name]

        return Result()


def test_control_model_keeps_states_and_the_client_resumes_forgotten_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tritonclient()
    from edgernn.serve.triton import TritonStreamClient, write_repository

    data = _export("lstm", 2).model_bytes
    (tmp_path / "m.onnx").write_bytes(data)
    written = write_repository(tmp_path / "m.onnx", tmp_path / "repo", name="c", state="control", max_sequences=2)
    assert (tmp_path / "repo" / "c" / "1" / "model.py").is_file()
    server = _ControlServer(tmp_path / "repo", "c", monkeypatch)
    client = TritonStreamClient("c", config=written.config_path, client=server)
    a, b = _frames(5, seed=1), _frames(3, seed=2)
    ya = [client.step(1, a[0], start=True)["y"], client.step(1, a[1])["y"]]
    yb = [client.step(2, f, start=t == 0)["y"] for t, f in enumerate(b)]
    assert set(server.model.held) == {1, 2} and set(client.held) == {1, 2}
    with pytest.raises(InputError, match="holds its 2 sequences"):  # bounded: a third START is refused
        client.step(3, a[0], start=True)
    server.model.held.clear()  # the server forgot both (idle time-out)
    ya += [client.step(1, f, end=t == 4)["y"] for t, f in enumerate(a[2:], start=2)]
    assert client.restarts == 1 and 1 not in server.model.held and 1 not in client.held  # END frees both sides
    np.testing.assert_array_equal(np.stack(ya), _local(data, a))  # bit for bit across the resume
    np.testing.assert_array_equal(np.stack(yb), _local(data, b))
    client.forget(2)
    with pytest.raises(InputError, match="START it again"):  # nothing held: edgernn's error, not tritonclient's
        client.step(2, b[0])
    server.model.idle_s = 0.0  # every held state is stale at the next call
    client.step(4, a[0], start=True)
    with pytest.raises(InputError, match="START it again") as e:
        TritonStreamClient("c", config=written.config_path, client=server).step(4, a[1])
    assert "idled out" in str(e.value)


def test_client_turns_server_errors_into_edgernn_errors(tmp_path: Path) -> None:
    _tritonclient()
    from tritonclient.utils import InferenceServerException

    from edgernn.errors import EdgeRNNError
    from edgernn.serve.triton import TritonStreamClient, write_repository

    (tmp_path / "m.onnx").write_bytes(_export("lstm", 2).model_bytes)
    written = write_repository(tmp_path / "m.onnx", tmp_path / "repo", name="i")

    class Failing:
        def __init__(self, status: str, msg: str) -> None:
            self.status, self.msg = status, msg

        def infer(self, **kw: Any) -> Any:
            raise InferenceServerException(self.msg, status=self.status)

    x = _frames(1, seed=3)[0]
    idle = Failing("StatusCode.INVALID_ARGUMENT", "inference request for sequence 5 must specify the START flag")
    with pytest.raises(InputError, match="serve with --state control"):  # implicit: the state is lost
        TritonStreamClient("i", config=written.config_path, client=idle).step(5, x)
    down = Failing("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
    with pytest.raises(EdgeRNNError, match="UNAVAILABLE") as e:
        TritonStreamClient("i", config=written.config_path, client=down).step(5, x, start=True)
    assert type(e.value) is EdgeRNNError


def test_cli_serve_triton_writes_a_control_repository(cli_export: Path, tmp_path: Path) -> None:
    from edgernn.serve.triton import validate_config

    repo = tmp_path / "repo"
    args = ["serve", "triton", str(cli_export), "--repo", str(repo), "--name", "c", "--state", "control"]
    r = CliRunner().invoke(main, [*args, "--max-sequences", "32", "--min-slot-utilization", "0.5", "--warmup", "1"])
    assert r.exit_code == 0, r.output
    assert "model.py" in r.output and (repo / "c" / "1" / "model.py").is_file()
    cfg = validate_config(repo / "c" / "config.pbtxt", cli_export)
    assert cfg.parameters["edgernn_max_sequences"].string_value == "32"
    assert cfg.sequence_batching.direct.minimum_slot_utilization == 0.5 and len(cfg.model_warmup) == 1
    r = CliRunner().invoke(
        main,
        [
            "serve",
            "triton",
            str(cli_export),
            "--repo",
            str(repo),
            "--name",
            "o",
            "--strategy",
            "oldest",
            "--preferred-batch-size",
            "4",
            "--preferred-batch-size",
            "8",
            "--preserve-ordering",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "preferred_batch_size: 4" in json.loads(r.output)["config_pbtxt"]
    r = CliRunner().invoke(main, [*args[:-2], "--name", "bad", "--min-slot-utilization", "0.5", "--strategy", "oldest"])
    assert r.exit_code == ConfigError.exit_code and "minimum_slot_utilization" in r.output
    assert not (repo / "bad").exists()


def test_emulator_refuses_a_control_repository(tmp_path: Path) -> None:
    _tritonclient()
    from edgernn.serve.triton import write_repository
    from edgernn.serve.triton_emulate import SequenceBatcherEmulator

    (tmp_path / "m.onnx").write_bytes(_export("gru", 1).model_bytes)
    write_repository(tmp_path / "m.onnx", tmp_path / "repo", name="c", state="control")
    with pytest.raises(ConfigError, match="control"):
        SequenceBatcherEmulator(tmp_path / "repo", "c")
