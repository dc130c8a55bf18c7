"""Parity of an edgernn export in your own test suite: copy this file into your tests/ folder and adapt the
module. Run with `pytest`, and per provider with `pytest --edgernn-provider cpu --edgernn-provider cuda` (the
plugin comes with edgernn). It checks the ONNX file against the torch module it came from, on random cases at
several shapes and on shapes of your own, and shows what a failure says."""

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgernn.export import export
from edgernn.testing import assert_parity


class Tagger(nn.Module):
    """Stands for your model: a 2-layer GRU over (batch, time, 3) and a linear head per step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    net = Tagger().eval()
    path = tmp_path_factory.mktemp("models") / "tagger.onnx"
    export(net, (torch.zeros(2, 7, 3),), path, strategy="loop")  # checked at export too; this re-checks the file
    return net, str(path)


def test_export_matches_torch(exported: tuple[nn.Module, str], edgernn_parity: Any) -> None:
    net, path = exported
    edgernn_parity(net, path)  # the default cases: batch 1 and 3, lengths 1 to 257
    edgernn_parity(net, path, shapes={"x": (4, 50, 3)})  # a shape of your own
    x = np.random.default_rng(0).standard_normal((2, 20, 3)).astype(np.float32)
    edgernn_parity(net, path, inputs={"x": x})  # your own data


def test_a_different_model_fails_with_the_reason(exported: tuple[nn.Module, str]) -> None:
    _, path = exported
    torch.manual_seed(1)
    with pytest.raises(AssertionError, match="not the weights this model was exported from"):
        assert_parity(Tagger().eval(), path)
