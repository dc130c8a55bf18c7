"""edgernn.diagnose.localize: which recurrent layer, direction and step of an export first leaves the tolerance."""

from __future__ import annotations

import copy
import functools
import json
import sys
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from edgernn.diagnose.localize import Localization, localize, plot_errors
from edgernn.errors import InputError, ModelFormatError
from edgernn.export import export, export_model
from edgernn.manifest import TensorSpec
from edgernn.model.zoo import ModelConfig, RecurrentModel, build_model

T = 20  # every sequence's padded length (the unroll exports are made at it)
FEATURES = 3
LENGTHS = np.array([T, 7, 13])  # padded batch: the longest sequence not first

# (strategy, cell, bidirectional, options): every strategy, every cell in several, 3 layers each
CASES = [
    ("native", "lstm", True, {}),
    ("loop", "gru", True, {}),
    ("unroll", "rnn-tanh", True, {"seq_len": T}),
    ("step", "lstm", False, {"chunk": 4}),
    ("native", "gru", False, {}),
    ("native", "rnn-tanh", True, {}),
    ("loop", "lstm", False, {}),
    ("step", "gru", False, {"chunk": 4, "fused": True}),
    ("step", "rnn-tanh", False, {"chunk": 1}),
]
IDS = [f"{s}-{c}{'-bi' if b else ''}{'-fused' if o.get('fused') else ''}" for s, c, b, o in CASES]


@functools.cache
def _exported(strategy: str, cell: str, bidirectional: bool, options: tuple[tuple[str, Any], ...]) -> tuple[Any, bytes]:
    """A 3-layer zoo model and its export (made once per session: exports take seconds)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(cell=cell, input_size=FEATURES, hidden_size=8, num_layers=3, bidirectional=bidirectional)
    )
    result = export_model(model, None, strategy=strategy, verify=False, **dict(options))
    return model, result.model_bytes


def exported(case: tuple[str, str, bool, dict[str, Any]]) -> tuple[RecurrentModel, bytes]:
    strategy, cell, bidirectional, options = case
    model, data = _exported(strategy, cell, bidirectional, tuple(sorted(options.items())))
    return copy.deepcopy(model), data


def zoo_inputs(strategy: str, lengths: np.ndarray | None = LENGTHS) -> tuple[dict[str, np.ndarray], list[TensorSpec]]:
    x = np.random.default_rng(7).standard_normal((3, T, FEATURES)).astype(np.float32)
    specs = [TensorSpec("x", "float32", ["batch", "time", FEATURES])]
    feed = {"x": x}
    if strategy != "step" and lengths is not None:  # a stream takes no lengths
        specs.append(TensorSpec("lengths", "int64", ["batch"], role="lengths"))
        feed["lengths"] = lengths
    return feed, specs


def scale(layer: nn.Module, weight: str, factor: float = 1.5) -> None:
    """Multiply one of a layer's parameters in place (the module then differs from its export)."""
    with torch.no_grad():
        getattr(layer, weight).mul_(factor)


def layer_traces(loc: Localization, k: int) -> list[Any]:
    return [t for t in loc.layers if t.layer == k]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unchanged_export_localizes_clean(case: tuple[str, str, bool, dict[str, Any]]) -> None:
    model, data = exported(case)
    feed, specs = zoo_inputs(case[0])
    loc = localize(model, data, feed, torch_specs=specs)
    dirs = 2 if case[2] else 1
    assert [(t.layer, t.direction) for t in loc.layers] == [(k, d) for k in range(3) for d in range(dirs)]
    assert loc.first is None and loc.passed, loc.describe()
    for t in loc.layers:
        assert t.steps == T
        valid = t.errors[~np.isnan(t.errors)]
        assert valid.size == T and valid.max() <= 1e-5, (t.label, t.errors)
    assert [o.name for o in loc.outputs] == ["y"] and loc.outputs[0].passed
    assert loc.describe().startswith("no recurrent layer exceeds tolerance")
    json.dumps(loc.to_dict(), allow_nan=False)


def _expect_first(loc: Localization, layer: int, direction: int, order: int, lengths: np.ndarray) -> None:
    """The first failure is at ``layer``/``direction``, the direction's step number ``order`` (0: its first)."""
    first = loc.first
    assert first is not None and first.failure is not None, loc.describe()
    assert (first.layer, first.direction) == (layer, direction), loc.describe()
    f = first.failure
    assert f.order == order
    # forward: step `order`; reverse: `order` steps back from the sequence's last valid step
    assert first.first_step == (order if direction == 0 else int(lengths[f.batch]) - 1 - order)
    assert f.diff > f.bound
    assert all(t.passed for t in layer_traces(loc, 0)), "layer 0 is the same in the file and the module"
    way = "reverse" if direction else "forward"
    said = f"layer {layer} (0-based: the 2nd) {way} direction, step {first.first_step} of {first.steps}"
    assert said in loc.describe()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_perturbed_layer_is_found(case: tuple[str, str, bool, dict[str, Any]]) -> None:
    """The module's layer index 1 changed after export: the last direction of layer 1 is the first to differ.
    From a zero initial state the recurrent weights multiply h_{-1} = 0 at the direction's first step, so a
    change to them shows at its second step; a change to the input weights at its first."""
    strategy, _, bidirectional, _ = case
    direction = 1 if bidirectional else 0
    sfx = "_reverse" if bidirectional else ""
    lengths = LENGTHS if strategy != "step" else np.full(3, T)
    feed, specs = zoo_inputs(strategy)
    for weight, order in ((f"weight_hh_l1{sfx}", 1), (f"weight_ih_l1{sfx}", 0)):
        model, data = exported(case)
        scale(model.rnn, weight)
        loc = localize(model, data, feed, torch_specs=specs)
        _expect_first(loc, 1, direction, order, lengths)
        if bidirectional:  # the other direction of layer 1 reads only layer 0: untouched
            assert layer_traces(loc, 1)[0].passed
        assert not all(t.passed for t in layer_traces(loc, 2)), "layer 2 reads layer 1's output"
        assert not loc.passed


