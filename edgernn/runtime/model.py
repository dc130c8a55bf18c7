"""A loaded model: onnxruntime session + manifest + input checks. Imports numpy and onnxruntime only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..manifest import Manifest, read_manifest
from .providers import ProviderChoice, make_session, short_name
from .validate import check_feed


class Model:
    """An exported edgernn model, ready to run.

    >>> m = Model("model.onnx", provider="cpu")
    >>> y = m.run(x)                 # x: (batch, time, features); lengths filled in when omitted
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        provider: str = "cpu",
        *,
        fallback: str | None = None,
        threads: int | None = 1,
        optimization: str = "all",
        optimized_model_path: str | None = None,
        provider_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, bytes):
            model = os.fspath(model)
            if not os.path.isfile(model):
                raise ModelFormatError(f"no model file at {model!r}")
        self.session, self.choice = make_session(
            model,
            provider,
            fallback=fallback,
            threads=threads,
            optimization=optimization,
            optimized_model_path=optimized_model_path,
            provider_options=provider_options,
        )
        self.manifest: Manifest = read_manifest(self.session.get_modelmeta().custom_metadata_map)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        """Short name of the provider onnxruntime put first for this session (the one that runs)."""
        return short_name(self.session.get_providers()[0])

    @property
    def provider_choice(self) -> ProviderChoice:
        return self.choice

    def run_feed(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on named inputs (checked against the manifest first); returns every output by name."""
        checked = check_feed(self.manifest.inputs, feed)
        return dict(zip(self.output_names, self.session.run(None, checked), strict=True))

    def run(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Run the model's data input (and optional lengths); returns its first output."""
        data = [s for s in self.manifest.inputs if s.role == "data"]
        if len(data) != 1:
            raise ModelFormatError(
                f"this model takes {len(data)} data inputs ({', '.join(s.name for s in data)}); use run_feed()"
            )
        feed: dict[str, Any] = {data[0].name: x}
        if lengths is not None:
            spec = self.manifest.input("lengths")
            if spec is None:
                raise ModelFormatError("this model was exported without a lengths input; pass sequences of one length")
            feed[spec.name] = lengths
        return self.run_feed(feed)[self.output_names[0]]
