"""edgernn.model.nn layers are drop-in for torch's: same arguments, same state_dict, same outputs."""

import numpy as np
import pytest
import torch
from torch import nn

from edgernn.errors import ConfigError, InputError
from edgernn.model import nn as enn
from edgernn.model.zoo import ModelConfig, build_model

TORCH = {
    "rnn-tanh": (nn.RNN, {}),
    "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
}


@pytest.mark.parametrize("cell", list(TORCH))
def test_torch_state_dict_loads_unchanged(cell: str) -> None:
    cls, extra = TORCH[cell]
    theirs = cls(5, 7, num_layers=2, bidirectional=True, batch_first=True, **extra).eval()
    ours = enn.make_layer(cell, 5, 7, num_layers=2, bidirectional=True, batch_first=True).eval()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 9, 5)
    with torch.no_grad():
        a, b = theirs(x)[0], ours(x)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("cell", list(TORCH))
def test_from_torch_and_convert(cell: str) -> None:
    cls, extra = TORCH[cell]
    net = nn.Sequential(cls(4, 6, **extra))
    converted = enn.convert(net)
    assert isinstance(converted[0], enn._Recurrent)
    assert [n for n, _ in enn.recurrent_layers(converted)] == ["0"]


@pytest.mark.parametrize("cell", list(TORCH))
def test_lengths_equal_each_sequence_alone(cell: str) -> None:
    layer = enn.make_layer(cell, 3, 5, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(3, 17, 3)
    lengths = torch.tensor([1, 9, 17])
    with torch.no_grad():
        y, state = layer(x, None, lengths)
        h = state[0] if isinstance(state, tuple) else state
        for b, n in enumerate(lengths.tolist()):
            y1, s1 = layer(x[b : b + 1, :n])
            h1 = s1[0] if isinstance(s1, tuple) else s1
            np.testing.assert_allclose(y[b, :n].numpy(), y1[0].numpy(), atol=1e-6)
            np.testing.assert_allclose(h[:, b].numpy(), h1[:, 0].numpy(), atol=1e-6)
            assert torch.all(y[b, n:] == 0)


def test_bad_lengths_are_typed_errors() -> None:
    layer = enn.make_layer("gru", 3, 5, batch_first=True)
    x = torch.randn(2, 4, 3)
    with pytest.raises(InputError, match=r"1\.\.4"):
        layer(x, None, torch.tensor([5, 1]))
    with pytest.raises(InputError, match="shape"):
        layer(x, None, torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="integers"):
        layer(x, None, torch.tensor([1.0, 2.0]))


def test_model_config_validation() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        ModelConfig(cell="transformer")
    with pytest.raises(ConfigError, match="proj_size"):
        ModelConfig(cell="gru", proj_size=4)
    with pytest.raises(ConfigError, match="head"):
        ModelConfig(head="ranking")
    assert ModelConfig.from_dict(ModelConfig(cell="gru").to_dict()) == ModelConfig(cell="gru")
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"cell": "gru", "colour": "red"})


def test_model_readouts() -> None:
    x = torch.randn(2, 7, 3)
    last = build_model(ModelConfig(cell="lstm", input_size=3, output_size=4, bidirectional=True)).eval()
    allsteps = build_model(ModelConfig(cell="lstm", input_size=3, output_size=4, readout="all")).eval()
    assert last(x).shape == (2, 4)
    assert allsteps(x).shape == (2, 7, 4)


def _peephole(batch_first: bool) -> nn.Module:
    torch.manual_seed(11)
    return enn.make_layer("lstm", 3, 4, peephole=True, num_layers=2, bidirectional=True, batch_first=batch_first)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_peephole_lstm_unbatched_input_equals_a_batch_of_one(batch_first: bool, with_state: bool) -> None:
    """torch's convention for unbatched input (T, I) and state (L*D, H): the same as a batch of one, squeezed."""
    layer = _peephole(batch_first).eval()
    x = torch.randn(6, 3)
    hx = (torch.randn(4, 4), torch.randn(4, 4)) if with_state else None
    batch_axis = 0 if batch_first else 1
    with torch.no_grad():
        y, (h, c) = layer(x, hx)
        y1, (h1, c1) = layer(x.unsqueeze(batch_axis), tuple(s.unsqueeze(1) for s in hx) if hx else None)
    assert y.shape == (6, 8) and h.shape == c.shape == (4, 4)
    torch.testing.assert_close(y, y1.squeeze(batch_axis))
    torch.testing.assert_close(h, h1.squeeze(1))
    torch.testing.assert_close(c, c1.squeeze(1))


@pytest.mark.parametrize("batch_first", [False, True])
def test_peephole_lstm_packed_input_equals_padded_with_lengths(batch_first: bool) -> None:
    """A PackedSequence (unsorted lengths) gives what the padded batch with lengths gives, in the input's order."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    layer = _peephole(batch_first).eval()
    lengths = torch.tensor([2, 5, 3])
    x = torch.randn(3, 5, 3) if batch_first else torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        out, (h, c) = layer(packed)
        want, (wh, wc) = layer(x, lengths=lengths)
    y, got_lengths = pad_packed_sequence(out, batch_first=batch_first, total_length=5)
    assert got_lengths.tolist() == lengths.tolist()
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(h, wh)
    torch.testing.assert_close(c, wc)


@pytest.mark.parametrize("batch_first", [False, True])
def test_peephole_lstm_empty_sequence_keeps_its_state(batch_first: bool) -> None:
    """No steps: an empty output of the batch's size and the initial state unchanged."""
    x = torch.zeros(2, 0, 3) if batch_first else torch.zeros(0, 2, 3)
    hx = (torch.randn(4, 2, 4), torch.randn(4, 2, 4))
    with torch.no_grad():
        y, (h, c) = _peephole(batch_first)(x, hx)
    assert y.shape == (*x.shape[:2], 8)
    assert torch.equal(h, hx[0]) and torch.equal(c, hx[1])
