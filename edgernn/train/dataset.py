"""Training on the user's own data: an ``.npz`` of padded arrays, or a directory of CSV files (one sequence each).

What is read, and what is inferred when not given:

* ``.npz``: ``x`` (N, T, F) padded (or (N, T) for one feature), ``lengths`` (N,) (default: every sequence is T
  long), ``y``: per sequence (N,) or (N, K), or per step (N, T) or (N, T, K). Integer ``y`` is classification
  (classes 0..C-1, C from the largest label, or ``--classes``), float ``y`` regression; ``head`` overrides.
  A float (N, T) ``y`` whose T equals x's is read as one target per step; ``readout="last"`` reads it as T
  targets per sequence.
* a CSV directory: every ``*.csv`` file is one sequence, rows are time steps, a header names the columns;
  ``target_columns`` are the targets and every other column a feature. Targets are per step (readout ``all``)
  unless ``readout="last"``, which takes each file's last row. CSV targets are regression unless
  ``head="classification"`` (then they must be whole numbers). Values are plain decimal numbers in ASCII digits
  (``12``, ``-0.5``, ``3e-4``); digit separators (``1_000``) and other scripts' digits are refused.

What is read, and how much: of an ``.npz`` only ``x``, ``lengths`` and ``y`` are decompressed, after their headers
are checked (numbers only, never pickle; ``MAX_DATA_BYTES`` together, before anything is allocated); of a CSV
directory only its ``*.csv`` files, none a link that leads outside the directory (``MAX_CSV_FILES`` files of at
most ``MAX_CSV_BYTES``); sequences are at most ``MAX_STEPS`` long. Error messages name files, rows and columns,
and never quote what a file that is not a valid sequence holds.

Every problem is an ``InputError`` that names the file, the array and what to do, before any training: ragged
or object arrays, NaN or infinite values on real steps, lengths outside 1..T, label counts that do not match the
sequences, labels that are not class indices, feature counts that differ between the splits, empty splits.
Padding beyond a sequence's length is never read.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import read_npz
from ..progress import tick
from .data import Example, Task

HEADS = ("regression", "classification")
READOUTS = ("last", "all")

# Bounds on what a user's data may ask of this machine, checked before the data is read (README, "Your own data"):
MAX_DATA_BYTES = 2 << 30  # an .npz's x, lengths and y as stored (their headers' claim), or a CSV folder's files
MAX_STEPS = 100_000  # steps per sequence (an .npz's T, a CSV file's rows)
MAX_SEQUENCES = 1_000_000  # sequences in an .npz
MAX_CSV_FILES = 100_000  # files in a CSV folder (one sequence each)
MAX_CSV_BYTES = 64 << 20  # one CSV file
NPZ_ADVICE = "save the data with np.savez(path, x=x, lengths=lengths, y=y), ragged sequences padded into x (N, T, F)"


@dataclass(frozen=True)
class Dataset:
    """Sequences read from the user's files, and what the model must look like to learn them."""

    examples: list[Example]
    input_size: int
    output_size: int  # regression targets, or number of classes
    head: str  # regression | classification
    readout: str  # last | all
    source: str  # where it came from, for messages and the checkpoint's record
    feature_names: list[str] | None = None  # CSV: the feature columns, in order
    target_names: list[str] | None = None

    def task(self) -> Task:
        """A Task record for the training loop: the data's head, readout and metric (no generator)."""
        metric = "accuracy" if self.head == "classification" else "mse"
        return Task("data", f"your data ({self.source})", self.input_size, self.output_size, self.head, metric,
                    self.readout, _no_generator)  # fmt: skip


def _no_generator(*_: Any) -> list[Example]:
    raise InputError("this task is the user's data; it has no generator")


