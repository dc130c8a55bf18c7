"""File writing shared by every part of edgernn (torch-free)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
