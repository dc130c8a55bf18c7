"""Typed errors. Every error edgernn raises on purpose is an ``EdgeRNNError``.

The CLI turns them into one line on stderr and the error's ``exit_code``; nothing here imports torch, so the
runtime on an edge device shares the same errors.
"""

from __future__ import annotations


class EdgeRNNError(Exception):
    """Base class: something the user can fix, with a message that says how."""

    exit_code = 1


class ConfigError(EdgeRNNError, ValueError):
    """An option or configuration value is invalid (unknown name, impossible combination)."""

    exit_code = 2


class CheckpointError(EdgeRNNError):
    """A checkpoint is missing, malformed, or not a safe edgernn checkpoint."""

    exit_code = 3


class ExportError(EdgeRNNError):
    """The model cannot be exported with the requested strategy or options."""

    exit_code = 4


class ParityError(EdgeRNNError):
    """The exported model does not compute what the torch model computes (within tolerance)."""

    exit_code = 5

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ModelFormatError(EdgeRNNError):
    """An ONNX file is unreadable or lacks what the runtime needs (e.g. an edgernn manifest)."""

    exit_code = 6


class InputError(EdgeRNNError, ValueError):
    """Input data has the wrong dtype, rank, feature size, lengths, or non-finite values."""

    exit_code = 7


class ProviderError(EdgeRNNError):
    """The requested onnxruntime execution provider is not available."""

    exit_code = 8


class TargetError(EdgeRNNError):
    """The model does not pass the check of the target it is made for (a device runtime's own tool refuses it,
    or the target's runtime computes something else)."""

    exit_code = 9


class MissingPackageError(EdgeRNNError, ModuleNotFoundError):
    """A package the call needs is not installed; the message names the extra that brings it."""

    exit_code = 10
