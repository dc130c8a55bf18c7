"""The rooms of the house, lowest first, written once: a room imports only rooms of a lower tier, never one of its
own tier or a higher one, not even inside a function (``tests/test_house.py`` reads every import and says so).

A room is a subpackage ``edgernn/<room>/``; the top-level modules (errors, manifest, files, graphs, progress, catalog,
rooms, _version, the package's ``__init__``) are ``base``, and ``__main__`` is the CLI's. The order is what the code
needs:

- ``model`` (cells, layers, zoo, cell math, weight layout, the checkpoint file), ``runtime`` (numpy and
  onnxruntime only) and ``rewrite`` (ONNX graph to ONNX graph: hygiene, Scan unrolling, the engines' forms) stand
  on base alone: the torch side, the device side and the graph surgery, none knowing the others.
- ``train`` (over model), ``verify`` (the oracle and parity, over model and runtime), ``serve`` (Triton
  repositories and configs, Ray Serve, over runtime) and ``strategies`` (how a layer is written into a graph, over
  model and rewrite) do not import each other: the device's checks never pull in training, and serving runs
  exported files without the code that made them.
- ``optimize`` (quantize, scan form, ORT format) judges with verify and rebuilds tasks' data with train; ``batch``
  runs folders of shards through serve's Ray app; ``targets`` (the runtime an export is made for) each own their
  check (the Triton target's asks serve's config generator, the mobile targets onnxruntime's checker, an engine
  target its engine) and name the strategies they take; ``diagnose`` localizes a parity failure over verify.
- ``export`` builds on all of these: it traces a model with a strategy, puts the graph in its target's form,
  checks parity and writes the file; precision exports call optimize.
- ``workflows`` (compare, the parity re-check) combine train, export, bench, the targets' runners and
  diagnose's localize; ``cli`` and ``testing`` (the
  pytest plugin over the re-check) sit on top.
"""

from __future__ import annotations

ROOMS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("model", "runtime", "rewrite"),
    ("train", "verify", "serve", "strategies"),
    ("optimize", "batch", "targets", "diagnose"),
    ("export",),
    ("workflows",),
    ("cli", "testing"),
)

TIER: dict[str, int] = {room: i for i, tier in enumerate(ROOMS) for room in tier}


def may_import(importer: str, imported: str) -> bool:
    """Whether room ``importer`` may import room ``imported``: itself, or a room of a lower tier."""
    return importer == imported or TIER[imported] < TIER[importer]
