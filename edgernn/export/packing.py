"""The packed-sequence idiom, exported: ``pack_padded_sequence`` -> recurrent layer -> ``pad_packed_sequence``.

A real ``PackedSequence`` holds the valid steps of every sequence back to back: its size depends on the lengths'
values, which no exported graph can follow. While edgernn traces a module, the two functions torch's packing
helpers call underneath (``torch.nn.utils.rnn._VF._pack_padded_sequence`` and ``_pad_packed_sequence``) are
replaced by ones that keep the padded tensor whole, time-major, and ``batch_sizes`` as torch defines them (how
many sequences are still running at each step, which is every sequence's length read the other way). Sorting,
``sorted_indices`` and the unsorting after the layer stay the user's own torch code and are traced as they are.
The recurrent layer (edgernn's export hook) reads the lengths back from ``batch_sizes`` and runs the padded
batch with them, as with a ``lengths`` input: the packed call's lengths become the export's lengths input.

One difference from eager torch is kept visible: ``pad_packed_sequence`` without ``total_length`` returns as
many steps as the longest sequence; the exported graph returns the padded input's length (the longest sequence
when, as usual, the batch is padded to it). Modules that pass ``total_length`` (the usual way) match exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

_ACTIVE = False


def active() -> bool:
    """Whether packing is being traced (a ``PackedSequence`` then holds a padded, time-major tensor)."""
    return _ACTIVE


class _TracedVF:
    """torch's ``_VF`` as seen by ``torch.nn.utils.rnn`` during an export: its two packing kernels replaced."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def _pack_padded_sequence(input: Tensor, lengths: Tensor, batch_first: bool) -> tuple[Tensor, Tensor]:  # noqa: A002
        x = input.transpose(0, 1) if batch_first else input
        steps = torch.arange(x.shape[0], device=lengths.device, dtype=lengths.dtype)
        batch_sizes = (steps.unsqueeze(1) < lengths.to(x.device).unsqueeze(0)).sum(1)
        return x, batch_sizes

    @staticmethod
    def _pad_packed_sequence(
        data: Tensor, batch_sizes: Tensor, batch_first: bool, padding_value: float, total_length: int
    ) -> tuple[Tensor, Tensor]:
        lengths = packed_lengths(batch_sizes, data.shape[1])
        y = data
        if padding_value != 0.0:  # the layer leaves padded steps at zero; fill them as asked
            valid = torch.arange(y.shape[0], device=y.device).unsqueeze(1) < lengths.to(y.device).unsqueeze(0)
            shape = (*valid.shape, *([1] * (y.dim() - 2)))
            y = torch.where(valid.reshape(shape), y, torch.full_like(y, padding_value))
        if total_length > y.shape[0]:
            pad = y.new_full((total_length - y.shape[0], *y.shape[1:]), padding_value)
            y = torch.cat([y, pad], 0)
        return (y.transpose(0, 1) if batch_first else y), lengths


def packed_lengths(batch_sizes: Tensor, batch: int) -> Tensor:
    """Each sequence's length from ``batch_sizes`` (sequences still running at each step; they are sorted
    longest first): sequence b runs while more than b sequences do."""
    rows = torch.arange(batch, device=batch_sizes.device, dtype=batch_sizes.dtype)
    return (batch_sizes.unsqueeze(1) > rows.unsqueeze(0)).sum(0)


@contextlib.contextmanager
def traced_packing() -> Iterator[None]:
    """Inside the block, ``pack_padded_sequence`` keeps the padded tensor (see the module's docstring)."""
    global _ACTIVE
    import torch.nn.utils.rnn as rnn_utils

    real = rnn_utils._VF  # type: ignore[attr-defined]
    rnn_utils._VF = _TracedVF(real)  # type: ignore[attr-defined]
    _ACTIVE = True
    try:
        yield
    finally:
        rnn_utils._VF = real  # type: ignore[attr-defined]
        _ACTIVE = False


class PackingSpy:
    """Counts the sequences a module packs in an eager call (``with spy:`` around it); the real kernels run."""

    def __init__(self) -> None:
        self.packs = 0

    def __enter__(self) -> PackingSpy:
        import torch.nn.utils.rnn as rnn_utils

        self._real = rnn_utils._VF  # type: ignore[attr-defined]
        spy = self

        class _Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(spy._real, name)

            @staticmethod
            def _pack_padded_sequence(*args: Any) -> Any:
                spy.packs += 1
                return spy._real._pack_padded_sequence(*args)

        rnn_utils._VF = _Counting()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        import torch.nn.utils.rnn as rnn_utils

        rnn_utils._VF = self._real  # type: ignore[attr-defined]
