"""The `edgernn` command line: a thin click layer over the library (each command calls one library function).

Heavy imports (torch, onnxruntime) happen inside the commands, so `edgernn --help` is instant. Every
``EdgeRNNError`` reaches the user as one line on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, ExportError, TargetError
from ..model.cells import cell_names
from ..optimize.schemes import CPUS
from .common import (
    echo_json,
    handle_errors,
    leaf_commands,
    require_checkpoint,
    require_model_file,
    set_debug,
    with_progress,
)
from .compare import COMMANDS as COMPARE_COMMANDS
from .edge import COMMANDS as EDGE_COMMANDS
from .optimize import COMMANDS as OPTIMIZE_COMMANDS
from .parity import COMMANDS as PARITY_COMMANDS
from .runtime import COMMANDS as RUNTIME_COMMANDS
from .serve import COMMANDS as SERVE_COMMANDS
from .study import COMMANDS as STUDY_COMMANDS
from .training import DATA_OPTIONS, TRAINING_OPTIONS, training_settings, with_options
from .verify import verify as verify_command

# the README's exit-code table says the same (tests/test_cli_exits.py holds them to it)
EXIT_CODES = """Exit codes: 0 ok; 1 error; 2 bad option or configuration; 3 checkpoint; 4 export; 5 parity failed;
6 model file; 7 input data; 8 provider; 9 a target refuses; 10 a needed package is not installed;
70 internal error (rerun with --debug)."""

# `edgernn --help` lists the commands in the order of the work: train, export, run, check, quantize, serve
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Train", ("train", "plot", "compare", "study", "demo")),
    ("Export", ("export", "strategies", "targets", "inspect", "package")),
    ("Run", ("run", "bench")),
    ("Check", ("check", "parity", "verify")),
    ("Quantize", ("quantize",)),
    ("Serve", ("serve",)),
)


class SectionedGroup(click.Group):
    """A group whose --help lists its commands under SECTIONS, in that order; a command in no section is listed
    under "Other commands" at the end (every command is listed)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        placed = [n for _, names in SECTIONS for n in names if n in self.commands]
        return placed + sorted(n for n in self.commands if n not in placed)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {}
        section_of = {n: title for title, names in SECTIONS for n in names}
        width = max((len(n) for n in self.list_commands(ctx)), default=0)  # one column across the sections
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            short = cmd.get_short_help_str(formatter.width - 6 - width)
            rows.setdefault(section_of.get(name, "Other"), []).append((name.ljust(width), short))
        for title in [t for t, _ in SECTIONS] + ["Other"]:
            if rows.get(title):
                with formatter.section(f"{title} commands"):
                    formatter.write_dl(rows[title])


@click.group(cls=SectionedGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgernn")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (also EDGERNN_DEBUG=1).")
def main(debug: bool) -> None:
    """edgernn: train recurrent networks in torch, export them to ONNX, run them with onnxruntime, and prove
    on every export that the deployed model computes what the trained one computes."""
    set_debug(debug)


