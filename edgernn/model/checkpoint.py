"""Checkpoints: a model config plus weights in one file, loaded without executing code from it.

The file is written by ``torch.save`` and read with ``torch.load(weights_only=True)``, whose unpickler accepts
only tensors and plain containers; anything else (a crafted pickle) is refused with ``CheckpointError``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import CheckpointError
from .zoo import ModelConfig, RecurrentModel, build_model

FORMAT = "edgernn-checkpoint"
FORMAT_VERSION = 1
DEFAULT_NAME = "model.ckpt"


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # task, metrics, training config: plain JSON-like values

    def model(self) -> RecurrentModel:
        m = build_model(self.config)
        try:
            m.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise CheckpointError(f"the checkpoint's weights do not fit its config: {str(e).splitlines()[0]}") from None
        return m.eval()


def save(path: str | os.PathLike[str], model: RecurrentModel, meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; returns the path written."""
    from ..files import write_atomic

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgernn_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    out = Path(path)
    write_atomic(out, buf.getvalue())
    return out


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a training output directory holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_NAME
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r} (expected a file, or a directory with {DEFAULT_NAME})")
    return p


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with its failures turned into CheckpointError messages a user can act on."""
    p = str(path)
    if not os.path.isfile(p):
        raise CheckpointError(f"no file at {p!r}")
    if os.path.getsize(p) == 0:
        raise CheckpointError(f"{p!r} is empty (0 bytes): not a checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"refusing to load {p!r}: it asks to import {found.group(1)}, and an edgernn checkpoint holds "
                "only tensors and plain data (loading it could run code from the file)"
            ) from None
        raise CheckpointError(f"{p!r} is not a readable checkpoint (corrupt or not a torch file)") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{p!r} is not a readable checkpoint: {first}") from None


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint without executing code from it."""
    p = resolve(path)
    payload = safe_torch_load(p)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not an edgernn checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{str(p)!r} has a format_version of {version!r}; an edgernn checkpoint's is an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{str(p)!r} was written by a newer edgernn; upgrade edgernn to read it")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(p)!r} has no valid state_dict")
    raw, meta = payload.get("config"), payload.get("meta", {})
    if not isinstance(raw, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{str(p)!r} has a config or meta that is not a mapping; it is not an edgernn checkpoint")
    try:
        config = ModelConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{str(p)!r} has an invalid model config: {e}") from None
    return Checkpoint(config, state, dict(meta))


def task_record(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What an export keeps of the built-in task a checkpoint was trained on: enough to rebuild its validation
    sequences later, without torch (``edgernn quantize`` judges int8 by them)."""
    name = meta.get("task")
    cfg = meta.get("train_config") or {}
    if not isinstance(name, str) or not isinstance(cfg, dict):
        return None
    keys = ("n_train", "n_val", "min_len", "max_len", "seed")
    if not all(isinstance(cfg.get(k), int) for k in keys):
        return None
    return {"name": name, **{k: cfg[k] for k in keys}}
