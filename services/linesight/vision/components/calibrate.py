"""Probability and threshold calibration (temperature scaling, false-reject-rate thresholds).

Thresholds are data computed from held-out good images and saved with the model, never constants
in code: a station's operating point must be reproducible from the artifact alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from linesight.vision.components.scoring import softmax

__all__ = [
    "Recalibration",
    "balanced_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "logit",
    "recalibrated_threshold",
    "threshold_at_frr",
]


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


def balanced_threshold(
    good_scores: np.ndarray,
    defect_scores: np.ndarray,
    max_frr: float,
    *,
    good_weights: np.ndarray | None = None,
    defect_weights: np.ndarray | None = None,
) -> float:
    """Operating point that balances false rejects and escapes on held-out scores.

    Minimises max(FRR, escape rate) (ties: their sum) over thresholds whose FRR stays within
    ``max_frr``; among equally good thresholds it takes the logit-space midpoint of the best
    range, the largest margin to both score distributions. Why not simply the FRR quantile of
    out-of-fold good scores: the fold models are weaker than the final one and training-side
    good images vary more than one session's, so that quantile lands too high and lets defects
    through on a new session (figures: ``linesight/vision/README.md``, "Operating point").
    ``good_weights`` and ``defect_weights`` (each normalised here) weight the scores, e.g. a
    session's reviewed frames against the training side's.
    """
    g = np.asarray(good_scores, dtype=np.float64)
    d = np.asarray(defect_scores, dtype=np.float64)
    if len(g) == 0:
        raise ValueError("balanced_threshold needs at least one good score")
    if len(d) == 0:
        return threshold_at_frr(g, max_frr)
    wg = np.full(len(g), 1.0 / len(g)) if good_weights is None else np.asarray(good_weights, np.float64)
    wg = wg / wg.sum()
    cands = np.unique(np.concatenate([g, d, np.nextafter(g, np.inf)]))
    order = np.argsort(g)
    gs, gw = g[order], np.cumsum(wg[order][::-1])[::-1]  # gw[i]: weight of goods >= gs[i]
    pos = np.searchsorted(gs, cands, side="left")
    frr = np.where(pos < len(gs), gw[np.minimum(pos, len(gs) - 1)], 0.0)
    if defect_weights is None:
        esc = np.searchsorted(np.sort(d), cands, side="left") / len(d)
    else:
        wd = np.asarray(defect_weights, np.float64)
        d_order = np.argsort(d)
        below = np.concatenate([[0.0], np.cumsum(wd[d_order])]) / wd.sum()  # weight of defects < c
        esc = below[np.searchsorted(d[d_order], cands, side="left")]
    ok = frr <= max_frr + 1e-12
    if not ok.any():
        return threshold_at_frr(g, max_frr)
    worst = np.where(ok, np.maximum(frr, esc), np.inf)
    total = np.where(ok, frr + esc, np.inf)
    best = worst.min()
    tie = np.flatnonzero(worst <= best + 1e-12)
    tie = tie[total[tie] <= total[tie].min() + 1e-12]
    lo, hi = cands[tie.min()], cands[tie.max()]
    mid = float(1.0 / (1.0 + np.exp(-0.5 * (logit(lo) + logit(hi)))))
    # rates at t equal those at the smallest candidate >= t: keep the midpoint if that one is optimal
    k = int(np.searchsorted(cands, mid, side="left"))
    return mid if k in set(tie.tolist()) else float(hi)


# quantile of the reference's margins (threshold - highest of n frames) that a lowering keeps:
# 0.9 = room to spare, a session's tail rarely shows in n frames (0.5 / 0.75 / 0.9 compared by
# leave-one-session-out, README "Recalibration that declines to move")
LOWER_MARGIN_QUANTILE = 0.9


@dataclass(frozen=True)
class Recalibration:
    """A threshold moved by golden frames, with the evidence (logit units) for the event log."""

    threshold: float
    shift_logit: float  # applied to the threshold
    observed_shift_logit: float  # golden quantile - reference quantile
    noise_logit: float  # s.d. of that quantile over n frames drawn from the reference itself
    quantile: float
    n_frames: int
    # where the golden frames' highest score allows the threshold to be (logit): the threshold
    # keeps the margin the reference's highest of n frames typically has; None: unguarded
    anchor_logit: float | None = None
    declined_logit: float = 0.0  # the part of the dead-zone shift the guard did not apply

    def as_dict(self) -> dict[str, float]:
        out = {
            "defect_logit": self.shift_logit,
            "observed_shift_logit": self.observed_shift_logit,
            "noise_logit": self.noise_logit,
            "quantile": self.quantile,
            "golden_frames": float(self.n_frames),
            "declined_logit": self.declined_logit,
        }
        if self.anchor_logit is not None:
            out["anchor_logit"] = self.anchor_logit
        return out


def recalibrated_threshold(
    reference_good: np.ndarray,
    golden: np.ndarray,
    threshold: float,
    *,
    quantile: float = 0.75,
    deadzone: float = 1.0,
    draws: int = 400,
    seed: int = 0,
    guard: bool = True,
) -> Recalibration:
    """Move a defect threshold by how far the session's good frames sit from the training side.

    In logit space the threshold moves by the difference between an upper quantile (0.75) of the
    golden frames and of the reference good scores (out-of-fold, training side), less
    ``deadzone`` x the spread that quantile shows over n frames drawn from the reference itself:
    a session that looks like the training side leaves the threshold where it is, a real
    lighting or material drift moves it by nearly all of it. Why not re-fit the tail or a
    location-and-spread model from 20 frames: they cannot estimate a 2 % tail, and such a re-fit
    raised a new session's false rejects on average (``linesight/vision/README.md``,
    "Recalibration, averaged over golden draws").

    ``guard`` (default) makes the move never go past what the golden frames themselves show, so
    recalibrating is not worse than keeping the threshold: the anchor is the golden frames'
    highest score plus the margin that the highest of n reference frames typically keeps below
    the threshold. The threshold is lowered at most down to the anchor (a lower one would come
    closer to this session's good frames than the training side's came to its own) and raised
    at most up to it (higher would trade escapes for false rejects the golden frames do not
    show); where the anchor lies on the other side, it declines to move. The margin for a
    lowering is the reference's 90th-percentile margin, for a raise its median.
    """
    ref = logit(np.asarray(reference_good, dtype=np.float64))
    gold = logit(np.asarray(golden, dtype=np.float64))
    if len(gold) == 0 or len(ref) == 0:
        raise ValueError("recalibrated_threshold needs reference and golden scores")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    n = len(gold)
    rng = np.random.default_rng(seed)
    replace = n > len(ref)
    samples = [rng.choice(ref, n, replace=replace) for _ in range(draws)]
    noise = float(np.std([np.quantile(x, quantile) for x in samples]))
    observed = float(np.quantile(gold, quantile) - np.quantile(ref, quantile))
    applied = float(np.sign(observed) * max(abs(observed) - deadzone * noise, 0.0))
    t_old = float(logit(threshold))
    anchor: float | None = None
    declined = 0.0
    if guard:
        margins = np.array([t_old - x.max() for x in samples])
        # lowering only with room to spare (a session's tail rarely shows in n frames)
        q = 0.5 if applied > 0 else LOWER_MARGIN_QUANTILE
        anchor = float(gold.max()) + float(np.quantile(margins, q))
        room = anchor - t_old
        bounded = min(applied, max(room, 0.0)) if applied > 0 else max(applied, min(room, 0.0))
        declined, applied = applied - bounded, bounded
    new = float(1.0 / (1.0 + np.exp(-(t_old + applied))))
    return Recalibration(new, applied, observed, noise, quantile, n, anchor, declined)
