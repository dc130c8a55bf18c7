"""edgernn: recurrent networks from PyTorch training to ONNX on edge devices, with parity proven on every export.

Importing ``edgernn`` (or ``edgernn.runtime``) does not import torch: the training and export parts load it when
they are first used, so an edge device with only numpy and onnxruntime can run exported models.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    CheckpointError,
    ConfigError,
    EdgeRNNError,
    ExportError,
    InputError,
    ModelFormatError,
    ParityError,
    ProviderError,
    TargetError,
)

# public name -> module that defines it, imported on first use
_LAZY = {
    "ModelConfig": "edgernn.model.zoo",
    "RecurrentModel": "edgernn.model.zoo",
    "build_model": "edgernn.model.zoo",
    "RNN": "edgernn.model.nn",
    "LSTM": "edgernn.model.nn",
    "GRU": "edgernn.model.nn",
    "TrainConfig": "edgernn.train.loop",
    "fit": "edgernn.train.loop",
    "export": "edgernn.export",
    "export_model": "edgernn.export",
    "Model": "edgernn.runtime",
    "StreamingModel": "edgernn.runtime",
    "Stream": "edgernn.runtime",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EdgeRNNError",
    "ExportError",
    "InputError",
    "ModelFormatError",
    "ParityError",
    "ProviderError",
    "TargetError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgernn' has no attribute {name!r}")
