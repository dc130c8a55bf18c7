"""Writing files, and reading ``.npz`` archives that may come from anyone: shared by all of edgernn (torch-free)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import EdgeRNNError


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place: readers never see half a file.

    The temporary file is named ``.NAME.edgernn-PID-XXXX.tmp``; one left by a process that was killed (``kill
    -9`` cannot be cleaned up after) is removed by the next write to the same target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.edgernn-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only folder: name the folder and the file, not the temporary name
        if e.errno is None:
            raise
        raise OSError(e.errno, f"{e.strerror} (cannot write {path.name} in this folder)", str(path.parent)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the mode open() would give
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and not e.filename:  # say where: a full disk, say
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _remove_stale(path: Path) -> None:
    """Temporary files of earlier writes to ``path`` whose process is gone."""
    prefix = f".{path.name}.edgernn-"
    for tmp in path.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# ------------------------------------------------------------------------------------------------ reading .npz

NPY_MAX_HEADER = 10_000  # bytes: what numpy reads of a .npy header without trusting the file (np.load's default)


def read_npz(
    path: str | os.PathLike[str],
    names: Sequence[str] | None,
    *,
    max_bytes: int,
    error: type[EdgeRNNError],
    what: str,
    advice: str,
    bound: str,
) -> dict[str, Any]:
    """The arrays ``names`` (None: every array) of the ``.npz`` at ``path``, read without trusting the file.

    Only the named members are decompressed. Before any array is allocated, each member's ``.npy`` header is read
    and checked: a numeric dtype (an object array would need pickle, which is never used), a header no larger
    than numpy reads safely, a shape whose bytes the member holds, and the named arrays' bytes together at most
    ``max_bytes``. A file that is not an ``.npz`` (empty, truncated, a single ``.npy``, a pickle) is refused by
    its true reason. Every refusal is ``error(f"{what}: <reason>; <advice>")``; ``bound`` names what
    ``max_bytes`` bounds, for the message. A name the archive lacks is simply absent from the result.
    ``np.load(allow_pickle=False)`` opens the archive and reads the arrays."""
    import zipfile
    import zlib

    import numpy as np

    p = os.fspath(path)

    def refuse(reason: str, tip: str = advice) -> EdgeRNNError:
        return error(f"{what}: {reason}" + (f"; {tip}" if tip else ""))

    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise refuse(f"cannot be read ({e.strerror or e})") from None
    if not head:
        raise refuse("it is empty (0 bytes)")
    if head.startswith(b"\x93NUMPY"):
        raise refuse("it is a single .npy array, not an .npz archive of named arrays")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        raise refuse("it is a Python pickle, not an .npz archive; edgernn never unpickles data")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise refuse("it is not an .npz archive (a zip of .npy arrays, as np.savez writes)")
    unreadable = (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)
    try:
        z = np.load(p, allow_pickle=False)  # a zip: opens the archive's directory, reads no array yet
    except (*unreadable, zipfile.LargeZipFile) as e:
        raise refuse(f"it is not a complete .npz (zip) archive: truncated or damaged ({_first_line(e)})") from None
    with z:
        members = {key: z.zip.getinfo(z._files[key]) for key in z.files}
        wanted = list(members) if names is None else [n for n in names if n in members]
        total = 0
        for key in wanted:
            shape, dtype, nbytes, held = _npy_member_header(z.zip, members[key], key, refuse, unreadable)
            total += nbytes
            if total > max_bytes:
                raise refuse(
                    f"array {key!r} claims shape {shape} of {dtype}, which brings the arrays read to "
                    f"{total / 2**30:,.1f} GiB, over edgernn's bound of {max_bytes / 2**30:g} GiB for {bound}",
                    "",
                )
            if nbytes > held:
                raise refuse(
                    f"array {key!r} claims shape {shape} of {dtype} ({nbytes:,} bytes) but holds {held:,} bytes: "
                    "truncated or forged"
                )
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = z[key]
            except unreadable as e:
                raise refuse(f"array {key!r} is unreadable: truncated or damaged ({_first_line(e)})") from None
    return arrays


def _npy_member_header(
    zf: Any, info: Any, key: str, refuse: Callable[..., EdgeRNNError], unreadable: tuple[type[BaseException], ...]
) -> tuple[tuple[int, ...], Any, int, int]:
    """(shape, dtype, bytes) that a member's .npy header claims, and the bytes the archive says follow the header;
    read before anything is allocated."""
    import numpy as np

    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            magic = f.read(8)
            if len(magic) < 8 or not magic.startswith(b"\x93NUMPY"):
                raise refuse(f"member {key!r} is not a .npy array")
            if magic[6] not in (1, 2):
                raise refuse(f"array {key!r} is in .npy format version {magic[6]}, which edgernn does not read")
            size = f.read(2 if magic[6] == 1 else 4)
            header_len = int.from_bytes(size, "little")
            if header_len > NPY_MAX_HEADER:
                raise refuse(
                    f"array {key!r} has a {header_len:,}-byte header, over the {NPY_MAX_HEADER:,} bytes numpy reads "
                    "safely: it was not written by numpy (damaged or forged)"
                )
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=NPY_MAX_HEADER)
            start = f.tell()
    except EdgeRNNError:
        raise
    except unreadable as e:
        raise refuse(f"array {key!r} has an unreadable header: truncated or damaged ({_first_line(e)})") from None
    if dtype.hasobject:
        raise refuse(
            f"array {key!r} holds Python objects (an object array); reading it would need pickle, which edgernn "
            "never uses"
        )
    nbytes = math.prod(int(s) for s in shape) * dtype.itemsize
    return tuple(int(s) for s in shape), dtype, nbytes, max(0, info.file_size - start)


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]
