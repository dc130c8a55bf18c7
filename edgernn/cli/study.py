"""``edgernn study``: pictures of how recurrent cells behave, measured on a task's sequences."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError
from .common import echo_json, handle_errors


@click.group("study")
def study() -> None:
    """Measure how recurrent cells behave on a task's sequences."""


@study.command("gradients")
@click.option("--task", default="adding", show_default=True, help="Built-in task whose sequences and loss are used.")
@click.option("--cells", default="rnn-tanh,lstm,gru", show_default=True, help="Fresh models of these cells.")
@click.option("--ckpt", "ckpts", multiple=True, type=click.Path(), help="A trained checkpoint instead (repeat).")
@click.option("--seq-len", default=100, show_default=True, help="Length of the sequences (the longest lag + 1).")
@click.option("--hidden", default=32, show_default=True, help="Hidden units of the fresh models.")
@click.option("--init", default="orthogonal", show_default=True, help="Initialisation of the fresh models.")
@click.option("--batch", default=32, show_default=True, help="Sequences averaged over.")
@click.option("--seed", default=0, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Draw the curves (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print every curve as JSON.")
@handle_errors
def gradients(
    task: str,
    cells: str,
    ckpts: tuple[str, ...],
    seq_len: int,
    hidden: int,
    init: str,
    batch: int,
    seed: int,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """How much of the loss's gradient reaches the hidden state each number of steps back (the vanishing
    gradient), per cell: the norm of dloss/dh_t against the lag T - 1 - t."""
    from ..train.study import plot_gradients, study_gradients

    models = None
    if ckpts:
        from ..model import checkpoint

        models = {}
        for path in ckpts:
            ck = checkpoint.load(path)
            if ck.meta.get("task") not in (None, task):
                raise ConfigError(f"{path} was trained on task {ck.meta.get('task')!r}; give --task {ck.meta['task']}")
            models[f"{ck.config.cell} ({path})"] = ck.model()
    names = [c.strip() for c in cells.split(",") if c.strip()]
    result = study_gradients(
        task, cells=names, seq_len=seq_len, hidden=hidden, batch=batch, seed=seed, init=init, models=models
    )
    if plot_path:
        plot_gradients(result, plot_path)
    if as_json:
        echo_json(result)
        return
    click.echo(f"gradient reaching each lag, {task} at T = {seq_len} (mean ||dloss/dh_t|| over {batch} sequences)")
    points = [p for p in (0, 1, 10, 30, 100, 300, seq_len - 1) if p < seq_len]
    points = list(dict.fromkeys(points))
    click.echo("cell".ljust(28) + "".join(f"lag {p}".rjust(12) for p in points) + "   fall to longest lag")
    for name, curve in result["norms"].items():
        row = "".join(f"{curve[p]:12.3g}" for p in points)
        click.echo(name.ljust(28) + row + f"   {result['fall'][name]:.3g}")
    if plot_path:
        click.echo(f"wrote {plot_path}")


COMMANDS: list[Any] = [study]
