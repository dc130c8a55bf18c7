"""edgernn's streaming step and whole sequence against the other engines a model could run on, in one process.

The model is a keyword-spotting / voice-activity shape: a 2-layer LSTM (and a GRU of the same size), input 40,
hidden 128, a Linear(128, 12) head on every step. Two calls are timed:

* the streaming step: one frame (1, 1, 40) and the states in, the output and the states out, the states fed back
  call after call (what a device runs);
* the sequence: batch 1, T=100 steps from the zero state.

Candidates, each with one thread:

    edgernn      step: ``StreamingModel(step export).stream().step``; sequence: onnxruntime on the `native` export
    ort_bound    step only: a bare ``session.run_with_iobinding`` on pre-bound buffers of the same step file, with
                 one RunOptions made beforehand (the floor of any onnxruntime caller)
    torch        torch eager (the edgernn model itself)
    executorch   ExecuTorch with the XNNPACK delegate: torch.export -> to_edge_transform_and_lower -> .pte
                 (the `bench-anchors` extra: pip install 'edgernn[bench-anchors]'); the lowering runs in a child
                 process given --lower-budget seconds (past it: "not measured", naming the cached lowerings of the
                 same model at other T), and its .pte is kept in --cache (~/.cache/edgernn/anchors), named by a
                 hash of the module, its weights, the input shapes and the versions, so a run pays it once
    tract        tract on edgernn's export for target tract
    openvino     OpenVINO's CPU plugin on edgernn's export for target openvino, inputs and outputs shared

Every candidate is checked against torch eager (max abs diff within 1e-5, over chained steps for the step) before
it is timed; one that fails its check is reported with the difference and not timed, and one whose package is not
installed is reported as missing. Timings interleave the candidates round by round (``in_turns``): each round
times ``--calls`` calls of every candidate; the figure is the median of the rounds' means, with the fastest and
slowest round. The machine is shared: compare ratios within one run, and look at the load it reports.

    python benchmarks/anchors.py               # table
    python benchmarks/anchors.py --markdown    # the section for docs/benchmarks.md
    python benchmarks/anchors.py --json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgernn.verify.bench import Spread, in_turns, machine_info, machine_load  # noqa: E402

CANDIDATES = ("edgernn", "ort_bound", "torch", "executorch", "tract", "openvino")
PACKAGES = {"executorch": "executorch", "tract": "tract", "openvino": "openvino"}
EXTRAS = {"executorch": "bench-anchors", "tract": "tract", "openvino": "openvino"}
TOLERANCE = 1e-5
CHECK_STEPS = 8


class Missing(Exception):
    """The candidate's package is not installed."""


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    clock = time.perf_counter
    t = clock()
    for _ in range(calls):
        fn()
    return (clock() - t) / calls * 1e6


# -- the model --------------------------------------------------------------------------------------------------


def build(cell: str, features: int, hidden: int, layers: int, outputs: int) -> Any:
    import torch

    from edgernn.model.zoo import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        cell=cell, input_size=features, hidden_size=hidden, num_layers=layers, readout="all", output_size=outputs
    )
    return build_model(cfg).eval()


def plain_twin(model: Any) -> Any:
    """The model as plain torch modules (torch.nn.LSTM/GRU + Linear, same weights), stepping with its states as
    inputs and outputs: what torch.export and ExecuTorch take."""
    import torch
    from torch import nn

    rnn = model.rnn
    cls = nn.LSTM if rnn.mode == "LSTM" else nn.GRU
    twin_rnn = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, batch_first=True)
    twin_rnn.load_state_dict(rnn.state_dict())
    head = model.head
    lstm = cls is nn.LSTM

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = twin_rnn, head

        def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
            y, st = self.rnn(x, (state[0], state[1]) if lstm else state[0])
            return (self.head(y), *(st if lstm else (st,)))

    return Step().eval()


def zero_states(model: Any) -> list[np.ndarray]:
    rnn = model.rnn
    n = 2 if rnn.mode == "LSTM" else 1
    return [np.zeros((rnn.num_layers, 1, rnn.hidden_size), np.float32) for _ in range(n)]


# -- step candidates: objects with reset() and step(frame) -> y ------------------------------------------------------


