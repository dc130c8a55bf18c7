"""The on-device side of edgernn: onnxruntime sessions, providers and input checks.

It imports numpy and onnxruntime only (never torch), because that is what an edge device installs.
"""

from ..errors import EdgeRNNError, InputError, ModelFormatError, ProviderError
from ..manifest import Manifest, read_manifest
from .model import Model
from .providers import available, resolve

__all__ = [
    "EdgeRNNError",
    "InputError",
    "Manifest",
    "Model",
    "ModelFormatError",
    "ProviderError",
    "available",
    "read_manifest",
    "resolve",
]
