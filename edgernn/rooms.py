"""The rooms of the house, lowest first, written once: a room imports only rooms of a lower tier, never one of its
own tier or a higher one, not even inside a function (``tests/test_house.py`` reads every import and says so).

A room is a subpackage ``edgernn/<room>/``; the top-level modules (errors, manifest, files, graphs, progress,
_version, the package's ``__init__``) are ``base``, and ``__main__`` is the CLI's. The order is what the code needs:

- ``model`` (cells, layers, zoo, cell math, weight layout, the checkpoint file) and ``runtime`` (numpy and
  onnxruntime only) stand on base alone: the torch side and the device side, neither knowing the other.
- ``train`` (over model), ``verify`` (the oracle and parity, over model and runtime) and ``serve`` (Triton
  repositories and configs, Ray Serve, over runtime) do not import each other: the device's checks never pull in
  training, and serving runs exported files without the code that made them.
- ``optimize`` (quantize, scan form, ORT format) judges with verify and rebuilds tasks' data with train; ``batch``
  runs folders of shards through serve's Ray app.
- ``export`` builds on all of these: its targets own their checks (the Triton target's check asks serve's config
  generator, as the mobile targets ask onnxruntime's checker), and precision exports call optimize.
- ``workflows`` (compare, the parity re-check) combine train, export and bench; ``cli`` and ``testing`` (the
  pytest plugin over the re-check) sit on top.
"""

from __future__ import annotations

ROOMS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("model", "runtime"),
    ("train", "verify", "serve"),
    ("optimize", "batch"),
    ("export",),
    ("workflows",),
    ("cli", "testing"),
)

TIER: dict[str, int] = {room: i for i, tier in enumerate(ROOMS) for room in tier}


def may_import(importer: str, imported: str) -> bool:
    """Whether room ``importer`` may import room ``imported``: itself, or a room of a lower tier."""
    return importer == imported or TIER[imported] < TIER[importer]
