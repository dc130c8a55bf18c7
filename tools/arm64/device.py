"""An emulated aarch64 Linux device: a Debian bookworm arm64 root run with qemu-user, holding the torch-free edgernn.

    python tools/arm64/device.py build                          # build (or reuse) the root, refresh edgernn in it
    python tools/arm64/device.py verify MODEL GOLDEN            # `edgernn verify MODEL --golden GOLDEN` in the root
    python tools/arm64/device.py run -- ARGS...                 # `python3 -m edgernn ARGS...` in the root
    python tools/arm64/device.py python -- ARGS...              # `python3 ARGS...` in the root

The root is built once with debootstrap (``--variant=minbase --include=python3``, arm64; the second stage runs
under qemu-aarch64 through binfmt_misc), into a temporary folder renamed into place when complete, and cached at
``~/.cache/edgernn/arm64-root`` (``EDGERNN_ARM64_ROOT`` moves it). The Debian mirror is this machine's own (the
first ``URIs:`` of /etc/apt/sources.list.d/*.sources, or the first ``deb`` line of /etc/apt/sources.list) unless
``--mirror`` names one. The device's Python packages are aarch64 wheels fetched by pip on the host
(``--platform manylinux_2_28_aarch64 --only-binary=:all:``) into ``/opt/edgernn/site`` in the root, pinned to the
versions installed here, so that the device and this machine run the same onnxruntime; they are fetched again only
when that pinned set changes. edgernn itself is copied from this source tree into ``/opt/edgernn/src`` on every run.

Commands run as ``chroot ROOT /usr/bin/python3 ...`` inside a private mount namespace (``unshare --mount``) that
mounts /proc (not /sys, see ``run_python``) for them; the mount disappears with the namespace, so nothing is left
mounted on this machine. This needs root and the qemu-aarch64 binfmt_misc handler with the F flag (Debian's
qemu-user-static registers it so).

From Python::

    import device                                   # tools/arm64 on sys.path
    r = device.run(["verify", "m.onnx", "--golden", "m.golden.npz"], files=["/host/m.onnx", "/host/m.golden.npz"])
    r.returncode, r.stdout, r.stderr, r.seconds
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import fcntl
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
ROOT_ENV = "EDGERNN_ARM64_ROOT"
DEFAULT_ROOT = Path("~/.cache/edgernn/arm64-root")
SUITE = "bookworm"
ARCH = "arm64"
VARIANT = "minbase"
INCLUDE = ("python3",)
PLATFORM = "manylinux_2_28_aarch64"
PYTHON_VERSION = "3.11"  # bookworm's python3
# what `pip install edgernn` installs on a device (pyproject's dependencies); their own dependencies follow
DEVICE_PACKAGES = ("numpy", "onnxruntime", "click", "onnx", "onnxconverter-common")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
# paths inside the root
OPT = "/opt/edgernn"
SITE = f"{OPT}/site"  # the aarch64 wheels
SRC = f"{OPT}/src"  # edgernn, copied from this tree
WORK = f"{OPT}/work"  # one folder per run
ROOT_MARKER = ".edgernn-arm64-root.json"  # at the root's top: what debootstrap built
SITE_MARKER = f"{OPT}/site.json"  # what pip installed into SITE
PROGRESS_EVERY = 10.0  # seconds between progress lines during long work


class DeviceError(Exception):
    """The emulated device cannot be built or run here; the message says why and what to do."""


class NotRootError(DeviceError):
    """chroot, debootstrap and mount namespaces need root."""


class BinfmtError(DeviceError):
    """The kernel has no qemu-aarch64 binfmt_misc handler, so aarch64 programs cannot run here."""


class BuildError(DeviceError):
    """debootstrap or pip failed while building the root."""


@dataclass
class RunResult:
    """One command run in the root."""

    argv: list[str]  # the argv after /usr/bin/python3
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time of the emulated command (chroot to exit)
    collected: dict[str, Path] = field(default_factory=dict)  # name in the work dir -> where it was copied to


# ---------------------------------------------------------------------------------------------------- checks


def root_path(root: str | os.PathLike[str] | None = None) -> Path:
    """The root's folder: ``root``, else ``$EDGERNN_ARM64_ROOT``, else ``~/.cache/edgernn/arm64-root``."""
    chosen = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def binfmt_status() -> tuple[bool, str]:
    """Whether the kernel runs aarch64 binaries through qemu from inside a chroot, and why not."""
    entry = BINFMT / BINFMT_NAME
    if not (BINFMT / "status").exists():
        return False, (
            f"binfmt_misc is not mounted at {BINFMT} (as root: `mount -t binfmt_misc binfmt_misc {BINFMT}`, "
            f"then `update-binfmts --enable {BINFMT_NAME}`)"
        )
    if not entry.exists():
        return False, (
            f"no {BINFMT_NAME} handler in {BINFMT} (as root: `apt-get install qemu-user-static binfmt-support` "
            f"and `update-binfmts --enable {BINFMT_NAME}`)"
        )
    text = entry.read_text()
    if "enabled" not in text.splitlines()[0]:
        return False, f"the {BINFMT_NAME} handler is registered but disabled (`update-binfmts --enable {BINFMT_NAME}`)"
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        return False, (
            f"the {BINFMT_NAME} handler lacks the F flag (flags {flags!r}), so its interpreter cannot be found from "
            "inside a chroot; register it as qemu-user-static does"
        )
    return True, ""


