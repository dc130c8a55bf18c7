"""The training loop's numbers, each against an independent computation: the defaults (the same as `edgernn train`
shows), the config's bounds, the masked per-step losses and metrics, the input-blind baseline of a per-step
regression, the IRNN initialisation's spread, and which epoch is kept when validation ties."""

from __future__ import annotations

from typing import Any

import click
import numpy as np
import pytest
import torch

from edgernn.errors import ConfigError
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.train.data import Example, Task, collate, get_task, make_splits
from edgernn.train.loop import TrainConfig, _loss, baseline_metric, evaluate, fit, initialise, model_config_for


def test_the_python_defaults_are_the_ones_train_shows() -> None:
    from edgernn.cli.training import TRAINING_OPTIONS, with_options

    @with_options(TRAINING_OPTIONS)
    def train(**_: Any) -> None:
        pass

    shown = {p.name: p.default for p in train.__click_params__ if isinstance(p, click.Option)}  # type: ignore[attr-defined]
    fields = TrainConfig()
    compared = [name for name in shown if hasattr(fields, name)]
    assert {"epochs", "batch_size", "lr", "clip", "patience", "n_train", "min_len", "max_len"} <= set(compared)
    for name in compared:
        assert getattr(fields, name) == shown[name], name


def test_one_training_and_one_validation_sequence_are_enough() -> None:
    cfg = TrainConfig(n_train=1, n_val=1, epochs=1)
    assert (cfg.n_train, cfg.n_val) == (1, 1)
    with pytest.raises(ConfigError, match="n_train and n_val"):
        TrainConfig(n_train=0)
    with pytest.raises(ConfigError, match="n_train and n_val"):
        TrainConfig(n_val=0)


def test_empty_splits_are_refused() -> None:
    task = get_task("sine")
    train, val = make_splits(task, n_train=4, n_val=2, min_len=4, max_len=6, seed=0)
    cfg = TrainConfig(epochs=1)
    for splits in ((train, []), ([], val)):
        with pytest.raises(ConfigError, match="nothing to train on"):
            fit(model_config_for(task, hidden_size=4), task, cfg, progress=False, splits=splits)


PER_STEP_CLASSES = Task("steps3", "a class per step", 2, 3, "classification", "accuracy", "all", lambda *a: [])
PER_STEP_REGRESSION = Task("steps2", "two targets per step", 2, 2, "regression", "mse", "all", lambda *a: [])