def load_dataset(
    path: str | os.PathLike[str],
    *,
    head: str | None = None,
    readout: str | None = None,
    target_columns: list[str] | None = None,
    classes: int | None = None,
) -> Dataset:
    """Read ``path`` (an ``.npz`` file, or a directory of ``.csv`` files); see the module docstring. Reading a CSV
    directory ticks ``edgernn.progress`` once a file (a line at least every 10 s while progress is on)."""
    if head is not None and head not in HEADS:
        raise InputError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    if readout is not None and readout not in READOUTS:
        raise InputError(f"unknown readout {readout!r}; choose one of: {', '.join(READOUTS)}")
    if classes is not None and classes < 2:
        raise InputError(f"classes must be at least 2; got {classes}")
    p = Path(path)
    if p.is_dir():
        return _from_csv_dir(p, head=head, readout=readout, target_columns=target_columns, classes=classes)
    if not p.is_file():
        raise InputError(f"no data at {str(p)!r}: give an .npz file or a directory of .csv files")
    if target_columns:
        raise InputError("--target-columns is for a directory of CSV files; an .npz names its targets y")
    return _from_npz(p, head=head, readout=readout, classes=classes)


def split_off(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded random ``fraction`` of the sequences held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"the validation fraction must be between 0 and 1; got {fraction}")
    n = len(data.examples)
    n_val = round(n * fraction)
    if n_val < 1 or n - n_val < 1:
        raise InputError(
            f"{data.source} has {n} sequence(s): too few to hold out {fraction:.0%} for validation and keep some "
            "to train on; give --val with a validation file, or more data"
        )
    order = np.random.default_rng(seed).permutation(n)
    pick = lambda idx: [data.examples[i] for i in sorted(idx)]  # noqa: E731
    val = Dataset(**{**data.__dict__, "examples": pick(order[:n_val]), "source": f"{data.source} (held out)"})
    train = Dataset(**{**data.__dict__, "examples": pick(order[n_val:])})
    return train, val


def check_compatible(train: Dataset, val: Dataset) -> None:
    """A validation set must fit the model the training set defines."""
    for name in ("input_size", "head", "readout"):
        a, b = getattr(train, name), getattr(val, name)
        if a != b:
            raise InputError(f"{name} differs: {a} in {train.source}, {b} in {val.source}; the splits must match")
    if train.head == "regression" and train.output_size != val.output_size:
        raise InputError(f"{train.source} has {train.output_size} target(s) per output, {val.source} {val.output_size}")
    if train.head == "classification":
        top = max(_labels_max(val), -1)
        if top >= train.output_size:
            raise InputError(
                f"{val.source} has label {top}, but the training data defines {train.output_size} classes "
                f"(0..{train.output_size - 1}); give --classes to fix the count"
            )


