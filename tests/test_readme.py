"""Every example in the README runs as written: the shell blocks line by line, then the Python blocks, in one
empty folder, in the README's order (so the README cannot rot). A line whose comment says "exits N" must exit
with N; every other line must exit 0. The `pip install` lines are what CI's own install step runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)

# the user's own package that the README's `--module mypkg.nets:make` line refers to
MYPKG = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def make():
    torch.manual_seed(0)
    return Net()
"""


def _blocks() -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in BLOCK.findall(README)]


def _commands(text: str) -> list[tuple[str, int]]:
    out = []
    for line in text.splitlines():
        command = line.strip()
        if not command or command.startswith("#") or command.startswith("pip install"):
            continue
        expected = re.search(r"#\s*exits (\d+)", command)
        out.append((command, int(expected.group(1)) if expected else 0))
    return out


def test_readme_opens_with_the_two_commands() -> None:
    kind, first = _blocks()[0]
    lines = [ln for ln in first.splitlines() if ln.strip()]
    assert kind == "bash" and len(lines) == 2
    assert lines[0].startswith("pip install -e '.[torch]' && edgernn demo")
    assert lines[1].startswith("pip install -e '.[test]' && python -m pytest -q")
    assert "python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_every_readme_example_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(textwrap.dedent(MYPKG))
    subprocess.run(
        [sys.executable, "-c", "import torch; from mypkg.nets import make; torch.save(make().state_dict(), 'w.pt')"],
        cwd=tmp_path,
        check=True,
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # `--module` must find mypkg from the current folder, as it does for a user
    assert shutil.which("edgernn", path=env["PATH"]), "the edgernn command is not installed"
    ran = 0
    for kind, text in _blocks():
        if kind == "python":
            p = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert p.returncode == 0, f"README Python block failed:\n{text}\n{p.stderr[-2000:]}"
            ran += 1
            continue
        for command, expected in _commands(text):
            p = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert p.returncode == expected, (
                f"README line `{command}` exited {p.returncode}, expected {expected}:\n{p.stdout[-1500:]}\n"
                f"{p.stderr[-1500:]}"
            )
            if "traceback" in (p.stdout + p.stderr).lower():
                raise AssertionError(f"README line `{command}` printed a traceback:\n{p.stderr[-1500:]}")
            ran += 1
    assert ran >= 20  # the walk-through, targets, precision and Python blocks all ran
    assert (tmp_path / "mine.onnx").is_file() and (tmp_path / "ort-mobile" / "sine.ort").is_file()


def test_own_data_example_learns_beyond_its_baseline(tmp_path: Path) -> None:
    """The own-data example's data line and train line, as written: the model beats the input-blind baseline
    (the majority share) by a clear margin, so the example shows what learning looks like."""
    block = next(text for kind, text in _blocks() if kind == "bash" and "mydata.npz" in text)
    lines = [c for c, _ in _commands(block) if c.startswith("python -c") or c.startswith("edgernn train --data")]
    assert len(lines) == 2, lines
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = ""
    for command in lines:
        p = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"`{command}` exited {p.returncode}:\n{p.stderr[-1500:]}"
        out = p.stdout + p.stderr
    found = re.search(r"best accuracy ([\d.]+) at epoch \d+ \(input-blind baseline ([\d.]+)\)", out)
    assert found, out[-1500:]
    best, baseline = float(found.group(1)), float(found.group(2))
    assert 0.4 <= baseline <= 0.6  # two classes drawn evenly: the majority share of the validation split
    assert best >= baseline + 0.2, f"the README's own-data example does not learn: {best} vs baseline {baseline}"
