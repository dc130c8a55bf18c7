"""Training: Adam, gradient-norm clipping, a choice of initialisation, L1/L2, dropout, loss masked on padding,
a validation metric, a progress bar and early stopping (the best epoch's weights are kept)."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..model.nn import recurrent_layers
from ..model.zoo import ModelConfig, RecurrentModel, build_model
from ..progress import quieted, stage, tick
from .data import Batch, Task, batches, get_task, make_splits
from .inits import INITS


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # passes over the training set (early stopping may end sooner)
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # Adam learning rate
    clip: float = 1.0  # max global gradient norm (0 = no clipping); recurrent nets need it
    weight_decay: float = 0.0  # L2 penalty (Adam's weight_decay)
    l1: float = 0.0  # L1 penalty on weights, added to the loss
    init: str = "orthogonal"  # default | xavier | he | orthogonal | identity (ReLU RNNs: IRNN)
    n_train: int = 1024  # generated training sequences
    n_val: int = 256  # generated validation sequences
    min_len: int = 8  # shortest sequence
    max_len: int = 48  # longest sequence (batches are padded to their longest)
    patience: int = 5  # epochs without validation improvement before stopping (0 = never stop early)
    seed: int = 0  # data, initialisation and shuffling
    device: str = "cpu"  # "cpu" or "cuda" (where torch sees a GPU)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        for name in ("lr", "clip", "weight_decay", "l1"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number; got {getattr(self, name)}")
        if self.n_train < 1 or self.n_val < 1:
            raise ConfigError("n_train and n_val must be at least 1")
        if self.lr <= 0 or self.clip < 0 or self.weight_decay < 0 or self.l1 < 0:
            raise ConfigError("lr must be positive; clip, weight_decay and l1 must not be negative")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda; got {self.device!r}")


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0  # counted from 1, as the log lines count; 0 before the first epoch
    best_metric: float = math.nan
    metric: str = ""
    stopped_early: bool = False
    baseline: float = math.nan  # the metric of a model that ignores its input (see ``baseline_metric``)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def initialise(model: nn.Module, scheme: str) -> None:
    """Initialise every recurrent layer (and linear head) in place; LSTM forget-gate biases start at 1."""
    if scheme not in INITS:
        raise ConfigError(f"unknown init {scheme!r}; choose one of: {', '.join(INITS)}")
    if scheme == "default":
        return
    for _, layer in recurrent_layers(model):
        kind = layer.cell_kind
        if scheme == "identity" and kind.torch_class != "RNN":
            raise ConfigError("init 'identity' (IRNN) is for rnn-relu/rnn-tanh cells; use orthogonal for LSTM/GRU")
        h = layer.hidden_size
        for name, p in layer.named_parameters():
            with torch.no_grad():
                if name.startswith("bias"):
                    p.zero_()
                    if kind.name == "lstm":
                        p[h : 2 * h] = 0.5  # half of the forget bias on each of b_ih and b_hh: 1 in total
                elif name.startswith("weight_ih") or name.startswith("weight_hr"):
                    if scheme == "he":
                        nn.init.kaiming_normal_(p, nonlinearity="relu")
                    elif scheme == "identity":
                        nn.init.normal_(p, 0.0, 0.001)
                    else:
                        nn.init.xavier_uniform_(p)
                elif name.startswith("weight_hh"):
                    blocks = p.view(kind.gates, h, -1)
                    for g in range(kind.gates):
                        if scheme == "xavier":
                            nn.init.xavier_uniform_(blocks[g])
                        elif scheme == "he":
                            nn.init.kaiming_normal_(blocks[g], nonlinearity="relu")
                        elif scheme == "identity":
                            blocks[g].copy_(torch.eye(h, blocks.shape[-1]))
                        else:
                            nn.init.orthogonal_(blocks[g])
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _loss(task: Task, out: Tensor, batch: Batch) -> Tensor:
    y = torch.from_numpy(batch.y)
    if task.readout == "all":
        mask = torch.from_numpy(batch.mask)
        if task.head == "classification":
            err = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
            err = err.reshape(mask.shape)
        else:
            err = ((out - y) ** 2).mean(-1)
        return (err * mask).sum() / mask.sum()  # padded steps contribute nothing
    if task.head == "classification":
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out, y)


def evaluate(model: RecurrentModel, task: Task, examples: list[Any], batch_size: int = 64) -> float:
    """The task's validation metric: masked MSE (regression) or accuracy (classification)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches(examples, batch_size, per_step=task.readout == "all"):
            out = model(torch.from_numpy(b.x).to(device), torch.from_numpy(b.lengths)).cpu()
            if task.head == "classification" and task.readout == "all":
                total += float(((out.argmax(-1).numpy() == b.y) & b.mask).sum())
                count += int(b.mask.sum())
            elif task.head == "classification":
                total += float((out.argmax(-1).numpy() == b.y).sum())
                count += len(b.y)
            elif task.readout == "all":
                total += float((((out.numpy() - b.y) ** 2).mean(-1) * b.mask).sum())
                count += int(b.mask.sum())
            else:
                total += float(((out.numpy() - b.y) ** 2).sum())
                count += b.y.size
    return total / max(count, 1)


