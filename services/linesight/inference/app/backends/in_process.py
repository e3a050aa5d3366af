"""Scoring inside the service process with the engine's ExportedModel (onnxruntime + numpy).

The embedded default, and the fallback when Triton cannot be reached.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linesight.inference.app.bundle import ModelBundle, Predictor, load_predictor


class InProcessSession:
    """A loaded export; `predict` runs on the calling thread."""

    def __init__(self, bundle: ModelBundle, predictor: Predictor) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self._predictor = predictor

    @property
    def backend_name(self) -> str:
        return "in_process"

    def predict(self, batch: np.ndarray) -> list[Any]:
        preds = self._predictor.predict(list(batch))
        if len(preds) != len(batch):
            raise RuntimeError(f"model returned {len(preds)} predictions for {len(batch)} images")
        return list(preds)

    def close(self) -> None:
        self._predictor = _Closed()


class _Closed:
    def predict(self, images: list[np.ndarray]) -> list[Any]:
        raise RuntimeError("model session closed")


class InProcessBackend:
    name = "in_process"

    def __init__(self, loader_spec: str, *, threads: int = 0) -> None:
        self.loader_spec = loader_spec
        self.threads = threads  # the runtime's intra-op threads; 0 = the loader's default

    def load(self, bundle: ModelBundle) -> InProcessSession:
        return InProcessSession(
            bundle, load_predictor(self.loader_spec, bundle.directory, threads=self.threads)
        )

    def close(self) -> None:
        return None
