"""Exit codes mean one thing in every command: the README's table and the `--help` epilog list the same codes with
the same meanings, every typed error's code is in them, and each code is reached by a real case."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgernn import errors
from edgernn.cli.main import EXIT_CODES, main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table() -> dict[int, str]:
    """code -> meaning, from the table under the README's "Exit codes" heading."""
    text = README.read_text()
    section = text.split("### Exit codes", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, flags=re.MULTILINE)
    return {int(code): meaning.strip() for code, meaning in rows}


def epilog_table() -> dict[int, str]:
    """code -> meaning, from the --help epilog (its parenthetical hints left out)."""
    body = " ".join(EXIT_CODES.split()).removeprefix("Exit codes:").strip().rstrip(".")
    out = {}
    for item in body.split(";"):
        code, meaning = item.strip().split(" ", 1)
        out[int(code)] = re.sub(r"\s*\(.*\)$", "", meaning).strip()
    return out


def test_the_readme_table_and_the_help_epilog_agree() -> None:
    table, epilog = readme_table(), epilog_table()
    assert table and set(table) == set(epilog), (table, epilog)
    for code, meaning in epilog.items():
        assert table[code].startswith(meaning), (code, table[code], meaning)
    r = CliRunner().invoke(main, ["--help"])
    assert " ".join(EXIT_CODES.split()) in " ".join(r.output.split())


def test_every_typed_error_has_its_code_in_the_table() -> None:
    codes = {
        cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.EdgeRNNError)
    }
    assert codes <= set(readme_table()), codes - set(readme_table())


def _add_model(path: Path, w: float) -> Path:
    """A model that is not edgernn's: y (1, 4) = x (1, 4) + w."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    init = numpy_helper.from_array(np.full(4, w, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [init])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("exits")
    args = ["train", "--hidden", "4", "--epochs", "1", "--n-train", "32", "--out", str(d / "run")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    np.save(d / "wide.npy", np.zeros((1, 5), np.float32))
    return {"dir": d, "run": d / "run", "a": _add_model(d / "a.onnx", 1.0), "b": _add_model(d / "b.onnx", 2.0)}


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


CASES = [
    (0, lambda f: ["run", str(f["a"]), "--random", "--output", "-"], "# y (1, 4)"),
    (2, lambda f: ["export", str(f["run"]), "--strategy", "loop", "--seq-len", "9", "--out", str(f["dir"] / "m.onnx")],
     "does not take --seq-len"),
    (3, lambda f: ["export", str(f["dir"] / "none"), "--out", str(f["dir"] / "m.onnx")], "no checkpoint at"),
    (4, lambda f: ["export", str(f["run"]), "--strategy", "native", "--opset", "99", "--out", str(f["dir"] / "m.onnx")],
     "supports opset"),
    (5, lambda f: ["parity", str(f["a"]), str(f["b"])], "parity FAIL"),
    (6, lambda f: ["inspect", str(f["dir"] / "none.onnx")], "no model file at"),
    (7, lambda f: ["run", str(f["a"]), "--input", str(f["dir"] / "wide.npy"), "--output", str(f["dir"] / "y.npy")],
     "axis 1 must be 4"),
    (8, lambda f: ["run", str(f["a"]), "--random", "--output", "-", "--provider", "cuda"], "not available"),
    (9, lambda f: ["export", str(f["run"]), "--target", "nnapi", "--strategy", "native", "--out",
                   str(f["dir"] / "m.onnx")], "Use one of the strategies unroll, step"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "args", "says"), CASES, ids=[str(c[0]) for c in CASES])
def test_each_code_from_a_real_case(code: int, args, says: str, files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    if code == 8 and _cuda():
        pytest.skip("this onnxruntime build has CUDA: no provider to ask for that is missing")
    assert code in readme_table()
    r = CliRunner().invoke(main, args(files))
    assert r.exit_code == code, r.output
    assert says in r.output, r.output
    assert "Traceback" not in r.output
    assert not (files["dir"] / "m.onnx").exists()  # a refusal writes nothing


def test_10_a_named_target_whose_engine_is_missing(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    r = CliRunner().invoke(main, ["check", str(files["a"]), "--target", "openvino"])
    assert r.exit_code == 10 and "not installed" in r.output, r.output


def test_70_is_a_bug_not_bad_input(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """No bad input gives 70 (the cases above each get their own code); an error edgernn did not foresee does,
    as one line."""
    import edgernn.verify.inspect as inspect_mod

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(inspect_mod, "inspect_model", broken)
    r = CliRunner().invoke(main, ["inspect", str(files["a"])])
    assert r.exit_code == 70 and "internal error: RuntimeError: a bug" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
