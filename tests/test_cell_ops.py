"""The ONNX-layout recurrence (``edgernn.model.cell_ops``, which the loop, unroll and step strategies trace) against
torch's own kernels, one step and whole padded sequences, for every cell, both directions, with and without LSTM
peepholes and projection. Peepholes, which torch has no kernel for, are held to the numpy oracle
(``edgernn.verify.reference``), which shares no code with cell_ops."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from edgernn.model import cell_ops
from edgernn.model.cells import get_cell
from edgernn.model.layout import onnx_weights
from edgernn.model.nn import make_layer
from edgernn.verify import reference

IN, H, P, B = 5, 6, 4, 3
TOL = dict(atol=2e-6, rtol=1e-5)
CELLS = ["rnn-tanh", "rnn-relu", "gru", "lstm"]
TORCH_CELLS = {
    "rnn-tanh": torch.nn.RNNCell,
    "rnn-relu": torch.nn.RNNCell,
    "gru": torch.nn.GRUCell,
    "lstm": torch.nn.LSTMCell,
}


def _layer(cell: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(zlib.crc32(repr((cell, sorted(kw.items()))).encode()))  # stable across processes
    layer = make_layer(cell, IN, H, bidirectional=True, **kw)
    with torch.no_grad():  # larger weights than the default init: saturating and negative pre-activations too
        for p in layer.parameters():
            p.uniform_(-0.9, 0.9)
    return layer


def _state(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(7)
    h = torch.randn(B, layer.state_size)
    c = torch.randn(B, H) if layer.cell_kind.torch_class == "LSTM" else None
    return h, c


def _torch_cell(cell: str, layer: torch.nn.Module, d: int) -> torch.nn.Module:
    """torch's own cell (RNNCell, GRUCell, LSTMCell) holding direction ``d`` of the layer's weights."""
    kind = get_cell(cell)
    kw = {"nonlinearity": kind.nonlinearity} if kind.torch_class == "RNN" else {}
    tc = TORCH_CELLS[cell](IN, H, **kw)
    w = layer.layer_weights(0, d)
    with torch.no_grad():
        tc.weight_ih.copy_(w["w_ih"])
        tc.weight_hh.copy_(w["w_hh"])
        tc.bias_ih.copy_(w["b_ih"])
        tc.bias_hh.copy_(w["b_hh"])
    return tc


@pytest.mark.parametrize("step", ["cell_step", "lone_step"])
@pytest.mark.parametrize("d", [0, 1])
@pytest.mark.parametrize("cell", CELLS)
def test_one_step_equals_torchs_cell(cell: str, d: int, step: str) -> None:
    layer = _layer(cell)
    kind = layer.cell_kind
    x = torch.randn(B, IN)
    h, c = _state(layer)
    got_h, got_c = getattr(cell_ops, step)(kind, x, h, c, onnx_weights(layer)[0], d)
    tc = _torch_cell(cell, layer, d)
    with torch.no_grad():
        if c is None:
            want_h, want_c = tc(x, h), None
        else:
            want_h, want_c = tc(x, (h, c))
    torch.testing.assert_close(got_h, want_h, **TOL)
    if want_c is None:
        assert got_c is None
    else:
        torch.testing.assert_close(got_c, want_c, **TOL)


@pytest.mark.parametrize("step", ["cell_step", "lone_step"])
@pytest.mark.parametrize("d", [0, 1])
def test_projected_lstm_step_equals_torchs_lstm(d: int, step: str) -> None:
    """torch has no projected LSTMCell: one step of its fused LSTM (proj_size) with a given state is the reference."""
    layer = _layer("lstm", proj_size=P)
    x = torch.randn(B, IN)
    h, c = _state(layer)
    got_h, got_c = getattr(cell_ops, step)(layer.cell_kind, x, h, c, onnx_weights(layer)[0], d)
    one = torch.nn.LSTM(IN, H, proj_size=P)
    w = layer.layer_weights(0, d)
    with torch.no_grad():
        for ours, theirs in [("w_ih", "weight_ih_l0"), ("w_hh", "weight_hh_l0"), ("b_ih", "bias_ih_l0"),
                             ("b_hh", "bias_hh_l0"), ("w_hr", "weight_hr_l0")]:  # fmt: skip
            getattr(one, theirs).copy_(w[ours])
        _, (want_h, want_c) = one(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    assert got_h.shape == (B, P)
    torch.testing.assert_close(got_h, want_h[0], **TOL)
    torch.testing.assert_close(got_c, want_c[0], **TOL)


@pytest.mark.parametrize("step", ["cell_step", "lone_step"])
@pytest.mark.parametrize("proj", [0, P])
@pytest.mark.parametrize("d", [0, 1])
def test_peephole_step_equals_the_numpy_oracle(d: int, proj: int, step: str) -> None:
    layer = _layer("lstm", peephole=True, proj_size=proj)
    x = torch.randn(B, IN)
    h, c = _state(layer)
    got_h, got_c = getattr(cell_ops, step)(layer.cell_kind, x, h, c, onnx_weights(layer)[0], d)
    w = {k: v.detach().double().numpy() for k, v in layer.layer_weights(0, d).items()}
    want_h, want_c = reference.cell_step("lstm", x.double().numpy(), h.double().numpy(), c.double().numpy(), w)
    np.testing.assert_allclose(got_h.numpy(), want_h, **TOL)
    np.testing.assert_allclose(got_c.numpy(), want_c, **TOL)
    # the peepholes matter: without them the step differs (a test that cannot tell them apart proves nothing)
    plain = {k: v for k, v in w.items() if not k.startswith("p_")}
    h_plain, _ = reference.cell_step("lstm", x.double().numpy(), h.double().numpy(), c.double().numpy(), plain)
    assert np.abs(h_plain - want_h).max() > 1e-3


@pytest.mark.parametrize(
    "cell, kw",
    [
        ("rnn-tanh", {}),
        ("rnn-relu", {}),
        ("gru", {}),
        ("lstm", {}),
        ("lstm", {"proj_size": P}),
        ("lstm", {"peephole": True}),
        ("lstm", {"peephole": True, "proj_size": P}),
    ],
)
def test_padded_stack_equals_the_layer(cell: str, kw: dict) -> None:
    """run_stack over a padded batch, two layers, both directions, against the layer's own forward (torch's packed
    kernel; for peepholes the unfused torch-layout forward): outputs zero and states held past each length."""
    torch.manual_seed(3)
    layer = make_layer(cell, IN, H, num_layers=2, bidirectional=True, **kw)
    T = 7
    x = torch.randn(T, B, IN)
    lengths = torch.tensor([7, 3, 1])
    n = 2 * 2
    h0 = torch.randn(n, B, layer.state_size)
    c0 = torch.randn(n, B, H) if cell == "lstm" else None
    y, h, c = cell_ops.run_stack(layer.cell_kind, onnx_weights(layer), x, h0, c0, lengths)
    with torch.no_grad():
        want_y, want_state = layer(x, h0 if c0 is None else (h0, c0), lengths=lengths)
    want_h, want_c = want_state if c0 is not None else (want_state, None)
    torch.testing.assert_close(y, want_y, **TOL)
    torch.testing.assert_close(h, want_h, **TOL)
    if c0 is not None:
        torch.testing.assert_close(c, want_c, **TOL)
    assert torch.all(y[1:, 2] == 0) and torch.all(y[3:, 1] == 0)  # padding outputs exact zeros


def test_gru_step_without_its_recurrent_bias_is_refused() -> None:
    layer = _layer("gru")
    RT, _, _, _ = cell_ops.recurrent_weights(layer.cell_kind, onnx_weights(layer)[0], 0)
    h, _ = _state(layer)
    with pytest.raises(ValueError, match="recurrent bias"):
        cell_ops.recurrent_step(layer.cell_kind, torch.zeros(B, 3 * H), h, None, RT, None)


def test_float_mask_selects_exactly_what_lengths_select() -> None:
    lengths = torch.tensor([4, 2, 1])
    as_bool = cell_ops.step_mask(lengths, 4, torch.device("cpu"))
    floats = (torch.arange(4).unsqueeze(0) < lengths.unsqueeze(1)).float()
    as_float = cell_ops.step_mask(floats, 4, torch.device("cpu"))
    assert as_bool.shape == as_float.shape == (4, 3, 1)
    new, old = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    assert torch.equal(cell_ops.keep(as_bool, new, old), cell_ops.keep(as_float, new, old))
    assert torch.equal(cell_ops.zero_padding(as_bool, new), cell_ops.zero_padding(as_float, new))