def enable_binfmt() -> tuple[bool, str]:
    """Register the qemu-aarch64 handler where it is missing (root only): mount binfmt_misc if needed, then
    ``update-binfmts --enable qemu-aarch64`` (qemu-user-static and binfmt-support installed). Returns
    ``binfmt_status()`` afterwards."""
    ok, why = binfmt_status()
    if ok or os.geteuid() != 0:
        return ok, why
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, check=False)
    if shutil.which("update-binfmts") is not None:
        subprocess.run(["update-binfmts", "--enable", BINFMT_NAME], capture_output=True, check=False)
    ok, why = binfmt_status()
    if ok:
        _say(f"registered the {BINFMT_NAME} binfmt_misc handler")
    return ok, why


def machine_status(root: str | os.PathLike[str] | None = None) -> tuple[bool, str]:
    """Whether this machine can build (or reuse) and run the root, and why not: root user, binfmt, tools."""
    if os.geteuid() != 0:
        return False, "the emulated device needs root (chroot, debootstrap, mount namespaces); run as root"
    ok, why = binfmt_status()
    if not ok:
        return False, why
    for tool in ("chroot", "unshare"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed (util-linux / coreutils)"
    if not is_built(root) and shutil.which("debootstrap") is None:
        return False, f"no root at {root_path(root)} and debootstrap is not installed (`apt-get install debootstrap`)"
    return True, ""


def _require_machine(root: str | os.PathLike[str] | None) -> None:
    if os.geteuid() != 0:
        raise NotRootError("the emulated device needs root (chroot, debootstrap, mount namespaces); run as root")
    ok, why = enable_binfmt()
    if not ok:
        raise BinfmtError(why)
    ok, why = machine_status(root)
    if not ok:
        raise DeviceError(why)


def is_built(root: str | os.PathLike[str] | None = None) -> bool:
    """Whether a complete root (its marker written last) is at ``root``."""
    return (root_path(root) / ROOT_MARKER).is_file()


# ---------------------------------------------------------------------------------------------------- mirror


def host_mirror() -> str:
    """This machine's Debian mirror, read from its apt sources (never written in this repository)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in stanza.splitlines() if ":" in ln)
            )
            suites = fields.get("Suites", "").split()
            uris = fields.get("URIs", "").split()
            if uris and SUITE in suites:
                return uris[0]
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for ln in sources.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", ln + " ")
            if m:
                return m.group(1)
    raise DeviceError(
        f"no Debian {SUITE} mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; give --mirror URL"
    )


# ---------------------------------------------------------------------------------------------------- progress


def _say(msg: str) -> None:
    print(f"[arm64] {msg}", file=sys.stderr, flush=True)


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:120] if lines else ""


def _run_logged(cmd: Sequence[str], what: str, log: Path, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd`` with its output in ``log``, printing a progress line every PROGRESS_EVERY seconds;
    ``BuildError`` with the log's tail when it fails."""
    start = time.monotonic()
    _say(f"{what}: {' '.join(cmd[:3])} ... (log {log})")
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        while True:
            try:
                rc = proc.wait(timeout=PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                _say(f"{what}: {time.monotonic() - start:.0f} s, {_last_line(log)}")
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise BuildError(f"{what} failed (exit {rc}); the end of {log}:\n" + "\n".join(tail))
    _say(f"{what}: done in {time.monotonic() - start:.0f} s")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One build or refresh of a root at a time (another process waits)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------- building


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [ln.split()[1].encode().decode("unicode_escape") for ln in f]
    return [p for p in points if p.startswith(prefix) or p == prefix[:-1]]


def _remove_tree(path: Path) -> None:
    """Remove an unfinished root, after unmounting what an interrupted debootstrap left mounted in it (never
    removing through a mount)."""
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise DeviceError(f"{path} still has mounts ({', '.join(_mounts_under(path))}); unmount them and remove it")
    shutil.rmtree(path)


def _debootstrap(target: Path, mirror: str, log: Path) -> dict[str, object]:
    cmd = [
        "debootstrap",
        f"--arch={ARCH}",
        f"--variant={VARIANT}",
        f"--include={','.join(INCLUDE)}",
        SUITE,
        str(target),
        mirror,
    ]
    start = time.monotonic()
    _run_logged(cmd, "debootstrap", log)
    for sub in ("proc", "sys", "dev/pts"):  # debootstrap unmounts these itself; make sure
        if _mounts_under(target / sub):
            subprocess.run(["umount", "-l", str(target / sub)], check=False)
    python = target / "usr/bin/python3"
    if not python.exists():
        raise BuildError(f"debootstrap finished but {python} is missing")
    return {
        "suite": SUITE,
        "arch": ARCH,
        "variant": VARIANT,
        "include": list(INCLUDE),
        "debootstrap_seconds": round(time.monotonic() - start, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def requirements() -> list[str]:
    """The device's packages and their dependencies (the closure, extras left out), each pinned to the version
    installed on this machine, the x86 side of every comparison, so both sides run the same onnxruntime, numpy
    and protobuf; a package not installed here is left unpinned (pip picks)."""
    from packaging.requirements import Requirement  # onnxruntime depends on packaging: it is here

    pinned: dict[str, str] = {}
    todo = list(DEVICE_PACKAGES)
    while todo:
        name = todo.pop(0)
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in pinned:
            continue
        try:
            pinned[key] = f"{key}=={importlib.metadata.version(key)}"
        except importlib.metadata.PackageNotFoundError:
            pinned[key] = key
            continue
        for spec in importlib.metadata.requires(key) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(pinned.values())


def _installed(site: Path) -> list[str]:
    """name==version of every distribution in a --target folder."""
    found = []
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        header = meta.read_text(errors="replace").split("\n\n", 1)[0].splitlines()
        fields = dict(ln.split(": ", 1) for ln in header if ": " in ln)
        found.append(f"{fields.get('Name', meta.parent.name)}=={fields.get('Version', '?')}")
    return found


def _site_wanted(reqs: Sequence[str]) -> dict[str, object]:
    return {"platform": PLATFORM, "python": PYTHON_VERSION, "requirements": list(reqs)}


def _site_current(root: Path, reqs: Sequence[str]) -> bool:
    marker = root / SITE_MARKER.lstrip("/")
    if not marker.is_file():
        return False
    try:
        have = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    want = _site_wanted(reqs)
    return all(have.get(k) == v for k, v in want.items())


def _install_wheels(root: Path, reqs: Sequence[str], log: Path) -> dict[str, object]:
    """pip, on this machine, installs the aarch64 wheels of ``reqs`` and their dependencies into SITE."""
    site = root / SITE.lstrip("/")
    staging = site.with_name("site.new")
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-compile",
        "--platform",
        PLATFORM,
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--target",
        str(staging),
        *reqs,
    ]
    start = time.monotonic()
    _run_logged(cmd, "pip (aarch64 wheels)", log)
    if site.exists():
        shutil.rmtree(site)
    staging.rename(site)
    record = {**_site_wanted(reqs), "installed": _installed(site), "pip_seconds": round(time.monotonic() - start, 1)}
    (root / SITE_MARKER.lstrip("/")).write_text(json.dumps(record, indent=1) + "\n")
    return record


def refresh_edgernn(root: str | os.PathLike[str] | None = None, source: Path | None = None) -> Path:
    """Copy edgernn (pure Python) from this source tree into the root's SRC, replacing the previous copy."""
    r = root_path(root)
    src = source or REPO / "edgernn"
    if not (src / "__init__.py").is_file():
        raise DeviceError(f"no edgernn package at {src}")
    dest = r / SRC.lstrip("/")
    staging = dest.with_name("src.new")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(src, staging / "edgernn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if sys.version_info[:2] == tuple(int(v) for v in PYTHON_VERSION.split(".")):
        # bytecode compiled here is valid there (one magic number per minor version): the emulated Python would
        # otherwise compile edgernn on every run, the copy being new each time
        compileall.compile_dir(staging, quiet=2, workers=1)
    # a distribution record, as an install would leave, for importlib.metadata (`edgernn --version` reads it)
    version = re.search(r'__version__\s*=\s*"([^"]+)"', (src / "_version.py").read_text())
    info = staging / f"edgernn-{version.group(1) if version else '0'}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: edgernn\nVersion: {version.group(1) if version else '0'}\n"
    )
    (info / "INSTALLER").write_text("tools/arm64/device.py\n")
    (info / "RECORD").write_text("")
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return dest


def _log(root: Path, what: str) -> Path:
    """Where a build step's output goes: beside the root, started afresh each time."""
    log = root.parent / f"{root.name}.{what}.log"
    log.unlink(missing_ok=True)
    return log


def ensure_root(
    root: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    refresh: bool = True,
) -> Path:
    """The root, built when missing (debootstrap, then the wheels), its wheels reinstalled when the pinned set
    changed, and edgernn copied from this tree (``refresh``). Idempotent; concurrent callers wait for each other."""
    r = root_path(root)
    _require_machine(r)
    reqs = requirements()
    with _locked(r):
        if not is_built(r):
            if r.exists():
                raise DeviceError(
                    f"{r} exists but holds no {ROOT_MARKER} (not a root built here, or one from an older layout); "
                    "remove it or choose another path with " + ROOT_ENV
                )
            for stale in r.parent.glob(f".{r.name}.tmp-*"):  # what an interrupted build left
                _say(f"removing an unfinished build at {stale}")
                _remove_tree(stale)
            tmp = r.parent / f".{r.name}.tmp-{os.getpid()}"
            start = time.monotonic()
            record = _debootstrap(tmp, mirror or host_mirror(), _log(r, "debootstrap"))
            _install_wheels(tmp, reqs, _log(r, "pip"))
            record["build_seconds"] = round(time.monotonic() - start, 1)
            (tmp / ROOT_MARKER).write_text(json.dumps(record, indent=1) + "\n")
            tmp.rename(r)
            _say(f"built {r} in {record['build_seconds']} s")
        elif not _site_current(r, reqs):
            _say(f"the pinned packages changed ({', '.join(reqs)}); fetching the aarch64 wheels again")
            _install_wheels(r, reqs, _log(r, "pip"))
        if refresh:
            refresh_edgernn(r)
    return r


def describe(root: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """What the root holds: its build record and the installed packages (empty when not built)."""
    r = root_path(root)
    out: dict[str, object] = {"root": str(r), "built": is_built(r)}
    if is_built(r):
        out["build"] = json.loads((r / ROOT_MARKER).read_text())
        marker = r / SITE_MARKER.lstrip("/")
        if marker.is_file():
            out["site"] = json.loads(marker.read_text())
    return out


# ---------------------------------------------------------------------------------------------------- running


def _place(files: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]], work: Path) -> list[str]:
    """Copy ``files`` into the work dir: a mapping names each copy (relative to the work dir), a sequence keeps
    each file's base name. Returns the names placed."""
    pairs = list(files.items()) if isinstance(files, Mapping) else [(Path(p).name, p) for p in files]
    names = []
    for name, src in pairs:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise DeviceError(f"file name {name!r} must be relative to the work dir, without '..'")
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        names.append(str(rel))
    return names


def _collect(work: Path, placed: Sequence[str], into: Path) -> dict[str, Path]:
    """Copy what the command wrote in the work dir (every file but the ones placed) to ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    got = {}
    skip = {Path(p) for p in placed}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work)
        if not path.is_file() or rel in skip or any(Path(*rel.parts[: i + 1]) in skip for i in range(len(rel.parts))):
            continue
        dest = into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        got[str(rel)] = dest
    return got


def run_python(
    argv: Sequence[str],
    files: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] = (),
    *,
    root: str | os.PathLike[str] | None = None,
    collect: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
    prepare: bool = True,
    keep: bool = False,
) -> RunResult:
    """Run ``/usr/bin/python3 ARGV...`` in the root, in a fresh work dir holding ``files``; any argv, any files.

    ``files``: host paths copied in by base name, or a mapping {name in the work dir: host path}; name them in
    ``argv`` by those relative names (the command's working directory is the work dir). ``collect``: a host folder
    that receives every file the command wrote in the work dir. ``env`` adds variables (PYTHONPATH is the device's:
    edgernn's copy, then the aarch64 wheels). ``prepare`` builds or refreshes the root first (``ensure_root``);
    the work dir is removed afterwards unless ``keep``. A non-zero exit is returned, not raised.
    """
    r = ensure_root(root) if prepare else root_path(root)
    if not prepare:
        _require_machine(r)
        if not is_built(r):
            raise DeviceError(f"no root at {r}; build it first (`python tools/arm64/device.py build`)")
    work_in_root = f"{WORK}/{uuid.uuid4().hex[:12]}"
    work = r / work_in_root.lstrip("/")
    work.mkdir(parents=True)
    try:
        placed = _place(files, work)
        device_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{SRC}:{SITE}",
            "PYTHONNOUSERSITE": "1",
            **(env or {}),
        }
        # a private mount namespace: /proc is mounted for the command and vanishes with it; chroot then cds into
        # the work dir and runs python3 under qemu-aarch64. /sys is left out on purpose: with it, onnxruntime's
        # cpuinfo goes on to parse /proc/cpuinfo, which is the x86 host's under qemu-user, and crashes (SIGSEGV);
        # without it, cpuinfo gives up with a warning ("cpuinfo_initialize failed") and onnxruntime carries on with
        # its fallback, the kernel's HWCAP bits (here qemu's emulated ones)
        inner = 'cd "$0" && exec /usr/bin/python3 "$@"'
        mounts = 'mount -t proc proc "$0/proc"'
        script = f'{mounts} && exec chroot "$0" /bin/sh -c \'{inner}\' "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, str(r), work_in_root]
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [*cmd, *argv], env=device_env, input=stdin, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"python3 {' '.join(argv)} ran past {timeout} s in the emulated device") from e
        seconds = time.monotonic() - start
        collected = _collect(work, placed, Path(collect)) if collect is not None else {}
        return RunResult(list(argv), proc.returncode, proc.stdout, proc.stderr, seconds, collected)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run(
    args: Sequence[str],
    files: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] = (),
    **kwargs: object,
) -> RunResult:
    """``python3 -m edgernn ARGS...`` in the root (see ``run_python`` for ``files`` and the keywords)."""
    return run_python(["-m", "edgernn", *args], files, **kwargs)  # type: ignore[arg-type]


def verify(
    model: str | os.PathLike[str],
    golden: str | os.PathLike[str],
    *extra: str,
    root: str | os.PathLike[str] | None = None,
    prepare: bool = True,
) -> RunResult:
    """``edgernn verify MODEL --golden GOLDEN [EXTRA...]`` in the root, on copies of the two host files."""
    m, g = Path(model), Path(golden)
    files = {f"model/{m.name}": m, f"golden/{g.name}": g}
    return run(["verify", f"model/{m.name}", "--golden", f"golden/{g.name}", *extra], files, root=root, prepare=prepare)


# ---------------------------------------------------------------------------------------------------- CLI


def _echo(r: RunResult, out: IO[str] = sys.stdout) -> int:
    out.write(r.stdout)
    sys.stderr.write(r.stderr)
    _say(f"exit {r.returncode} in {r.seconds:.1f} s (emulated aarch64)")
    return r.returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="device.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help=f"the root's folder (default ${ROOT_ENV} or {DEFAULT_ROOT})")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the root if missing, refresh its wheels and edgernn")
    b.add_argument("--mirror", help="the Debian mirror URL (default: this machine's apt sources)")
    sub.add_parser("status", help="whether this machine can run the device, and what the root holds (JSON)")
    sub.add_parser("binfmt", help="register the qemu-aarch64 binfmt_misc handler if it is missing (root)")
    v = sub.add_parser("verify", help="edgernn verify MODEL --golden GOLDEN in the root")
    v.add_argument("model")
    v.add_argument("golden")
    v.add_argument("extra", nargs="*", help="more options for edgernn verify (after --)")
    for name, what in (("run", "python3 -m edgernn ARGS"), ("python", "python3 ARGS")):
        c = sub.add_parser(name, help=f"{what} in the root; --file copies a host file into its work dir")
        c.add_argument("--file", action="append", default=[], help="HOST or NAME=HOST (repeatable)")
        c.add_argument("--collect", help="a host folder for the files the command writes")
        c.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    try:
        if a.cmd == "build":
            r = ensure_root(a.root, mirror=a.mirror)
            print(json.dumps(describe(r), indent=1))
            return 0
        if a.cmd == "binfmt":
            ok, why = enable_binfmt()
            print(f"{BINFMT_NAME}: " + ("registered" if ok else f"unavailable: {why}"))
            return 0 if ok else 1
        if a.cmd == "status":
            ok, why = machine_status(a.root)
            print(json.dumps({"usable": ok, "why_not": why or None, **describe(a.root)}, indent=1))
            return 0 if ok else 1
        if a.cmd == "verify":
            return _echo(verify(a.model, a.golden, *a.extra, root=a.root))
        args = a.args[1:] if a.args[:1] == ["--"] else a.args
        files: dict[str, str] = {}
        for spec in a.file:
            name, _, host = spec.rpartition("=")
            files[name or Path(host).name] = host
        stdin = None if sys.stdin.isatty() else sys.stdin.read()
        fn = run if a.cmd == "run" else run_python
        return _echo(fn(args, files, root=a.root, collect=a.collect, stdin=stdin))
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