def _per_step_examples(task: Task, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for t in (5, 3, 1, 4):  # unequal lengths: padding the mask must leave out
        x = rng.standard_normal((t, 2)).astype(np.float32)
        if task.head == "classification":
            y = rng.integers(0, 3, size=t).astype(np.int64)
        else:
            y = rng.standard_normal((t, 2)).astype(np.float32)
        out.append(Example(x, y))
    return out


def _outputs(model: Any, examples: list[Example]) -> list[np.ndarray]:
    """The model's output for each example on its own (no padding at all)."""
    with torch.no_grad():
        return [model(torch.from_numpy(e.x[None]), torch.tensor([len(e.x)]))[0].numpy() for e in examples]


def test_per_step_classification_loss_and_accuracy_count_real_steps_only() -> None:
    task = PER_STEP_CLASSES
    torch.manual_seed(0)
    model = build_model(model_config_for(task, cell="gru", hidden_size=6)).eval()
    examples = _per_step_examples(task, 1)
    b = collate(examples, per_step=True)
    with torch.no_grad():
        loss = float(_loss(task, model(torch.from_numpy(b.x), torch.from_numpy(b.lengths)), b))
    outs = _outputs(model, examples)
    logp = [o - np.log(np.exp(o).sum(-1, keepdims=True)) for o in outs]
    nll = np.concatenate([-lp[np.arange(len(e.y)), e.y] for lp, e in zip(logp, examples, strict=True)])
    assert loss == pytest.approx(float(nll.mean()), rel=1e-5)
    hits = np.concatenate([o.argmax(-1) == e.y for o, e in zip(outs, examples, strict=True)])
    assert len(hits) == 13 and 0 < hits.sum() < 13  # neither all right nor all wrong: the count is informative
    assert evaluate(model, task, examples) == pytest.approx(hits.mean(), abs=1e-12)
    assert evaluate(model, task, examples, batch_size=3) == pytest.approx(hits.mean(), abs=1e-12)


def test_the_metrics_are_the_accuracy_and_mean_squared_error_of_the_models_outputs() -> None:
    torch.manual_seed(0)
    task = get_task("sign")
    model = build_model(model_config_for(task, cell="gru", hidden_size=6)).eval()
    _, val = make_splits(task, n_train=1, n_val=40, min_len=4, max_len=9, seed=2)
    hits = np.array([o.argmax() == e.y for o, e in zip(_outputs(model, val), val, strict=True)])
    assert 0 < hits.sum() < len(hits)  # neither all right nor all wrong: the count is informative
    assert evaluate(model, task, val, batch_size=16) == pytest.approx(hits.mean(), abs=1e-12)

    task = get_task("sine")
    model = build_model(model_config_for(task, cell="gru", hidden_size=6)).eval()
    _, val = make_splits(task, n_train=1, n_val=10, min_len=4, max_len=9, seed=2)
    outs = _outputs(model, val)
    mse = float(np.mean([(o - e.y) ** 2 for o, e in zip(outs, val, strict=True)]))
    assert evaluate(model, task, val, batch_size=4) == pytest.approx(mse, rel=1e-5)

    task = PER_STEP_REGRESSION
    model = build_model(model_config_for(task, cell="gru", hidden_size=6)).eval()
    examples = _per_step_examples(task, 3)
    outs = _outputs(model, examples)
    per_step = np.concatenate([((o - e.y) ** 2).mean(-1) for o, e in zip(outs, examples, strict=True)])
    assert evaluate(model, task, examples) == pytest.approx(float(per_step.mean()), rel=1e-5)


def test_per_step_regression_baseline_answers_the_training_mean_of_each_target() -> None:
    train = _per_step_examples(PER_STEP_REGRESSION, 4)
    val = _per_step_examples(PER_STEP_REGRESSION, 5)
    mean = np.concatenate([e.y for e in train]).mean(axis=0)  # (2,): one per target, over every training step
    want = np.concatenate([((e.y - mean) ** 2).mean(-1) for e in val]).mean()
    assert baseline_metric(PER_STEP_REGRESSION, train, val) == pytest.approx(float(want), rel=1e-6)
    # a single-target task (shape (T, 1)) too
    one = [Example(e.x, e.y[:, :1].copy()) for e in train]
    one_val = [Example(e.x, e.y[:, :1].copy()) for e in val]
    m1 = np.concatenate([e.y for e in one]).mean()
    want1 = np.concatenate([((e.y - m1) ** 2).ravel() for e in one_val]).mean()
    assert baseline_metric(PER_STEP_REGRESSION, one, one_val) == pytest.approx(float(want1), rel=1e-6)


def test_irnn_input_weights_have_a_spread_of_one_thousandth() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="rnn-relu", input_size=128, hidden_size=128))
    initialise(model, "identity")
    w = model.rnn.weight_ih_l0.detach().double().flatten()  # 16384 draws of N(0, 0.001^2)
    std = float(w.std())
    assert std == pytest.approx(1e-3, rel=0.03)  # the standard error of a std estimate here is 0.55%
    assert torch.equal(model.rnn.weight_hh_l0.detach(), torch.eye(128))


def test_a_tie_keeps_the_first_best_epoch_and_stops_early() -> None:
    task = get_task("sign")
    cfg = TrainConfig(epochs=6, n_train=32, n_val=16, min_len=4, max_len=8, lr=1e-9, patience=2, seed=1)
    _, hist = fit(model_config_for(task, cell="gru", hidden_size=4), task, cfg, progress=False)
    assert len(set(hist.val_metric)) == 1  # nothing can change the accuracy: every epoch ties the first
    assert hist.best_epoch == 1 and hist.stopped_early and len(hist.val_metric) == 3
