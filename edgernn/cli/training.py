"""Options shared by the commands that train (``edgernn train`` and ``edgernn compare``): where the data comes
from (a built-in task or the user's files) and the training budget, with the checks that tie them together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import ConfigError


class RegistryChoice(click.Choice):  # type: ignore[type-arg]
    """A click.Choice whose names come from a registry, read when first needed (parsing, or the command's own
    --help) rather than when the CLI loads; a name not in it is refused in one line, as the registry says it."""

    def __init__(self, load: Callable[[], Any], what: str) -> None:
        self._load = load
        self._what = what
        self._names: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The name, or the registry's own one-line refusal (exit 2), as every bad option value gets."""
        if value in self.choices:
            return value
        click.echo(f"error: unknown {self._what} {value!r}; choose one of: {', '.join(self.choices)}", err=True)
        raise click.exceptions.Exit(ConfigError.exit_code)


def _task_names() -> list[str]:
    from ..train.data import TASKS  # numpy only

    return list(TASKS)


def _init_names() -> tuple[str, ...]:
    from ..train.inits import INITS  # torch-free

    return INITS


DATA_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--task", type=RegistryChoice(_task_names, "task"), default=None, help="Built-in task (default sine)."
    ),
    click.option(
        "--data",
        type=click.Path(exists=True),
        default=None,
        help="Train on your data instead: an .npz (x (N,T,F) padded, lengths (N,), y per sequence or per step) or a "
        "directory of .csv files, one sequence each (see --target-columns). Inputs are standardised inside the model.",
    ),
    click.option("--val", type=click.Path(exists=True), default=None, help="With --data: validation data (same form)."),
    click.option(
        "--val-fraction",
        default=0.2,
        show_default=True,
        help="With --data and no --val: the share of sequences held out (seeded) for validation.",
    ),
    click.option(
        "--target-columns",
        default=None,
        help="With a CSV directory: the target column(s), comma-separated; every other column is a feature.",
    ),
    click.option(
        "--head",
        type=click.Choice(["regression", "classification"]),
        default=None,
        help="With --data: the kind of target (default: integer y is classification, float y regression; "
        "CSV: regression).",
    ),
    click.option(
        "--readout",
        type=click.Choice(["last", "all"]),
        default=None,
        help="With --data: one target per sequence (last) or per step (all); default from y's shape (CSV: all).",
    ),
    click.option(
        "--classes", type=int, default=None, help="With --data: the number of classes (default: largest label + 1)."
    ),
    click.option(
        "--normalize/--no-normalize",
        default=True,
        show_default=True,
        help="With --data: standardise inputs with the training split's per-feature mean and std, inside the model "
        "(checkpoint and export), so the device feeds raw inputs.",
    ),
]

TRAINING_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--dropout", default=0.0, show_default=True, help="Dropout between layers and before the head."),
    click.option("--epochs", default=20, show_default=True),
    click.option("--batch-size", default=32, show_default=True),
    click.option("--lr", default=3e-3, show_default=True, help="Adam learning rate."),
    click.option("--clip", default=1.0, show_default=True, help="Max gradient norm (0 = off)."),
    click.option("--weight-decay", default=0.0, show_default=True, help="L2 penalty."),
    click.option("--l1", default=0.0, show_default=True, help="L1 penalty on weights."),
    click.option(
        "--init",
        type=RegistryChoice(_init_names, "init"),
        default="orthogonal",
        show_default=True,
        help="How the recurrent weights start.",
    ),
    click.option("--min-len", default=8, show_default=True, help="Shortest generated sequence."),
    click.option("--max-len", default=48, show_default=True, help="Longest generated sequence."),
    click.option(
        "--seq-len",
        type=int,
        default=None,
        help="Every generated sequence this long (sets --min-len and --max-len): the lag of adding or memory.",
    ),
    click.option("--n-train", default=1024, show_default=True, help="Generated training sequences."),
    click.option("--patience", default=5, show_default=True, help="Early-stopping patience in epochs (0 = off)."),
    click.option("--seed", default=0, show_default=True),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Train on."),
]


def with_options(decorators: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Apply click option decorators in the order listed (the order --help shows)."""

    def apply(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def training_settings(o: dict[str, Any]) -> dict[str, Any]:
    """Check and settle the data and training options in ``o`` (in place; returned): a comma list of target
    columns, ``--seq-len`` as both lengths, options that go with --data only, or with built-in tasks only."""
    ctx = click.get_current_context()
    seq_len = o.pop("seq_len")
    if o["target_columns"] is not None:
        o["target_columns"] = [c.strip() for c in o["target_columns"].split(",") if c.strip()]
    if o["data"] is None:
        given = [f"--{n.replace('_', '-')}" for n in ("val_fraction", "normalize") if _given(ctx, n)]
        if given:
            raise ConfigError(f"{' and '.join(given)} go with --data (your own data)")
    else:
        given = [f"--{n.replace('_', '-')}" for n in ("min_len", "max_len", "seq_len", "n_train") if _given(ctx, n)]
        if given:
            raise ConfigError(f"{', '.join(given)} shape the generated tasks; with --data the data sets them")
    if seq_len is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("min_len", "max_len") if _given(ctx, n)]
        if given:
            raise ConfigError(f"--seq-len sets both lengths; drop {' and '.join(given)}")
        o["min_len"] = o["max_len"] = seq_len
    return o