class TorchStep:
    def __init__(self, model: Any) -> None:
        import torch

        self.torch, self.model = torch, model
        self.reset()

    def reset(self) -> None:
        self.state: Any = None

    def step(self, frame: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            y, self.state = self.model.rnn(self.torch.from_numpy(frame), self.state)
            return self.model.head(y).numpy()


class EdgernnStep:
    def __init__(self, path: Path) -> None:
        from edgernn.runtime import StreamingModel

        self.sm = StreamingModel(path, provider="cpu", threads=1)
        self.reset()

    def reset(self) -> None:
        self.stream = self.sm.stream()

    def step(self, frame: np.ndarray) -> np.ndarray:
        return self.stream.step(frame[0])


class BoundStep:
    """What a hand-written onnxruntime caller does at best: two IOBindings whose state buffers swap."""

    def __init__(self, path: Path, states: list[np.ndarray]) -> None:
        from edgernn.runtime import StreamingModel
        from edgernn.runtime.model import run_options

        sm = StreamingModel(path, provider="cpu", threads=1)
        self.sess, self.sm = sm.session, sm
        import onnxruntime as ort

        self.options = run_options()  # what edgernn gives every call (edgernn.runtime.model.run_options)

        ov = ort.OrtValue.ortvalue_from_numpy
        self.x = np.zeros((1, 1, sm.features or 1), np.float32)
        self.pp = [[s.copy() for s in states], [s.copy() for s in states]]
        probe = self.sess.run(
            None, {sm.data.name: self.x, **{st.input: s for st, s in zip(sm.states, states, strict=True)}}
        )
        self.outs = {o.name: np.zeros_like(probe[o.index]) for o in sm.outputs}
        self.io = []
        for cur in (0, 1):
            io = self.sess.io_binding()
            io.bind_ortvalue_input(sm.data.name, ov(self.x))
            for j, st in enumerate(sm.states):
                io.bind_ortvalue_input(st.input, ov(self.pp[cur][j]))
                io.bind_ortvalue_output(st.output, ov(self.pp[1 - cur][j]))
            for name, buf in self.outs.items():
                io.bind_ortvalue_output(name, ov(buf))
            self.io.append(io)
        self.primary = self.outs[sm.outputs[0].name]
        self.cur = 0

    def reset(self) -> None:
        for buf in self.pp[self.cur]:
            buf.fill(0)

    def step(self, frame: np.ndarray) -> np.ndarray:
        np.copyto(self.x, frame)
        self.sess.run_with_iobinding(self.io[self.cur], self.options)
        self.cur ^= 1
        return self.primary  # not copied: the floor

    def bare(self) -> None:
        """The timed call: only the bound run (the frame stays where it is)."""
        self.sess.run_with_iobinding(self.io[self.cur], self.options)
        self.cur ^= 1


class FeedStep:
    """An engine called with (frame, *states) returning (y, *states)."""

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], states: list[np.ndarray]) -> None:
        self.run, self.zeros = run, states
        self.reset()

    def reset(self) -> None:
        self.state = [s.copy() for s in self.zeros]

    def step(self, frame: np.ndarray) -> np.ndarray:
        out = self.run([frame, *self.state])
        self.state = list(out[1:])
        return out[0]


