"""``edgernn quantize``: int8 and fp16 versions of an exported model, judged before they are written."""

from __future__ import annotations

from typing import Any

import click

from .common import echo_json, handle_errors


def format_precision(report: dict[str, Any]) -> str:
    """The human-readable lines of a quantisation report (also printed by ``export --precision``)."""
    lines = [
        f"{report['precision']}: {report['bytes'] / 1024:.1f} KiB, {report['size_ratio']:.2f}x smaller than fp32; "
        f"{report['weights_reduced']:.0%} of the weight elements stored in {report['precision'].split('-')[0]}"
    ]
    how = report.get("how") or {}
    if report["precision"] != "fp16" and "per_channel" in how:
        scheme = "per output channel" if how["per_channel"] else "per tensor"
        because = how.get("per_channel_because")
        lines.append(f"weights    one scale {scheme}" + (f" ({because})" if because else ""))
    if "drift" in report:
        lines.append(f"drift      max abs {report['drift']['max_abs']:.3g} against fp32 on the parity cases")
    long = report.get("long_drift")
    if long:
        how = {"stream": "streamed", "sequence": "one sequence", "fixed": "its fixed length"}[long["form"]]
        curve = ", ".join(f"{t}: {d:.2g}" for t, d in long["growth"][:: max(1, len(long["growth"]) // 5)])
        lines.append(f"long run   max abs {long['max_abs']:.3g} over {long['steps']} steps ({how}); by step: {curve}")
    if report.get("data_drift"):
        lines.append(f"your data  max abs {report['data_drift']['max_abs']:.3g} against fp32")
    metric = report.get("metric")
    if metric:
        lines.append(
            f"task       {metric['name']} {metric['fp32']:.4g} (fp32) -> {metric['reduced']:.4g}: "
            f"{abs(metric['drop']):.2%} {'worse' if metric['drop'] > 0 else 'better'} "
            f"(budget {metric['budget']:.2%} worse, {metric['examples']} validation sequences)"
        )
    elif "metric" in report:
        lines.append("task       not judged by a task metric (give --ckpt)")
    return "\n".join(lines)


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["int8", "int8-static", "fp16"]), required=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the file.")
@click.option("--ckpt", type=click.Path(), default=None, help="The checkpoint it came from: judge by its task.")
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    default=None,
    help=".npz of inputs by name: the drift on your data, and int8-static's calibration.",
)
@click.option(
    "--max-metric-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest relative loss of the task metric allowed; over it nothing is written (exit 5).",
)
@click.option(
    "--per-channel/--per-tensor",
    default=None,
    help="int8: one weight scale per output channel, or one per tensor. Default: per tensor, and for int8 "
    "(dynamic) judged by a task, per channel when per tensor is over --max-metric-drop.",
)
@click.option("--long-steps", type=click.IntRange(min=1), default=10_000, show_default=True, help="Long-run drift.")
@click.option("--no-verify", is_flag=True, help="Write without judging (the manifest says so).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def quantize(model: str, to: str, out: str, as_json: bool, **o: Any) -> None:
    """Write the int8 or fp16 version of MODEL (an fp32 export), made by onnxruntime's quantiser or the fp16
    converter, after checking that it loads at every onnxruntime optimisation level, measuring its drift over a
    long sequence and, with a task (--ckpt, or recorded in edgernn's exports), its validation metric.

    A model over the --max-metric-drop budget (or an fp16 one outside the fp16 tolerance) is not written: exit 5.
    """
    from ..export.targets import recheck_structure
    from ..optimize.workflow import quantize_file

    result = quantize_file(model, to, out, target_check=recheck_structure, **o)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(format_precision(result.report))
    click.echo(f"wrote {result.path}")


COMMANDS: list[Any] = [quantize]
