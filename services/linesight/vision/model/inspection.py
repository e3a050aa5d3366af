"""``InspectionModel``: PatchCore anomaly model + supervised defect-type head on one backbone.

Design (how the model keeps one operating point across sessions; figures in ../README.md):
  * the supervised head (with ``good`` as a class) carries known defect classes and produces the
    calibrated ``defect_probability``; PatchCore's anomaly score never vetoes it, it only sends
    frames without a confident class to review (see ``decide``), because PatchCore scores did not
    transfer across sessions;
  * thresholds are calibrated on held-out training-side data and stored as data
    (``operating_point``);
  * ``recalibrate`` re-fits them from a few golden good frames of the current session;
  * ``add_class`` appends one head row, old rows fixed, against replayed features
    (``incremental``);
  * optionally (``finetune_blocks`` > 0) the last tail blocks are fine-tuned with the head
    (``fit``); the trunk, and so PatchCore, stays frozen and shared.

This class is the facade: each role lives in its own module of this package and works on the
model's typed state (``ReplayStore``, ``CalibrationSet``, ``ScoringState``).

Example:
    >>> model = InspectionModel.create(seed=0)            # doctest: +SKIP
    >>> report = model.fit(images, labels)                # doctest: +SKIP
    >>> model.predict([image])[0].defect_probability      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.components.backbone import BACKBONES, load_backbone
from linesight.vision.components.features import FeatureNet
from linesight.vision.components.heads import OTHER, LinearHead
from linesight.vision.components.novelty import NoveltyReference
from linesight.vision.components.patchcore import PatchCore
from linesight.vision.components.scoring import (
    GOOD,
    InputError,
    Prediction,
    ScoringState,
    check_images,
    predict_chunk,
)
from linesight.vision.model import adapt, incremental, operating_point, persistence
from linesight.vision.model import fit as fitting
from linesight.vision.model.config import CalibrationReport, FitReport, ModelConfig, Progress
from linesight.vision.model.network import resize, runtime_for
from linesight.vision.model.state import CalibrationSet, ReplayStore
from linesight.vision.taxonomy import Taxonomy

__all__ = [
    "GOOD",
    "CalibrationReport",
    "FitReport",
    "InputError",
    "InspectionModel",
    "ModelConfig",
    "Prediction",
]


class InspectionModel:
    """Few-shot inspection model; see the module docstring for the design."""

    def __init__(self, config: ModelConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or ModelConfig()
        if self.config.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {self.config.backbone!r}; known: {sorted(BACKBONES)}")
        self.seed = seed
        try:
            self.net = FeatureNet(
                load_backbone(self.config.backbone), interior_margin=self.config.interior_margin
            )
        except ValueError as exc:  # FeatureNet checks its own settings; a caller's config error
            raise InputError(str(exc)) from exc
        n_tail = len(self.net.backbone.tail)
        if not 0 <= self.config.finetune_blocks <= n_tail:
            raise InputError(f"finetune_blocks must be in 0..{n_tail} for {self.config.backbone}")
        self.patchcore = PatchCore(self.config.patchcore)
        self.head: LinearHead | None = None
        self.state: ScoringState | None = None
        self.taxonomy: Taxonomy | None = None
        self.anomaly_only_classes: list[str] = []
        self.version = "untrained"
        self.metrics: dict[str, float] = {}
        self.replay = ReplayStore.empty(self.net.pooled_dim)
        self.calibration = CalibrationSet()
        self.target_frr = 0.02  # what fit was asked for; recalibration's default
        self._novelty: tuple[ReplayStore, NoveltyReference | None] | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, backbone: str = "efficientnet-lite0", *, seed: int = 0, **overrides: Any
    ) -> InspectionModel:
        """New untrained model; ``overrides`` set ``ModelConfig`` fields (e.g. input_size=(192, 192))."""
        if "input_size" in overrides:
            overrides["input_size"] = tuple(int(v) for v in overrides["input_size"])
        try:
            config = ModelConfig(backbone=backbone, **overrides)
        except TypeError as exc:
            raise InputError(f"unknown model option: {exc}") from exc
        h, w = config.input_size
        if h % 16 or w % 16 or h < 64 or w < 64:
            raise InputError(f"input_size {config.input_size} must be multiples of 16, at least 64")
        return cls(config, seed=seed)

    # -- properties ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Classes the supervised head predicts (``good`` first), as used in ``class_probs``."""
        if self.state is None:
            return []
        return [c for c in self.state.head_classes if c != OTHER] or [GOOD]

    @property
    def thresholds(self) -> dict[str, float]:
        if self.state is None:
            return {}
        return {"anomaly": float(self.state.anomaly_threshold), "defect": float(self.state.defect_threshold)}

    @property
    def temperature(self) -> float:
        return 1.0 if self.state is None else float(self.state.temperature)

    @property
    def reference_good_scores(self) -> np.ndarray:
        """Out-of-fold defect probabilities of the training side's good images: what golden
        frames are compared with when a station recalibrates (exported with the model)."""
        return self.calibration.good_defect.copy()

    @property
    def reference_defect_scores(self) -> np.ndarray:
        """Out-of-fold defect probabilities of the training side's defect images (same folds)."""
        return self.calibration.defect.copy()

    @property
    def fitted(self) -> bool:
        return self.state is not None

    def require_fitted(self) -> ScoringState:
        if self.state is None:
            raise RuntimeError("model is not fitted: call fit() or load() first")
        return self.state

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        target_frr: float = 0.02,
        progress: Progress | None = None,
        groups: Sequence[str] | None = None,
        masks: Sequence[np.ndarray | None] | None = None,
    ) -> FitReport:
        """Fit PatchCore on good images and the supervised head on all labels.

        ``groups`` (e.g. part_id) keeps photos of one part on one side of the internal
        cross-validation used for calibration. ``masks`` (per image, None without geometry)
        train the segmentation head that localises defects (``components/segmentation.py``).
        """
        return fitting.fit(
            self,
            images,
            labels,
            taxonomy=taxonomy,
            target_frr=target_frr,
            progress=progress,
            groups=groups,
            masks=masks,
        )

    def add_class(self, images: Sequence[np.ndarray], label: str) -> FitReport:
        """Add a defect class from a few (20-50) examples by re-fitting only the head on the
        stored features of earlier data (replay) plus the new ones; the backbone and PatchCore
        are untouched, so it takes seconds instead of a full retrain."""
        return incremental.add_class(self, images, label)

    def update_from_reviews(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[str],
        *,
        groups: Sequence[str] | None = None,
        session_weight: int | None = None,
    ) -> adapt.UpdateReport:
        """Learn from reviewed frames in seconds: confirmed good frames join PatchCore's good
        reference and the head's negatives, confirmed defects of known classes extend the head
        (convex head re-fitted on replay + new rows, fine-tuned tail fixed), a new class goes
        through ``add_class``; the defect threshold is re-derived from out-of-fold scores of
        replay + new rows (``adapt.update_from_reviews``). ``session_weight``: augmented copies
        per reviewed frame (default ``adapt.REVIEW_COPIES``)."""
        return adapt.update_from_reviews(self, images, labels, groups=groups, session_weight=session_weight)

    # -- inference ----------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> list[Prediction]:
        """Predictions for decoded images (uint8 HxW or HxWx3), in order."""
        state = self.require_fitted()
        imgs = check_images(images)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        preds: list[Prediction] = []
        novelty, runtime = self.novelty_reference, runtime_for(self.net)
        for s in range(0, len(imgs), batch_size):
            chunk = imgs[s : s + batch_size]
            outputs = runtime.infer(
                self.net,
                resize(chunk, self.config.input_size),
                self.config.input_size,
                batch_size,
                use_onnx=self.config.runtime == "onnx",
            )
            shapes = [im.shape for im in chunk]
            preds.extend(predict_chunk(state, self.patchcore, novelty, shapes, outputs))
        return preds

    @property
    def novelty_reference(self) -> NoveltyReference | None:
        """The training set as ``Prediction.novelty`` measures distance to it: derived from the
        replay store's original rows (what the deployed network computes), rebuilt when the
        store changes (fit, add_class, update_from_reviews). None without good images."""
        replay = self.replay
        cached = self._novelty
        if cached is not None and cached[0] is replay:
            return cached[1]
        orig = replay.original
        labels = np.array(replay.labels, dtype=object)[orig] if len(replay) else np.zeros(0, object)
        ref = None
        if len(labels):
            ref = NoveltyReference.fit(replay.x[orig], replay.groups[orig], labels == GOOD)
        self._novelty = (replay, ref)
        return ref

    def prepare_runtime(self) -> None:
        """Build the prediction graphs now (after a fit), not on the first frame."""
        if self.config.runtime == "onnx":
            runtime_for(self.net).session(self.net, self.config.input_size)
        self.patchcore.prepare()

    # -- operating point ----------------------------------------------------------------------
    def recalibrate(
        self, good_images: Sequence[np.ndarray], *, target_frr: float | None = None
    ) -> CalibrationReport:
        """Golden-sample recalibration: re-fit thresholds from known-good frames of this session
        (``operating_point.recalibrate``). No retraining."""
        return operating_point.recalibrate(self, good_images, target_frr=target_frr)

    def defect_operating_point(self, good: np.ndarray, defect: np.ndarray) -> float:
        """Defect threshold from out-of-fold scores: balanced false rejects vs escapes, out-of-fold
        false rejects at most ``oof_frr_factor`` x the target (``calibrate.balanced_threshold``)."""
        return operating_point.defect_operating_point(self, good, defect)

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write model.json + arrays.npz (no pickles; the backbone comes from its pip package)."""
        return persistence.save(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> InspectionModel:
        return persistence.load(cls, directory)
