"""A directory of input shards, each run as ``edgernn run MODEL --input SHARD --output OUT/SHARD`` would run it.

A shard is a ``.npy`` (the data input: (batch, time, features), or one sequence (time, features)) or a ``.npz``
(arrays by input name, e.g. ``x`` and ``lengths``). Its output goes to the output directory under the same name,
written atomically: a ``.npy`` shard gets the primary output, a ``.npz`` shard every output by name (final states
included), as ``edgernn run`` writes them. Other files in the directory are skipped (and counted); subdirectories
are not entered. A shard the model refuses is reported and the others still run.

Imports numpy (and onnxruntime when a directory is run); never ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, EdgeRNNError, InputError

SHARD_FORMATS = (".npy", ".npz")


@dataclass
class DirectoryRun:
    """What a directory run did: one entry per shard (``name``, ``shape`` of the primary output, ``seconds``; or
    ``error`` and ``code``), the files skipped, the wall time and where it ran."""

    shards: list[dict[str, Any]]
    skipped: list[str]
    seconds: float
    where: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.shards if "error" in s]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": sorted(self.shards, key=lambda s: s["name"]),
            "written": len(self.shards) - len(self.failed),
            "failed": len(self.failed),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 6),
            "where": self.where,
            **self.info,
        }


def list_shards(input_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The shard file names in ``input_dir`` (sorted) and the names of the other entries, which are skipped."""
    d = os.fspath(input_dir)
    if not os.path.isdir(d):
        raise InputError(f"no input directory at {d!r}")
    shards, skipped = [], []
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if name.startswith(".") and name.endswith(".tmp"):
            continue  # a temporary file of an atomic write in progress
        if os.path.isfile(path) and os.path.splitext(name)[1].lower() in SHARD_FORMATS:
            shards.append(name)
        else:
            skipped.append(name)
    if not shards:
        raise InputError(f"{d!r} holds no .npy or .npz shards")
    return shards, skipped


def check_directories(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> None:
    """The output directory must not be the input directory (outputs would replace the inputs) nor a file."""
    i, o = os.path.realpath(input_dir), os.path.realpath(output_dir)
    if i == o:
        raise ConfigError(f"--output {os.fspath(output_dir)!r} is the input directory; write the outputs elsewhere")
    if os.path.exists(o) and not os.path.isdir(o):
        raise ConfigError(f"--output {os.fspath(output_dir)!r} is a file; an input directory needs an output directory")


class ShardRunner:
    """One loaded model that runs shards: ``runner(src, dst)`` reads ``src``, runs it as ``edgernn run`` does and
    writes ``dst`` atomically; returns ``{"name", "shape", "seconds"}``, or ``{"name", "error", "code"}`` for a
    shard the model refuses (the error classes of ``edgernn.errors``)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        session: Mapping[str, Any] | None = None,
        states: Sequence[str] = (),
        layout: str | None = None,
    ) -> None:
        from ..runtime.model import Model

        self.model = Model(model, **dict(session or {}))
        self.states = list(states)
        self.layout = layout

    def __call__(self, src: str, dst: str) -> dict[str, Any]:
        from ..runtime import io

        name = os.path.basename(src)
        try:
            result = io.run_file(self.model, src, states=self.states, layout=self.layout)
            io.write_outputs(dst, result.outputs, result.primary)
        except EdgeRNNError as e:
            return {"name": name, "error": str(e), "code": e.exit_code}
        y = result.outputs[result.primary]
        return {"name": name, "shape": list(y.shape), "seconds": round(result.seconds, 6)}


def run_directory(
    model: str | os.PathLike[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    session: Mapping[str, Any] | None = None,
    states: Sequence[str] = (),
    layout: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> DirectoryRun:
    """Every shard of ``input_dir`` through one onnxruntime session on this machine, one after the other;
    ``progress`` is called with each shard's entry as it finishes."""
    check_directories(input_dir, output_dir)
    shards, skipped = list_shards(input_dir)
    runner = ShardRunner(model, session=session, states=states, layout=layout)
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.perf_counter()
    done = []
    for name in shards:
        entry = runner(os.path.join(input_dir, name), os.path.join(output_dir, name))
        done.append(entry)
        if progress is not None:
            progress(entry)
    return DirectoryRun(done, skipped, time.perf_counter() - t0, f"local ({runner.model.choice.describe()})")