def _strategy_choices() -> list[str]:
    from ..strategies.registry import BUILTIN  # torch-free: --help stays instant

    return list(BUILTIN)


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (not its default)."""
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def _export_strategy_choices() -> list[str]:
    return [*_strategy_choices(), "auto"]


def _target_choices() -> list[str]:
    from ..targets import BUILTIN  # torch-free

    return list(BUILTIN)


@main.command()
@with_options(DATA_OPTIONS)
@click.option("--cell", type=click.Choice(cell_names()), default="lstm", show_default=True)
@click.option("--hidden", default=32, show_default=True, help="Hidden units per direction.")
@click.option("--layers", default=1, show_default=True, help="Stacked recurrent layers.")
@click.option("--bidirectional/--unidirectional", default=False, show_default=True)
@click.option("--proj-size", default=0, show_default=True, help="LSTM projection size (0 = off).")
@click.option("--peephole", is_flag=True, help="LSTM peephole connections.")
@with_options(TRAINING_OPTIONS)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for model.ckpt.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def train(**o: Any) -> None:
    """Train a model on a built-in task, or on your own data (--data), and write OUT/model.ckpt, OUT/config.json
    and OUT/history.json/.csv.

    A progress bar on a terminal; one line per epoch in a log. A run that diverges writes nothing."""
    from ..train.workflow import train_to_dir

    as_json = o.pop("as_json")
    training_settings(o)
    result = train_to_dir(**o, progress=not as_json)
    if as_json:
        echo_json(result)
    else:
        if result["replaced"]:
            click.echo(f"replaced the checkpoint that was at {result['checkpoint']}")
        data = result.get("data")
        on = result["task"] if data is None else f"{data['train']} ({data['n_train']} train, {data['n_val']} val)"
        click.echo(
            f"trained {result['cell']} on {on}: best {result['metric']} {result['best_metric']:.4g} "
            f"at epoch {result['best_epoch']} (input-blind baseline {result['baseline']:.4g}); "
            f"checkpoint {result['checkpoint']}"
        )


@main.command()
@click.argument("ckpt", type=click.Path(), required=False)
@click.option(
    "--module",
    "module_spec",
    default=None,
    metavar="PKG.MOD:FACTORY",
    help="Export your own torch module instead of a checkpoint: FACTORY() returns the module, or "
    "(module, example_inputs).",
)
@click.option("--weights", type=click.Path(), default=None, help="With --module: a state_dict file (loaded safely).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:SHAPE[:DTYPE]",
    help="With --module: an example input, e.g. x:2x5x3 or tokens:2x5:int64 (repeat per input).",
)
@click.option("--time-major", is_flag=True, help="With --module: inputs are (time, batch, ...) not (batch, time, ...).")
@click.option(
    "--time-axis",
    "time_axis",
    multiple=True,
    metavar="NAME:AXIS",
    help="With --module: the time axis of input NAME, e.g. feats:2 for (batch, features, time); or mark it in "
    "--input's shape: feats:1x40xT98 (repeat per input).",
)
@click.option("--lengths-input", default=None, help="With --module: the input that holds sequence lengths.")
@click.option(
    "--lengths-relative",
    is_flag=True,
    help="With --module: the module takes --lengths-input as fractions of the padded length (speechbrain); the "
    "exported model's lengths input still takes absolute int64 lengths.",
)
@click.option(
    "--output-name",
    "output_names",
    multiple=True,
    help="With --module: a name for the model's outputs, in order (repeat per output; default y, or output_0...).",
)
@click.option(
    "--strategy",
    type=click.Choice(_export_strategy_choices()),
    default=None,
    help="native: ONNX RNN/LSTM/GRU ops; loop: Loop/Scan; unroll: fixed length; step: streaming; auto: the "
    "fastest of those that export the model correctly, timed here (recorded in the manifest). Default: auto for "
    "--target ort (native with --no-verify), step with --chunk or --fused; for other targets the first they take: "
    "native, or for nnapi and coreml unroll with --seq-len, else step (named on stderr).",
)
@click.option(
    "--profile-shape",
    default=None,
    metavar="BATCHxTIME",
    help="With --strategy auto: the input shape to time the strategies at (default 1x100; unroll at --seq-len).",
)
@click.option(
    "--target",
    type=click.Choice(_target_choices()),
    default="ort",
    show_default=True,
    help="The runtime the model is for; its own tool checks the export (edgernn targets lists them).",
)
@click.option(
    "--batch",
    type=int,
    default=None,
    help="Fix the batch axis to this size (nnapi and coreml fix it, default 1; other targets keep it dynamic).",
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write MODEL.onnx.")
@click.option(
    "--ort-format",
    is_flag=True,
    help="Also write MODEL.ort and MODEL.required_operators.config for onnxruntime Mobile (checked against the .onnx).",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the strategy's default).")
@click.option("--seq-len", type=int, default=None, help="unroll: the fixed sequence length.")
@click.option("--chunk", type=int, default=None, help="step: time steps per call (default 1).")
@click.option(
    "--fused/--no-fused",
    default=None,
    help="step: emit ONNX RNN/LSTM/GRU ops (faster on onnxruntime CPU/CUDA; not for NNAPI/CoreML) or plain ops "
    "(--no-fused). Default: the ops for --target ort, plain ops for the other targets.",
)
@click.option(
    "--lengths/--no-lengths",
    default=None,
    help="Add a `lengths` input for padded batches (default: when the strategy supports it).",
)
@click.option(
    "--precision",
    type=click.Choice(["int8", "int8-static", "fp16"]),
    default=None,
    help="Write this precision instead of fp32, judged by the checkpoint's task (see edgernn quantize).",
)
@click.option(
    "--max-metric-drop",
    type=float,
    default=None,
    help="With --precision: the largest relative loss of the task metric allowed (default 0.01).",
)
@click.option(
    "--cpu",
    type=click.Choice(CPUS),
    default=None,
    help="With --precision: the CPU the file will run on (see edgernn quantize --cpu).",
)
@click.option(
    "--min-len",
    type=int,
    default=None,
    help="With --module: the shortest sequence the model takes; shorter parity cases run at this length.",
)
@click.option(
    "--parity-shape",
    "parity_shapes",
    multiple=True,
    metavar="NAME:SHAPE[,NAME:SHAPE]",
    help="With --module: check parity at these input shapes instead of the defaults, e.g. x:3x17x5 "
    "(repeat per case; several inputs of one case joined by commas).",
)
@click.option("--no-verify", is_flag=True, help="Skip the parity check (the manifest records that it was skipped).")
@click.option(
    "--golden",
    is_flag=True,
    help="Also write MODEL.golden.npz for `edgernn verify` on the device: the parity inputs and torch's outputs "
    "(with --precision: the task's validation set, fp32 metric and budget).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and parity report as JSON.")
@handle_errors
def export(
    ckpt: str | None,
    out_path: str,
    as_json: bool,
    module_spec: str | None,
    weights: str | None,
    inputs: tuple[str, ...],
    time_major: bool,
    time_axis: tuple[str, ...],
    lengths_input: str | None,
    lengths_relative: bool,
    output_names: tuple[str, ...],
    ort_format: bool,
    min_len: int | None,
    parity_shapes: tuple[str, ...],
    **o: Any,
) -> None:
    """Export checkpoint CKPT (a file or a training directory), or your own module (--module), to ONNX after
    checking parity against the torch model, and with --target, the target runtime's own check.

    A model that fails parity is not written and the command exits with code 5; one the target's tool refuses
    exits with code 9.
    """
    if (ckpt is None) == (module_spec is None):
        raise click.UsageError("give either CKPT or --module PKG.MOD:FACTORY")
    o["ort_format"] = ort_format
    replacing = Path(out_path).is_file()
    if output_names and module_spec is None:
        raise ConfigError("--output-name goes with --module (a checkpoint's model has one output, y)")
    if (time_axis or lengths_relative) and module_spec is None:
        raise ConfigError("--time-axis and --lengths-relative go with --module (a checkpoint's model knows its axes)")
    if (min_len is not None or parity_shapes) and module_spec is None:
        raise ConfigError("--min-len and --parity-shape go with --module (a checkpoint's model takes any length)")
    require_checkpoint(ckpt)  # the options, the paths and the target before torch is imported
    _settle_strategy(o, lengths=bool(o["lengths"]) or lengths_input is not None)
    from ..export.sources import export_checkpoint, export_user_module

    if module_spec is not None and weights is None:
        click.echo(
            f"note: no --weights: exporting {module_spec} with the weights its factory gives it (untrained unless "
            "the factory loads them)",
            err=True,
        )
    if module_spec is not None:
        if o.pop("precision") or o.pop("max_metric_drop") is not None or o.pop("cpu") is not None:
            raise ConfigError("--precision needs a checkpoint's task to judge by; for --module, run edgernn quantize")
        o.pop("lengths")
        result = export_user_module(
            module_spec,
            out_path,
            weights=weights,
            inputs=inputs,
            time_major=time_major,
            time_axis=time_axis,
            lengths_input=lengths_input,
            lengths_relative=lengths_relative,
            output_names=list(output_names) or None,
            min_len=min_len,
            parity_shapes=parity_shapes,
            **o,
        )
    else:
        result = export_checkpoint(ckpt, out_path, **o)
    if as_json:
        echo_json(
            {
                "path": str(result.path),
                "manifest": result.manifest.to_dict(),
                "parity": result.report.to_dict() if result.report else None,
                "package": result.package.to_dict() if result.package else None,
                "precision": result.precision.to_dict() if result.precision else None,
                "golden": str(result.golden.path) if result.golden else None,
            }
        )
        return
    if result.report is not None:
        click.echo(result.report.table())
    m = result.manifest
    if m.target_check:
        click.echo(f"target {m.target}: {m.target_check['summary']}")
    if m.selection:  # what auto timed, with each median's spread and the load (as edgernn inspect shows it)
        from ..manifest import selection_lines

        first, *rest = selection_lines(m.selection)
        click.echo(first.replace("strategy chosen by auto: ", f"strategy auto chose {m.strategy}: ", 1))
        for line in rest:
            click.echo(line)
    click.echo(f"{'replaced' if replacing else 'wrote'} {result.path} ({m.strategy} for {m.target}, opset {m.opset})")
    if result.package is not None:
        click.echo(f"wrote {result.package.ort_path} and {result.package.config_path} (onnxruntime Mobile)")
    if result.golden is not None:
        n = len(result.golden.cases)
        click.echo(f"wrote {result.golden.path} ({n} case{'' if n == 1 else 's'})")
    if result.precision is not None:
        from .optimize import format_precision, format_speed

        click.echo(format_precision(result.precision.report))
        for line in format_speed(result.precision.speed, result.precision.report["precision"]):
            click.echo(line, err=line.startswith("warning"))
        if result.precision.golden is not None:
            click.echo(f"wrote {result.precision.golden} (the task's validation set, for edgernn verify)")


def _settle_strategy(o: dict[str, Any], *, lengths: bool) -> None:
    """Before any heavy import: a strategy (named, or the default) the --target cannot run in the asked form is
    the target's refusal (exit 9, naming what works); with no --strategy for a target whose default is not the
    library's usual one, the one it takes (``Target.default_strategy``) is chosen here and named on stderr."""
    from ..strategies.registry import get_strategy_class
    from ..targets import get_target

    target = get_target(o["target"])
    strategy = o["strategy"]
    if strategy is None:
        from ..export.auto import default_strategy

        strategy = default_strategy(o["target"], not o["no_verify"], o)
    if o["strategy"] is None and strategy not in ("auto", "native") and not (o["fused"] or o["chunk"] is not None):
        # the target's own choice: say which, and why
        passed = target.strategies[: target.strategies.index(strategy)] if strategy in target.strategies else ()
        needs = "".join(
            f"; {n} needs "
            + " or ".join(f"--{x.replace('_', '-')}" for x in sorted(get_strategy_class(n).option_names))
            for n in passed
        )
        click.echo(
            f"note: --target {target.name}: strategy {strategy} ({target.name} takes {', '.join(target.strategies)}"
            f"{needs}; name one with --strategy)",
            err=True,
        )
        o["strategy"] = strategy
    if strategy == "auto":
        return
    get_strategy_class(strategy)(seq_len=o["seq_len"], chunk=o["chunk"], fused=o["fused"])  # its options (exit 2)
    try:
        target.validate(strategy, lengths=lengths, fused=bool(o["fused"]))
    except ExportError as e:
        raise TargetError(str(e)) from None


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, help="PNG path (default RUN/history.png).")
@handle_errors
def plot(run: str, out: str | None) -> None:
    """Plot training loss and validation metric against epoch from RUN (an edgernn train --out directory)."""
    from ..train.workflow import plot_run

    click.echo(f"wrote {plot_run(run, out)}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@handle_errors
def inspect(model: str, as_json: bool) -> None:
    """Show what is inside MODEL.onnx: manifest, opsets, op histogram, inputs and outputs with their dynamic axes,
    states, file size and the parity result recorded at export."""
    require_model_file(model)
    from ..manifest import json_text
    from ..verify.inspect import format_inspection, inspect_model

    info = inspect_model(model)
    click.echo(json_text(info, indent=2, sort_keys=True) if as_json else format_inspection(info))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@handle_errors
def strategies(as_json: bool) -> None:
    """List the export strategies and what each supports (read from the strategy registry)."""
    from dataclasses import asdict

    from ..export import get_strategy_class, strategy_names

    rows = {name: get_strategy_class(name) for name in strategy_names()}
    if as_json:
        caps = {n: {**asdict(c.caps), "variants": sorted(c.caps.variants)} for n, c in rows.items()}
        echo_json({n: {"summary": c.summary, **caps[n]} for n, c in rows.items()})
        return
    for name, cls in rows.items():
        click.echo(f"{name:<7} {cls.summary}\n        {cls.caps.describe()}")


@main.command()
@click.option("--out", "out_dir", default="edgernn-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--cell", type=click.Choice(cell_names()), default="lstm", show_default=True)
@click.option("--epochs", default=6, show_default=True)
@click.option("--strategy", type=click.Choice(_strategy_choices()), default="native", show_default=True)
@handle_errors
def demo(out_dir: str, cell: str, epochs: int, strategy: str) -> None:
    """The whole pipeline on the built-in default: train briefly on the sine task, export, run, check parity."""
    from .demo import demo as run_demo

    run_demo(Path(out_dir), cell=cell, epochs=epochs, strategy=strategy, echo=click.echo)


for _command in (
    *RUNTIME_COMMANDS,
    *EDGE_COMMANDS,
    *OPTIMIZE_COMMANDS,
    *PARITY_COMMANDS,
    *STUDY_COMMANDS,
    *COMPARE_COMMANDS,
    *SERVE_COMMANDS,
):
    main.add_command(_command)
main.add_command(verify_command)

# --quiet and --verbose on every command, and progress on stderr while it runs (after every add_command above);
# a server and a stream read from stdin wait for their user, so the heartbeat does not speak for them as a whole
for _name, _command in leaf_commands(main):
    with_progress(_command, _name, watch=_name not in ("run", "serve ray"))
