"""``edgernn compare``: train, export and time a grid of cells and sizes on one task or dataset, and show which
fit the device (a table, ``--json``, and a plot of metric against latency with the Pareto front)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import ConfigError
from .common import PROVIDERS, echo_json, handle_errors
from .training import DATA_OPTIONS, TRAINING_OPTIONS, training_settings, with_options

DATA_KEYS = ("val", "val_fraction", "target_columns", "head", "readout", "classes", "normalize")


def _cells() -> list[str]:
    from ..model.cells import cell_names

    return cell_names()


def _targets() -> list[str]:
    from ..targets import BUILTIN

    return list(BUILTIN)


@click.command("compare")
@with_options(DATA_OPTIONS)
@click.option(
    "--cells",
    default="rnn-tanh,lstm,gru",
    show_default=True,
    help=f"The cells to compare, comma-separated ({', '.join(_cells())}).",
)
@click.option("--hidden", "hiddens", default="32,64", show_default=True, help="Hidden sizes, comma-separated.")
@click.option("--layers", default=1, show_default=True, help="Stacked recurrent layers (every candidate).")
@click.option("--bidirectional/--unidirectional", default=False, show_default=True)
@with_options(TRAINING_OPTIONS)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "native", "loop", "unroll", "step"]),
    default="auto",
    show_default=True,
    help="How each candidate is exported: auto times the strategies that export it correctly and keeps the "
    "fastest, at batch 1 x --bench-len.",
)
@click.option("--target", type=click.Choice(_targets()), default="ort", show_default=True, help="The device runtime.")
@click.option(
    "--provider",
    type=click.Choice(list(PROVIDERS)),
    default="cpu",
    show_default=True,
    help="onnxruntime provider the latencies are measured on.",
)
@click.option(
    "--bench-len",
    type=int,
    default=None,
    help="Steps per sequence for the latency (default: the longest training sequence).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the runs.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write OUT/compare.png (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@handle_errors
def compare(**o: Any) -> None:
    """Train each cell x hidden size on the same data (same seed and budget), export each for --target, time
    it on --provider, and report validation metric, parameters, file size and latency per sequence and per step,
    with the Pareto front (no other candidate both faster and better).

    Runs are kept in OUT/<cell>-h<hidden>/: a rerun with the same settings reuses finished candidates (an
    interrupted compare resumes), while latencies are measured again so all of them come from one run.
    Writes OUT/compare.json and, with --plot, OUT/compare.png."""
    from ..workflows.compare import compare as run_compare
    from ..workflows.compare import plot_comparison

    as_json, plot, out_dir = o.pop("as_json"), o.pop("plot"), o.pop("out_dir")
    training_settings(o)
    try:
        hiddens = [int(h) for h in o.pop("hiddens").split(",") if h.strip()]
    except ValueError:
        raise ConfigError("--hidden takes whole numbers, comma-separated, e.g. 32,64") from None
    cells = [c.strip() for c in o.pop("cells").split(",") if c.strip()]
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'edgernn[plot]', or pass --no-plot") from None
    data_options = {k: o.pop(k) for k in DATA_KEYS}
    if o["data"] is None:
        data_options = {}
    task, data = o.pop("task"), o.pop("data")
    layers, bidirectional = o.pop("layers"), o.pop("bidirectional")
    strategy, target, provider, bench_len = o.pop("strategy"), o.pop("target"), o.pop("provider"), o.pop("bench_len")
    grid = len(cells) * len(hiddens)
    # a progress bar on a terminal; in a log, one line per finished candidate
    from ..progress import quieted

    tty = not as_json and sys.stderr.isatty() and not quieted()  # --quiet: no bar either
    bar = click.progressbar(length=grid, label="compare", file=sys.stderr, item_show_func=lambda s: s) if tty else None
    done = [0]

    def progress(i: int, name: str) -> None:
        if bar is not None:
            bar.update(i - done[0], f"{name} ({i + 1}/{grid})")
            done[0] = i

    def echo(line: str) -> None:
        if quieted() and not line.startswith(("note:", "warning:")):  # --quiet: notes and warnings only
            return
        click.echo(line, err=True)

    result = run_compare(
        out_dir,
        cells=cells,
        hiddens=hiddens,
        layers=layers,
        bidirectional=bidirectional,
        strategy=strategy,
        target=target,
        provider=provider,
        bench_len=bench_len,
        task=task,
        data=data,
        data_options=data_options,
        train_options=o,
        echo=echo if not tty and not as_json else None,
        progress=progress,
    )
    if bar is not None:
        bar.update(grid - done[0], "done")
        bar.render_finish()
    png = plot_comparison(result, f"{out_dir}/compare.png") if plot else None
    if as_json:
        echo_json({**result.to_dict(), "plot": str(png) if png else None})
        return
    click.echo(result.table())
    click.echo(f"wrote {out_dir}/compare.json" + (f" and {png}" if png else "") + f" in {result.seconds:.0f} s")


COMMANDS = [compare]
