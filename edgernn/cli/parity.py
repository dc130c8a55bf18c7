"""``edgernn parity``: check an exported model against what it came from, or compare any two sides."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError, ParityError
from .common import echo_json, handle_errors


@click.command("parity")
@click.argument("paths", nargs=-1, metavar="[REFERENCE] MODEL")
@click.option(
    "--module",
    "module_spec",
    default=None,
    metavar="PKG.MOD:FACTORY",
    help="The reference is your own torch module (a --module export): FACTORY() returns it.",
)
@click.option("--weights", type=click.Path(), default=None, help="With --module: its state_dict file (loaded safely).")
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="Provider(s) to run MODEL on (repeat, or comma-separate: cpu,cuda); with no REFERENCE, the first is the "
    "reference for the others. Default cpu.",
)
@click.option("--providers", "providers_csv", default=None, help="The same as a comma list: --providers cpu,cuda.")
@click.option("--fallback", default=None, help="Provider to use where one asked for is not available (reported).")
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Compare on your own inputs: a .npz of arrays by input name (or a .npy of the data input).",
)
@click.option("--atol", type=float, default=None, help="Absolute tolerance (default: the fp32 row, 1e-5).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance (default: the fp32 row, 1e-5).")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Long run: stream this many steps through a step export against the numpy oracle (with a checkpoint) "
    "or REFERENCE, and report the drift and its growth per 10k steps.",
)
@click.option(
    "--localize",
    is_flag=True,
    help="Also follow every recurrent layer's hidden state, step by step, and say where it first leaves the "
    "tolerance (a checkpoint or --module reference).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --localize: draw the error against time step, one line per layer and direction (PNG).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def parity(
    paths: tuple[str, ...],
    module_spec: str | None,
    weights: str | None,
    providers: tuple[str, ...],
    providers_csv: str | None,
    fallback: str | None,
    inputs_path: str | None,
    atol: float | None,
    rtol: float | None,
    steps: int | None,
    localize: bool,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """Check that MODEL.onnx computes what REFERENCE computes.

    REFERENCE is an edgernn checkpoint (torch and the numpy oracle), another ONNX file (fp32 against int8, one
    export against another), or left out: with --module, your own module; with two or more providers, MODEL on
    the first against the others. Before any number, weights other than those MODEL was exported from and
    another architecture are reported as problems.

    \b
    edgernn parity run/model.ckpt model.onnx
    edgernn parity model.onnx model.int8.onnx --atol 1e-2
    edgernn parity model.onnx --providers cpu,cuda
    edgernn parity model.onnx --module mypkg.nets:make --weights w.pt --inputs data.npz
    edgernn parity run/model.ckpt step.onnx --steps 100000
    edgernn parity run/model.ckpt model.onnx --localize --plot drift.png

    Exits 0 when every comparison is within tolerance and 5 when any is not (or a problem is found).
    """
    from ..workflows.recheck import parity_check

    if not paths or len(paths) > 2:
        raise click.UsageError("give MODEL, or REFERENCE MODEL")
    reference, model = (paths[0], paths[1]) if len(paths) == 2 else (None, paths[0])
    names = [p.strip() for item in (*providers, *([providers_csv] if providers_csv else [])) for p in item.split(",")]
    names = [p for p in names if p] or ["cpu"]
    if weights is not None and module_spec is None:
        raise ConfigError("--weights goes with --module")
    if steps is not None:
        _long_run(reference, model, steps, names[0], as_json)
        return
    module = None
    if module_spec is not None:
        from ..export.sources import load_user_module

        module, _ = load_user_module(module_spec, weights)
    report = parity_check(
        reference,
        model,
        module=module,
        providers=names,
        fallback=fallback,
        inputs=inputs_path,
        atol=atol,
        rtol=rtol,
    )
    loc = None
    if localize or plot_path:
        from ..workflows.recheck import localize_check

        loc = localize_check(
            reference,
            model,
            module=module,
            inputs=inputs_path,
            provider=names[0],
            atol=atol,
            rtol=rtol,
        )
        if plot_path:
            from ..diagnose.localize import plot_errors

            plot_errors(loc, plot_path)
    if as_json:
        echo_json({**report.to_dict(), **({"localize": loc.to_dict()} if loc is not None else {})})
    else:
        click.echo(report.table())
        if loc is not None:
            click.echo(f"where it drifts: {loc.describe()}")
            if plot_path:
                click.echo(f"wrote {plot_path}")
    if not report.passed or (loc is not None and not loc.passed):
        raise click.exceptions.Exit(ParityError.exit_code)


def _long_run(reference: str | None, model: str, steps: int, provider: str, as_json: bool) -> None:
    from ..workflows.longrun import long_parity

    result = long_parity(reference, model, steps=steps, provider=provider)
    if as_json:
        echo_json(result)
    else:
        click.echo(format_long_run(result))
    if not result["passed"]:
        raise click.exceptions.Exit(ParityError.exit_code)


def format_long_run(result: dict[str, Any]) -> str:
    lines = [f"long run: {result['steps']} steps of {result['model']} against {result['reference']}"]
    lines += [f"  up to step {step:>8}: max abs {err:.3g}" for step, err in result["growth"]]
    per = result.get("growth_per_10k")
    if per is not None:
        lines.append(f"growth: {per:.3g} per 10k steps (least squares over the curve)")
    verdict = "PASS" if result["passed"] else "FAIL"
    tol = f"atol {result['atol']:g}, rtol {result['rtol']:g}"
    lines.append(f"long run {verdict} ({tol}; worst {result['max_abs']:.3g})")
    return "\n".join(lines)


COMMANDS: list[Any] = [parity]
