"""The one interface every runtime offers: load a model version, score a batch, retire it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from linesight.inference.app.bundle import ModelBundle


class BackendUnavailable(RuntimeError):  # noqa: N818 - reads as a state, like BusUnavailable
    """The runtime cannot be reached (Triton down); retry later or fail over. Not the frame's fault."""


class InferenceFailed(RuntimeError):  # noqa: N818
    """The model ran and failed on this batch; its frames get an error result routed to review."""


class ScoringSession(Protocol):
    """One loaded model version on one runtime. `predict` takes N x H x W x 3 uint8 RGB."""

    version: str
    bundle: ModelBundle

    @property
    def backend_name(self) -> str: ...

    def predict(self, batch: np.ndarray) -> list[Any]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Loads model versions; `load` may block for seconds (call it off the event loop)."""

    name: str

    def load(self, bundle: ModelBundle) -> ScoringSession: ...

    def close(self) -> None: ...
