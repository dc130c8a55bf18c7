"""The edge-target commands: ``edgernn targets``, ``edgernn check`` and ``edgernn package``.

Torch-free: ``check`` and ``package`` read any ONNX file with onnx and onnxruntime (and OpenVINO where installed).
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import MissingPackageError, TargetError
from .common import echo_json, handle_errors, require_model_file


def _target_choices() -> list[str]:
    from ..targets import BUILTIN

    return list(BUILTIN)


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@handle_errors
def targets(as_json: bool) -> None:
    """List the targets an export can be made for and what each needs (read from the target registry)."""
    from dataclasses import asdict

    from ..targets import get_target, target_names

    rows = [get_target(n) for n in target_names()]
    if as_json:
        echo_json({t.name: asdict(t) for t in rows})
        return
    for t in rows:
        shape = f"static batch (default {t.default_batch})" if t.static_batch else "dynamic batch"
        click.echo(
            f"{t.name:<9} {t.summary}\n          strategies: {', '.join(t.strategies)}; {shape}; padding: "
            f"{t.padding}; checked by: {t.check}" + (f" (pip install 'edgernn[{t.needs}]')" if t.needs else "")
        )


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--target",
    "target_names",
    multiple=True,
    type=click.Choice([*_target_choices(), "all"]),
    help="A target to check (repeatable; 'all' for every one). Default: the target the model was exported for, "
    "or every target for a model edgernn did not export.",
)
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x50x3", help="Input shape for the output comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@handle_errors
def check(model: str, target_names: tuple[str, ...], shapes: tuple[str, ...], as_json: bool) -> None:
    """Will MODEL run on each target? Partitions and coverage from the mobile checker (NNAPI, CoreML), each node
    left out and why, and outputs against onnxruntime CPU where the target's runtime is here (OpenVINO, onnx's
    reference implementation). Works on any ONNX file, without torch.

    Exits 0 when every target checked passes, 9 when one does not; a target whose tool is not installed is
    reported, and fails the command (exit 10, a package is missing) only when it was asked for by name.
    """
    require_model_file(model)
    from ..export.check import check_model, manifest_target
    from ..targets import target_names as all_targets
    from ..verify.parity import parse_shape

    asked = list(dict.fromkeys(target_names))
    if "all" in asked:
        names = all_targets()
    elif asked:
        names = asked
    else:
        own = manifest_target(model)
        names = [own] if own else all_targets()
    reports = check_model(model, names, shapes=dict(parse_shape(s) for s in shapes))
    if as_json:
        echo_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            mark = {True: "ok", False: "FAIL", None: "not checked"}[r.passed]
            click.echo(f"{r.target:<9} {mark:<11} {r.summary}")
            for u in r.unsupported[:20]:
                click.echo(f"          {u['op']} {u['node']!r}: {', '.join(u['reasons'])}")
            if len(r.unsupported) > 20:
                click.echo(f"          ... and {len(r.unsupported) - 20} more")
    if any(r.passed is False for r in reports):
        raise click.exceptions.Exit(TargetError.exit_code)
    if any(r.passed is None for r in reports) and asked and "all" not in asked:  # a named target's tool is missing
        raise click.exceptions.Exit(MissingPackageError.exit_code)


@click.command("package")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Directory (default: beside MODEL)."
)
@click.option(
    "--target",
    default="ort",
    show_default=True,
    type=click.Choice(["ort", "nnapi", "coreml", "mnn", "ncnn", "litert"]),
    help="The engine whose format to write: ort/nnapi/coreml (.ort), mnn (.mnn), ncnn (.ncnn.param/.bin), "
    "litert (.tflite).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def package(model: str, out_dir: str | None, target: str, as_json: bool) -> None:
    """Write MODEL in an engine's own format, after checking that the engine computes on the written files what
    onnxruntime computes on the .onnx (exit 9 and nothing written otherwise): MODEL.ort and
    MODEL.required_operators.config for onnxruntime Mobile (a reduced build takes the config), MODEL.mnn for MNN,
    MODEL.ncnn.param/.bin for ncnn, MODEL.tflite for LiteRT. OpenVINO and tract read the .onnx itself.
    """
    require_model_file(model)
    from ..export.package import EnginePackage, package_for

    pkg = package_for(model, target, out_dir)
    if as_json:
        echo_json(pkg.to_dict())
        return
    if isinstance(pkg, EnginePackage):
        sizes = ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in pkg.sizes.items())
        click.echo(
            f"wrote {sizes} for {pkg.target} (the .onnx is {pkg.onnx_size / 1024:.1f} KiB); {pkg.target} on these "
            f"files matches onnxruntime on the .onnx (max abs {pkg.parity['max_abs']:.2e})"
        )
        return
    click.echo(
        f"wrote {pkg.ort_path} ({pkg.ort_size / 1024:.1f} KiB; the .onnx is {pkg.onnx_size / 1024:.1f} KiB) and "
        f"{pkg.config_path} ({len(pkg.operators)} operator line(s)); outputs equal the .onnx's "
        f"(max abs {pkg.parity['max_abs']:.2e})"
    )


COMMANDS: list[Any] = [targets, check, package]
