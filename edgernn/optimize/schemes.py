"""Which integer product an int8 file uses, chosen for the CPU it will run on (``quantize --cpu``).

onnxruntime quantises activations to uint8 at run time; the weights are stored as int8 (U8S8) or uint8 (U8U8).
Its quantisation guide: on x86 with AVX2 or AVX-512 but without VNNI, U8S8 products go through VPMADDUBSW, whose
16-bit pair sums can saturate, and U8U8 (or 7-bit weights, ``reduce_range``) avoids it; with VNNI and on ARM64
U8S8 is exact, and on small ARM64 cores it can be faster. Measured here on an AVX2-only x86 (2-layer H24 sine
models, 24 validation sequences): U8S8 lost 19% of an Elman RNN's MSE, U8U8 0.06%, ``reduce_range`` -0.6%;
U8U8 had the smaller elementwise drift on every cell but the fused LSTM op. So U8U8 is the scheme that is right
on every CPU, and the default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    cpu: str  # the CPU class the file is made for (--cpu)
    name: str  # "U8U8" or "U8S8": activation x weight integer types
    weights: str  # how weights are stored: "uint8" or "int8"
    why: str  # one line for people

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def exact_on(self, cpu_class: str) -> bool:
        """Whether a CPU of ``cpu_class`` (edgernn.runtime.cpu) computes this scheme's products without the
        saturation that makes its numbers differ from other CPUs'."""
        return self.name == "U8U8" or cpu_class in ("x86-vnni", "arm64")


SCHEMES: dict[str, Scheme] = {
    s.cpu: s
    for s in (
        Scheme("any", "U8U8", "uint8", "uint8 weights: exact on every CPU (x86 with or without VNNI, ARM64)"),
        Scheme(
            "x86-avx2",
            "U8U8",
            "uint8",
            "uint8 weights: x86 without VNNI saturates uint8 x int8 products (VPMADDUBSW)",
        ),
        Scheme("x86-vnni", "U8S8", "int8", "int8 weights: VNNI accumulates uint8 x int8 products in 32 bits"),
        Scheme("arm64", "U8S8", "int8", "int8 weights: ARM64 accumulates in 32 bits, and U8S8 is its faster kernel"),
    )
}
CPUS = tuple(SCHEMES)


def scheme_for(cpu: str | None) -> Scheme:
    """The scheme for ``cpu`` (one of CPUS); None: ``any``, for every target. An NNAPI or CoreML phone is ARM64, but
    U8S8 judged on an x86 without VNNI is judged on products the phone does not compute (a 2-layer H32 step export
    for NNAPI lost over 5% of its MSE here that way); U8U8 is the classic NNAPI quantised type and exact everywhere."""
    if cpu is None:
        cpu = "any"
    if cpu not in SCHEMES:
        raise ConfigError(f"unknown --cpu {cpu!r}; choose one of: {', '.join(CPUS)}")
    return SCHEMES[cpu]
