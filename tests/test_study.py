"""edgernn study gradients: the norm of dloss/dh_t against the lag, checked against what it must be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgernn.cli.main import main
from edgernn.errors import ConfigError
from edgernn.model.zoo import build_model
from edgernn.train.data import get_task
from edgernn.train.loop import _loss, model_config_for
from edgernn.train.study import gradient_norms, study_gradients


def test_the_last_step_gets_the_heads_gradient() -> None:
    """At lag 0 (readout of the last state) dloss/dh_T is the head's weight times dloss/dout, per sequence."""
    torch.manual_seed(0)
    task = get_task("adding")
    model = build_model(model_config_for(task, cell="gru", hidden_size=8))
    examples = task.make(np.random.default_rng(0), 5, 12, 12)
    norms = gradient_norms(model, task, examples)
    from edgernn.train.data import collate

    b = collate(examples)
    with torch.no_grad():
        out = model(torch.from_numpy(b.x))
    out = out.clone().requires_grad_(True)
    _loss(task, out, b).backward()
    per_seq = (out.grad @ model.head.weight).norm(dim=-1).detach()
    assert norms.shape == (12,)
    assert norms[-1] == pytest.approx(float(per_seq.mean()), rel=1e-5)


def test_no_recurrent_weight_no_gradient_back() -> None:
    """With the recurrent weights at zero, nothing before the last step reaches the loss: exactly zero."""
    torch.manual_seed(1)
    task = get_task("adding")
    model = build_model(model_config_for(task, cell="rnn-tanh", hidden_size=8))
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
    norms = gradient_norms(model, task, task.make(np.random.default_rng(1), 4, 10, 10))
    assert norms[-1] > 0 and np.all(norms[:-1] == 0)


def test_study_by_lag_and_refusals() -> None:
    r = study_gradients("adding", cells=["rnn-tanh", "lstm"], seq_len=40, hidden=8, batch=8)
    assert r["lags"] == list(range(40)) and set(r["norms"]) == {"rnn-tanh", "lstm"}
    for name, curve in r["norms"].items():
        assert len(curve) == 40 and curve[0] > 0
        assert r["fall"][name] == pytest.approx(curve[-1] / curve[0])
        assert curve[-1] < curve[0]  # at initialisation the gradient falls with the lag, for every cell
    with pytest.raises(ConfigError, match="at least 2"):
        study_gradients("adding", seq_len=1)


def test_cli_study_gradients(tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    args = ["study", "gradients", "--seq-len", "30", "--hidden", "8", "--batch", "4", "--plot", str(png)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "lag 29" in r.output and "rnn-tanh" in r.output and png.read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(main, [*args[:-2], "--cells", "gru", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert list(d["norms"]) == ["gru"] and len(d["norms"]["gru"]) == 30
