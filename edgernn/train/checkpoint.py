"""The checkpoint format moved to ``edgernn.model.checkpoint``: verify, optimize and export read checkpoints and
sit beside or above train, not on it. This name stays so that existing imports keep working."""

from ..model.checkpoint import (
    DEFAULT_NAME,
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    load,
    resolve,
    safe_torch_load,
    save,
    task_record,
)

__all__ = [
    "DEFAULT_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "load",
    "resolve",
    "safe_torch_load",
    "save",
    "task_record",
]
