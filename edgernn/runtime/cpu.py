"""What kind of CPU this is, as far as integer products go: onnxruntime's int8 kernels compute differently by CPU.

On x86 without VNNI, onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds pairs of
products into 16 bits and can saturate; with VNNI (VPDPBUSD) and on ARM64 the products accumulate in 32 bits. So
one int8 file can give different numbers on the exporting host and on the device. Torch-free; reads /proc/cpuinfo
on Linux and the platform's machine name elsewhere.
"""

from __future__ import annotations

import platform
from functools import cache

# the CPU classes edgernn tells apart; "other" is any CPU not listed (x86 without AVX2, 32-bit ARM, ...)
CPU_CLASSES = ("x86-vnni", "x86-avx2", "arm64", "other")


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags (x86: ``flags``; ARM: ``Features``), from /proc/cpuinfo."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


@cache
def host_cpu() -> dict[str, str]:
    """This machine's CPU: ``{"class": one of CPU_CLASSES, "model": its name}``."""
    machine = platform.machine().lower()
    name, flags = _cpuinfo()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if flags & {"avx512_vnni", "avx_vnni"}:
            cls = "x86-vnni"
        elif "avx2" in flags:
            cls = "x86-avx2"
        else:
            cls = "other"
    elif machine in ("aarch64", "arm64"):
        cls = "arm64"
    else:
        cls = "other"
    return {"class": cls, "model": name or platform.processor() or machine}