def baseline_metric(task: Task, train_set: list[Any], val_set: list[Any]) -> float:
    """The validation metric of a model that ignores its input: regression, always answering the training split's
    mean target (for the adding problem about 0.167, the variance of the sum); classification, always answering the
    most common class, which scores that class's share of the validation labels (for ``memory`` about 0.25; on
    imbalanced data the majority share). A model must beat this to have learnt anything from the sequence.

    The class is the validation split's most common one, which the training split's majority is wherever the
    classes are imbalanced. On balanced data a held-out split holds fewer of whichever class the training split
    happens to hold most, so the training majority would score below chance there (0.146 on four balanced
    classes) and make a model that learnt nothing look as if it had; the most common class never scores below
    chance (one over the number of classes)."""
    if task.head == "classification":
        val = np.concatenate([np.atleast_1d(e.y).reshape(-1) for e in val_set]).astype(np.int64)
        if val.size == 0:
            return math.nan
        return float(np.bincount(val).max() / val.size)
    if task.readout == "all":
        mean = np.concatenate([e.y.reshape(-1, e.y.shape[-1]) for e in train_set]).mean(axis=0)
        return float(np.mean(np.concatenate([((e.y - mean) ** 2).mean(-1) for e in val_set])))
    mean = np.stack([e.y for e in train_set]).mean(axis=0)
    return float(np.mean(np.stack([(e.y - mean) ** 2 for e in val_set])))


def model_config_for(task: Task, **overrides: Any) -> ModelConfig:
    """A ModelConfig whose input, output, head and readout fit ``task``."""
    base = {"input_size": task.input_size, "output_size": task.output_size, "head": task.head, "readout": task.readout}
    return ModelConfig(**{**base, **overrides})


def fit(
    model_config: ModelConfig,
    task: str | Task,
    config: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
    log: Any = None,
    splits: tuple[list[Any], list[Any]] | None = None,
) -> tuple[RecurrentModel, History]:
    """Train a zoo model on a built-in task, or on ``splits`` (training and validation examples: the user's
    data); returns the best model (by validation metric) and the history. A ``normalize`` model takes its input
    statistics from the training split before the first step.

    With ``progress``, a progress bar on a terminal, else (a log file, CI) one line per epoch on stderr;
    ``log`` (a callable taking a line) receives those lines instead.
    """
    import time

    import click

    task = get_task(task) if isinstance(task, str) else task
    progress = progress and not quieted()  # --quiet: no bar, no epoch lines
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no GPU here (a CPU build of torch, or no driver); use cpu")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    initialise(model, config.init)
    if splits is not None:
        train_set, val_set = splits
    else:
        stage(f"making {config.n_train} training and {config.n_val} validation sequences of {task.name}")
        train_set, val_set = make_splits(
            task,
            n_train=config.n_train,
            n_val=config.n_val,
            min_len=config.min_len,
            max_len=config.max_len,
            seed=config.seed,
        )
    if not train_set or not val_set:
        raise ConfigError("the training and validation splits must each hold a sequence: there is nothing to train on")
    if model_config.normalize:
        from .dataset import normalization_stats, target_stats

        outputs = target_stats(train_set) if task.head == "regression" else (None, None)
        model.set_normalization(*normalization_stats(train_set), *outputs)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed + 1)
    higher_better = task.metric == "accuracy"
    hist = History(metric=task.metric, baseline=baseline_metric(task, train_set, val_set))
    best_state = copy.deepcopy(model.state_dict())
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    tty = progress and log is None and sys.stderr.isatty()
    if log is None and progress and not tty:
        log = lambda line: click.echo(line, err=True)  # noqa: E731  one line per epoch, for logs
    bar = click.progressbar(
        length=config.epochs * steps_per_epoch,
        label="training",
        file=sys.stderr if tty else _Null(),
        item_show_func=lambda s: s,
    )
    stage(f"{config.epochs} epoch(s) of {steps_per_epoch} batch(es)")
    with bar:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            model.train()
            losses = []
            for b in batches(train_set, config.batch_size, rng, per_step=task.readout == "all"):
                out = model(torch.from_numpy(b.x).to(device), torch.from_numpy(b.lengths))
                loss = _loss(task, out.cpu() if device.type != "cpu" else out, b)
                if config.l1:
                    loss = loss + config.l1 * sum(p.abs().sum() for n, p in model.named_parameters() if "weight" in n)
                opt.zero_grad()
                loss.backward()
                if config.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                opt.step()
                losses.append(loss.item())
                bar.update(1, f"epoch {epoch}/{config.epochs} loss {np.mean(losses):.4f}")
                if not tty:  # a bar on a terminal; a line every 10 s in a log
                    tick(f"epoch {epoch}/{config.epochs}, batch {len(losses)}/{steps_per_epoch}, loss {losses[-1]:.4g}")
            tick(f"epoch {epoch}/{config.epochs}: validating on {len(val_set)} sequences")
            metric = evaluate(model, task, val_set)
            hist.train_loss.append(float(np.mean(losses)))
            hist.val_metric.append(metric)
            hist.epoch_seconds.append(time.perf_counter() - started)
            improved = hist.best_epoch == 0 or (
                metric > hist.best_metric if higher_better else metric < hist.best_metric
            )
            if improved:
                hist.best_epoch, hist.best_metric = epoch, metric
                best_state = copy.deepcopy(model.state_dict())
            if log is not None:
                log(
                    f"epoch {epoch}/{config.epochs}: loss {hist.train_loss[-1]:.4g}, val {task.metric} {metric:.4g}"
                    f"{' (best)' if improved else ''}, {hist.epoch_seconds[-1]:.1f}s"
                )
            if not improved and config.patience and epoch - hist.best_epoch >= config.patience:
                hist.stopped_early = True
                break
    model.load_state_dict(best_state)
    return model.cpu().eval(), hist


class _Null:
    """A sink for the progress bar when progress is off."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
