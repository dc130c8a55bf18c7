"""Serving streaming exports on serving engines: Triton Inference Server, Ray Serve (``edgernn.serve.ray``)."""
