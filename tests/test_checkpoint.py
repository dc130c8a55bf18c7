"""Checkpoints round-trip, and loading one never executes code from the file."""

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from edgernn.errors import CheckpointError
from edgernn.model import checkpoint
from edgernn.model.zoo import ModelConfig, build_model


def test_round_trip(tmp_path: Path) -> None:
    model = build_model(ModelConfig(cell="gru", input_size=3, hidden_size=6, num_layers=2, bidirectional=True))
    path = checkpoint.save(tmp_path / "run" / "model.ckpt", model, {"task": "sine"})
    ck = checkpoint.load(tmp_path / "run")  # a directory resolves to its model.ckpt
    assert ck.config == model.config and ck.meta == {"task": "sine"}
    loaded = ck.model()
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {_Payload.marker}",))


def test_crafted_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    _Payload.marker = str(tmp_path / "pwned")  # type: ignore[attr-defined]
    evil = tmp_path / "evil.ckpt"
    buf = io.BytesIO()
    torch.save({"format": "edgernn-checkpoint", "state_dict": {}, "x": _Payload()}, buf)
    evil.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refusing"):
        checkpoint.load(evil)
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        checkpoint.load(plain)
    assert not (tmp_path / "pwned").exists()


def test_not_an_edgernn_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not an edgernn checkpoint"):
        checkpoint.load(p)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.ckpt")


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    model = build_model(ModelConfig(cell="lstm", input_size=3, hidden_size=6))
    checkpoint.save(tmp_path / "m.ckpt", model)
    payload = torch.load(tmp_path / "m.ckpt", weights_only=True)
    payload["config"]["hidden_size"] = 7
    torch.save(payload, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load(tmp_path / "m.ckpt").model()
