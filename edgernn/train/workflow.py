"""``edgernn train`` as a library function: train on a built-in task and write the run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..progress import stage


def train_to_dir(
    *,
    task: str | None,
    cell: str,
    hidden: int,
    layers: int,
    bidirectional: bool,
    out_dir: str,
    proj_size: int = 0,
    peephole: bool = False,
    dropout: float = 0.0,
    progress: bool = True,
    data: str | None = None,
    val: str | None = None,
    head: str | None = None,
    readout: str | None = None,
    target_columns: list[str] | None = None,
    classes: int | None = None,
    val_fraction: float = 0.2,
    normalize: bool = True,
    **train_options: Any,
) -> dict[str, Any]:
    """Train on a built-in task, or on the user's ``data`` (an .npz or a directory of CSV files, see
    ``edgernn.train.dataset``) with ``val`` or a held-out ``val_fraction`` for validation; write OUT/model.ckpt,
    OUT/config.json, OUT/history.json and OUT/history.csv; return a summary.

    On the user's data the model standardises its inputs with the training split's per-feature statistics
    (``normalize``): they are saved in the checkpoint and exported into the graph, so a device feeds raw inputs.
    A run that diverged (NaN or infinite loss or weights) writes nothing and keeps what was there."""
    import torch

    from ..files import write_atomic
    from ..model import checkpoint
    from .data import get_task
    from .loop import TrainConfig, fit, model_config_for

    splits = None
    data_record: dict[str, Any] | None = None
    check_budget(train_options)
    if data is not None:
        if task is not None:
            raise ConfigError("train on a built-in task or on --data, not both; drop --task")
        check_out_of_data(out_dir, data, val)
        stage(f"reading {data}" + (f" and {val}" if val else ""))
        t, splits, data_record = _user_data(data, val, head, readout, target_columns, classes, val_fraction,
                                            seed=train_options.get("seed", 0))  # fmt: skip
        model_opts: dict[str, Any] = {"normalize": normalize}
    else:
        given = [n for n, v in (("--val", val), ("--head", head), ("--readout", readout),
                                ("--target-columns", target_columns), ("--classes", classes)) if v]  # fmt: skip
        if given:
            raise ConfigError(f"{', '.join(given)} go with --data (your own data); a built-in task fixes them")
        t = get_task(task or "sine")
        model_opts = {}
    mcfg = model_config_for(
        t,
        cell=cell,
        hidden_size=hidden,
        num_layers=layers,
        bidirectional=bidirectional,
        dropout=dropout,
        proj_size=proj_size,
        peephole=peephole,
        **model_opts,
    )
    tcfg = TrainConfig(**train_options)
    out = Path(out_dir)
    ckpt_path = out / checkpoint.DEFAULT_NAME
    if ckpt_path.exists() and not ckpt_path.is_file():
        raise ConfigError(f"{str(ckpt_path)!r} exists and is not a file; choose another --out")
    model, hist = fit(mcfg, t, tcfg, progress=progress, splits=splits)
    task = None if data is not None else t.name
    if data_record is not None:
        data_record["normalization"] = model.normalization()
    if not all(math.isfinite(v) for v in hist.train_loss) or not all(
        bool(torch.isfinite(p).all()) for p in model.parameters()
    ):
        raise ConfigError(
            "training diverged (a loss or weight is NaN or infinite); nothing was written"
            + (f" and {str(ckpt_path)!r} was kept" if ckpt_path.exists() else "")
            + ": lower --lr, or keep --clip on"
        )
    replaced = ckpt_path.exists()
    config = {"task": task, "model_config": mcfg.to_dict(), "train_config": dataclasses.asdict(tcfg)}
    meta = {"task": task, "train_config": dataclasses.asdict(tcfg), "history": hist.to_dict()}
    if data_record is not None:
        config["data"] = meta["data"] = data_record
    stage(f"writing {ckpt_path} and the history")
    ckpt = checkpoint.save(ckpt_path, model, meta)
    write_atomic(out / "history.json", json.dumps(hist.to_dict(), indent=2).encode())
    write_atomic(out / "history.csv", _history_csv(hist).encode())
    write_atomic(out / "config.json", json.dumps(config, indent=2).encode())
    return {
        "checkpoint": str(ckpt),
        "replaced": replaced,
        "task": task if data_record is None else "data",
        **({"data": data_record} if data_record is not None else {}),
        "cell": cell,
        "metric": hist.metric,
        "best_metric": hist.best_metric,
        "best_epoch": hist.best_epoch,
        "baseline": hist.baseline,
        "epochs_run": len(hist.val_metric),
        "stopped_early": hist.stopped_early,
    }


def check_budget(train_options: dict[str, Any]) -> None:
    """Training options no run can use, refused before any data is read (``TrainConfig`` checks the rest)."""
    patience = train_options.get("patience", 0)
    if patience < 0:
        raise ConfigError(f"--patience must be a whole number of epochs, 0 (never stop early) or more; got {patience}")


def check_out_of_data(out_dir: str | os.PathLike[str], *data: str | os.PathLike[str] | None) -> None:
    """The run's directory must not be the user's data nor lie inside a data folder: its files (history.csv,
    config.json, ...) would replace sequences or be read as sequences by the next run."""
    out = os.path.realpath(out_dir)
    for d in data:
        if d is None:
            continue
        src = os.path.realpath(d)
        if out == src or (os.path.isdir(src) and out.startswith(src.rstrip(os.sep) + os.sep)):
            raise ConfigError(
                f"--out {os.fspath(out_dir)!r} is {'your data' if out == src else 'inside your data folder'} "
                f"{os.fspath(d)!r}: the run's files would be mixed with (or replace) your sequences; give an --out "
                "outside it"
            )


def note(line: str) -> None:
    """A note on stderr (``note: ...``): something the user should know that is not an error."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def _user_data(
    data: str,
    val: str | None,
    head: str | None,
    readout: str | None,
    target_columns: list[str] | None,
    classes: int | None,
    val_fraction: float,
    *,
    seed: int,
) -> tuple[Any, tuple[list[Any], list[Any]], dict[str, Any]]:
    """The task record, the (train, validation) examples and what the checkpoint records of the user's data."""
    from .dataset import check_compatible, load_dataset, split_off

    opts = {"head": head, "readout": readout, "target_columns": target_columns, "classes": classes}
    train = load_dataset(data, **opts)
    if val is not None:
        # the validation file follows the training data's head, readout and class count
        n_classes = train.output_size if train.head == "classification" else None
        held = load_dataset(val, **{**opts, "head": train.head, "readout": train.readout, "classes": n_classes})
        check_compatible(train, held)
    else:
        train, held = split_off(train, val_fraction, seed)
    if train.head == "classification" and held.output_size != train.output_size:
        held = dataclasses.replace(held, output_size=train.output_size)
    record = {
        "train": str(data),
        "val": str(val) if val is not None else f"{val_fraction:.0%} of {data}, held out with seed {seed}",
        "n_train": len(train.examples),
        "n_val": len(held.examples),
        "head": train.head,
        "readout": train.readout,
        "input_size": train.input_size,
        "output_size": train.output_size,
        "feature_names": train.feature_names,
        "target_names": train.target_names,
    }
    return train.task(), (train.examples, held.examples), record


