"""``edgernn quantize``: int8 and fp16 versions of an exported model, judged before they are written."""

from __future__ import annotations

from typing import Any

import click

from ..optimize.quantize import DEFAULT_MAX_DRIFT
from ..optimize.schemes import CPUS
from .common import echo_json, handle_errors, require_checkpoint, require_model_file


def format_precision(report: dict[str, Any]) -> str:
    """The human-readable lines of a quantisation report (also printed by ``export --precision``)."""
    lines = [
        f"{report['precision']}: {report['bytes'] / 1024:.1f} KiB, {report['size_ratio']:.2f}x smaller than fp32; "
        f"{report['weights_reduced']:.0%} of the weight elements stored in "
        f"{(report.get('how') or {}).get('weights') or report['precision'].split('-')[0]}"
    ]
    how = report.get("how") or {}
    if how.get("weight_only"):
        because = how.get("weight_only_because")
        lines.append(
            f"weights    only the {how.get('weight_matrices', '')} weight matrices int8 (one scale per output "
            "channel), turned back into fp32 in the graph: every product fp32, at fp32's speed, the same on every CPU"
            + (f" ({because})" if because else "")
        )
    elif report["precision"] != "fp16" and "per_channel" in how:
        scheme = "per output channel" if how["per_channel"] else "per tensor"
        because = how.get("per_channel_because")
        lines.append(f"weights    one scale {scheme}" + (f" ({because})" if because else ""))
    if how.get("recurrent") == "fp32":
        because = how.get("recurrent_because")
        lines.append(
            f"recurrent  the {how.get('recurrent_products', '')} recurrent products (h times R, every step) kept in "
            "fp32; only the input projections and the rest quantised" + (f" ({because})" if because else "")
        )
    if how.get("embeddings"):
        lines.append(f"embedding  {how['embeddings']}")
    if how.get("scheme") and not how.get("weight_only"):
        lines.append(f"products   {how['scheme']} ({how['weights']} weights) for {how['cpu']} CPUs")
    if "drift" in report:
        lines.append(f"drift      max abs {report['drift']['max_abs']:.3g} against fp32 on the parity cases")
    long = report.get("long_drift")
    if long:
        how = {
            "stream": "streamed",
            "sequence": "one sequence",
            "fixed": "its fixed length",
            "inputs": "every input at once",
        }[long["form"]]
        curve = ", ".join(f"{t}: {d:.2g}" for t, d in long["growth"][:: max(1, len(long["growth"]) // 5)])
        lines.append(f"long run   max abs {long['max_abs']:.3g} over {long['steps']} steps ({how}); by step: {curve}")
    data = report.get("data_drift")
    if data:
        judged = f", budget {data['budget']:.2%}" if "budget" in data else ""
        lines.append(
            f"your data  max abs {data['max_abs']:.3g} against fp32 ({data.get('relative', 0):.2%} of the largest "
            f"fp32 output{judged})"
        )
    metric = report.get("metric")
    if metric:
        lines.append(
            f"task       {metric['name']} {metric['fp32']:.4g} (fp32) -> {metric['reduced']:.4g}: "
            f"{abs(metric['drop']):.2%} {'worse' if metric['drop'] > 0 else 'better'} "
            f"(budget {metric['budget']:.2%} worse, {metric['examples']} validation sequences)"
        )
    elif "metric" in report:
        lines.append("task       not judged by a task metric (give --ckpt)")
    judged = report.get("judged_on")
    if judged:
        lines.append(f"judged on  this {judged['cpu']} CPU ({judged['model']})")
        if judged.get("note"):
            lines.append(f"note       {judged['note']}")
    return "\n".join(lines)


def format_speed(speed: dict[str, Any] | None, to: str) -> list[str]:
    """The speed line of a quantisation (and a warning line when the reduced file is slower)."""
    if not speed:
        return []
    if not speed["measured"]:
        return [f"speed      not measured: {speed['why']}"]
    from ..verify.bench import ratio_words

    f, r = speed["fp32_ms"], speed["reduced_ms"]
    step, seq = (
        ratio_words(speed["step_speed"], "faster", "slower"),
        ratio_words(speed["sequence_speed"], "faster", "slower"),
    )
    lines = [
        f"speed      {to} is {step} per step ({r['step']:.4g} vs {f['step']:.4g} ms fp32) and {seq} per sequence "
        f"of {speed['seq_len']} ({r['sequence']:.4g} vs {f['sequence']:.4g} ms) on this {speed['cpu']} CPU, "
        f"medians of {speed['rounds']} rounds in turns"
    ]
    if speed["slower"]:
        lines.append(f"warning: the {to} file is SLOWER than fp32 on this CPU ({step} per step, {seq} per sequence)")
    return lines


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["int8", "int8-static", "fp16"]), required=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the file.")
@click.option("--ckpt", type=click.Path(), default=None, help="The checkpoint it came from: judge by its task.")
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    default=None,
    help=".npz with one array per model input, named as the input (first axis: sequences): the drift on your "
    "data (judged by --max-drift when there is no task), the long run's inputs, and int8-static's calibration.",
)
@click.option(
    "--max-metric-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest relative loss of the task metric allowed; over it nothing is written (exit 5).",
)
@click.option(
    "--max-drift",
    type=float,
    default=DEFAULT_MAX_DRIFT,
    show_default=True,
    help="Without a task (--data only): the largest difference from the fp32 outputs on your data, as a share of "
    "their largest magnitude; over it nothing is written (exit 5).",
)
@click.option(
    "--per-channel/--per-tensor",
    default=None,
    help="int8: one weight scale per output channel, or one per tensor. Default: per tensor, and for int8 "
    "(dynamic) judged by a task, per channel when per tensor is over --max-metric-drop, then, when both are, the "
    "recurrent products (h times R) kept in fp32, then, when that is over too, --weights-only.",
)
@click.option(
    "--weights-only",
    is_flag=True,
    help="int8: store only the weights as int8 (one scale per output channel) and compute every product in fp32: "
    "about as small a file, fp32's speed, the same numbers on every CPU.",
)
@click.option(
    "--cpu",
    type=click.Choice(CPUS),
    default=None,
    help="The CPU the file will run on; int8 uses the integer products right there (onnxruntime's guidance). "
    "Default: any (uint8 weights, right on every CPU).",
)
@click.option(
    "--golden",
    is_flag=True,
    help="Also write OUT.golden.npz: the task's validation set, fp32 metric and budget, for `edgernn verify` to "
    "judge the file on the device itself.",
)
@click.option(
    "--long-steps",
    type=int,
    default=10_000,
    show_default=True,
    help="Steps of the long-run drift (at most 1,000,000: the run is held in memory).",
)
@click.option("--no-verify", is_flag=True, help="Write without judging (the manifest says so).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def quantize(model: str, to: str, out: str, as_json: bool, **o: Any) -> None:
    """Write the int8 or fp16 version of MODEL (an fp32 export), made by onnxruntime's quantiser or the fp16
    converter, after checking that it loads at every onnxruntime optimisation level, measuring its drift over a
    long sequence and, with a task (--ckpt, or recorded in edgernn's exports), its validation metric.

    A model over the --max-metric-drop budget (or an fp16 one outside the fp16 tolerance) is not written: exit 5.
    """
    require_model_file(model)
    require_checkpoint(o["ckpt"])
    from ..optimize.workflow import quantize_file
    from ..targets import quantize_hooks

    result = quantize_file(model, to, out, **quantize_hooks(), **o)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(format_precision(result.report))
    for line in format_speed(result.speed, to):
        click.echo(line, err=line.startswith("warning"))
    click.echo(f"wrote {result.path}" + (f" and {result.golden}" if result.golden else ""))


COMMANDS: list[Any] = [quantize]
