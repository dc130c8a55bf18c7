"""What is inside an exported model: manifest, opsets, op histogram, inputs/outputs and their dynamic axes,
states, file size and the parity result recorded at export. Needs the ``onnx`` package, not torch."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..manifest import MANIFEST_KEY, Manifest, selection_lines


def _ops(graph: Any, hist: Counter[str]) -> None:
    """Count ops, descending into Loop/Scan/If bodies (reported as e.g. 'Scan/MatMul')."""
    for node in graph.node:
        hist[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
        for attr in node.attribute:
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subs:
                inner: Counter[str] = Counter()
                _ops(g, inner)
                for k, v in inner.items():
                    hist[f"{node.op_type}/{k}"] += v


def _value_info(vi: Any) -> dict[str, Any]:
    import onnx

    tt = vi.type.tensor_type
    dims = [
        d.dim_param if d.dim_param else (int(d.dim_value) if d.HasField("dim_value") else "?") for d in tt.shape.dim
    ]
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else "?"
    return {
        "name": vi.name,
        "dtype": dtype,
        "shape": dims,
        "dynamic_axes": [i for i, d in enumerate(dims) if isinstance(d, str)],
    }


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready description of an ONNX model (edgernn's or not)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"no model file at {str(path)!r}")
    if p.stat().st_size == 0:  # onnx reads an empty file as an empty model, without a word
        raise ModelFormatError(f"{str(path)!r} is empty (0 bytes): not an ONNX model")
    from ..runtime.model import check_protobuf_size

    check_protobuf_size(str(p))
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ModelFormatError(f"{str(path)!r} is not a readable ONNX model: {e}") from None
    meta = {m.key: m.value for m in proto.metadata_props}
    manifest = Manifest.from_json(meta[MANIFEST_KEY]).to_dict() if MANIFEST_KEY in meta else None
    hist: Counter[str] = Counter()
    _ops(proto.graph, hist)
    initializers = {i.name for i in proto.graph.initializer}
    return {
        "path": str(p),
        "file_size": p.stat().st_size,
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "ops": dict(sorted(hist.items())),
        "inputs": [_value_info(i) for i in proto.graph.input if i.name not in initializers],
        "outputs": [_value_info(o) for o in proto.graph.output],
        # the model's own count when the manifest has it; else the floating-point weights the file stores
        # (initializers also hold shapes, axes and indices, and scalar constants)
        "parameters": (manifest or {}).get("parameters")
        or sum(_numel(t) for t in proto.graph.initializer if _is_weight(t)),
        "manifest": manifest,
        "states": (manifest or {}).get("states", []),
        "parity": (manifest or {}).get("parity"),
        "target": (manifest or {}).get("target"),
        "target_check": (manifest or {}).get("target_check"),
    }


def _is_weight(t: Any) -> bool:
    import onnx

    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return t.data_type in floating and len(t.dims) > 0


def _numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def format_inspection(info: dict[str, Any]) -> str:
    """The human-readable form of ``inspect_model``'s result."""
    lines = [f"{info['path']}  ({info['file_size'] / 1024:.1f} KiB, {info['parameters']:,} parameters)"]
    lines.append("opsets: " + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()))
    man = info["manifest"]
    if man:
        desc = (
            f"{man['strategy']} export of {man['cell'] or 'mixed cells'}: {man['num_layers']} layer(s), hidden "
            f"{man['hidden_size']}, {'bidirectional' if man['bidirectional'] else 'unidirectional'}"
        )
        if man.get("proj_size"):
            desc += f", projection {man['proj_size']}"
        if man.get("peephole"):
            desc += ", peepholes"
        if man.get("seq_len"):
            desc += f", fixed length {man['seq_len']}"
        if man.get("chunk"):
            desc += f", {man['chunk']} step(s) per call"
        lines.append(desc + f" (edgernn {man['edgernn_version']})")
    else:
        lines.append("no edgernn manifest (not exported by edgernn)")
    data = [v for v in info["inputs"] if v["name"] not in {s.get("input") for s in info["states"]}]
    if data and data[0]["shape"] and isinstance(data[0]["shape"][-1], int):
        d = data[0]
        lines.append(
            f"feeds: {d['name']} ({', '.join(str(s) for s in d['shape'])}): {d['shape'][-1]} feature(s) per step"
        )
    norm = (man or {}).get("input_normalization")
    if norm:
        scaled = " and outputs scaled back to the targets' units" if "output_mean" in norm else ""
        lines.append(f"raw values in: inputs standardised inside the model (training data's mean and std){scaled}")
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for v in info[kind]:
            shape = ", ".join(str(d) for d in v["shape"])
            lines.append(f"  {v['name']:<12} {v['dtype']:<8} ({shape})")
    if info["states"]:
        lines.append("states:")
        for s in info["states"]:
            lines.append(
                f"  {s['input']} -> {s['output']}  ({', '.join(str(d) for d in s['shape'])}), starts at {s['init']}"
            )
    lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    if man and man.get("target"):
        check = man.get("target_check") or {}
        batch = f", batch fixed to {man['batch']}" if man.get("batch") else ""
        verdict = (
            {True: "passed", False: "FAILED", None: "not checked"}[check.get("passed")] if check else "not checked"
        )
        lines.append(
            f"target: {man['target']}{batch}; its check {verdict}" + (f": {check['summary']}" if check else "")
        )
    sel = (man or {}).get("selection") or {}
    if sel:
        lines += selection_lines(sel)
    prec = (man or {}).get("precision") or {}
    if prec:
        metric = prec.get("metric")
        judged = (
            f"task {metric['name']} {metric['fp32']:.4g} -> {metric['reduced']:.4g}"
            if metric
            else "not judged by a task"
        )
        long = prec.get("long_drift") or {}
        how = prec.get("how") or {}
        scheme = ""
        if how.get("weight_only"):
            scheme = ", weights only (one scale per output channel), products in fp32"
        elif prec["precision"] != "fp16" and "per_channel" in how:
            scheme = ", one scale per output channel" if how["per_channel"] else ", one scale per tensor"
        if how.get("recurrent") == "fp32":
            scheme += ", recurrent products in fp32"
        if how.get("scheme"):
            scheme += f", {how['scheme']} products for {how['cpu']} CPUs"
        on = prec.get("judged_on") or {}
        if on:
            judged_cpu = f"; judged on {on['cpu']} ({on['model']})" + (
                " - not the device's products" if on.get("note") else ""
            )
        lines.append(
            f"precision: {prec['precision']} ({prec['size_ratio']:.2f}x smaller than fp32, "
            f"{prec['weights_reduced']:.0%} of weights reduced{scheme}); {judged}"
            + (f"; long-run drift {long['max_abs']:.3g} over {long['steps']} steps" if long else "")
            + (judged_cpu if on else "")
        )
    par = info["parity"]
    if par is None:
        lines.append("parity: not recorded")
    elif par.get("passed") is None:
        lines.append(f"parity: not checked ({par.get('skipped', '')})")
    else:
        lines.append(
            f"parity: {'PASS' if par['passed'] else 'FAIL'} ({par['dtype']}, worst {par['max_abs']:.2e} vs atol "
            f"{par['atol']:g}; cases {', '.join(par['cases'])}; against {', '.join(par['candidates'])})"
        )
    return "\n".join(lines)
