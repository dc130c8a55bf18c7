"""Training techniques, each by its effect: initialisation (variances by scheme), masked loss, gradient clipping
(the norm the optimizer sees), L1 and L2 penalties (smaller weights), early stopping, the accuracy metric, and that
training learns."""

from typing import Any

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


def _xavier_var(fan_in: int, fan_out: int) -> float:
    return 2.0 / (fan_in + fan_out)  # xavier (glorot) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))


def _he_var(fan_in: int, fan_out: int) -> float:
    return 2.0 / fan_in  # he (kaiming) normal for relu, fan_in mode


def _within_sampling_error(w: torch.Tensor, var: float) -> tuple[float, float]:
    """The sample variance of ``w`` (about its known mean, 0) and a tolerance of 5 standard errors of a variance
    estimate from a normal sample of that size (a uniform sample's estimate is tighter still)."""
    x = w.detach().double().flatten()
    return float((x**2).mean()), var * 5 * (2 / x.numel()) ** 0.5


@pytest.mark.parametrize(
    ("scheme", "formula", "wrong"),
    [("xavier", _xavier_var, _he_var), ("he", _he_var, _xavier_var)],
    ids=["xavier", "he"],
)
def test_initialisation_variance_matches_the_scheme(scheme: str, formula: Any, wrong: Any) -> None:
    """weight_ih as one (gates*h, in) matrix and each (h, h) gate block of weight_hh get the scheme's variance;
    the other scheme's formula is further off than the tolerance, so a swapped or missing scheme fails."""
    torch.manual_seed(0)
    n_in, h, gates = 64, 64, 4
    model = build_model(ModelConfig(cell="lstm", input_size=n_in, hidden_size=h))
    initialise(model, scheme)
    w_ih = model.rnn.weight_ih_l0.detach()  # (4h, in): fan_in = in, fan_out = 4h
    assert tuple(w_ih.shape) == (gates * h, n_in)
    # initialise gives each (h, h) gate block of weight_hh the scheme on its own: fan_in = fan_out = h
    blocks = model.rnn.weight_hh_l0.detach().view(gates, h, h)
    for w, fan_in, fan_out in [(w_ih, n_in, gates * h), *[(blocks[g], h, h) for g in range(gates)]]:
        var, tol = _within_sampling_error(w, formula(fan_in, fan_out))
        assert abs(float(w.detach().mean())) < 5 * (formula(fan_in, fan_out) / w.numel()) ** 0.5
        assert var == pytest.approx(formula(fan_in, fan_out), abs=tol), (scheme, tuple(w.shape))
        assert abs(var - wrong(fan_in, fan_out)) > tol, "the check could not tell the two schemes apart"
    if scheme == "xavier":  # uniform on [-a, a]: nothing beyond a, and most of the range used
        a = (6 / (n_in + gates * h)) ** 0.5
        assert float(w_ih.abs().max()) <= a and float(w_ih.abs().max()) > 0.99 * a
    # the torch default (uniform +-1/sqrt(h), variance 1/(3h)) is not what either scheme gives
    default = build_model(ModelConfig(cell="lstm", input_size=n_in, hidden_size=h))
    var, tol = _within_sampling_error(default.rnn.weight_ih_l0, formula(n_in, gates * h))
    assert abs(var - formula(n_in, gates * h)) > tol


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
    assert len(hist.val_metric) == hist.best_epoch + cfg.patience  # stops `patience` epochs after the best


