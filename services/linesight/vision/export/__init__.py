"""The export artifact set of a trained model, run with onnxruntime + numpy only.

This package module is the loader side: ``linesight.vision.export:ExportedModel`` is the loader
spec the inference service configures and writes into every Triton model version, and it must
import without torch. The writer (``export.writer.export_model``) needs torch and lives beside it.

Layout of ``out_dir`` (what the inference service or a Triton python backend loads):
    network.onnx        backbone taps -> patch embedding, pooled vector, head logits
    bank.npy            PatchCore memory bank [M, C]       bank_nn.npy  its self-neighbours
    projection.npy      coreset random projection          thresholds.npy [anomaly, defect]
    temperature.npy     head temperature                    metadata.json  everything else
    taxonomy.yaml       the taxonomy the model was fitted with (classes, severity rules, dispositions)
    reference_good.npy  out-of-fold defect probabilities of training-side good images: the
                        reference golden-sample recalibration compares a session's frames with
    novelty.npz         standardised training descriptors and the distance that is novelty 1.0
                        (``Prediction.novelty``; absent in older exports: novelty is NaN)
    segmentation.npz    the per-patch segmentation head (optional; its classes in metadata.json):
                        the heatmap is the fused supervised map when present
``ExportedModel`` never imports torch; it shares the numpy post-processing with the torch model,
so both give the same ``Prediction``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.components.calibrate import Recalibration, recalibrated_threshold
from linesight.vision.components.novelty import NOVELTY_FILE, NoveltyReference
from linesight.vision.components.patchcore import PatchCore, PatchCoreConfig
from linesight.vision.components.scoring import (
    GOOD,
    InputError,
    Prediction,
    ScoringState,
    check_images,
    predict_chunk,
    preprocess,
)
from linesight.vision.components.segmentation import SegmentationHead
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

__all__ = [
    "ARTIFACT_FORMAT",
    "NOVELTY_FILE",
    "ONNX_FILE",
    "REFERENCE_GOOD_FILE",
    "SEGMENTATION_FILE",
    "TAXONOMY_FILE",
    "ExportError",
    "ExportedModel",
    "execution_providers",
    "recalibrate_export",
]

ARTIFACT_FORMAT = "linesight.model/v1"
ONNX_FILE = "network.onnx"
TAXONOMY_FILE = "taxonomy.yaml"
REFERENCE_GOOD_FILE = "reference_good.npy"
SEGMENTATION_FILE = "segmentation.npz"


class ExportError(RuntimeError):
    """The artifact directory is incomplete, of another format, or the model is not fitted."""


def recalibrate_export(
    directory: Path, meta: dict[str, Any], threshold: float, golden: Sequence[float]
) -> Recalibration | None:
    """The engine's recalibration rule (``calibrate.recalibrated_threshold``) from an export's
    reference scores and metadata alone, so a service that runs the network elsewhere (Triton)
    recalibrates like the engine. None when the export has no reference scores (exported before
    they were, or a classification-only model) or there are no golden scores.
    """
    raw = meta.get("recalibration")
    rule: dict[str, Any] = raw if isinstance(raw, dict) else {}
    path = Path(directory) / str(rule.get("reference_file") or REFERENCE_GOOD_FILE)
    if not path.exists() or len(golden) == 0:
        return None
    try:
        reference = np.load(path).ravel()
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable reference scores ({exc})") from exc
    if reference.size == 0:
        return None
    return recalibrated_threshold(
        reference,
        np.asarray(golden, dtype=np.float64),
        threshold,
        quantile=float(rule.get("quantile", 0.75)),
        deadzone=float(rule.get("deadzone", 1.0)),
    )


def execution_providers() -> list[str]:
    """CUDA first where the onnxruntime build has it (onnxruntime-gpu in the Triton image on a GPU
    node), else the CPU: the same export runs on either, and the CPU build never lists CUDA."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or [
        "CPUExecutionProvider"
    ]


