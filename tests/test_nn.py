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
