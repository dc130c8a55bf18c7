"""A loaded model: onnxruntime session + manifest + input checks. Imports numpy and onnxruntime only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFormatError
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
        if isinstance(model, (bytearray, memoryview)):
            model = bytes(model)
        if not isinstance(model, (bytes, str, os.PathLike)):
            raise ConfigError(
                f"Model takes the path of an .onnx file (str or os.PathLike) or the file's bytes; got "
                f"{type(model).__name__}"
            )
        if not isinstance(model, bytes):
            model = os.fspath(model)
            if not isinstance(model, str):  # a bytes path (os.fsencode)
                model = os.fsdecode(model)
            if not os.path.isfile(model):
                raise ModelFormatError(f"no model file at {model!r}")
        check_protobuf_size(model)
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
        self.run_options = run_options()
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
        # integer inputs that index a constant table (token ids into an Embedding's Gather): name -> its rows. Only
        # a model with integer data reads its graph for them (an edgernn export's lengths are not ids)
        integer = [s.name for s in self.inputs if np.dtype(s.dtype).kind in "iu" and s.role not in ("lengths", "mask")]
        self.index_limits: dict[str, int] = index_limits(model, integer) if integer else {}
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
        checked = check_feed(self.inputs, feed, limits=self.index_limits)
        return dict(zip(self.output_names, self.session.run(None, checked, self.run_options), strict=True))

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


PROTOBUF_LIMIT = (1 << 31) - 1  # protobuf refuses to parse a message of 2 GiB or more


def check_protobuf_size(model: str | bytes) -> None:
    """An .onnx file (or bytes) of 2 GiB or more cannot be one protobuf: say so before onnxruntime fails on it with
    a bare ``narrowing_error``."""
    size = len(model) if isinstance(model, bytes) else os.path.getsize(model)
    if size > PROTOBUF_LIMIT and not _ort_format(model):
        where = "these bytes" if isinstance(model, bytes) else repr(model)
        raise ModelFormatError(
            f"{where} is {size / 2**30:.2f} GiB, over protobuf's 2 GiB limit for one ONNX file: save the weights as "
            "external data beside it (onnx.save(model, path, save_as_external_data=True)) and load it by path"
        )


def _ort_format(model: str | bytes) -> bool:
    """An ORT-format file (a flatbuffer, ``ORTM`` at bytes 4..8), which protobuf's limit does not concern."""
    if isinstance(model, bytes):
        return model[4:8] == b"ORTM"
    with open(model, "rb") as f:
        return f.read(8)[4:8] == b"ORTM"


# ops that pass an integer tensor's values on unchanged (an id reaches its Gather through them)
_SAME_VALUES = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten"}


def index_limits(model: str | bytes, names: list[str]) -> dict[str, int]:
    """For each of the graph inputs ``names`` that a Gather uses as indices into a constant table (an
    initializer or a Constant: an Embedding's weights), the table's size along the gathered axis; an input
    that reaches several tables gets the smallest. ONNX's Gather counts negative indices from the end, so an id
    outside ``0..size-1`` would silently pick another row (torch's Embedding raises): ``check_feed`` refuses it.

    Reads the graph without its external data; a graph onnx cannot read here gives no limits (onnxruntime
    has read it already, and says what it refuses)."""
    try:
        import onnx

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    except Exception:  # an onnx too old or missing, a graph it cannot parse: no limits known
        return {}
    from ..graphs import all_graphs

    graphs = list(all_graphs(proto.graph))
    tables: dict[str, list[int]] = {t.name: list(t.dims) for g in graphs for t in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for g in graphs:
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value" and node.output:
                        tables.setdefault(node.output[0], list(a.t.dims))
            for i, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, i))
    out: dict[str, int] = {}
    for name in names:
        sizes: list[int] = []
        seen: set[str] = set()
        todo = [name]
        while todo:
            value = todo.pop()
            if value in seen:
                continue
            seen.add(value)
            for node, i in consumers.get(value, []):
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type in _SAME_VALUES and i == 0:
                    todo.extend(node.output[:1])
                elif node.op_type == "Gather" and i == 1 and node.input[0] in tables:
                    dims = tables[node.input[0]]
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if -len(dims) <= axis < len(dims):
                        sizes.append(int(dims[axis]))
        if sizes:
            out[name] = min(sizes)
    return out


def run_options() -> Any:
    """The RunOptions every call of a session is given, made once: onnxruntime (1.32) runs a call given None
    1.2-1.8 us slower, of a 30 us streaming step (benchmarks/streaming.py times both). Its graph annotation id is
    written as what an unset one means (0): the Python ``run_with_iobinding`` reads that entry, and reading an
    unset entry raises and catches an exception inside onnxruntime, which costs ~35 us a call."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "0")
    return options