class ExportedModel:
    """The exported artifact: onnxruntime for the network, numpy for kNN and calibration."""

    def __init__(
        self,
        directory: Path,
        meta: dict[str, Any],
        session: Any,
        patchcore: PatchCore,
        state: ScoringState,
        taxonomy: Taxonomy | None = None,
        novelty: NoveltyReference | None = None,
    ) -> None:
        self.directory = directory
        self.novelty = novelty
        self.meta = meta
        self.session = session
        self.patchcore = patchcore
        self.state = state
        self.taxonomy = taxonomy or Taxonomy.default_for(
            [c for c in meta.get("classes", []) if c != GOOD],
            product=str(meta.get("taxonomy_product") or "generic"),
            version=str(meta.get("taxonomy_version") or "0"),
        )

    @property
    def version(self) -> str:
        return str(self.meta["model_version"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def thresholds(self) -> dict[str, float]:
        return {"anomaly": self.state.anomaly_threshold, "defect": self.state.defect_threshold}

    def recalibrated_defect_threshold(self, golden: Sequence[float]) -> Recalibration | None:
        """The defect threshold golden frames' defect probabilities call for; see
        ``recalibrate_export``."""
        return recalibrate_export(self.directory, self.meta, self.state.defect_threshold, golden)

    @classmethod
    def load(cls, directory: str | Path, *, threads: int | None = None, spin: bool = False) -> ExportedModel:
        """Load an export; ``threads`` intra-op threads (default 2) for the network and for
        PatchCore's nearest-row search.

        ``spin``: let idle onnxruntime workers busy-wait for the next op. Off by default: on
        shared cores a spinning worker burns a core the per-frame work of the service (or another
        process) needs, 40 % and more CPU per image for 2 threads on 2 cores; it only pays on cores
        reserved for the model.
        """
        import onnxruntime as ort

        src = Path(directory)
        try:
            meta = json.loads((src / "metadata.json").read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"{src}: no readable metadata.json ({exc})") from exc
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ExportError(f"{src}: artifact format {meta.get('format')!r} is not {ARTIFACT_FORMAT!r}")
        try:
            bank = np.load(src / "bank.npy")
            bank_nn = np.load(src / "bank_nn.npy")
            projection = np.load(src / "projection.npy")
            thresholds = np.load(src / "thresholds.npy")
            temperature = float(np.load(src / "temperature.npy")[0])
        except (OSError, ValueError) as exc:
            raise ExportError(f"{src}: missing or corrupt tensor file ({exc})") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 2
        opts.inter_op_num_threads = 1
        spinning = "1" if spin else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        try:
            session = ort.InferenceSession(
                str(src / ONNX_FILE), sess_options=opts, providers=execution_providers()
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"{src}: cannot load {ONNX_FILE}: {exc}") from exc
        knn = PatchCoreConfig(reweight_neighbours=int(meta["patchcore"]["reweight_neighbours"]))
        pc = PatchCore(knn, threads=threads)
        pc.set_bank(bank, projection, bank_nn)
        state = ScoringState(
            head_classes=list(meta["head_classes"]),
            temperature=temperature,
            anomaly_threshold=float(thresholds[0]),
            defect_threshold=float(thresholds[1]),
            input_size=(int(meta["preprocess"]["input_size"][0]), int(meta["preprocess"]["input_size"][1])),
            grid=(int(meta["grid"][0]), int(meta["grid"][1])),
            sigma=float(meta["sigma"]),
            other_class=str(meta["other_class"]),
            provisional=list(meta.get("provisional_classes", [])),
            provisional_examples={str(c): int(n) for c, n in meta.get("provisional_examples", {}).items()},
            min_examples=int(meta.get("min_examples", 0)),
        )
        band = meta.get("review_band")  # artifacts written before fitted bands have none
        if band is not None:
            state.review_band = (float(band[0]), float(band[1]))
        if meta.get("segmentation"):
            try:
                with np.load(src / SEGMENTATION_FILE) as seg_arrays:
                    state.segmentation = SegmentationHead.from_arrays(meta["segmentation"], dict(seg_arrays))
            except (OSError, KeyError, ValueError) as exc:
                raise ExportError(f"{src}: {SEGMENTATION_FILE} unusable: {exc}") from exc
        taxonomy = None
        if (src / TAXONOMY_FILE).exists():  # artifacts written before the taxonomy was exported lack it
            try:
                taxonomy = Taxonomy.load(src / TAXONOMY_FILE)
            except TaxonomyError as exc:
                raise ExportError(f"{src}: {TAXONOMY_FILE} unusable: {exc}") from exc
        novelty = None
        if (src / NOVELTY_FILE).exists():  # exports written before novelty was recorded lack it
            try:
                novelty = NoveltyReference.load(src / NOVELTY_FILE)
            except (OSError, ValueError, KeyError) as exc:
                raise ExportError(f"{src}: {NOVELTY_FILE} unusable: {exc}") from exc
        return cls(src, meta, session, pc, state, taxonomy, novelty)

    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> list[Prediction]:
        imgs = check_images(images)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        pre = self.meta["preprocess"]
        out: list[Prediction] = []
        for s in range(0, len(imgs), batch_size):
            chunk = imgs[s : s + batch_size]
            batch = preprocess(chunk, self.state.input_size, float(pre["mean"]), float(pre["std"]))
            outputs = self.session.run(None, {"image": batch})
            shapes = [im.shape for im in chunk]
            out.extend(predict_chunk(self.state, self.patchcore, self.novelty, shapes, outputs))
        return out