@pytest.fixture
def grad_norms(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The global L2 norm of the gradients each Adam step is given (recorded before the step runs)."""
    norms: list[float] = []
    original = torch.optim.Adam.step

    def step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        grads = [p.grad.detach().flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.cat(grads).double())))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return norms


def test_clipping_bounds_the_gradient_norm_at_every_step(grad_norms: list[float]) -> None:
    task = get_task("sign")
    mcfg = model_config_for(task, cell="rnn-relu", hidden_size=8, num_layers=2, dropout=0.2)
    c = 0.05
    steps = 4  # 64 sequences in batches of 16, one epoch

    def run(clip: float) -> list[float]:
        grad_norms.clear()
        cfg = TrainConfig(epochs=1, n_train=64, n_val=16, max_len=12, batch_size=16, lr=1e-2, clip=clip, init="he")
        fit(mcfg, task, cfg, progress=False)
        assert len(grad_norms) == steps
        return list(grad_norms)

    unclipped = run(0.0)
    assert max(unclipped) > 2 * c  # the raw gradients are well above c, so clipping has something to do
    clipped = run(c)
    assert all(n <= c + 1e-4 for n in clipped), clipped
    assert max(clipped) > 0.9 * c  # clipped to c, not zeroed


def _recurrent_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.rnn.named_parameters() if n.startswith("weight")])


def _fit_sine(**penalty: float) -> torch.Tensor:
    """One epoch of 32 steps on `sine` with a fixed seed (one epoch: the returned model is the last step's)."""
    task = get_task("sine")
    cfg = TrainConfig(epochs=1, n_train=256, n_val=16, max_len=12, batch_size=8, lr=1e-2, seed=0, **penalty)
    model, _ = fit(model_config_for(task, cell="gru", hidden_size=16), task, cfg, progress=False)
    return _recurrent_weights(model)


def _fraction_near_zero(w: torch.Tensor) -> float:
    return float((w.abs() < 1e-3).float().mean())


def test_l1_penalty_shrinks_weights_towards_zero() -> None:
    plain = _fit_sine()
    sparse = _fit_sine(l1=1e-2)
    assert plain.shape == sparse.shape and not torch.equal(plain, sparse)
    # same seed, data and steps: the penalty alone makes the total |w| far smaller ...
    assert float(sparse.abs().sum()) < 0.5 * float(plain.abs().sum())
    # ... and puts clearly more weights at (about) zero
    assert _fraction_near_zero(sparse) > _fraction_near_zero(plain) + 0.03


def test_weight_decay_shrinks_the_weight_norm() -> None:
    plain = _fit_sine()
    decayed = _fit_sine(weight_decay=1.0)
    assert float(torch.linalg.vector_norm(decayed)) < 0.5 * float(torch.linalg.vector_norm(plain))


def test_classification_metric_is_the_accuracy_of_the_returned_model() -> None:
    task = get_task("sign")
    cfg = TrainConfig(epochs=2, n_train=128, n_val=50, max_len=12, patience=0, seed=4)
    model, hist = fit(model_config_for(task, cell="gru", hidden_size=8), task, cfg, progress=False)
    assert hist.metric == "accuracy" and hist.best_metric == max(hist.val_metric)
    # the validation split as fit makes it: same seed, sizes and lengths
    _, val = make_splits(
        task, n_train=cfg.n_train, n_val=cfg.n_val, min_len=cfg.min_len, max_len=cfg.max_len, seed=cfg.seed
    )
    b = collate(val)
    with torch.no_grad():
        logits = model(torch.from_numpy(b.x), torch.from_numpy(b.lengths)).numpy()
    assert logits.shape == (cfg.n_val, 2)
    accuracy = float((logits.argmax(-1) == b.y).mean())
    assert hist.best_metric == pytest.approx(accuracy, abs=1e-12)
    assert round(hist.best_metric * cfg.n_val) == pytest.approx(hist.best_metric * cfg.n_val)  # k of 50 correct


def test_bad_train_config() -> None:
    with pytest.raises(ConfigError, match="init"):
        TrainConfig(init="zeros")
    with pytest.raises(ConfigError):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="task"):
        get_task("imagenet")
    assert list(batches([], 4)) == []


def test_memory_task_holds_one_symbol_over_the_lag() -> None:
    task = get_task("memory")
    examples = task.make(np.random.default_rng(3), 200, 30, 30)
    assert all(e.x.shape == (30, 5) for e in examples)
    for e in examples:
        assert e.x[0, :4].argmax() == int(e.y) and e.x[0, :4].sum() == 1.0  # the symbol, one-hot, at step 0
        assert e.x[-1, 4] == 1.0 and e.x[:-1, 4].sum() == 0  # the recall marker only at the end
        assert np.abs(e.x[1:-1, :4]).max() < 1.0  # distractors are never a clean symbol
    counts = np.bincount([int(e.y) for e in examples], minlength=4)
    assert counts.min() > 30  # the four classes, about evenly: chance is 25%


def test_memory_is_learned_by_a_gated_cell() -> None:
    task = get_task("memory")
    cfg = TrainConfig(epochs=12, batch_size=32, lr=1e-2, n_train=512, n_val=128, min_len=12, max_len=12, seed=0)
    _, hist = fit(model_config_for(task, cell="gru", hidden_size=16), task, cfg, progress=False)
    assert hist.best_metric > 0.9  # chance is 0.25


def _labelled(labels: np.ndarray, per_step: bool = False) -> Any:
    from edgernn.train.data import Example
    from edgernn.train.dataset import Dataset

    k = int(labels.max()) + 1
    examples = [
        Example(np.zeros((4, 1), np.float32), np.full(4, y, np.int64) if per_step else np.array(y, np.int64))
        for y in labels
    ]
    return Dataset(examples, 1, k, "classification", "all" if per_step else "last", "labels")


@pytest.mark.parametrize("classes", [2, 4])
def test_input_blind_baseline_is_never_below_chance_on_balanced_data(classes: int) -> None:
    """Balanced labels, held out at random: the training split's majority is the class validation holds fewest
    of, and scoring it there gave 0.146 on four classes; the baseline must be at least one over the classes."""
    from edgernn.train.dataset import split_off
    from edgernn.train.loop import baseline_metric

    labels = np.repeat(np.arange(classes), 20)
    below_with_training_majority = 0
    for seed in range(30):
        train, val = split_off(_labelled(labels), 0.2, seed)
        score = baseline_metric(train.task(), train.examples, val.examples)
        assert score >= 1 / classes, (seed, score)
        val_labels = np.array([int(e.y) for e in val.examples])
        assert score == np.bincount(val_labels, minlength=classes).max() / len(val_labels)
        majority = np.bincount([int(e.y) for e in train.examples]).argmax()
        below_with_training_majority += np.mean(val_labels == majority) < 1 / classes
    assert below_with_training_majority > 0  # the trap is real on these splits


@pytest.mark.parametrize("per_step", [False, True])
def test_input_blind_baseline_is_the_majority_share_on_imbalanced_data(per_step: bool) -> None:
    from edgernn.train.loop import baseline_metric

    train = _labelled(np.array([0] * 30 + [1] * 60 + [2] * 10), per_step)
    val = _labelled(np.array([0] * 6 + [1] * 12 + [2] * 2), per_step)
    assert baseline_metric(train.task(), train.examples, val.examples) == pytest.approx(12 / 20)


def test_input_blind_baseline_for_regression_answers_the_training_mean() -> None:
    from edgernn.train.data import Example
    from edgernn.train.loop import baseline_metric

    task = get_task("adding")
    train = [Example(np.zeros((3, 2), np.float32), np.array([v], np.float32)) for v in (1.0, 3.0)]  # mean 2
    val = [Example(np.zeros((3, 2), np.float32), np.array([v], np.float32)) for v in (2.0, 5.0)]
    assert baseline_metric(task, train, val) == pytest.approx((0.0 + 9.0) / 2)
