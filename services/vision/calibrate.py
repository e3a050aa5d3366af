"""Probability and threshold calibration (temperature scaling, false-reject-rate thresholds).

Thresholds are data computed from held-out good images and saved with the model, never constants
in code: a station's operating point must be reproducible from the artifact alone.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize_scalar

from linesight.vision.scoring import softmax

__all__ = ["expected_calibration_error", "fit_temperature", "logit", "threshold_at_frr"]


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on held-out rows (Guo et al. 2017)."""
    if len(logits) == 0:
        return 1.0
    t_idx = np.asarray(targets, dtype=np.int64)

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), t_idx], 1e-12, 1.0))))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def threshold_at_frr(good_scores: np.ndarray, target_frr: float) -> float:
    """Smallest score threshold that rejects at most ``target_frr`` of these good images (score >= thr)."""
    s = np.sort(np.asarray(good_scores, dtype=np.float64))
    if len(s) == 0:
        raise ValueError("threshold_at_frr needs at least one good score")
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"target_frr must be in [0, 1), got {target_frr}")
    n_allowed = int(np.floor(target_frr * len(s)))
    k = len(s) - 1 - n_allowed  # highest score that must still pass
    return float(np.nextafter(s[k], np.inf))


def logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def expected_calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE of top-class confidences ``probs`` against 0/1 ``correct``."""
    probs = np.asarray(probs, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (probs > lo) & (probs <= hi)
        if m.any():
            ece += m.mean() * abs(probs[m].mean() - correct[m].mean())
    return float(ece)
