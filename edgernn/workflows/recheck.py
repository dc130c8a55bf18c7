"""``edgernn parity`` as a library function: re-check an exported model against what it came from, or compare any
two sides (two ONNX files, two providers).

The reference is one of: an edgernn checkpoint (torch and the numpy oracle), a user's module (``--module``), an
ONNX file, or the model itself on another provider. Before any number, what makes the numbers meaningless is
said in the report's ``problems``: weights other than those the model was exported from (its manifest records
their hash), another architecture (which sizes differ). A provider that fell back is a note.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFormatError
from ..manifest import Manifest, TensorSpec
from ..progress import counter, stage
from ..verify.parity import Case, ParityReport, Tolerance, given_inputs, tolerance


@dataclass
class Loaded:
    """An ONNX model read for a parity check: its bytes, manifest (None for a model edgernn did not export)."""

    path: str
    data: bytes
    manifest: Manifest | None
    proto: Any

    @property
    def source(self) -> str | bytes:
        """What a session loads: the path of a file (its external data is found beside it), else the bytes."""
        return self.data if self.path == "<bytes>" else self.path


def load_model(model: str | os.PathLike[str] | bytes) -> Loaded:
    import onnx

    from ..manifest import read_manifest
    from ..runtime.model import check_protobuf_size

    if isinstance(model, bytes):
        data, path = model, "<bytes>"
    else:
        path = str(model)
        if not Path(path).is_file():
            raise ModelFormatError(f"no model file at {path!r}")
        check_protobuf_size(path)  # over 2 GiB: one line on external data, not protobuf's own error
        data = Path(path).read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:
        raise ModelFormatError(f"{path!r} is not a readable ONNX model: {e}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    manifest = read_manifest(meta) if meta else None
    return Loaded(path, data, manifest, proto)


def _tolerance(atol: float | None, rtol: float | None) -> Tolerance:
    base = tolerance("fp32")
    for name, v in (("atol", atol), ("rtol", rtol)):
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a finite number >= 0; got {v}")
    return Tolerance(atol=base.atol if atol is None else float(atol), rtol=base.rtol if rtol is None else float(rtol))


def _cases(inputs: Mapping[str, Any] | None, shapes: Sequence[Mapping[str, Sequence[int]]] | None, specs: Any) -> Any:
    """The user's inputs as one case, or cases at the user's shapes, or None (the defaults)."""
    from ..verify.parity import case_from_shapes

    if inputs is not None and shapes:
        raise ConfigError("give inputs or shapes, not both")
    if inputs is not None:
        return [given_inputs(inputs)]
    if shapes:
        return [case_from_shapes(specs, s, option="shape") for s in shapes]
    return None


def parity_check(
    reference: str | os.PathLike[str] | bytes | None,
    model: str | os.PathLike[str] | bytes,
    *,
    module: Any = None,
    providers: Sequence[str] = ("cpu",),
    fallback: str | None = None,
    inputs: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    shapes: Sequence[Mapping[str, Sequence[int]]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    provider: str | None = None,
) -> ParityReport:
    """Check ``model`` (an ONNX path or bytes) against ``reference``.

    ``reference``: an edgernn checkpoint (file or training directory), an ONNX file, or None with ``module`` (a
    torch module: a user's export) or with two or more ``providers`` (the model on the first against the others).
    ``providers`` run the candidate (``provider`` is the one-provider spelling); ``fallback`` is taken where the
    first is missing, and said. ``inputs`` (arrays by input name, or a .npz/.npy path) replace the random cases;
    ``shapes`` give cases as ``{input: shape}``. ``atol``/``rtol`` override the fp32 tolerance.
    """
    from ..runtime.providers import resolve, short_name

    if provider is not None:
        providers = [provider]
    providers = list(providers)
    if not providers:
        raise ConfigError("give at least one provider")
    tol = _tolerance(atol, rtol)
    stage(f"reading {model if isinstance(model, (str, os.PathLike)) else 'the model'}")
    cand = load_model(model)
    if isinstance(inputs, (str, os.PathLike)):
        from ..runtime.io import read_inputs

        data_name = next((s.name for s in _specs(cand) if s.role == "data"), "x")
        inputs = read_inputs(inputs, data_name)
    used: list[str] = []
    notes: list[str] = []
    for p in providers:
        choice = resolve(p, fallback)
        u = choice.used or short_name(choice.providers[0])
        used.append(u)
        if choice.fell_back:
            notes.append(f"asked for provider {p!r}, ran on {u!r} (--fallback): {choice.reason}")
    if module is not None:
        if reference is not None:
            raise ConfigError("give a reference (checkpoint or ONNX file) or a module, not both")
        report = _against_module(module, cand, used, inputs, shapes, tol)
    elif reference is None:
        used = list(dict.fromkeys(used))
        if len(used) < 2:
            raise ConfigError(
                "nothing to compare with: give a checkpoint or an ONNX file as the reference, a module "
                "(--module), or two or more different providers (--providers cpu,cuda; this machine runs "
                f"{', '.join(used)})"
            )
        report = _between_files(cand, cand, used[0], used[1:], inputs, shapes, tol)
    elif _is_onnx(reference):
        report = _between_files(load_model(reference), cand, used[0], used, inputs, shapes, tol)
    else:
        report = _against_checkpoint(reference, cand, used, inputs, shapes, tol)
    report.notes.extend(notes)
    return report


def _is_onnx(path: str | os.PathLike[str] | bytes) -> bool:
    if isinstance(path, bytes):
        return True
    p = Path(path)
    if p.suffix.lower() in (".onnx", ".ort"):
        return True
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(2)
        return head[:1] == b"\x08"  # an ONNX ModelProto starts with its ir_version field
    return False


def _specs(m: Loaded) -> list[TensorSpec]:
    if m.manifest is not None:
        return list(m.manifest.inputs)
    from ..runtime.model import graph_spec
    from ..runtime.providers import make_session

    sess, _ = make_session(m.source, "cpu", threads=None)
    return [graph_spec(a) for a in sess.get_inputs()]


def _require_manifest(m: Loaded, what: str) -> Manifest:
    if m.manifest is None:
        raise ModelFormatError(f"{m.path!r} has no edgernn manifest; {what} needs a model edgernn exported")
    return m.manifest


# ------------------------------------------------------------------------------------------ against a checkpoint


def _against_checkpoint(
    ckpt: str | os.PathLike[str],
    cand: Loaded,
    providers: Sequence[str],
    inputs: Mapping[str, Any] | None,
    shapes: Any,
    tol: Tolerance,
) -> ParityReport:
    from ..model import checkpoint
    from ..targets import target_runners
    from ..verify import reference

    manifest = _require_manifest(cand, "a check against a checkpoint")
    stage(f"reading the checkpoint {ckpt}")
    ck = checkpoint.load(ckpt)
    model = ck.model()
    cfg = ck.config
    problems = _architecture_problems(cfg.to_dict(), manifest) or _weights_problems(model, manifest, "checkpoint")
    if problems:
        return ParityReport("fp32", tol.atol, tol.rtol, problems=problems)
    stage("comparing with torch and the numpy oracle")
    oracle = reference.model_oracle(cfg, {k: v.numpy() for k, v in model.state_dict().items()})
    # the zoo model's own inputs: x and, for a padded export, lengths (the graph may take them as a float mask)
    x = TensorSpec("x", "float32", ["batch", "time", cfg.input_size])
    lengths = [TensorSpec("lengths", "int64", ["batch"], role="lengths")] if _takes_lengths(manifest) else []
    extra = target_runners(manifest.target, cand.proto) if manifest.target != "ort" else {}
    specs = [x, *lengths]
    return _against_torch(model, cand, specs, _cases(inputs, shapes, specs), providers, tol, oracle, extra)


def _weights_problems(module: Any, manifest: Manifest, what: str, hint: str = "") -> list[str]:
    """ "not the weights this model was exported from" when ``module``'s hash differs from the manifest's."""
    from ..export.core import weights_sha256

    got = weights_sha256(module)
    if not manifest.weights_sha256 or got == manifest.weights_sha256:
        return []
    return [
        f"not the weights this model was exported from: the {what}'s weights hash {got[:12]}... differs from the "
        f"model's manifest ({manifest.weights_sha256[:12]}...){hint}"
    ]


def _against_torch(
    module: Any,
    cand: Loaded,
    torch_specs: list[TensorSpec],
    cases: Any,
    providers: Sequence[str],
    tol: Tolerance,
    oracle: Any = None,
    extra: Any = None,
) -> ParityReport:
    """The eager ``module`` against the file: chained step calls for a streaming export, else whole sequences."""
    from ..verify.against_torch import stream_cases, verify_parity, verify_stream

    manifest = cand.manifest
    if manifest is None:
        raise ModelFormatError("this model has no edgernn manifest: name the reference's inputs to check it")
    if manifest.states:  # a streaming export: chained step calls against one whole-sequence call
        outputs = [o.name for o in manifest.outputs if o.role != "state"]
        return verify_stream(
            module,
            cand.source,
            torch_specs,
            manifest.states,
            outputs,
            manifest.chunk or 1,
            graph_specs=manifest.inputs,
            cases=cases or stream_cases(manifest.batch),
            oracle=oracle,
            providers=providers,
            extra=extra,
            tol=tol,
        )
    return verify_parity(
        module,
        cand.source,
        manifest,
        torch_specs=torch_specs,
        cases=cases,
        oracle=oracle,
        providers=providers,
        extra=extra,
        tol=tol,
    )


# sizes of a zoo model that must agree between a checkpoint and a model, as the manifest records them
_ARCH_KEYS = ("cell", "input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "output_size", "readout")


def _architecture_problems(config: Mapping[str, Any], manifest: Manifest) -> list[str]:
    recorded = manifest.model_config
    if not recorded:
        return []
    differ = [
        f"{k} {config.get(k)!r} in the checkpoint, {recorded.get(k)!r} in the model"
        for k in _ARCH_KEYS
        if k in config and k in recorded and config.get(k) != recorded.get(k)
    ]
    if not differ:
        return []
    return ["another architecture: " + "; ".join(differ)]


def _takes_lengths(manifest: Any) -> bool:
    return any(s.role in ("lengths", "mask") for s in manifest.inputs)


# ------------------------------------------------------------------------------------------ against a user's module


def _against_module(
    module: Any,
    cand: Loaded,
    providers: Sequence[str],
    inputs: Mapping[str, Any] | None,
    shapes: Any,
    tol: Tolerance,
) -> ParityReport:
    manifest = _require_manifest(cand, "a check against a module")
    problems = _module_architecture(module, manifest) or _weights_problems(
        module, manifest, "module", "; give the weights it was exported with (--weights)"
    )
    if problems:
        return ParityReport("fp32", tol.atol, tol.rtol, problems=problems)
    torch_specs = _torch_specs(manifest.inputs, manifest)
    return _against_torch(module, cand, torch_specs, _cases(inputs, shapes, torch_specs), providers, tol)


def _module_architecture(module: Any, manifest: Manifest) -> list[str]:
    """Which sizes of ``module`` differ from the model's: its first recurrent layer against the manifest's, and
    the parameter count."""
    from torch import nn

    layer = next((m for m in module.modules() if isinstance(m, nn.RNNBase)), None)
    differ = []
    if layer is not None:
        for key in ("num_layers", "hidden_size", "bidirectional"):
            mine, theirs = getattr(layer, key), getattr(manifest, key)
            if theirs is not None and mine != theirs:
                differ.append(f"{key} {mine!r} in the module, {theirs!r} in the model")
    n = sum(p.numel() for p in module.parameters())
    if manifest.parameters is not None and n != manifest.parameters:
        differ.append(f"{n} parameters in the module, {manifest.parameters} in the model")
    return ["another architecture: " + "; ".join(differ)] if differ else []


def _unfixed(spec: TensorSpec, manifest: Manifest) -> TensorSpec:
    """A step export's data input with its time axis named again (the graph fixes it to the chunk)."""
    if not manifest.states or spec.axes is None:
        return spec
    return replace(spec, shape=[a if a == "time" else d for d, a in zip(spec.shape, spec.axes, strict=True)])


# ------------------------------------------------------------------------------------------ two files or providers


def _between_files(
    ref: Loaded,
    cand: Loaded,
    ref_provider: str,
    providers: Sequence[str],
    inputs: Mapping[str, Any] | None,
    shapes: Any,
    tol: Tolerance,
) -> ParityReport:
    """``ref`` on ``ref_provider`` against ``cand`` on each provider: the whole sequence through each (a
    stateful file streams it chunk by chunk from its initial state)."""
    from ..verify.parity import Comparison, cases_for, compare, first_excess, make_inputs, other_axes

    ref_specs, cand_specs = _specs(ref), _specs(cand)
    problems = _io_problems(ref, cand, ref_specs, cand_specs)
    label_ref = f"{Path(ref.path).name}@{ref_provider}" if ref is not cand else ref_provider
    report = ParityReport("fp32", tol.atol, tol.rtol, problems=problems, reference=label_ref)
    if problems:
        return report
    specs = _torch_specs(ref_specs, ref.manifest)
    cases = _cases(inputs, shapes, specs)
    if cases is None:
        fixed = _fixed_length(ref) or _fixed_length(cand)
        streaming = any(m.manifest is not None and m.manifest.states for m in (ref, cand))
        chunk = math.lcm(*[(m.manifest.chunk or 1) for m in (ref, cand) if m.manifest and m.manifest.states], 1)
        has_lengths = any(s.role == "lengths" for s in specs) and not streaming
        cases = cases_for(has_lengths=has_lengths, fixed_length=fixed, other_axes=other_axes(specs))
        cases = [c for c in cases if c.length <= 64 or streaming] or cases[:1]
        if streaming:  # one stream and a batch of three, whole chunks
            cases = [Case(b, max(chunk, 48 - 48 % chunk)) for b in (1, 3)]
    reference = _sequence_runner(ref, ref_provider)
    runners = {
        (f"{Path(cand.path).name}@{p}" if ref is not cand else p): _sequence_runner(cand, p)
        for p in providers
        if not (ref is cand and p == ref_provider)
    }
    rng = np.random.default_rng(0)
    names = [o for o in _output_names(ref)]
    numbered = counter("parity case", cases)
    for case in cases:
        numbered.next(case.label)
        feed = make_inputs(specs, case, rng)
        want = reference(feed)
        for cname, run in runners.items():
            got = run(feed)
            for name in names:
                w, g = want[name], got.get(name)
                if g is None:
                    report.problems.append(f"{cname} has no output {name!r}")
                    continue
                a, rel, ok = compare(w, g, tol)
                report.comparisons.append(
                    Comparison(case.label, cname, name, a, rel, ok, None if ok else first_excess(w, g, tol))
                )
    return report


def _fixed_length(m: Loaded) -> int | None:
    return m.manifest.seq_len if m.manifest is not None else None


def _output_names(m: Loaded) -> list[str]:
    if m.manifest is not None:
        return [o.name for o in m.manifest.outputs if o.role != "state"]
    return [o.name for o in m.proto.graph.output]


def _io_problems(ref: Loaded, cand: Loaded, ref_specs: list[TensorSpec], cand_specs: list[TensorSpec]) -> list[str]:
    """Differences of inputs and outputs that make two files incomparable, each named."""
    if ref is cand:
        return []

    def data(specs: list[TensorSpec]) -> dict[str, TensorSpec]:
        return {s.name: s for s in specs if s.role not in ("state", "mask", "lengths")}

    a, b = data(ref_specs), data(cand_specs)
    out = []
    if set(a) != set(b):
        out.append(f"other inputs: {', '.join(sorted(a))} in {ref.path}, {', '.join(sorted(b))} in {cand.path}")
    for name in sorted(set(a) & set(b)):
        fa = [d for d in a[name].shape if isinstance(d, int)]
        fb = [d for d in b[name].shape if isinstance(d, int)]
        if a[name].shape[-1:] != b[name].shape[-1:] and fa[-1:] != fb[-1:]:
            out.append(f"input {name!r} has shape {a[name].shape} in {ref.path}, {b[name].shape} in {cand.path}")
    oa, ob = set(_output_names(ref)), set(_output_names(cand))
    if not oa <= ob:
        out.append(f"outputs {', '.join(sorted(oa - ob))} of {ref.path} are not outputs of {cand.path}")
    ma, mb = ref.manifest, cand.manifest
    if ma is not None and mb is not None:
        for key in ("cell", "hidden_size", "num_layers", "bidirectional"):
            va, vb = getattr(ma, key), getattr(mb, key)
            if va is not None and vb is not None and va != vb:
                out.append(f"another architecture: {key} {va!r} in {ref.path}, {vb!r} in {cand.path}")
    return out


def _sequence_runner(m: Loaded, provider: str) -> Any:
    """Feed -> {output: array}: one call of a whole-sequence file (through the runtime's input checks), or a
    stateful file streamed over the sequence from its initial state."""
    from ..runtime.model import Model

    model = Model(m.source, provider=provider, threads=None)
    if m.manifest is not None and m.manifest.states:
        from ..runtime.stream import StreamingModel

        sm = StreamingModel(model)

        def stream(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(sm.run_sequence(feed[sm.data.name]))

        return stream

    def run(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(model.run_feed(dict(feed)))

    return run


# ------------------------------------------------------------------------------------------ where it drifts

# the sequence localize runs when the caller gives no inputs: long enough for a state error to show
LOCALIZE_STEPS = 64


def localize_check(
    reference: str | os.PathLike[str] | None,
    model: str | os.PathLike[str] | bytes,
    *,
    module: Any = None,
    inputs: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    provider: str = "cpu",
    atol: float | None = None,
    rtol: float | None = None,
    shape: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """Layer by layer, direction by direction, step by step: where ``model``'s hidden states first leave the
    tolerance against the torch reference (a checkpoint, or ``module``), on ``inputs``, on seeded inputs of
    ``shape`` (``{"x": (2, 30, 3)}``), or on a seeded padded batch of ``LOCALIZE_STEPS`` steps (the export's
    fixed length or whole chunks where it has one). Returns a ``edgernn.diagnose.localize.Localization``."""
    from ..diagnose.localize import localize
    from ..verify.parity import make_inputs

    cand = load_model(model)
    manifest = _require_manifest(cand, "--localize")
    tol = _tolerance(atol, rtol)
    if module is None:
        if reference is None or _is_onnx(reference):
            raise ConfigError("--localize follows the torch model's hidden states: give a checkpoint or --module")
        from ..model import checkpoint

        ck = checkpoint.load(reference)
        module = ck.model()
        specs = [TensorSpec("x", "float32", ["batch", "time", ck.config.input_size])]
        if _takes_lengths(manifest):
            specs.append(TensorSpec("lengths", "int64", ["batch"], role="lengths"))
    else:
        specs = _torch_specs(manifest.inputs, manifest)
    if isinstance(inputs, (str, os.PathLike)):
        from ..runtime.io import read_inputs

        inputs = read_inputs(inputs, next(s.name for s in specs if s.role == "data"))
    if inputs is None and shape:
        from ..verify.parity import case_from_shapes

        inputs = make_inputs(specs, case_from_shapes(specs, shape, option="shape"), np.random.default_rng(0))
    if inputs is None:
        steps = manifest.seq_len or LOCALIZE_STEPS - LOCALIZE_STEPS % (manifest.chunk or 1)
        batch = manifest.batch or 2
        padded = any(s.role == "lengths" for s in specs) and batch > 1
        inputs = make_inputs(specs, Case(batch, steps, padded=padded), np.random.default_rng(0))
    stage("following the hidden states layer by layer, step by step")
    return localize(
        module, cand.source, dict(inputs), torch_specs=specs, atol=tol.atol, rtol=tol.rtol, provider=provider
    )


def _torch_specs(specs: Sequence[TensorSpec], manifest: Manifest | None) -> list[TensorSpec]:
    """A module's inputs as the graph's are recorded: states left out, lengths for a float mask, the time axis
    named again where a step export fixed it."""
    out = [
        replace(s, name="lengths", dtype="int64", shape=[s.shape[0]], role="lengths", axes=None)
        if s.role == "mask"
        else s
        for s in specs
        if s.role != "state"
    ]
    return [_unfixed(s, manifest) for s in out] if manifest is not None else out
