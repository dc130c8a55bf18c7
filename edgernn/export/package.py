"""``edgernn package --target T``: an export in the engine's own format, checked against the ``.onnx`` it came from
before anything is written.

- ``ort`` (and ``nnapi``/``coreml``, which run in onnxruntime Mobile): ``NAME.ort`` and its operator config
  (``edgernn.optimize.ort_format``).
- ``mnn``: ``NAME.mnn`` from MNN's converter (its compiled extension, never the console script).
- ``ncnn``: ``NAME.ncnn.param`` and ``NAME.ncnn.bin`` from pnnx, fp32 weights.
- ``litert``: ``NAME.tflite`` from onnx2tf, fp32, converted from the ``.onnx`` as written (export it for target
  ``litert``: fixed shapes, batch 1).

The engine runs the converted files themselves on random inputs at the model's shapes and must compute what
onnxruntime computes on the ``.onnx`` within the fp32 tolerance (the ``.onnx`` was checked against torch at
export); otherwise ``TargetError`` (exit 9) and nothing is written. Engines that read ONNX themselves (OpenVINO,
tract, onnx.reference) need no package: ship the ``.onnx``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingPackageError, ModelFormatError, TargetError
from ..files import write_atomic
from ..progress import stage
from ..targets import get_target
from .check import compare_with_onnxruntime

ORT_MOBILE = ("ort", "nnapi", "coreml")  # targets whose runtime is onnxruntime (Mobile): the .ort package
PACKAGED = (*ORT_MOBILE, "mnn", "ncnn", "litert")


@dataclass
class EnginePackage:
    target: str
    files: list[str]
    onnx_size: int
    sizes: dict[str, int] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)  # the engine on the written files vs onnxruntime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def package_for(model: str | os.PathLike[str], target: str, out_dir: str | os.PathLike[str] | None = None) -> Any:
    """Write ``model`` (a .onnx file) in ``target``'s own format into ``out_dir`` (default: beside it), checked
    first; returns ``edgernn.optimize.ort_format.Package`` for onnxruntime targets, else ``EnginePackage``."""
    src = Path(model)
    get_target(target)  # ConfigError naming the targets
    if target not in PACKAGED:
        raise ConfigError(
            f"target {target!r} runs the .onnx file itself: there is nothing to package, ship {src.name}; "
            f"edgernn package writes the formats of {', '.join(PACKAGED)}"
        )
    if not src.is_file():
        raise ModelFormatError(f"no model file at {str(src)!r}")
    dest = Path(out_dir) if out_dir is not None else src.parent
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{str(dest)!r} is a file; give a directory for the package")
    if target in ORT_MOBILE:
        stage(f"converting {src.name} to onnxruntime's .ort format for {target}")
        from ..optimize.ort_format import package

        return package(src, dest)
    data = src.read_bytes()
    stage(f"converting {src.name} for {target}")
    with tempfile.TemporaryDirectory(prefix=f"edgernn-{target}-") as tmp:
        if target == "mnn":
            from ..targets.mnn import mnn_runner, to_mnn

            made = to_mnn(data, tmp)
            runner = mnn_runner(data, converted=made)
            files = {f"{src.stem}.mnn": made}
        elif target == "litert":
            from ..targets.litert import NOT_INSTALLED, litert_available, litert_runner, to_tflite

            if not litert_available():
                raise MissingPackageError(NOT_INSTALLED)
            made = to_tflite(data, tmp)
            runner = litert_runner(data, converted=made)
            files = {f"{src.stem}.tflite": made}
        else:
            from ..targets.ncnn import convert, ncnn_runner

            converted = convert(data, tmp)
            runner = ncnn_runner(data, converted=converted)
            files = {f"{src.stem}.ncnn.param": Path(converted.param), f"{src.stem}.ncnn.bin": Path(converted.bin)}
        stage(f"{target} on the converted files against onnxruntime on {src.name}")
        parity = compare_with_onnxruntime(data, {target: runner})
        if not parity.passed:
            raise TargetError(
                f"the {target} files of {src.name} do not compute what the .onnx computes (max abs "
                f"{parity.max_abs:.3g}, tolerance {parity.atol:g}); nothing was written"
            )
        stage(f"writing the {target} files to {dest}")
        written = []
        for name, path in files.items():
            write_atomic(dest / name, Path(path).read_bytes())
            written.append(dest / name)
    return EnginePackage(
        target,
        [str(p) for p in written],
        len(data),
        {p.name: p.stat().st_size for p in written},
        parity.summary(),
    )
