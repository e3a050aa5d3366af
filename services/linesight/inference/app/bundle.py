"""A model version as the service sees it: an export directory plus what it says about itself.

The detection engine's export (linesight.vision.export) writes a directory; training ships it as
`models/<product>/<model_version>.tar.gz`. Everything the service needs beyond the network itself
(version, classes, input size, taxonomy) is read here once, so backends only score tensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from linesight.vision.components.calibrate import Recalibration

METADATA_FILES = ("metadata.json", "meta.json", "model.json")
TAXONOMY_FILES = ("taxonomy.yaml", "taxonomy.yml")
DEFAULT_INPUT_SIZE = (256, 256)
THRESHOLDS_FILE = "thresholds.npy"  # [anomaly, defect], as linesight.vision.export writes it


class ModelLoadError(RuntimeError):
    """A model version could not be loaded; frames get an error result, the old model keeps serving."""


class ModelLoadPending(ModelLoadError):  # noqa: N818 - a state, like BackendUnavailable
    """A model version cannot be loaded *yet*: S3 or Triton (policy `stop`) is down. Retried later."""


class Predictor(Protocol):
    """What a loaded export offers: linesight.vision.export.ExportedModel, or a test stand-in."""

    def predict(self, images: list[np.ndarray]) -> list[Any]: ...


@dataclass
class ModelBundle:
    """One exported model version on local disk."""

    version: str
    product: str
    directory: Path
    classes: list[str]
    input_size: tuple[int, int]  # (height, width) frames are resized to before scoring
    taxonomy: Any
    taxonomy_version: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        raw = self.metadata.get("thresholds") or {}
        out = {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
        if "threshold" in self.metadata and isinstance(self.metadata["threshold"], int | float):
            out.setdefault("anomaly", float(self.metadata["threshold"]))
        return out

    @cached_property
    def defect_threshold(self) -> float | None:
        """The model's own operating point on defect_probability: ``thresholds.npy`` (what the
        engine's ExportedModel scores with), else the metadata; None when the export has neither."""
        path = self.directory / THRESHOLDS_FILE
        if path.exists():
            try:
                values = np.load(path)
                if values.shape[0] >= 2:
                    return float(values[1])
            except (OSError, ValueError, IndexError):
                pass
        return self.thresholds.get("defect")

    def recalibrated_defect_threshold(
        self, golden: Sequence[float], *, model_threshold: float | None = None
    ) -> Recalibration | None:
        """The defect threshold the golden frames' defect probabilities call for, by the engine's
        rule (``calibrate.recalibrated_threshold``, as ``ExportedModel.recalibrated_defect_threshold``
        applies it) from the export's reference scores and metadata alone: no second model session,
        and it serves the Triton backend too. None when the export has no reference scores (older
        exports, classification-only models) or no defect threshold to move (``model_threshold``,
        what the model reported, stands in when the export does not say).
        """
        from linesight.vision.export import ExportError, recalibrate_export

        threshold = self.defect_threshold
        if threshold is None:
            threshold = model_threshold
        if threshold is None:
            return None
        try:
            return recalibrate_export(self.directory, self.metadata, threshold, golden)
        except ExportError as exc:
            raise ModelLoadError(str(exc)) from exc


def read_metadata(directory: Path) -> dict[str, Any]:
    for name in METADATA_FILES:
        path = directory / name
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise ModelLoadError(f"{path}: expected a JSON object")
            return data
    return {}


def _input_size(meta: dict[str, Any]) -> tuple[int, int]:
    raw_pre = meta.get("preprocess")
    pre: dict[str, Any] = raw_pre if isinstance(raw_pre, dict) else {}
    for key in ("input_size", "image_size", "input_hw"):
        value = pre.get(key, meta.get(key))
        if isinstance(value, int) and value > 0:
            return (value, value)
        if isinstance(value, list | tuple) and len(value) >= 2:
            h, w = int(value[0]), int(value[1])
            if h > 0 and w > 0:
                return (h, w)
    return DEFAULT_INPUT_SIZE


def load_taxonomy(directory: Path, classes: list[str], product: str) -> Any:
    """The taxonomy exported with the model; the engine's default for its classes otherwise."""
    from linesight.vision.taxonomy import Taxonomy

    for name in TAXONOMY_FILES:
        path = directory / name
        if path.exists():
            return Taxonomy.load(path)
    return Taxonomy.default_for(classes, product=product)


def load_bundle(directory: Path, *, version: str | None = None, product: str | None = None) -> ModelBundle:
    """Describe an export directory; raises ModelLoadError when it is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    meta = read_metadata(directory)
    classes = [str(c) for c in meta.get("classes", []) if str(c) != "good"]
    mversion = str(version or meta.get("model_version") or meta.get("version") or directory.name)
    mproduct = str(product or meta.get("product") or "default")
    try:
        taxonomy = load_taxonomy(directory, classes, mproduct)
    except Exception as exc:
        raise ModelLoadError(f"{directory}: taxonomy unusable: {exc}") from exc
    tversion = str(meta.get("taxonomy_version") or getattr(taxonomy, "version", "") or "")
    return ModelBundle(
        version=mversion,
        product=mproduct,
        directory=directory,
        classes=classes,
        input_size=_input_size(meta),
        taxonomy=taxonomy,
        taxonomy_version=tversion,
        metadata=meta,
    )


def resolve_loader(spec: str, directory: Path) -> Any:
    """`module:attr` -> the object; a module shipped inside the export directory is found too."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"model loader {spec!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        candidate = directory / (module_name.replace(".", "/") + ".py")
        if not candidate.exists():
            raise
        mod_spec = importlib.util.spec_from_file_location(module_name, candidate)
        if mod_spec is None or mod_spec.loader is None:
            raise
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[module_name] = module
        mod_spec.loader.exec_module(module)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ModelLoadError(f"model loader {spec!r}: {module_name} has no {attr}") from exc


def load_predictor(spec: str, directory: Path, *, threads: int = 0) -> Predictor:
    """Instantiate the export's predictor (ExportedModel.load(dir) for real models).

    `threads` > 0 is passed on as the runtime's intra-op thread count when the loader takes it.
    """
    try:
        target = resolve_loader(spec, directory)
        loader = getattr(target, "load", target)
        kwargs: dict[str, Any] = {}
        if threads > 0 and "threads" in _parameters(loader):
            kwargs["threads"] = threads
        predictor: Predictor = loader(directory, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model from {directory} with {spec}: {type(exc).__name__}: {exc}"
        ) from exc
    return predictor


def _parameters(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
