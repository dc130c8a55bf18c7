"""Training techniques: initialisation, masked loss, clipping, early stopping, and that training learns."""

import numpy as np
import pytest
import torch

from edgernn.errors import ConfigError
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.train.data import TASKS, batches, collate, get_task, make_splits
from edgernn.train.loop import TrainConfig, _loss, fit, initialise, model_config_for


def test_collate_pads_and_masks() -> None:
    task = get_task("denoise")
    examples = task.make(np.random.default_rng(0), 3, 2, 9)
    b = collate(examples)
    lengths = [e.x.shape[0] for e in examples]
    assert b.x.shape == (3, max(lengths), 1) and b.lengths.tolist() == lengths
    assert b.mask.sum() == sum(lengths)
    assert np.all(b.x[~b.mask] == 0) and np.all(b.y[~b.mask] == 0)


@pytest.mark.parametrize("name", list(TASKS))
def test_tasks_are_seeded(name: str) -> None:
    task = get_task(name)
    a, _ = make_splits(task, n_train=4, n_val=1, min_len=3, max_len=12, seed=5)
    b, _ = make_splits(task, n_train=4, n_val=1, min_len=3, max_len=12, seed=5)
    assert all(np.array_equal(x.x, y.x) and np.array_equal(x.y, y.y) for x, y in zip(a, b, strict=True))
    assert all(3 <= e.x.shape[0] <= 12 and e.x.shape[1] == task.input_size for e in a)


def test_masked_loss_ignores_padding() -> None:
    task = get_task("denoise")
    b = collate(task.make(np.random.default_rng(1), 4, 3, 10))
    model = build_model(model_config_for(task, cell="gru", hidden_size=8)).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(b.x), torch.from_numpy(b.lengths))
        base = _loss(task, out, b)
        junk = out.clone()
        junk[torch.from_numpy(~b.mask)] = 1e6  # whatever the model says at padded steps
        assert torch.allclose(_loss(task, junk, b), base)


@pytest.mark.parametrize("scheme", ["xavier", "he", "orthogonal"])
def test_initialisation(scheme: str) -> None:
    model = build_model(ModelConfig(cell="lstm", hidden_size=6, num_layers=2))
    initialise(model, scheme)
    w = model.rnn.weight_hh_l1.detach().view(4, 6, 6)
    if scheme == "orthogonal":
        for g in range(4):
            np.testing.assert_allclose((w[g] @ w[g].T).numpy(), np.eye(6), atol=1e-5)
    b = model.rnn.bias_ih_l0.detach() + model.rnn.bias_hh_l0.detach()
    assert torch.all(b[6:12] == 1.0) and torch.all(b[:6] == 0)  # forget gate bias 1, others 0


def test_identity_init_is_for_rnns() -> None:
    model = build_model(ModelConfig(cell="rnn-relu", hidden_size=5))
    initialise(model, "identity")
    assert torch.equal(model.rnn.weight_hh_l0.detach(), torch.eye(5))
    with pytest.raises(ConfigError, match="identity"):
        initialise(build_model(ModelConfig(cell="gru")), "identity")


def test_training_learns_and_keeps_the_best_epoch() -> None:
    task = get_task("sine")
    cfg = TrainConfig(epochs=4, n_train=256, n_val=64, max_len=24, patience=0, seed=3)
    model, hist = fit(model_config_for(task, cell="gru", hidden_size=16), task, cfg, progress=False)
    assert len(hist.val_metric) == 4
    assert hist.val_metric[-1] < hist.val_metric[0]
    assert hist.best_metric == min(hist.val_metric)
    from edgernn.train.loop import evaluate

    _, val = make_splits(task, n_train=256, n_val=64, min_len=8, max_len=24, seed=3)
    assert evaluate(model, task, val) == pytest.approx(hist.best_metric, rel=1e-5)


def test_early_stopping() -> None:
    task = get_task("sine")
    cfg = TrainConfig(epochs=30, n_train=64, n_val=32, max_len=12, lr=1e-9, patience=2)  # nothing can improve
    _, hist = fit(model_config_for(task, hidden_size=4), task, cfg, progress=False)
    assert hist.stopped_early and len(hist.val_metric) < 30


def test_clipping_and_penalties_run() -> None:
    task = get_task("sign")
    cfg = TrainConfig(epochs=1, n_train=64, n_val=32, max_len=12, clip=0.1, l1=1e-4, weight_decay=1e-4, init="he")
    model, hist = fit(
        model_config_for(task, cell="rnn-relu", hidden_size=8, dropout=0.2, num_layers=2), task, cfg, progress=False
    )
    assert 0.0 <= hist.best_metric <= 1.0  # accuracy
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_train_config() -> None:
    with pytest.raises(ConfigError, match="init"):
        TrainConfig(init="zeros")
    with pytest.raises(ConfigError):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="task"):
        get_task("imagenet")
    assert list(batches([], 4)) == []
