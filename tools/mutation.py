#!/usr/bin/env python3
"""Do the tests notice when the code is wrong? A sampled mutation run over edgernn's core modules.

Each mutant is one small change to one module (a comparison flipped, an operator swapped, a constant or a slice
bound moved, a condition negated), made in a copy of the package: the working tree is never touched. The tests
that exercise the module run against the copy (``PYTHONPATH`` puts it first, so the CLI the tests start sees it too);
a mutant is killed when they fail or hang. The sample is fixed by ``--seed``, so two runs on the same tree test
the same mutants.

    python tools/mutation.py                         # every core module, 20 mutants each, seed 2026
    python tools/mutation.py --module model/cell_ops.py --sample 40 --json
    python tools/mutation.py --equivalent docs/mutation-equivalent.txt
    python tools/mutation.py --module verify/parity.py --tests tests/test_parity_mutants.py   # the fast tests only

A surviving mutant is either a gap in the tests or equivalent to the original (no input can tell them apart).
Judge that by reading; list the equivalent ones (their ids, one per line, ``#`` comments allowed) in the file
given to ``--equivalent`` so that the kill rate counts only the mutants a test could catch. Not part of CI: it
runs the module's tests once per mutant. The results and how to read them: docs/mutation.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the core modules, and the tests that exercise each (the files that import it and check its numbers)
MODULES: dict[str, list[str]] = {
    "model/cell_ops.py": ["tests/test_cell_ops.py"],
    "model/nn.py": ["tests/test_nn.py", "tests/test_cell_ops.py"],
    "verify/parity.py": ["tests/test_parity_mutants.py", "tests/test_parity_honesty.py", "tests/test_parity_tool.py"],
    "runtime/stream.py": [
        "tests/test_stream.py",
        "tests/test_stream_models.py",
        "tests/test_stream_constants.py",
        "tests/test_hostile_runtime.py",
    ],
    "rewrite/onnx_unroll.py": ["tests/test_onnx_unroll.py"],
    "optimize/quantize.py": [
        "tests/test_quantize_mutants.py",
        "tests/test_precision.py",
        "tests/test_weight_only.py",
        "tests/test_scan_form.py",
    ],
    "train/loop.py": ["tests/test_train_mutants.py", "tests/test_train.py"],
}

_COMPARE_SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINOP_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.MatMult: ast.Mult,
}
_BOOL_SWAPS: dict[type, type] = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    col: int
    what: str  # e.g. "< -> <=", "1 -> 2"
    index: int  # the site's position among the module's sites, which the mutation is re-found by

    @property
    def id(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.what}"


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """Constants that are docstrings: changing them changes nothing a test could see."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str, object]]:
    """Every place a mutation applies, in a fixed order: (node, description, how to apply)."""
    skip = _docstring_nodes(tree)
    sites: list[tuple[ast.AST, str, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                new = _COMPARE_SWAPS.get(type(op))
                if new is not None:
                    sites.append((node, f"{_sym(op)} -> {_sym(new())}", ("compare", k, new)))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
            new = _BINOP_SWAPS[type(node.op)]
            sites.append((node, f"{_sym(node.op)} -> {_sym(new())}", ("binop", new)))
        elif isinstance(node, ast.BoolOp):
            new = _BOOL_SWAPS[type(node.op)]
            sites.append((node, f"{_sym(node.op)} -> {_sym(new())}", ("boolop", new)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "not x -> x", ("unnot",)))
        elif (
            isinstance(node, ast.Constant)
            and id(node) not in skip
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            new_value = node.value + 1 if node.value in (0, -1) or isinstance(node.value, int) else node.value * 1.5
            sites.append((node, f"{node.value!r} -> {new_value!r}", ("const", new_value)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append((node, f"{node.value} -> {not node.value}", ("const", not node.value)))
    return sites


def _sym(op: ast.AST) -> str:
    return {
        ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
        ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
        ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.And: "and", ast.Or: "or",
    }.get(type(op), type(op).__name__)  # fmt: skip


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, how: tuple) -> None:
        self.target, self.how = target, how

    def visit(self, node: ast.AST) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if node is not self.target:
            return node
        kind = self.how[0]
        if kind == "compare":
            _, k, new = self.how
            node.ops[k] = new()  # type: ignore[attr-defined]
        elif kind in ("binop", "boolop"):
            node.op = self.how[1]()  # type: ignore[attr-defined]
        elif kind == "unnot":
            return node.operand  # type: ignore[attr-defined]
        elif kind == "const":
            node.value = self.how[1]  # type: ignore[attr-defined]
        return node


def mutants(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / "edgernn" / module).read_text())
    return [
        Mutant(module, getattr(n, "lineno", 0), getattr(n, "col_offset", 0), what, i)
        for i, (n, what, _) in enumerate(_sites(tree))
    ]


def mutated_source(m: Mutant) -> str:
    tree = ast.parse((ROOT / "edgernn" / m.module).read_text())
    node, _, how = _sites(tree)[m.index]
    tree = _Apply(node, how).visit(tree)  # type: ignore[arg-type]
    return ast.unparse(ast.fix_missing_locations(tree))


def run_tests(package_parent: Path, tests: list[str], timeout: float) -> str:
    """'killed' (the tests failed, or the mutant broke the import), 'timeout' (counted as killed: a user would
    notice a hang) or 'survived'."""
    env = {**os.environ, "PYTHONPATH": f"{package_parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # no bytecode cache: a mutant of the same size written within the same second as the last one would otherwise
    # be run from the last one's cached bytecode (Python checks a source's size and mtime in whole seconds)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for cache in package_parent.rglob("__pycache__"):
        shutil.rmtree(cache)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]  # every parameter set: no -m
    cmd += ["--rootdir", str(ROOT), *(str(ROOT / t) for t in tests)]
    try:  # run from the copy's folder: `python -m` puts the working folder first on sys.path
        proc = subprocess.run(cmd, cwd=package_parent, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if proc.returncode == 0 else "killed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--module", action="append", choices=sorted(MODULES), help="a module (default: every core one)")
    ap.add_argument("--sample", type=int, default=20, help="mutants per module (default 20; 0: all of them)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    ap.add_argument("--equivalent", type=Path, help="ids of mutants judged equivalent by reading")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--tests",
        nargs="+",
        metavar="FILE",
        help="run only these test files (default: the tests that exercise the module)",
    )
    a = ap.parse_args()
    if a.sample < 0:
        ap.error("--sample must be >= 0")
    equivalent: set[str] = set()
    if a.equivalent:
        for line in a.equivalent.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                equivalent.add(line)
    rng = random.Random(a.seed)
    results: list[dict] = []
    table: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgernn-mutants-") as tmp:
        parent = Path(tmp)
        pkg = parent / "edgernn"
        shutil.copytree(ROOT / "edgernn", pkg, ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": f"{parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        where = subprocess.run(
            [sys.executable, "-c", "import edgernn; print(edgernn.__file__)"],
            cwd=parent, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not where.startswith(str(pkg)):  # the tests would test the working tree, not the mutants
            print(f"error: the tests import edgernn from {where}, not from the mutated copy", file=sys.stderr)
            return 1
        for module in a.module or list(MODULES):
            every = mutants(module)
            chosen = every if a.sample == 0 or a.sample >= len(every) else rng.sample(every, a.sample)
            chosen.sort(key=lambda m: m.index)
            original = (pkg / module).read_text()
            tests = a.tests or MODULES[module]
            if run_tests(parent, tests, a.timeout) != "survived":  # the unmutated code must pass
                print(f"error: {module}'s tests fail without a mutant: fix them first", file=sys.stderr)
                return 1
            counts = {"killed": 0, "survived": 0, "timeout": 0, "equivalent": 0}
            print(f"{module}: {len(chosen)} of {len(every)} mutants", file=sys.stderr, flush=True)
            try:
                for k, m in enumerate(chosen, 1):
                    if m.id in equivalent:
                        verdict = "equivalent"
                    else:
                        (pkg / module).write_text(mutated_source(m))
                        t0 = time.monotonic()
                        verdict = run_tests(parent, tests, a.timeout)
                        took = time.monotonic() - t0
                        print(
                            f"  [{k}/{len(chosen)}] line {m.line}:{m.col} {m.what}: {verdict} ({took:.0f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
                    counts[verdict] += 1
                    results.append({**asdict(m), "id": m.id, "verdict": verdict})
            finally:
                (pkg / module).write_text(original)
            judged = counts["killed"] + counts["timeout"] + counts["survived"]
            rate = (counts["killed"] + counts["timeout"]) / judged if judged else float("nan")
            table.append({"module": module, "sampled": len(chosen), "sites": len(every), **counts, "kill_rate": rate})
    if a.json:
        print(json.dumps({"seed": a.seed, "table": table, "mutants": results}, indent=2))
    else:
        print(f"seed {a.seed}")
        print("| module | sampled / sites | killed | survived | equivalent | kill rate |")
        print("|---|---|---|---|---|---|")
        for r in table:
            print(
                f"| {r['module']} | {r['sampled']} / {r['sites']} | {r['killed'] + r['timeout']} | {r['survived']} "
                f"| {r['equivalent']} | {r['kill_rate']:.0%} |"
            )
        survivors = [r for r in results if r["verdict"] == "survived"]
        if survivors:
            print("\nsurvivors (a gap in the tests, or equivalent: read each):")
            for r in survivors:
                print(f"  {r['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