def test_changed_onnx_weights_are_found() -> None:
    """The file changed, the module not: the reverse half of the second LSTM node's recurrent weights R."""
    model, data = exported(CASES[0])
    proto = onnx.load_from_string(data)
    lstm = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm) == 3
    init = next(t for t in proto.graph.initializer if t.name == lstm[1].input[2])
    r = numpy_helper.to_array(init).copy()
    r[1] *= 1.5  # direction 1: reverse
    init.CopyFrom(numpy_helper.from_array(r, init.name))
    feed, specs = zoo_inputs("native", lengths=np.full(3, T))
    loc = localize(model, proto.SerializeToString(), feed, torch_specs=specs)
    _expect_first(loc, 1, 1, 1, np.full(3, T))
    assert loc.first is not None and loc.first.first_step == T - 2


class PackedGRU(nn.Module):
    """A user's module: a plain torch GRU over a padded, packed batch."""

    def __init__(self, layer: nn.GRU) -> None:
        super().__init__()
        self.gru = layer
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.gru(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(y)


class OwnForwardGRU(nn.GRU):
    """A library's GRU subclass with its own forward through super().forward."""

    def forward(self, input: Any, hx: Any = None) -> Any:  # noqa: A002
        return super().forward(input, hx)


@pytest.mark.parametrize("strategy,layer_class", [("loop", nn.GRU), ("native", nn.GRU), ("native", OwnForwardGRU)])
def test_padded_user_module(strategy: str, layer_class: type[nn.GRU]) -> None:
    torch.manual_seed(1)
    module = PackedGRU(layer_class(4, 8, num_layers=2, batch_first=True, bidirectional=True)).eval()
    example = (torch.randn(3, 6, 4), torch.tensor([6, 3, 5]))
    data = export(
        module, example, None, strategy=strategy, input_names=["x", "lengths"], lengths_input="lengths", verify=False
    ).model_bytes
    specs = [
        TensorSpec("x", "float32", ["batch", "time", 4]),
        TensorSpec("lengths", "int64", ["batch"], role="lengths"),
    ]
    lengths = np.array([5, 30, 17, 1])
    feed = {"x": np.random.default_rng(3).standard_normal((4, 30, 4)).astype(np.float32), "lengths": lengths}

    loc = localize(module, data, feed, torch_specs=specs)
    assert loc.passed, loc.describe()
    assert type(module.gru) is layer_class  # a layer followed through its own forward gets its class back
    for t in loc.layers:  # only valid steps are compared: none is valid past the longest sequence
        assert np.nanmax(t.errors) <= 1e-5
        assert np.isnan(t.errors).sum() == 0  # the longest sequence is the whole padded length

    changed = copy.deepcopy(module)
    scale(changed.gru, "weight_hh_l1")
    loc = localize(changed, data, feed, torch_specs=specs)
    _expect_first(loc, 1, 0, 1, lengths)
    assert layer_traces(loc, 1)[1].passed  # layer 1 reverse: untouched

    changed = copy.deepcopy(module)
    scale(changed.gru, "weight_ih_l1_reverse")
    loc = localize(changed, data, feed, torch_specs=specs)
    _expect_first(loc, 1, 1, 0, lengths)


def test_module_of_another_shape_is_refused() -> None:
    """A 2-layer module against a 3-layer export: the counts differ and localize says so rather than guessing."""
    _, data = exported(CASES[0])
    torch.manual_seed(0)
    other = build_model(ModelConfig(cell="lstm", input_size=FEATURES, hidden_size=8, num_layers=2, bidirectional=True))
    feed, specs = zoo_inputs("native")
    with pytest.raises(ModelFormatError, match=r"holds 6 recurrence\(s\).*ran 4"):
        localize(other, data, feed, torch_specs=specs)


def test_stream_runs_whole_chunks() -> None:
    model, data = exported(CASES[3])  # step, chunk 4
    feed, specs = zoo_inputs("step")
    feed = {"x": feed["x"][:, : T - 3]}
    loc = localize(model, data, feed, torch_specs=specs)
    assert loc.passed and loc.chunk == 4
    assert all(t.steps == T - 4 for t in loc.layers)
    assert any("last 1 step(s) were left out" in n for n in loc.notes)
    with pytest.raises(InputError, match="chunks of 4"):
        localize(model, data, {"x": feed["x"][:, :3]}, torch_specs=specs)


def test_plot_errors_writes_png(tmp_path: Any) -> None:
    model, data = exported(CASES[1])
    scale(model.rnn, "weight_hh_l1")
    feed, specs = zoo_inputs("loop")
    loc = localize(model, data, feed, torch_specs=specs)
    path = tmp_path / "drift" / "errors.png"
    plot_errors(loc, path)
    blob = path.read_bytes()
    assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 1000


def test_plot_errors_without_matplotlib(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = exported(CASES[1])
    feed, specs = zoo_inputs("loop")
    loc = localize(model, data, feed, torch_specs=specs)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'edgernn\[plot\]'") as e:
        plot_errors(loc, tmp_path / "x.png")
    assert e.value.name == "matplotlib"  # what the CLI maps to the extra to install
    assert not (tmp_path / "x.png").exists()
