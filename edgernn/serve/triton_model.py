"""The Python-backend model of a ``--state control`` Triton repository: copied verbatim to ``REPO/NAME/1/model.py``.

It runs the step export ``model.onnx`` beside it with onnxruntime and keeps each sequence's state itself, by
correlation id, for a Triton server whose backend has no implicit state (the Python backend) or no onnxruntime
backend at all. Triton's sequence batcher gives every request the control inputs the config declares:

* ``START`` (1 on a sequence's first request): the sequence starts from zeros, or from the states the request
  carries (optional inputs named as the graph's state inputs: a client resuming a sequence the server forgot);
* ``END`` (1 on its last request): its state is freed after the step;
* ``READY`` (1 for a real request); ``CORRID``: the sequence id (0: no sequence, e.g. a warm-up request, which
  runs from zeros and keeps nothing).

A sequence idle ``edgernn_idle_us`` microseconds (the config's parameter; the batcher's idle time-out) is
forgotten; at most ``edgernn_max_sequences`` are held per model instance, and a START beyond that is refused.
Every request runs on its own (batch 1), exactly as edgernn's local ``Stream`` runs it (one intra-op thread,
all graph optimisations), so the outputs equal a local stream's bit for bit. Each response carries the model's
outputs and its new states (the state outputs), which a client may hold to resume a forgotten sequence.

This file needs only numpy, onnxruntime and Triton's ``triton_python_backend_utils`` (imported when the backend
loads it); edgernn itself never imports it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

CONTROLS = ("START", "END", "READY", "CORRID")


# Tensors cross the stub by DLPack, not by numpy's C structures: the backend's stub is built against numpy 1,
# whose array descriptor numpy 2 changed (a numpy-2 output array reaches the server with a wrong byte size:
# "output tensor shape does not match size of output").
def _array(t: Any) -> np.ndarray:
    """A request tensor as a numpy array of its own (the request's memory goes with the request)."""
    try:
        return np.array(np.from_dlpack(t))
    except (AttributeError, TypeError, BufferError, RuntimeError):
        return np.array(t.as_numpy())


def _tensor(pb_utils: Any, name: str, a: np.ndarray) -> Any:
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(a))


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.states = json.loads(params["edgernn_states"])  # [{input, output, dims, dtype}]
        self.max_sequences = int(params["edgernn_max_sequences"])
        self.idle_s = int(params["edgernn_idle_us"]) / 1e6
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        so = ort.SessionOptions()  # as edgernn.runtime's make_session: the same numbers as a local Stream
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.state_inputs = [s["input"] for s in self.states]
        self.data_inputs = [i.name for i in self.session.get_inputs() if i.name not in self.state_inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.held: dict[int, tuple[float, dict[str, np.ndarray]]] = {}  # corrid -> (last use, state)

    def _zeros(self) -> dict[str, np.ndarray]:
        return {s["input"]: np.zeros([1, *s["dims"]], s["dtype"]) for s in self.states}

    def _step(self, pb_utils: Any, request: Any, now: float) -> Any:
        def control(name: str) -> int:
            t = pb_utils.get_input_tensor_by_name(request, name)
            return int(_array(t).reshape(-1)[0]) if t is not None else 0

        start, end, ready, corrid = (control(c) for c in CONTROLS)
        if corrid != 0 and not ready:
            raise ValueError("the request is not ready (READY 0)")
        given = {}
        for name in self.state_inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                given[name] = _array(t)
        if corrid == 0 or start:
            if given and set(given) != set(self.state_inputs):
                raise ValueError(f"a START with a state gives every state input ({', '.join(self.state_inputs)})")
            if corrid not in self.held and len(self.held) >= self.max_sequences:
                raise ValueError(
                    f"this instance holds its {self.max_sequences} sequences (edgernn_max_sequences); END some, or "
                    "write the repository with a larger --max-sequences"
                )
            state = given or self._zeros()
        else:
            if corrid not in self.held:
                raise ValueError(
                    f"sequence {corrid} has no state here (it ended, idled out after {self.idle_s:g} s, or never "
                    "started): send its request with the START flag"
                )
            if given:
                raise ValueError("states are taken with the START flag only")
            state = self.held[corrid][1]
        feed = {name: _array(pb_utils.get_input_tensor_by_name(request, name)) for name in self.data_inputs}
        feed.update(state)
        results = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        if corrid != 0:
            if end:
                self.held.pop(corrid, None)
            else:
                self.held[corrid] = (now, {s["input"]: results[s["output"]] for s in self.states})
        return pb_utils.InferenceResponse(output_tensors=[_tensor(pb_utils, k, v) for k, v in results.items()])

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        now = time.monotonic()
        stale = [k for k, (t, _) in self.held.items() if now - t > self.idle_s]
        for k in stale:  # idled out: Triton has ended the sequence
            del self.held[k]
        responses = []
        for request in requests:
            try:
                responses.append(self._step(pb_utils, request, now))
            except Exception as e:  # one bad request gets its own error; the others still run
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

    def finalize(self) -> None:
        self.held.clear()
