"""Write a fitted ``InspectionModel`` as the export artifact set (layout in ``linesight.vision.export``).

Kept apart from the loader because writing needs torch (the ONNX export of the network) while
loading must not: the package module is what Triton and the inference service import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linesight.vision.components.scoring import GOOD
from linesight.vision.export import (
    ARTIFACT_FORMAT,
    NOVELTY_FILE,
    ONNX_FILE,
    REFERENCE_GOOD_FILE,
    SEGMENTATION_FILE,
    TAXONOMY_FILE,
    ExportError,
)
from linesight.vision.taxonomy import Taxonomy

if TYPE_CHECKING:
    from linesight.vision.model import InspectionModel

__all__ = ["export_model"]


def export_model(
    model: InspectionModel, out_dir: str | Path, *, metrics: dict[str, Any] | None = None, opset: int = 17
) -> Path:
    """Write the artifact set for ``model`` into ``out_dir`` (created); returns the directory."""
    from linesight.vision.components.features import to_onnx  # only the exporter needs torch

    if model.state is None:
        raise ExportError("cannot export an unfitted model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = model.config.input_size
    to_onnx(model.net, (h, w), out / ONNX_FILE, opset=opset)
    st = model.state
    np.save(out / "bank.npy", model.patchcore.bank)
    np.save(out / "bank_nn.npy", model.patchcore.bank_nn)
    np.save(out / "projection.npy", model.patchcore.projection)
    np.save(out / "thresholds.npy", np.array([st.anomaly_threshold, st.defect_threshold], dtype=np.float64))
    np.save(out / "temperature.npy", np.array([st.temperature], dtype=np.float64))
    np.save(out / REFERENCE_GOOD_FILE, np.asarray(model.reference_good_scores, dtype=np.float32))
    novelty = model.novelty_reference  # Prediction.novelty: distance to the training set
    if novelty is not None:
        novelty.save(out / NOVELTY_FILE)
    elif (out / NOVELTY_FILE).exists():
        (out / NOVELTY_FILE).unlink()
    if st.segmentation is not None:  # the supervised localisation head, numpy at prediction
        np.savez(out / SEGMENTATION_FILE, **st.segmentation.arrays())
    elif (out / SEGMENTATION_FILE).exists():
        (out / SEGMENTATION_FILE).unlink()
    # the taxonomy travels with the model: decide() needs its severity rules and dispositions, and
    # the inference service reads taxonomy.yaml from the export directory (inference/app/bundle.py)
    taxonomy = model.taxonomy or Taxonomy.default_for([c for c in model.classes if c != GOOD])
    (out / TAXONOMY_FILE).write_text(taxonomy.to_yaml(), encoding="utf-8")
    spec = model.net.backbone.spec
    meta = {
        "format": ARTIFACT_FORMAT,
        "model_version": model.version,
        "backbone": spec.name,
        "preprocess": {"mean": spec.mean, "std": spec.std, "input_size": [h, w], "channels": 3},
        "classes": model.classes,
        "head_classes": list(st.head_classes),
        "other_class": st.other_class,
        "provisional_classes": list(st.provisional),
        "provisional_examples": dict(st.provisional_examples),
        "min_examples": st.min_examples,
        "anomaly_only_classes": list(model.anomaly_only_classes),
        "thresholds": model.thresholds,
        "temperature": st.temperature,
        "grid": list(st.grid),
        "sigma": st.sigma,
        "patchcore": {"reweight_neighbours": model.config.patchcore.reweight_neighbours},
        "review_band": list(st.review_band) if st.review_band is not None else None,
        "segmentation": st.segmentation.meta() if st.segmentation is not None else None,
        "recalibration": {
            "quantile": model.config.recalibration_quantile,
            "deadzone": model.config.recalibration_deadzone,
            "reference_file": REFERENCE_GOOD_FILE,
        },
        "taxonomy_version": taxonomy.version,
        "taxonomy_product": taxonomy.product,
        "taxonomy_file": TAXONOMY_FILE,
        "metrics": {**model.metrics, **(metrics or {})},
        "created": datetime.now(UTC).isoformat(),
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    return out
