"""Built-in tasks, generated from a seed (no downloads), and the padding/masking collate.

Each task yields variable-length sequences; ``collate`` pads a batch to its longest sequence and returns the
lengths and a mask, so models and losses can ignore the padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Example:
    x: np.ndarray  # (T, F) float32
    y: np.ndarray  # (outputs,) float32 for regression; () int64 for classification; (T, ...) for per-step


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    input_size: int
    output_size: int
    head: str  # "regression" or "classification"
    metric: str  # validation metric name (lower is better for "mse", higher for "accuracy")
    readout: str  # "last": one target per sequence; "all": one per step (loss masked on padding)
    make: Callable[[np.random.Generator, int, int, int], list[Example]]  # rng, n, min_len, max_len


def _sine(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[Example]:
    """Noisy sum of two sines with random frequencies and phases; predict the next clean value."""
    out = []
    for _ in range(n):
        t_len = int(rng.integers(min_len, max_len + 1))
        freq = rng.uniform(0.05, 0.3, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        amp = rng.uniform(0.3, 1.0, size=2)
        t = np.arange(t_len + 1)
        clean = (amp[:, None] * np.sin(freq[:, None] * t + phase[:, None])).sum(0)
        noisy = clean[:-1] + rng.normal(0, 0.05, size=t_len)
        out.append(Example(noisy[:, None].astype(np.float32), np.array([clean[-1]], dtype=np.float32)))
    return out


def _denoise(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[Example]:
    """Per-step regression: recover the clean multi-sine at every step from its noisy samples."""
    out = []
    for _ in range(n):
        t_len = int(rng.integers(min_len, max_len + 1))
        freq = rng.uniform(0.05, 0.3, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        t = np.arange(t_len)
        clean = np.sin(freq[:, None] * t + phase[:, None]).sum(0) / 2
        noisy = clean + rng.normal(0, 0.2, size=t_len)
        out.append(Example(noisy[:, None].astype(np.float32), clean[:, None].astype(np.float32)))
    return out


def _adding(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[Example]:
    """The adding problem: channel 0 holds random values, channel 1 marks two of them; predict their sum."""
    out = []
    for _ in range(n):
        t_len = int(rng.integers(max(min_len, 2), max_len + 1))
        values = rng.uniform(0, 1, size=t_len)
        marks = np.zeros(t_len)
        first = int(rng.integers(0, max(1, t_len // 2)))
        second = int(rng.integers(t_len // 2, t_len))
        if second == first:
            second = (first + 1) % t_len
        marks[[first, second]] = 1.0
        x = np.stack([values, marks], axis=1).astype(np.float32)
        out.append(Example(x, np.array([values[first] + values[second]], dtype=np.float32)))
    return out


def _sign(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[Example]:
    """Classification: is the running sum of a noisy random walk's steps positive at the end? (2 classes)"""
    out = []
    for _ in range(n):
        t_len = int(rng.integers(min_len, max_len + 1))
        steps = rng.normal(0, 1, size=t_len)
        out.append(Example(steps[:, None].astype(np.float32), np.array(int(steps.sum() > 0), dtype=np.int64)))
    return out


MEMORY_SYMBOLS = 4


def _memory(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[Example]:
    """Classification over a long lag: one of 4 symbols (one-hot) at the first step, noise in between, a recall
    marker at the last step; name the first symbol. Chance is 25%; a tanh RNN loses the symbol over a long
    sequence (its gradient vanishes with the lag), gated cells keep it."""
    out = []
    s = MEMORY_SYMBOLS
    for _ in range(n):
        t_len = int(rng.integers(max(min_len, 2), max_len + 1))
        x = np.zeros((t_len, s + 1), dtype=np.float32)
        symbol = int(rng.integers(0, s))
        x[0, symbol] = 1.0
        x[1:-1, :s] = rng.normal(0, 0.1, size=(t_len - 2, s))  # distractors, never a clean one-hot
        x[-1, s] = 1.0  # recall
        out.append(Example(x, np.array(symbol, dtype=np.int64)))
    return out


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sine", "forecast the next value of a noisy multi-sine", 1, 1, "regression", "mse", "last", _sine),
        Task("denoise", "recover a clean multi-sine at every step", 1, 1, "regression", "mse", "all", _denoise),
        Task("adding", "sum the two marked values of a long sequence", 2, 1, "regression", "mse", "last", _adding),
        Task(
            "sign", "does a random walk end above zero (2 classes)", 1, 2, "classification", "accuracy", "last", _sign
        ),
        Task(
            "memory",
            "name the symbol seen at the first step, after a long lag (4 classes)",
            MEMORY_SYMBOLS + 1,
            MEMORY_SYMBOLS,
            "classification",
            "accuracy",
            "last",
            _memory,
        ),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # (B, T, F) float32, zero after each sequence's end
    lengths: np.ndarray  # (B,) int64
    mask: np.ndarray  # (B, T) bool, True on real steps
    y: np.ndarray  # stacked targets; per-step targets padded with zeros like x


def collate(examples: Sequence[Example], per_step: bool | None = None) -> Batch:
    """Pad to the longest sequence in the batch; return lengths and mask alongside.

    ``per_step``: the targets are one per step ((T, K) regression or (T,) class indices) and are padded like x;
    None guesses it from the first example ((T, K) targets as long as its x)."""
    lengths = np.array([e.x.shape[0] for e in examples], dtype=np.int64)
    t_max = int(lengths.max())
    feats = examples[0].x.shape[1]
    x = np.zeros((len(examples), t_max, feats), dtype=np.float32)
    for i, e in enumerate(examples):
        x[i, : e.x.shape[0]] = e.x
    mask = np.arange(t_max)[None, :] < lengths[:, None]
    first = examples[0].y
    if per_step is None:
        per_step = first.ndim == 2 and first.shape[0] == examples[0].x.shape[0]
    if per_step:  # padded with zeros (class 0 for labels): the mask keeps padding out of losses and metrics
        y = np.zeros((len(examples), t_max, *first.shape[1:]), dtype=first.dtype)
        for i, e in enumerate(examples):
            y[i, : e.y.shape[0]] = e.y
    else:
        y = np.stack([e.y for e in examples])
    return Batch(x, lengths, mask, y)


def batches(
    examples: Sequence[Example],
    batch_size: int,
    rng: np.random.Generator | None = None,
    per_step: bool | None = None,
) -> Iterator[Batch]:
    """Batches in order, or shuffled when ``rng`` is given (``per_step``: see ``collate``)."""
    order = np.arange(len(examples)) if rng is None else rng.permutation(len(examples))
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], per_step)


def make_splits(
    task: Task, *, n_train: int, n_val: int, min_len: int, max_len: int, seed: int
) -> tuple[list[Example], list[Example]]:
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"need 1 <= min_len <= max_len; got {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    return task.make(rng, n_train, min_len, max_len), task.make(rng, n_val, min_len, max_len)