def normalization_stats(examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every real step of ``examples`` (padding is not in them); a feature that never
    varies gets std 1, so it is centred, not divided by zero."""
    return _mean_std(np.concatenate([e.x.astype(np.float64) for e in examples], axis=0))


def target_stats(examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Per-target mean and std of regression targets (every real step's, for per-step targets); std 1 for a
    target that never varies."""
    return _mean_std(np.concatenate([e.y.reshape(-1, e.y.shape[-1]).astype(np.float64) for e in examples], axis=0))


def _mean_std(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and stds of (n, k) float64 rows as float32; std 1 where a column never varies."""
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _labels_max(d: Dataset) -> int:
    return max((int(np.max(e.y)) for e in d.examples if e.y.size), default=-1)


# --- .npz ---------------------------------------------------------------------------------------------------------


def _from_npz(p: Path, *, head: str | None, readout: str | None, classes: int | None) -> Dataset:
    src = str(p)
    arrays = read_npz(p, ("x", "lengths", "y"), max_bytes=MAX_DATA_BYTES, error=InputError, what=repr(src),
                      advice=NPZ_ADVICE, bound="training data (x, lengths and y as stored)")  # fmt: skip
    for key in ("x", "y"):
        if key not in arrays:
            raise InputError(f"{src!r} has no array {key!r}; {NPZ_ADVICE}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise InputError(f"{src!r}: x must hold numbers; got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise InputError(f"{src!r}: x must be (N, T, F) padded (or (N, T) for one feature); got shape {x.shape}")
    n, t, f = x.shape
    if n == 0 or t == 0 or f == 0:
        raise InputError(f"{src!r}: x has shape {x.shape}; there is nothing to train on")
    if t > MAX_STEPS:
        raise InputError(
            f"{src!r}: x has {t:,} steps per sequence, over edgernn's bound of {MAX_STEPS:,}; cut long recordings "
            "into windows (each a sequence of x)"
        )
    if n > MAX_SEQUENCES:
        raise InputError(f"{src!r}: x has {n:,} sequences, over edgernn's bound of {MAX_SEQUENCES:,}; train on a part")
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(n, t, dtype=np.int64)
    else:
        if lengths.ndim != 1 or lengths.shape[0] != n:
            raise InputError(f"{src!r}: lengths must be ({n},), one per sequence of x; got shape {lengths.shape}")
        if lengths.dtype.kind not in "iu":
            if lengths.dtype.kind == "f" and np.all(np.isfinite(lengths)) and np.all(lengths == np.round(lengths)):
                lengths = lengths.astype(np.int64)
            else:
                raise InputError(f"{src!r}: lengths must be whole numbers; got dtype {lengths.dtype}")
        bad = np.flatnonzero((lengths < 1) | (lengths > t))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{src!r}: lengths[{i}] is {int(lengths[i])}; each length must be in 1..{t} (x's T)")
    lengths = lengths.astype(np.int64)
    if y.shape[:1] != (n,):
        raise InputError(f"{src!r}: y has {y.shape[0] if y.ndim else 0} row(s) and x {n}; one label row per sequence")
    if y.dtype.kind not in "fiub" or y.dtype == np.bool_:
        raise InputError(f"{src!r}: y must hold numbers; got dtype {y.dtype}")
    integer = y.dtype.kind in "iu"
    head = head or ("classification" if integer else "regression")
    if readout is None:
        readout = "all" if (y.ndim == 3 or (y.ndim == 2 and y.shape[1] == t and (integer or t > 1))) else "last"
    if readout == "all" and (y.ndim < 2 or y.shape[1] != t):
        raise InputError(f"{src!r}: per-step targets need y of shape ({n}, {t}[, K]) like x's (N, T); got {y.shape}")
    x = x.astype(np.float32)
    examples = []
    for i in range(n):
        k = int(lengths[i])
        xi = x[i, :k]
        if not np.all(np.isfinite(xi)):
            step = int(np.argwhere(~np.isfinite(xi))[0][0])
            raise InputError(f"{src!r}: x[{i}] has a NaN or infinite value at step {step}; clean or drop it")
        yi = y[i, :k] if readout == "all" else y[i]
        examples.append(Example(xi, yi))
    return _finish(examples, head=head, readout=readout, src=src, classes=classes, input_size=f)


# --- CSV directory ------------------------------------------------------------------------------------------------


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files that ``load_dataset(path)`` reads: the ``.npz`` itself, or a directory's ``*.csv`` files in name
    order. An entry that is a link resolving outside the directory is refused (``InputError``): the data folder is
    all that is read. At most ``MAX_CSV_FILES`` files, each at most ``MAX_CSV_BYTES``, ``MAX_DATA_BYTES`` in all."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    root = p.resolve()
    files: list[Path] = []
    total = 0
    with os.scandir(p) as entries:
        for entry in entries:
            f = p / entry.name
            if f.suffix.lower() != ".csv":
                continue
            if entry.is_symlink() and not _inside(f, root):
                raise InputError(
                    f"{str(f)!r} is a link that leads outside {str(p)!r}; edgernn reads only the files inside the "
                    "data folder: copy the file in, or drop the link"
                )
            if not f.is_file():
                continue
            files.append(f)
            if len(files) > MAX_CSV_FILES:
                raise InputError(
                    f"{str(p)!r} holds more than {MAX_CSV_FILES:,} .csv files, edgernn's bound for a CSV folder (one "
                    "sequence per file); save many sequences as one .npz (x padded, lengths, y) instead"
                )
            size = f.stat().st_size
            if size > MAX_CSV_BYTES:
                raise InputError(
                    f"{str(f)!r} is {size / 2**20:,.0f} MiB, over edgernn's bound of {MAX_CSV_BYTES / 2**20:g} MiB for "
                    "one CSV file (one sequence); cut it into shorter sequences, or save the data as an .npz"
                )
            total += size
    if total > MAX_DATA_BYTES:
        raise InputError(
            f"{str(p)!r}'s .csv files hold {total / 2**30:.1f} GiB, over edgernn's bound of {MAX_DATA_BYTES / 2**30:g} "
            "GiB of training data; train on a part"
        )
    return sorted(files)


def _inside(link: Path, root: Path) -> bool:
    """Whether a link resolves to a path inside ``root`` (a loop of links resolves nowhere)."""
    try:
        return link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _from_csv_dir(
    d: Path, *, head: str | None, readout: str | None, target_columns: list[str] | None, classes: int | None
) -> Dataset:
    files = data_files(d)
    if not files:
        raise InputError(f"{str(d)!r} has no .csv files; give one file per sequence (rows are time steps)")
    if not target_columns:
        raise InputError(f"{str(d)!r}: name the target column(s) with --target-columns (e.g. --target-columns label)")
    head = head or "regression"
    readout = readout or "all"
    header: list[str] = []
    features: list[int] = []
    targets: list[int] = []
    examples = []
    for i, p in enumerate(files):
        tick(f"reading {d}: {i:,} of {len(files):,} CSV files read")
        rows = _csv_rows(p)
        if len(rows) < 2:
            raise InputError(f"{str(p)!r} has no data rows (a header and at least one time step are needed)")
        names = [c.strip() for c in rows[0]]
        if not header:  # the file is not a sequence until its header is checked: nothing of it is echoed
            missing = [c for c in target_columns if c not in names]
            if missing:
                raise InputError(
                    f"{str(p)!r} has no column {', '.join(map(repr, missing))} among the {len(names)} column(s) of "
                    "its header (the first line names the columns)"
                )
            header = names
            targets = [names.index(c) for c in target_columns]
            features = [i for i in range(len(names)) if i not in targets]
            if not features:
                raise InputError(f"{str(p)!r}: every column is a target; at least one feature column is needed")
        elif names != header:
            k = next(
                (j for j, (a, b) in enumerate(zip(names, header, strict=False)) if a != b), min(len(names), len(header))
            )
            raise InputError(
                f"{str(p)!r} has columns that differ from those of {str(files[0])!r} ({len(names)} and "
                f"{len(header)} columns, the first difference at column {k + 1}); every file needs the same header"
            )
        table = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
        for r, row in enumerate(rows[1:]):
            if len(row) != len(header):
                raise InputError(
                    f"{str(p)!r}: row {r + 2} has {len(row)} values and the header {len(header)}; rows of different "
                    "widths (each row is one time step with a value per column)"
                )
            try:
                table[r] = [_number(c) for c in row]
            except ValueError:
                c = next(k for k, cell in enumerate(row) if not _is_number(cell))
                raise InputError(
                    f"{str(p)!r}: row {r + 2}, column {_shown(header[c])}: a value is not a number; write plain "
                    "decimal numbers (ASCII digits, an optional sign, point and exponent: 12, -0.5, 3e-4)"
                ) from None
        bad = np.argwhere(~np.isfinite(table))
        if bad.size:
            r, c = (int(v) for v in bad[0])
            raise InputError(
                f"{str(p)!r}: row {r + 2}, column {_shown(header[c])} is NaN or infinite; clean or drop it"
            )
        x = table[:, features].astype(np.float32)
        y = table[:, targets]
        if head == "classification":
            if len(targets) != 1 or not np.all(y == np.round(y)):
                raise InputError(f"{str(p)!r}: classification needs one target column of whole-number class indices")
            y = y[:, 0].astype(np.int64)
        else:
            y = y.astype(np.float32)
        examples.append(Example(x, y if readout == "all" else y[-1]))
    data = _finish(examples, head=head, readout=readout, src=str(d), classes=classes, input_size=len(features))
    return Dataset(
        **{**data.__dict__, "feature_names": [header[i] for i in features], "target_names": list(target_columns)}
    )


def _csv_rows(p: Path) -> list[list[str]]:
    """The non-blank rows of one CSV file (header first), at most ``MAX_STEPS`` after the header."""
    rows: list[list[str]] = []
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                for r in reader:
                    if r and any(c.strip() for c in r):
                        rows.append(r)
                        if len(rows) > MAX_STEPS + 1:
                            raise InputError(
                                f"{str(p)!r} has more than {MAX_STEPS:,} rows, edgernn's bound of steps per sequence; "
                                "cut long recordings into shorter sequences (one file each)"
                            )
            except csv.Error as e:
                raise InputError(f"{str(p)!r} is not a readable CSV file: line {reader.line_num}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{str(p)!r} is not a readable CSV file: {e}") from None
    return rows


def _number(cell: str) -> float:
    """A CSV value: ASCII digits with an optional sign, point and exponent (nan and inf too, refused later by name),
    spaces around it allowed; not digit separators (``1_000``) or other scripts' digits, which float() also takes."""
    if not cell.isascii() or "_" in cell:
        raise ValueError(f"not a plain number: {cell!r}")
    return float(cell)


def _is_number(cell: str) -> bool:
    try:
        _number(cell)
    except ValueError:
        return False
    return True


def _shown(name: str) -> str:
    """A column name for a message: quoted, and cut short."""
    return repr(name if len(name) <= 40 else name[:37] + "...")


# --- shared -------------------------------------------------------------------------------------------------------


def _finish(
    examples: list[Example], *, head: str, readout: str, src: str, classes: int | None, input_size: int
) -> Dataset:
    """Check the labels and settle the output size."""
    if not examples:
        raise InputError(f"{src!r} holds no sequences")
    if head == "classification":
        out = []
        for i, e in enumerate(examples):
            y = e.y
            if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                raise InputError(
                    f"{src!r}: sequence {i}'s labels are not whole numbers; classification needs class indices"
                )
            if y.dtype.kind not in "iuf":
                raise InputError(f"{src!r}: labels must be class indices; got dtype {y.dtype}")
            want_ndim = 1 if readout == "all" else 0
            if y.ndim != want_ndim:
                raise InputError(
                    f"{src!r}: classification needs one class index per {'step' if readout == 'all' else 'sequence'}"
                    f"; sequence {i}'s label has shape {y.shape}"
                )
            y = y.astype(np.int64)
            if y.size and int(y.min()) < 0:
                raise InputError(f"{src!r}: sequence {i} has label {int(y.min())}; class indices start at 0")
            out.append(Example(e.x, y))
        top = max(int(e.y.max()) for e in out if e.y.size)
        n_classes = classes if classes is not None else top + 1
        if top >= n_classes:
            raise InputError(
                f"{src!r} has label {top}, beyond the {n_classes} classes (0..{n_classes - 1}) that the training "
                "data or --classes sets"
            )
        if n_classes < 2:
            raise InputError(f"{src!r} has only class 0; classification needs at least 2 classes (or give --classes)")
        return Dataset(out, input_size, n_classes, head, readout, src)
    out = []
    for i, e in enumerate(examples):
        y = np.asarray(e.y, dtype=np.float32)
        if not np.all(np.isfinite(y)):
            raise InputError(f"{src!r}: sequence {i}'s targets hold a NaN or infinite value; clean or drop it")
        y = y.reshape(y.shape[0], -1) if readout == "all" else y.reshape(-1)
        out.append(Example(e.x, y))
    return Dataset(out, input_size, int(out[0].y.shape[-1]), head, readout, src)
