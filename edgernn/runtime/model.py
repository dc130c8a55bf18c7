"""A loaded model: onnxruntime session + manifest + input checks. Imports numpy and onnxruntime only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..manifest import MANIFEST_KEY, Manifest, TensorSpec, read_manifest
from .providers import ProviderChoice, make_session, short_name
from .validate import check_feed

# onnxruntime's type strings -> numpy dtype names
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class Model:
    """An ONNX model, ready to run: an edgernn export (its manifest describes the inputs) or any other model
    (the inputs are read from the graph).

    >>> m = Model("model.onnx", provider="cpu")
    >>> y = m.run(x)                 # x: (batch, time, features); lengths filled in when omitted
    >>> m.provider_choice.describe() # which provider runs it, and why when it is not the one asked for
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        provider: str = "cpu",
        *,
        fallback: str | None = None,
        threads: int | None = 1,
        optimization: str = "all",
        optimized_model_path: str | os.PathLike[str] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not isinstance(model, bytes):
            model = os.fspath(model)
            if not os.path.isfile(model):
                raise ModelFormatError(f"no model file at {model!r}")
        self.source = model if isinstance(model, str) else "<bytes>"
        self.session, self.choice = make_session(
            model,
            provider,
            fallback=fallback,
            threads=threads,
            optimization=optimization,
            optimized_model_path=os.fspath(optimized_model_path) if optimized_model_path else None,
            provider_options=provider_options,
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        # None for models edgernn did not export: they run too, described by their graph
        self.manifest: Manifest | None = read_manifest(meta) if MANIFEST_KEY in meta else None
        graph_in = [graph_spec(a) for a in self.session.get_inputs()]
        graph_out = [graph_spec(a) for a in self.session.get_outputs()]
        self.inputs: list[TensorSpec] = self.manifest.inputs if self.manifest else graph_in
        self.outputs: list[TensorSpec] = self.manifest.outputs if self.manifest else graph_out
        self.graph_inputs = {s.name: s for s in graph_in}
        self.graph_outputs = {s.name: s for s in graph_out}
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.manifest and {s.name for s in self.manifest.inputs} != set(self.graph_inputs):
            raise ModelFormatError(
                f"the manifest's inputs ({', '.join(s.name for s in self.manifest.inputs)}) are not the graph's "
                f"({', '.join(self.graph_inputs)}); the file was edited after export"
            )

    @property
    def provider(self) -> str:
        """Short name of the provider onnxruntime put first for this session (the one that runs)."""
        return short_name(self.session.get_providers()[0])

    @property
    def provider_choice(self) -> ProviderChoice:
        return self.choice

    def data_inputs(self) -> list[TensorSpec]:
        return [s for s in self.inputs if s.role == "data"]

    def run_feed(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on named inputs (checked against the input specs first); returns every output by name."""
        checked = check_feed(self.inputs, feed)
        return dict(zip(self.output_names, self.session.run(None, checked), strict=True))

    def run(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Run the model's data input (and optional lengths); returns its first output."""
        data = self.data_inputs()
        if len(data) != 1:
            raise ModelFormatError(
                f"this model takes {len(data)} data inputs ({', '.join(s.name for s in data)}); use run_feed()"
            )
        feed: dict[str, Any] = {data[0].name: x}
        if lengths is not None:
            spec = next((s for s in self.inputs if s.role in ("lengths", "mask")), None)
            if spec is None:
                raise ModelFormatError("this model was exported without a lengths input; pass sequences of one length")
            # a float-mask model (NNAPI/CoreML exports) gets its mask made from the lengths by check_feed
            feed["lengths" if spec.role == "mask" else spec.name] = lengths
        return self.run_feed(feed)[self.output_names[0]]


def graph_spec(arg: Any) -> TensorSpec:
    """A TensorSpec from onnxruntime's NodeArg: fixed dims as ints, symbolic dims by their name."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelFormatError(f"{arg.name!r} has type {arg.type}; edgernn runs tensor inputs and outputs only")
    shape: list[int | str] = []
    for axis, d in enumerate(arg.shape or []):
        # an unnamed dynamic dim gets a name of its own so that check_feed does not tie it to another input's
        shape.append(d if isinstance(d, int) else (d or f"{arg.name}[{axis}]"))
    return TensorSpec(arg.name, dtype, shape)
