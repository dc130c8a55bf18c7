"""``edgernn serve``: hand a streaming model to a serving engine (Triton Inference Server, Ray Serve).

Thin: each subcommand calls one library function in ``edgernn.serve``. Importing this module imports neither
torch, onnxruntime, tritonclient nor ray.
"""

from __future__ import annotations

import click


@click.group("serve")
def serve() -> None:
    """Serve a streaming (`step`) export on a serving engine: `triton` writes a model repository, `ray` runs a
    Ray Serve deployment."""


COMMANDS = [serve]
