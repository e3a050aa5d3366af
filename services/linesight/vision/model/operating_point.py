"""Where the model says "defect": thresholds from out-of-fold scores, the new class's bias that
keeps old classes' recall, and golden-sample recalibration of both thresholds.

The defect threshold balances out-of-fold false rejects against out-of-fold escapes (false
rejects capped at ``oof_frr_factor`` x the target); PatchCore's is set on good images outside the
memory bank. ``recalibrate`` re-fits both from a few golden good frames of the current session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from linesight.vision.components.calibrate import balanced_threshold, recalibrated_threshold, threshold_at_frr
from linesight.vision.components.heads import OTHER
from linesight.vision.components.scoring import GOOD, InputError, check_images
from linesight.vision.model.config import CalibrationReport
from linesight.vision.model.report import stamp_version

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = [
    "calibrate_operating_point",
    "cv_metrics",
    "defect_operating_point",
    "protecting_bias",
    "recalibrate",
]


def defect_operating_point(model: InspectionModel, good: np.ndarray, defect: np.ndarray) -> float:
    """Defect threshold from out-of-fold scores: balanced false rejects vs escapes, out-of-fold
    false rejects at most ``oof_frr_factor`` x the target (``calibrate.balanced_threshold``)."""
    cap = min(0.49, model.config.oof_frr_factor * model.target_frr)
    return balanced_threshold(good, defect, cap)


def calibrate_operating_point(
    model: InspectionModel, p: np.ndarray, y_o: np.ndarray, has_good: bool
) -> tuple[np.ndarray, float]:
    """Defect probability of the out-of-fold rows and the threshold derived from it; keeps
    the good and defect scores that golden-sample recalibration re-derives the threshold from.
    Without a good class (classification only) every image is a defect."""
    if has_good:
        defect_p = 1.0 - p[:, 0]
        is_good = y_o == 0
        defect_thr = defect_operating_point(model, defect_p[is_good], defect_p[~is_good])
    else:
        defect_p = np.ones(len(y_o))
        is_good = np.zeros(len(y_o), dtype=bool)
        defect_thr = 0.5
    model.calibration = model.calibration.with_defect_scores(defect_p, is_good)
    return defect_p, float(defect_thr)


def protecting_bias(
    logits: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    new_class: str,
    protect: dict[str, float],
    tolerance: float = 0.0,
    margin: float = 0.0,
) -> float:
    """Largest non-positive shift of the new class's logit keeping old OOF recall within tolerance.

    A freshly added class with few examples over-claims (bias correction in the spirit of BiC,
    Wu et al. 2019). ``margin`` (logit units) asks the new class to lose old-class rows by at
    least that much, a guard for images less typical than the out-of-fold rows."""
    k_new = classes.index(new_class)
    old = [c for c in protect if c in classes and (y == classes.index(c)).any()]
    if not old:
        return 0.0
    # reference: the same out-of-fold logits without the new class (what the old classes had)
    ref = logits.copy()
    ref[:, k_new] = -np.inf
    ref_top = np.argmax(ref, axis=1)
    target = float(np.mean([np.mean(ref_top[y == classes.index(c)] == classes.index(c)) for c in old]))
    # bounded: at most a e^3 (20x) cut of the new class's odds; out-of-fold logits from a
    # few dozen examples are noisy and an unbounded search would suppress the new class
    for shift in np.arange(0.0, -3.01, -0.25):
        z = logits.copy()
        z[:, k_new] += shift + margin
        top = np.argmax(z, axis=1)
        rec = float(np.mean([np.mean(top[y == classes.index(c)] == classes.index(c)) for c in old]))
        if rec >= target - tolerance:
            return float(shift)
    return -3.0


def cv_metrics(
    p: np.ndarray, y: np.ndarray, defect_p: np.ndarray, thr: float, classes: list[str]
) -> dict[str, float]:
    """Out-of-fold rates at the chosen threshold; ``cv_recall_<class>`` is also what
    ``add_class`` protects."""
    good_k = classes.index(GOOD) if GOOD in classes else -1
    is_def = y != good_k
    m: dict[str, float] = {}
    if (~is_def).any():
        m["cv_false_reject_rate"] = float(np.mean(defect_p[~is_def] >= thr))
    if is_def.any():
        m["cv_defect_recall"] = float(np.mean(defect_p[is_def] >= thr))
        other_k = classes.index(OTHER) if OTHER in classes else -2
        typed = is_def & (y != other_k)
        if typed.any():
            masked = p[typed].copy()
            if good_k >= 0:
                masked[:, good_k] = -1.0  # type accuracy among defect classes only
            m["cv_type_accuracy"] = float(np.mean(np.argmax(masked, axis=1) == y[typed]))
        for k, c in enumerate(classes):
            if (y == k).any():
                m[f"cv_recall_{c}"] = float(np.mean(np.argmax(p[y == k], axis=1) == k))
    return m


def recalibrate(
    model: InspectionModel, good_images: Sequence[np.ndarray], *, target_frr: float | None = None
) -> CalibrationReport:
    """Golden-sample recalibration: re-fit thresholds from known-good frames of this session.

    The anomaly threshold follows the median ratio of golden to training-side held-out good
    scores; the defect threshold moves by the golden frames' shift from the out-of-fold good
    scores beyond sampling noise (``calibrate.recalibrated_threshold``). No retraining.
    """
    state = model.require_fitted()
    imgs = check_images(good_images, what="good_images")
    if len(imgs) < 5:
        raise InputError(f"recalibrate needs at least 5 known-good frames, got {len(imgs)}")
    frr = model.target_frr if target_frr is None else target_frr
    old = model.thresholds
    cal = model.calibration
    preds = model.predict(imgs)
    raw_anom = np.array([p.anomaly_score * state.anomaly_threshold for p in preds])
    ref_anom = float(np.median(cal.good_anomaly)) if len(cal.good_anomaly) else float(np.median(raw_anom))
    ratio = float(np.median(raw_anom)) / max(ref_anom, 1e-12)
    floor_anom = threshold_at_frr(raw_anom, frr) if len(raw_anom) * frr >= 1.0 else 0.0
    new_anom = max(state.anomaly_threshold * ratio, floor_anom)
    shift = {"anomaly_ratio": ratio}
    new_def = state.defect_threshold
    if model.head is not None and GOOD not in model.classes:
        raise InputError("this model has no 'good' class (classification only): nothing to recalibrate")
    if model.head is not None and len(cal.good_defect):
        golden = np.array([p.defect_probability for p in preds])
        moved = recalibrated_threshold(
            cal.good_defect,
            golden,
            state.defect_threshold,
            quantile=model.config.recalibration_quantile,
            deadzone=model.config.recalibration_deadzone,
            seed=model.seed,
        )
        new_def = moved.threshold
        shift.update(moved.as_dict())
        shift["golden_above_old"] = float(np.mean(golden >= state.defect_threshold))
    state.anomaly_threshold = float(new_anom)
    state.defect_threshold = float(new_def)
    stamp_version(model)
    return CalibrationReport(
        n_images=len(imgs),
        old_thresholds=old,
        new_thresholds=model.thresholds,
        shift=shift,
        created_at=datetime.now(UTC).isoformat(),
        model_version=model.version,
    )
