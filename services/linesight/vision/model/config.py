"""What an ``InspectionModel`` is configured with and what its fit and recalibration report.

The numbers behind the defaults (which input size, head strength, fine-tuning depth, ...) are
in ``linesight/vision/README.md``, with the commands that reproduce them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from linesight.vision.components.patchcore import PatchCoreConfig

__all__ = ["CalibrationReport", "FitReport", "ModelConfig", "Progress"]

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet-lite0"
    input_size: tuple[int, int] = (192, 192)  # (h, w): meets the 2-core speed target at full accuracy
    min_examples: int = 30  # a class needs this many labels for a supervised head
    min_other_examples: int = 5  # rare-class images train the "defect, type unknown" bucket
    augment_copies: int = 2  # most augmented copies per defect image (rarer classes get more)
    good_augment_copies: int = 0
    bank_fraction: float = 0.5  # of good images, for the PatchCore memory bank
    max_bank_images: int = 200
    head_c: float = 0.3  # inverse L2 strength of the head
    cv_folds: int = 5
    runtime: str = "onnx"  # prediction runtime: "onnx" (onnxruntime) or "torch"
    # operating point: out-of-fold false rejects may reach this multiple of target_frr when that
    # balances escapes (OOF models are weaker and the training side more varied than one session)
    oof_frr_factor: float = 2.0
    # golden-sample recalibration (calibrate.recalibrated_threshold): the defect threshold moves by
    # the shift of this quantile of golden vs out-of-fold good scores, less this many standard
    # deviations of that quantile over as many reference frames (chosen on the training side)
    recalibration_quantile: float = 0.75
    recalibration_deadzone: float = 1.0
    # add_class: the new class must lose old classes' out-of-fold rows by this logit margin
    new_class_margin: float = 0.5
    # fine-tuning (components/finetune.py): the last N modules of the backbone tail (after the
    # stride-16 tap; 1 = the final 1x1 conv) train with a head, then the linear head is re-fitted
    # on them; 0 = frozen features
    finetune_blocks: int = 2
    finetune_epochs: float = 2.0  # class-balanced draws per row
    finetune_lr: float = 1e-4
    # the pooled descriptor's extremes once more over the frame less this share of each side
    # (components/features.py); 0 = whole-frame extremes only, as models saved before it
    interior_margin: float = 1 / 6
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)


@dataclass
class FitReport:
    """What fit/add_class did and what it cost."""

    n_images: int
    class_counts: dict[str, int]
    classes: list[str]
    anomaly_only_classes: list[str]
    n_bank_images: int
    n_calibration_good: int
    n_head_rows: int
    memory_bank_rows: int
    memory_bank_mb: float
    memory_bank_mb_per_100_images: float
    thresholds: dict[str, float]
    temperature: float
    timings: dict[str, float]
    seconds: float
    version: str
    cv_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CalibrationReport:
    """Golden-sample recalibration result (log it as an event at the station)."""

    n_images: int
    old_thresholds: dict[str, float]
    new_thresholds: dict[str, float]
    shift: dict[str, float]
    created_at: str
    model_version: str