def executorch_lowered(net: Any, example: tuple[Any, ...]) -> bytes:
    """The ``.pte`` of ``net`` for ``example``: torch.export -> to_edge_transform_and_lower (XNNPACK) ->
    to_executorch."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(net, example)
    return bytes(to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def executorch_program(pte: bytes) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    if importlib.util.find_spec("executorch") is None:
        raise Missing("executorch")
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(1)  # one thread, as every other candidate
    program = Runtime.get().load_program(pte)  # the method reads the program: keep both alive
    method = program.load_method("forward")

    def run(feed: list[np.ndarray], _keep: Any = (program, pte)) -> list[np.ndarray]:
        return [o.numpy() for o in method.execute([torch.from_numpy(a) for a in feed])]

    return run


# -- the lowered programs, cached: ExecuTorch's lowering of the T=100 sequence takes minutes -------------------------


class NotMeasured(Exception):
    """The candidate could not be prepared within its time budget."""


def cache_key(net: Any, shapes: list[tuple[int, ...]]) -> str:
    """A hash of everything the lowered program depends on: the module's structure (its repr names the cell, the
    sizes and the layers), every weight's name, shape and bytes, the example inputs' shapes, and the versions of
    torch and ExecuTorch. Another model, other weights or another T give another key."""
    import hashlib

    h = hashlib.sha256()
    h.update(repr(net).encode())
    h.update(repr(shapes).encode())
    versions = _versions()
    h.update(f"torch {versions['torch']} executorch {versions['executorch']}".encode())
    for name, tensor in net.state_dict().items():
        a = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{name} {a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _lower_to(path: str, cell: str, dims: tuple[int, int, int, int], seq_len: int | None) -> None:
    """In a child process: rebuild the model (``build`` is seeded: the same weights), lower it, write the .pte."""
    import torch

    from edgernn.files import write_atomic

    torch.set_num_threads(1)
    model = build(cell, *dims)
    x = torch.zeros(1, seq_len or 1, dims[0])
    write_atomic(path, executorch_lowered(plain_twin(model), (x, *(torch.from_numpy(z) for z in zero_states(model)))))


def cache_path(cell: str, dims: tuple[int, int, int, int], seq_len: int | None, cache: Path) -> Path:
    """Where the lowered program of ``build(cell, *dims)`` (one step when ``seq_len`` is None) is kept."""
    model = build(cell, *dims)
    shapes = [(1, seq_len or 1, dims[0]), *(z.shape for z in zero_states(model))]
    key = cache_key(plain_twin(model), shapes)
    return cache / f"{cell}-{'step' if seq_len is None else f'T{seq_len}'}-{key}.pte"


def cached_pte(cell: str, dims: tuple[int, int, int, int], seq_len: int | None, cache: Path, budget: float,
               info: dict[str, Any]) -> bytes:  # fmt: skip
    """The lowered program of the model ``build(cell, *dims)`` stepping one frame (``seq_len`` None) or running
    ``seq_len`` steps: read from ``cache`` when a run already lowered the same model, else lowered in a child
    process given ``budget`` seconds (NotMeasured past it) and kept there. ``info`` gets the key, whether it came
    from the cache and the lowering's seconds."""
    import multiprocessing

    path = cache_path(cell, dims, seq_len, cache)
    info.update(cache_key=path.stem.rsplit("-", 1)[1], cached=path.exists())
    if path.exists():
        return path.read_bytes()
    if importlib.util.find_spec("executorch") is None:
        raise Missing("executorch")
    t = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=_lower_to, args=(str(path), cell, dims, seq_len), daemon=True
    )
    child.start()
    child.join(budget)
    if child.is_alive():
        child.terminate()
        child.join()
        earlier = ", ".join(f"T={n}: {s:g} s" for n, s in lowering_times(cache, cell, dims).items())
        raise NotMeasured(
            f"ExecuTorch's lowering (torch.export -> to_edge_transform_and_lower with XNNPACK) of "
            f"{'the step' if seq_len is None else f'T={seq_len}'} did not finish within {budget:g} s "
            f"(--lower-budget)" + (f"; the same model's lowerings in the cache took {earlier}" if earlier else "")
        )
    if child.exitcode != 0 or not path.exists():
        raise RuntimeError(f"ExecuTorch's lowering failed (exit code {child.exitcode})")
    info["lower_s"] = round(time.perf_counter() - t, 1)
    from edgernn.files import write_atomic

    record = {"cell": cell, "dims": list(dims), "seq_len": seq_len, "lower_s": info["lower_s"], **_versions()}
    write_atomic(path.with_suffix(".json"), json.dumps(record).encode())
    return path.read_bytes()


def lowering_times(cache: Path, cell: str, dims: tuple[int, int, int, int]) -> dict[int, float]:
    """The seconds each lowering of this model's sequence kept in ``cache`` took (with these versions), by T:
    how the lowering grows with T."""
    versions = _versions()
    out = {}
    for f in cache.glob(f"{cell}-T*.json"):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if r.get("dims") == list(dims) and all(r.get(k) == versions[k] for k in ("torch", "executorch")):
            out[int(r["seq_len"])] = float(r["lower_s"])
    return dict(sorted(out.items()))


