"""The `native` strategy: parity of exported zoo models, the manifest, atomic and verified writes."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgernn.errors import ParityError
from edgernn.export import export_model
from edgernn.manifest import read_manifest
from edgernn.model import layout as layout_mod
from edgernn.model.cells import cell_names
from edgernn.model.zoo import ModelConfig, build_model
from edgernn.runtime import Model
from edgernn.verify.parity import TOLERANCES, Case


@pytest.mark.parametrize("cell", cell_names())
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_native_parity(cell: str, layers: int, bidirectional: bool, tmp_path: Path) -> None:
    torch.manual_seed(layers)
    model = build_model(
        ModelConfig(
            cell=cell, input_size=3, hidden_size=8, num_layers=layers, bidirectional=bidirectional, output_size=2
        )
    )
    result = export_model(model, tmp_path / "m.onnx", strategy="native")
    report = result.report
    assert report is not None and report.passed, report.table()
    # torch vs onnxruntime and torch vs the numpy oracle, at every default case, including a padded batch
    assert {c.candidate for c in report.comparisons} == {"onnxruntime:cpu", "numpy"}
    assert "B=3 T=17 padded" in {c.case for c in report.comparisons}
    assert report.max_abs < TOLERANCES["fp32"].atol
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"RNN", "LSTM", "GRU"} & ops


def test_bidirectional_gru_traced_once_matches_at_other_shapes(tmp_path: Path) -> None:
    """The issue's acceptance case: 2-layer bidirectional GRU, compared here independently of the export check."""
    torch.manual_seed(7)
    model = build_model(ModelConfig(cell="gru", input_size=4, hidden_size=16, num_layers=2, bidirectional=True)).eval()
    export_model(model, tmp_path / "gru.onnx", strategy="native")
    m = Model(tmp_path / "gru.onnx")
    rng = np.random.default_rng(0)
    for batch, length in [(1, 1), (3, 17), (2, 257)]:
        x = rng.standard_normal((batch, length, 4)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(m.run(x), want, atol=1e-5, rtol=0)


def test_manifest_contents(tmp_path: Path) -> None:
    model = build_model(ModelConfig(cell="lstm", input_size=2, hidden_size=5, num_layers=2))
    export_model(model, tmp_path / "m.onnx", strategy="native")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    man = read_manifest({p.key: p.value for p in proto.metadata_props})
    assert (man.strategy, man.cell, man.num_layers, man.hidden_size, man.bidirectional) == (
        "native",
        "lstm",
        2,
        5,
        False,
    )
    assert [i.name for i in man.inputs] == ["x", "lengths"]
    assert man.inputs[0].shape == ["batch", "time", 2]
    assert man.parity["passed"] is True and man.parity["max_abs"] < 1e-5
    assert len(man.weights_sha256) == 64
    assert man.opset == 18 and man.model_config["cell"] == "lstm"
    # the dynamic axes are really dynamic in the graph
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 2


def test_failed_parity_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong gate permutation (a real class of exporter bug) must fail the export and leave the old file alone."""
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")
    real = layout_mod.onnx_weights

    def swapped(layer):  # type: ignore[no-untyped-def]
        out = real(layer)
        h = layer.hidden_size
        w = out[0].W.clone()
        w[:, :h], w[:, h : 2 * h] = out[0].W[:, h : 2 * h], out[0].W[:, :h]
        return [layout_mod.LayerWeights(w, o.R, o.B, o.P, o.Wr) for o in out[:1]] + out[1:]

    monkeypatch.setattr("edgernn.export.core.onnx_weights", swapped)
    model = build_model(ModelConfig(cell="lstm", input_size=2, hidden_size=5))
    with pytest.raises(ParityError, match="Nothing was written") as err:
        export_model(model, target, strategy="native")
    assert err.value.report is not None and not err.value.report.passed
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind


def test_no_verify_records_that_it_was_skipped(tmp_path: Path) -> None:
    model = build_model(ModelConfig(cell="gru", input_size=2, hidden_size=4))
    result = export_model(model, tmp_path / "m.onnx", verify=False, strategy="native")
    assert result.report is None
    assert result.manifest.parity["passed"] is None and "no-verify" in result.manifest.parity["skipped"]


def test_custom_cases(tmp_path: Path) -> None:
    model = build_model(ModelConfig(cell="rnn-relu", input_size=2, hidden_size=4))
    result = export_model(model, None, cases=[Case(5, 3), Case(2, 2, padded=True)], strategy="native")
    assert result.path is None and result.report is not None
    assert {c.case for c in result.report.comparisons} == {"B=5 T=3", "B=2 T=2 padded"}