def _history_csv(hist: Any) -> str:
    rows = [f"epoch,train_loss,val_{hist.metric},seconds"]
    for i, (loss, metric, secs) in enumerate(zip(hist.train_loss, hist.val_metric, hist.epoch_seconds, strict=True), 1):
        rows.append(f"{i},{loss:.9g},{metric:.9g},{secs:.3f}")
    return "\n".join(rows) + "\n"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss and validation metric against epoch, from RUN/history.json, as a PNG (default RUN/history.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import write_atomic

    run = Path(run_dir)
    path = run / "history.json"
    if not path.is_file():
        raise ConfigError(f"no training history at {str(path)!r}; give the --out directory of edgernn train")
    try:
        hist = json.loads(path.read_text())
        loss, metric, name = hist["train_loss"], hist["val_metric"], hist["metric"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{str(path)!r} is not an edgernn training history: {e}") from None
    epochs = list(range(1, len(loss) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, loss, marker="o")
    axes[0].set(title="training loss", xlabel="epoch", yscale="log" if min(loss, default=1) > 0 else "linear")
    axes[1].plot(epochs, metric, marker="o", color="tab:orange")
    best = hist.get("best_epoch", 0)
    if best:
        axes[1].axvline(best, color="grey", linestyle=":", label=f"best (epoch {best})")
        axes[1].legend()
    axes[1].set(title=f"validation {name}", xlabel="epoch")
    fig.suptitle(f"{run.name}: {hist.get('metric', '')} best {hist.get('best_metric', float('nan')):.4g}")
    fig.tight_layout()
    target = Path(out) if out is not None else run / "history.png"
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(target, buf.getvalue())
    return target
