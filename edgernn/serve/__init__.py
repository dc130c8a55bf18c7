"""Serving streaming exports on serving engines: Triton Inference Server, Ray Serve (``edgernn.serve.ray``).

``StreamClient`` (``edgernn.serve.client``): one stream of a served Ray application over HTTP, resumed after a
replica's death from the state token of its last response.
"""

from .client import ServeUnavailableError, StreamClient

__all__ = ["ServeUnavailableError", "StreamClient"]
