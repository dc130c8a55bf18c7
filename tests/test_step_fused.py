"""`step` with fused=True: ONNX RNN/LSTM/GRU operators carry the streamed state; chained calls equal one call."""

import numpy as np
import onnx
import pytest
import torch

from edgernn.errors import ExportError
from edgernn.export import export_model
from edgernn.model.cells import cell_names
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.runtime.stream import StreamingModel

OPS = {"rnn-tanh": "RNN", "rnn-relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("cell", cell_names())
def test_fused_step_streams_like_one_call(cell: str, chunk: int) -> None:
    torch.manual_seed(5)
    model = build_model(
        ModelConfig(
            cell=cell, input_size=3, hidden_size=6, num_layers=2, readout="all", output_size=2, peephole=cell == "lstm"
        )
    ).eval()
    res = export_model(model, None, strategy="step", chunk=chunk, fused=True)
    assert res.report is not None and res.report.passed, res.report.table()  # the export's own chained check
    ops = {n.op_type for n in onnx.load_from_string(res.model_bytes).graph.node}
    assert OPS[cell] in ops and not ops & {"Loop", "Scan", "If"}
    # and independently: a Stream fed 48 steps, K at a time, against one eager torch call
    x = np.random.default_rng(chunk).standard_normal((1, 48, 3)).astype(np.float32)
    stream = StreamingModel(res.model_bytes).stream()
    got = np.concatenate([stream.step(x[0, t : t + chunk]) for t in range(0, 48, chunk)], axis=0)
    with torch.no_grad():
        want = model(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)


def test_fused_step_refuses_projection() -> None:
    model = build_model(ModelConfig(cell="lstm", input_size=3, hidden_size=6, proj_size=3))
    with pytest.raises(ExportError, match="projection"):
        export_model(model, None, strategy="step", fused=True)
    assert export_model(model, None, strategy="step").report.passed  # the unfused step exports it


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_form_follows_the_target_unless_asked(cell: str) -> None:
    """Not asked for, the step is ONNX's recurrent ops for onnxruntime (its fastest form) and plain ops for a
    target whose runtime cannot partition them; fused=False keeps the plain form for onnxruntime too."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(cell=cell, input_size=3, hidden_size=6, num_layers=2, readout="all")).eval()

    def ops(**kw: object) -> set[str]:
        res = export_model(model, None, strategy="step", **kw)
        assert res.report is not None and res.report.passed, res.report.table()
        return {n.op_type for n in onnx.load_from_string(res.model_bytes).graph.node}

    assert OPS[cell] in ops()  # target ort by default
    assert OPS[cell] in ops(target="ort")
    assert OPS[cell] not in ops(target="ort", fused=False)
    assert OPS[cell] not in ops(target="nnapi")
    assert OPS[cell] not in ops(target="tract")


def test_a_projected_lstm_stays_plain_for_onnxruntime() -> None:
    """ONNX's LSTM has no projection: not asked for, such a layer's step is the plain form (not an error)."""
    model = build_model(ModelConfig(cell="lstm", input_size=3, hidden_size=6, proj_size=3, readout="all")).eval()
    res = export_model(model, None, strategy="step")
    assert res.report is not None and res.report.passed
    assert "LSTM" not in {n.op_type for n in onnx.load_from_string(res.model_bytes).graph.node}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_step_regroups_each_layer_output_with_one_squeeze(cell: str) -> None:
    """A forward recurrent op's output (T, 1, B, H) reaches the next layer by one Squeeze, not Transpose +
    Reshape: fewer nodes per step, the same values (the export's chained check against torch passes)."""
    torch.manual_seed(2)
    model = build_model(ModelConfig(cell=cell, input_size=3, hidden_size=6, num_layers=3, readout="all")).eval()
    res = export_model(model, None, strategy="step", fused=True)
    assert res.report is not None and res.report.passed, res.report.table()
    ops = [n.op_type for n in onnx.load_from_string(res.model_bytes).graph.node]
    assert ops.count(OPS[cell]) == 3 and "Transpose" not in ops, ops