def tract_program(path: Path, feed: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    if importlib.util.find_spec("tract") is None:
        raise Missing("tract")
    import tract

    model = tract.onnx().load(str(path))
    for i, a in enumerate(feed):
        model.set_input_fact(i, ",".join([*(str(d) for d in a.shape), "f32"]))
    runnable = model.into_model().into_runnable()

    def run(values: list[np.ndarray]) -> list[np.ndarray]:
        return [o.to_numpy() for o in runnable.run(values)]

    return run


def openvino_program(path: Path) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    if importlib.util.find_spec("openvino") is None:
        raise Missing("openvino")
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    outs = compiled.outputs

    def run(values: list[np.ndarray]) -> list[np.ndarray]:
        request.infer(dict(zip(names, values, strict=True)), share_inputs=True, share_outputs=True)
        # the shared outputs are the request's buffers, rewritten by the next call: the states are fed back
        return [request.get_tensor(o).data.copy() for o in outs]

    return run


# -- the run ---------------------------------------------------------------------------------------------------------


def _export(model: Any, path: Path, **options: Any) -> Path:
    from edgernn.export import export_model

    export_model(model, path, verify=False, **options)
    return path


def _guard(name: str, make: Callable[[], Any], report: dict[str, Any]) -> Any:
    """``make()``, or None with the reason in ``report[name]`` (missing package, engine refusal)."""
    try:
        return make()
    except Missing as e:
        report[name] = {"status": "missing", "why": f"{e} is not installed: pip install 'edgernn[{EXTRAS[name]}]'"}
    except NotMeasured as e:
        report[name] = {"status": "not measured", "why": str(e)}
    except Exception as e:  # an engine that cannot load or run the model: reported, not timed
        report[name] = {"status": "failed", "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return None


def run_cell(cell: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    model = build(cell, args.features, args.hidden, args.layers, args.outputs)
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((CHECK_STEPS, 1, 1, args.features)).astype(np.float32)
    seq = rng.standard_normal((1, args.seq_len, args.features)).astype(np.float32)
    dims = (args.features, args.hidden, args.layers, args.outputs)
    out: dict[str, Any] = {"step": {}, "sequence": {}}
    if "step" in args.parts:
        out["step"] = run_step(cell, model, dims, frames, args, tmp)
    if "sequence" in args.parts:
        out["sequence"] = run_sequence(cell, model, dims, seq, args, tmp)
    return out


def run_step(cell: str, model: Any, dims: tuple[int, int, int, int], frames: np.ndarray, args: argparse.Namespace,
             tmp: Path) -> dict[str, Any]:  # fmt: skip
    import torch

    zeros = zero_states(model)
    with torch.inference_mode():
        want_steps = [y.numpy() for y in model(torch.from_numpy(frames[:, 0, 0][None])).split(1, dim=1)]
    step_file = _export(model, tmp / f"{cell}-step.onnx", strategy="step", chunk=1)
    report: dict[str, Any] = {}
    lowering: dict[str, Any] = {}
    steppers: dict[str, Any] = {
        "edgernn": _guard("edgernn", lambda: EdgernnStep(step_file), report),
        "ort_bound": _guard("ort_bound", lambda: BoundStep(step_file, zeros), report),
        "torch": TorchStep(model),
        "executorch": _guard(
            "executorch",
            lambda: FeedStep(
                executorch_program(cached_pte(cell, dims, None, args.cache, args.lower_budget, lowering)), zeros
            ),
            report,
        ),
        "tract": _guard(
            "tract",
            lambda: FeedStep(
                tract_program(
                    _export(model, tmp / f"{cell}-step-tract.onnx", strategy="step", chunk=1, target="tract"),
                    [frames[0], *zeros],
                ),
                zeros,
            ),
            report,
        ),
        "openvino": _guard(
            "openvino",
            lambda: FeedStep(
                openvino_program(
                    _export(model, tmp / f"{cell}-step-ov.onnx", strategy="step", chunk=1, target="openvino")
                ),
                zeros,
            ),
            report,
        ),
    }
    timed: dict[str, Callable[[], Any]] = {}
    for name, st in steppers.items():
        if st is None:
            continue
        diff = _guarded_diff(name, lambda st=st: _step_diff(st, frames, want_steps), report)
        if diff is None:
            continue
        st.reset()
        frame = frames[0]
        if isinstance(st, BoundStep):
            timed[name] = st.bare
        elif isinstance(st, EdgernnStep):  # the user's call itself: Stream.step on the frame it was checked on
            timed[name] = functools.partial(st.stream.step, frame[0])
        else:
            timed[name] = lambda st=st, frame=frame: st.step(frame)
    _time(timed, report, args)
    if (lowering.get("cached") or "lower_s" in lowering) and "executorch" in report:  # a program was loaded
        report["executorch"]["lowering"] = lowering
    return report


def run_sequence(cell: str, model: Any, dims: tuple[int, int, int, int], seq: np.ndarray, args: argparse.Namespace,
                 tmp: Path) -> dict[str, Any]:  # fmt: skip
    import torch

    zeros = zero_states(model)
    with torch.inference_mode():
        want_seq = model(torch.from_numpy(seq)).numpy()
    native_file = _export(model, tmp / f"{cell}-native.onnx", strategy="native")
    report: dict[str, Any] = {}
    lowering: dict[str, Any] = {}
    runners: dict[str, Any] = {
        "edgernn": _guard("edgernn", lambda: _edgernn_sequence(native_file), report),
        "torch": lambda x: _torch_sequence(model, x),
        "executorch": _guard(
            "executorch",
            lambda: _with_zero_state(
                executorch_program(cached_pte(cell, dims, seq.shape[1], args.cache, args.lower_budget, lowering)),
                zeros,
            ),
            report,
        ),
        "tract": _guard(
            "tract",
            lambda: _first(
                tract_program(
                    _export(model, tmp / f"{cell}-native-tract.onnx", strategy="native", target="tract"), [seq]
                )
            ),
            report,
        ),
        "openvino": _guard(
            "openvino",
            lambda: _first(
                openvino_program(_export(model, tmp / f"{cell}-native-ov.onnx", strategy="native", target="openvino"))
            ),
            report,
        ),
    }
    timed = {}
    for name, fn in runners.items():
        if fn is None:
            continue
        diff = _guarded_diff(name, lambda fn=fn: float(np.abs(fn(seq) - want_seq).max()), report)
        if diff is not None:
            timed[name] = lambda fn=fn: fn(seq)
    _time(timed, report, args, calls=max(1, args.calls // 10))
    if (lowering.get("cached") or "lower_s" in lowering) and "executorch" in report:  # a program was loaded
        report["executorch"]["lowering"] = lowering
    return report


def _with_zero_state(
    run: Callable[[list[np.ndarray]], list[np.ndarray]], zeros: list[np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: run([x, *zeros])[0]


def _first(run: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: run([x])[0]


def _edgernn_sequence(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from edgernn.runtime import Model

    m = Model(path, provider="cpu", threads=1)
    return lambda x: m.run(x)


def _torch_sequence(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _step_diff(st: Any, frames: np.ndarray, want: list[np.ndarray]) -> float:
    """The largest difference from torch over chained steps from the zero state."""
    st.reset()
    return max(
        float(np.abs(np.asarray(st.step(f)).reshape(w.shape) - w).max()) for f, w in zip(frames, want, strict=True)
    )


def _guarded_diff(name: str, check: Callable[[], float], report: dict[str, Any]) -> float | None:
    """The candidate's difference from torch, recorded; None (and not timed) when it fails or runs out of
    tolerance."""
    try:
        diff = check()
    except Exception as e:
        report[name] = {"status": "failed", "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        return None
    report[name] = {"status": "checked", "max_abs_diff": diff}
    if not diff <= TOLERANCE:
        report[name] = {"status": "wrong", "max_abs_diff": diff, "why": f"differs from torch by {diff:.3g}"}
        return None
    return diff


def _time(timed: dict[str, Callable[[], Any]], report: dict[str, Any], args: argparse.Namespace,
          calls: int | None = None) -> None:  # fmt: skip
    n = calls or args.calls
    for fn in timed.values():  # warm up: first calls bind buffers and fill caches
        _per_call_us(fn, max(n // 10, 2))
    rounds = in_turns({k: (lambda fn=fn: _per_call_us(fn, n)) for k, fn in timed.items()}, args.rounds)
    for name, us in rounds.items():
        s = Spread.of(us)
        report[name].update(status="timed", us=round(s.median, 2), spread_us=s.scaled(1, 2))
        report[f"{name}_us"] = round(s.median, 2)
    for name in CANDIDATES:
        report.setdefault(f"{name}_us", None)  # not timed: the candidate's entry says why (or it is not one)


def ratios(part: dict[str, Any]) -> dict[str, float | None]:
    """Each timed candidate's time over edgernn's (< 1: faster than edgernn)."""
    base = part.get("edgernn_us")
    return {
        k[:-3]: (round(v / base, 3) if base and v else None)
        for k, v in part.items()
        if k.endswith("_us") and k != "edgernn_us"
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="lstm,gru", help="comma list of lstm, gru (default both)")
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--outputs", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200, help="calls per round (the sequence takes a tenth)")
    ap.add_argument(
        "--parts",
        default="step,sequence",
        help="comma list of step, sequence (default both; ExecuTorch lowers the sequence unrolled: see --lower-budget)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "edgernn" / "anchors",
        help="folder of ExecuTorch's lowered programs, keyed by the model, its weights, T and the versions "
        "(default ~/.cache/edgernn/anchors)",
    )
    ap.add_argument(
        "--lower-budget",
        type=float,
        default=300.0,
        help="seconds ExecuTorch may spend lowering one program not in the cache; past it the candidate is "
        "reported as not measured (default 300)",
    )
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    for name in ("features", "hidden", "layers", "outputs", "seq_len", "rounds", "calls"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lower_budget > 0:
        ap.error("--lower-budget must be above 0 seconds")
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or args.parts - {"step", "sequence"}:
        ap.error("--parts takes step and/or sequence")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or set(cells) - {"lstm", "gru"}:
        ap.error("--cells takes lstm and/or gru")
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        results = {c: run_cell(c, args, Path(tmp)) for c in cells}
    result = {
        "step": {c: r["step"] for c, r in results.items()},
        "sequence": {c: r["sequence"] for c, r in results.items()},
        "ratios": {
            part: {c: ratios(results[c][part]) for c in cells} for part in ("step", "sequence")
        },
        "config": {
            "features": args.features, "hidden": args.hidden, "layers": args.layers, "outputs": args.outputs,
            "seq_len": args.seq_len, "batch": 1, "threads": 1, "tolerance": TOLERANCE,
        },
        "rounds": args.rounds,
        "calls": args.calls,
        "machine": {**machine_info(), **_versions()},
        "load": {"before": load_before, "after": machine_load()},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/anchors.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.markdown:
        print(markdown(result))
    else:
        print(markdown(result))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "executorch", "tract", "openvino"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _cell(part: dict[str, Any], name: str) -> str:
    entry = part.get(name)
    if entry is None:
        return "-"
    if entry.get("status") != "timed":
        return f"{entry['status']}"
    s = entry["spread_us"]
    return f"{entry['us']:.0f} us ({s['low']:.0f}-{s['high']:.0f})"


def markdown(r: dict[str, Any]) -> str:
    m, load = r["machine"], r["load"]
    lines = [
        f"`{r['command']}`: {m.get('cpu', '?')}, {m['cpus']} CPUs (shared), load {load['before']['load_1m']} before "
        f"and {load['after']['load_1m']} after (1 min); {r['date']}. onnxruntime {m['onnxruntime']}, torch "
        f"{m['torch']}, ExecuTorch {m['executorch']}, tract {m['tract']}, OpenVINO {m['openvino']}. One thread "
        f"each; the median of {r['rounds']} interleaved rounds of {r['calls']} calls (steps) or "
        f"{max(1, r['calls'] // 10)} calls (sequences), with the fastest and slowest round; every candidate "
        f"checked against torch (max abs diff <= {r['config']['tolerance']:g}) before it was timed.",
        "",
        "| call | cell | " + " | ".join(CANDIDATES) + " |",
        "|---|---|" + "---|" * len(CANDIDATES),
    ]
    for part in ("step", "sequence"):
        for cell, entries in r[part].items():
            if entries:  # a part not asked for (--parts) has no rows
                lines.append(f"| {part} | {cell} | " + " | ".join(_cell(entries, c) for c in CANDIDATES) + " |")
    lines += ["", "Time over edgernn's (below 1: faster than edgernn):", ""]
    lines += ["| call | cell | " + " | ".join(CANDIDATES[1:]) + " |", "|---|---|" + "---|" * (len(CANDIDATES) - 1)]
    for part in ("step", "sequence"):
        for cell, q in r["ratios"][part].items():
            if not r[part][cell]:
                continue
            lines.append(
                f"| {part} | {cell} | " + " | ".join(f"{q[c]:.2f}x" if q.get(c) else "-" for c in CANDIDATES[1:]) + " |"
            )
    notes = [
        f"- {part} {cell} {name}: {e['status']}: {e.get('why', '')}"
        for part in ("step", "sequence")
        for cell, entries in r[part].items()
        for name, e in entries.items()
        if isinstance(e, dict) and e.get("status") not in ("timed",)
    ]
    notes += [
        f"- {part} {cell} executorch: " + (
            "lowered program read from the cache" if e["lowering"]["cached"]
            else f"lowered in {e['lowering']['lower_s']:g} s (now cached)"
        )
        for part in ("step", "sequence")
        for cell, entries in r[part].items()
        if isinstance(e := entries.get("executorch"), dict) and "lowering" in e
    ]  # fmt: skip
    return "\n".join([*lines, *([""] if notes else []), *notes])


if __name__ == "__main__":
    main()
