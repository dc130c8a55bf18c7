"""ORT Mobile packaging: the ``.ort`` file and the operator list for a reduced onnxruntime build.

onnxruntime Mobile loads models in its own flatbuffer format and can be built with only the operators a set of
models needs. ``onnxruntime.tools.convert_onnx_models_to_ort`` writes both; ``package`` runs it on one model,
checks that the ``.ort`` file loads and computes what the ``.onnx`` file computes, and only then moves the two
files into place. Torch-free (needs onnx, which the converter imports).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelFormatError, TargetError
from ..files import write_atomic


@dataclass
class Package:
    ort_path: Path  # the .ort model
    config_path: Path  # required operators, for onnxruntime's reduced build (--include_ops_by_config)
    operators: list[str]  # the config's lines: "domain;opset;Op,Op"
    onnx_size: int
    ort_size: int
    parity: dict[str, Any]  # .ort against .onnx on onnxruntime CPU

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ort_path"], d["config_path"] = str(self.ort_path), str(self.config_path)
        return d


def package(model: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Package:
    """Write ``OUT_DIR/NAME.ort`` and ``OUT_DIR/NAME.required_operators.config`` for ``model`` (default: beside
    it), after checking the ``.ort`` file on onnxruntime CPU against the ``.onnx`` file."""
    src = Path(model)
    if not src.is_file():
        raise ModelFormatError(f"no model file at {str(src)!r}")
    if src.suffix != ".onnx":
        raise ConfigError(f"{str(src)!r}: the ORT converter takes a .onnx file")
    return package_bytes(src.read_bytes(), src.stem, Path(out_dir) if out_dir is not None else src.parent)


def package_bytes(data: bytes, name: str, out_dir: str | os.PathLike[str]) -> Package:
    """``package`` for a model in memory (an export not yet written), saved as ``out_dir/name.ort``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    dest = Path(out_dir)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{str(dest)!r} is a file; give a directory for the ORT package")
    with tempfile.TemporaryDirectory(prefix="edgernn-ort-") as tmp:
        work = Path(tmp) / f"{name}.onnx"
        work.write_bytes(data)
        out = Path(tmp) / "out"
        quiet = io.StringIO()
        log = logging.getLogger("ort_format_model.utils")  # it logs "Created config in <temp dir>" at INFO
        level = log.level
        try:
            log.setLevel(logging.WARNING)
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                convert_onnx_models_to_ort(work, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:
            raise TargetError(f"onnxruntime's ORT converter failed on {name}.onnx: {str(e).strip()[:300]}") from None
        finally:
            log.setLevel(level)
        ort_file, config_file = out / f"{name}.ort", out / f"{name}.required_operators.config"
        if not ort_file.is_file() or not config_file.is_file():
            raise TargetError(f"onnxruntime's ORT converter wrote no .ort file for {name}.onnx")
        parity = _same_outputs(data, ort_file.read_bytes())
        if not parity["passed"]:
            raise TargetError(
                f"the .ort file of {name}.onnx does not compute what the .onnx file computes "
                f"(max abs {parity['max_abs']:.3g}); nothing was written"
            )
        ort_out, config_out = dest / ort_file.name, dest / config_file.name
        write_atomic(ort_out, ort_file.read_bytes())
        write_atomic(config_out, config_file.read_bytes())
        operators = [ln for ln in config_file.read_text().splitlines() if ln and not ln.startswith("#")]
        return Package(ort_out, config_out, operators, len(data), ort_out.stat().st_size, parity)


def _same_outputs(onnx_model: bytes, ort_model: bytes) -> dict[str, Any]:
    """Both files on onnxruntime CPU, on random inputs at the manifest's (or the graph's) shapes."""
    from ..runtime.providers import make_session
    from ..verify.check import check_model_inputs
    from ..verify.parity import check, session_runner

    a, _ = make_session(onnx_model, "cpu", threads=1)
    b, _ = make_session(ort_model, "cpu", threads=1)
    specs, cases, runner = check_model_inputs(a)
    report = check(
        runner(session_runner(a)),
        {"onnxruntime:cpu (.ort)": runner(session_runner(b))},
        specs,
        [o.name for o in a.get_outputs()],
        cases,
        states=True,
    )
    return report.summary()
