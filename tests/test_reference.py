"""torch (eager, fused kernels) against the numpy oracle, for every cell kind, stack and direction."""

import numpy as np
import pytest
import torch

from edgernn.model.cells import cell_names, get_cell
from edgernn.model.nn import make_layer
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.verify import reference

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", cell_names())
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_matches_oracle(cell: str, layers: int, bidirectional: bool, rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    layer = make_layer(cell, 4, 6, num_layers=layers, bidirectional=bidirectional).eval()
    x = rng.standard_normal((19, 3, 4)).astype(np.float32)
    lengths = np.array([19, 7, 1])
    d = 2 if bidirectional else 1
    h0 = rng.standard_normal((layers * d, 3, 6)).astype(np.float32)
    hx = torch.from_numpy(h0)
    c0 = None
    if get_cell(cell).has_cell_state:
        c0 = rng.standard_normal((layers * d, 3, 6)).astype(np.float32)
        hx = (hx, torch.from_numpy(c0))
    with torch.no_grad():
        y, state = layer(torch.from_numpy(x), hx, torch.from_numpy(lengths))
    state_dict = {k: v.numpy() for k, v in layer.state_dict().items()}
    ry, rh, rc = reference.recurrent_forward(
        cell, state_dict, x, num_layers=layers, bidirectional=bidirectional, lengths=lengths, h0=h0, c0=c0
    )
    h = state[0] if isinstance(state, tuple) else state
    np.testing.assert_allclose(y.numpy(), ry, **TOL)
    np.testing.assert_allclose(h.numpy(), rh, **TOL)
    if rc is not None:
        np.testing.assert_allclose(state[1].numpy(), rc, **TOL)
    # padded steps output zero, and the reverse direction of a short sequence starts at its own last step
    assert np.all(y.numpy()[1:, 2] == 0) and np.all(y.numpy()[7:, 1] == 0)


def test_projection_lstm_matches_oracle(rng: np.random.Generator) -> None:
    cfg = ModelConfig(
        cell="lstm",
        input_size=3,
        hidden_size=8,
        num_layers=2,
        bidirectional=True,
        proj_size=5,
        readout="all",
        output_size=2,
    )
    model = build_model(cfg).eval()
    x = rng.standard_normal((2, 11, 3)).astype(np.float32)
    lengths = np.array([11, 4])
    with torch.no_grad():
        y = model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_allclose(reference.model_forward(cfg, state, x, lengths), y, **TOL)


def test_oracle_detects_a_wrong_gate_order(rng: np.random.Generator) -> None:
    """The oracle is independent of the torch->ONNX permutation: swapping two LSTM gates must be visible."""
    layer = make_layer("lstm", 3, 4).eval()
    x = rng.standard_normal((5, 1, 3)).astype(np.float32)
    state = {k: v.numpy().copy() for k, v in layer.state_dict().items()}
    good, _, _ = reference.recurrent_forward("lstm", state, x, num_layers=1, bidirectional=False)
    w = state["weight_ih_l0"]
    state["weight_ih_l0"] = np.concatenate([w[4:8], w[0:4], w[8:]])  # swap i and f
    bad, _, _ = reference.recurrent_forward("lstm", state, x, num_layers=1, bidirectional=False)
    assert np.abs(good - bad).max() > 1e-3
