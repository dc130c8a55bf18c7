"""The on-device side of edgernn: onnxruntime sessions, providers, input checks, and streams.

It imports numpy and onnxruntime only (never torch), because that is what an edge device installs.

    Model            a loaded ONNX model (edgernn's, or any other): run(), run_feed()
    StreamingModel   a stateful model shared by many Streams; step_many() serves them in one call
    Stream           one live sequence with its own state: step(), reset()
"""

from ..errors import EdgeRNNError, InputError, ModelFormatError, ProviderError
from ..manifest import Manifest, read_manifest
from .model import Model
from .providers import ProviderChoice, available, resolve
from .states import StatePair, parse_state
from .stream import Stream, StreamGroup, StreamingModel

__all__ = [
    "EdgeRNNError",
    "InputError",
    "Manifest",
    "Model",
    "ModelFormatError",
    "ProviderChoice",
    "ProviderError",
    "StatePair",
    "Stream",
    "StreamGroup",
    "StreamingModel",
    "available",
    "parse_state",
    "read_manifest",
    "resolve",
]
