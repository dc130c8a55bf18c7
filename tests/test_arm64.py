"""A device CPU in the loop: fp32 exports of the three cells are verified in an emulated aarch64 Debian root
(qemu-user, tools/arm64), and the aarch64 onnxruntime's outputs are compared with this machine's on the same inputs.

Runs where the machine allows it (root user, the qemu-aarch64 binfmt_misc handler, and debootstrap or a root already
built at $EDGERNN_ARM64_ROOT / ~/.cache/edgernn/arm64-root); builds the root when it is missing (a few minutes, once)
and skips with the reason otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "arm64"))

import check  # noqa: E402
import device  # noqa: E402

# the quick run (-m "not slow") leaves these out: an emulated aarch64 root takes minutes under qemu
pytestmark = pytest.mark.slow


def _need_device() -> None:
    ok, why = device.machine_status()
    if not ok:
        pytest.skip(f"the emulated aarch64 device cannot run on this machine: {why}")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[check.Report, Path]:
    """tools/arm64/check.py's check: rnn-tanh, lstm and gru (2 layers, hidden 32), native and step, fp32."""
    _need_device()
    out = tmp_path_factory.mktemp("arm64")
    return check.check(check.CELLS, check.STRATEGIES, out=out), out


def test_the_root_is_aarch64_and_has_no_torch() -> None:
    _need_device()
    code = "import platform, importlib.util as u, onnxruntime; print(platform.machine(), u.find_spec('torch') is None)"
    r = device.run_python(["-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", "True"]


def test_verify_exits_0_in_the_root_for_each_cell_and_strategy(report: tuple[check.Report, Path]) -> None:
    rep, _ = report
    assert {(f.cell, f.strategy) for f in rep.files} == {(c, s) for c in check.CELLS for s in check.STRATEGIES}
    for f in rep.files:
        assert f.verify_rc == 0, f"{f.file}: {f.verify_output}"
        # verify's own comparison with the x86 torch outputs in the golden file: real numbers, inside fp32's 1e-5
        assert f.verify_max_abs_vs_torch is not None and 0 < f.verify_max_abs_vs_torch < 1e-5, f.file


def test_aarch64_outputs_match_x86_within_the_bound(report: tuple[check.Report, Path]) -> None:
    rep, _ = report
    # check.ARM_VS_X86_BOUND = 1e-6: the same onnxruntime version on both sides; outputs of order 1, where one fp32
    # ulp is 1.2e-7, may move by a few ulps between NEON and AVX kernels (other FMA and summation orders), and the
    # recurrence does not grow that; 1e-6 is a tenth of verify's fp32 tolerance, so a larger gap is not rounding
    assert check.ARM_VS_X86_BOUND == 1e-6
    for f in rep.files:
        assert f.values > 0, f.file
        assert f.arm_vs_x86_max_abs is not None and f.arm_vs_x86_max_abs <= check.ARM_VS_X86_BOUND, f.file
    assert rep.passed


def test_verify_in_the_root_fails_on_a_golden_of_other_weights(report: tuple[check.Report, Path]) -> None:
    """The check can fail: the lstm model against the gru's golden file exits 5 (parity) on the device."""
    _, out = report
    r = device.verify(out / "lstm-native.onnx", out / "gru-native.golden.npz", prepare=False)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "other weights" in r.stdout + r.stderr


def test_run_places_files_and_collects_what_the_command_writes(tmp_path: Path) -> None:
    _need_device()
    src = tmp_path / "in.txt"
    src.write_text("21")
    code = "open('sub/out.txt', 'w').write(str(2 * int(open('data/in.txt').read())))"
    args: dict[str, Any] = {"collect": tmp_path / "back", "prepare": False}
    device.ensure_root()
    r = device.run_python(["-c", f"import os; os.mkdir('sub'); {code}"], {"data/in.txt": src}, **args)
    assert r.returncode == 0, r.stderr
    assert set(r.collected) == {"sub/out.txt"}
    assert (tmp_path / "back" / "sub" / "out.txt").read_text() == "42"
