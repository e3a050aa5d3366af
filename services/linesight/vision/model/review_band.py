"""Confidence bands a line can staff: set per product from out-of-fold scores to a review rate.

A frame is decided automatically when the model's confidence in its verdict reaches the band
(``auto_good`` for a pass: 1 − defect probability; ``auto_defect`` for a reject: the top defect
class's probability); otherwise a person reviews it. Wider bands mean fewer automatic errors and
more review. Three rates trade off:

* automatic false rejects: good frames rejected without review (share of good frames);
* escapes: defective frames passed without review (share of defective frames);
* review load: frames sent to a person (share of all frames, at the given defect prevalence).

``fit_review_band`` picks, on the training side's out-of-fold scores (honest: each row scored
by a model that did not see it), the band with the lowest review load whose false rejects and
escapes meet their targets; when no band meets them within the review target it takes the band
within the review target (or, if none, with the least review) with the smallest excess over the
error targets, and says so (``feasible`` False).
``tradeoff`` gives the whole table for reports; ``review_breakdown`` says why frames went to
review, per true class.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BandPoint",
    "ReviewBand",
    "band_outcomes",
    "fit_review_band",
    "review_breakdown",
    "review_reason_code",
    "review_report",
    "tradeoff",
]

# candidate bands: the review share is steep near 1, so the grid is finer there
GRID = np.unique(np.round(np.r_[np.arange(0.5, 0.9, 0.05), np.arange(0.9, 0.995, 0.01)], 3))


@dataclass(frozen=True)
class BandPoint:
    """Rates of one band on a set of frames."""

    auto_good: float
    auto_defect: float
    false_reject_rate: float  # automatic rejects of good frames / good frames
    escape_rate: float  # automatic passes of defective frames / defective frames
    review_rate: float  # reviewed / all frames (at the prevalence used)

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ReviewBand:
    """The fitted band and what it did on the out-of-fold rows."""

    auto_good: float
    auto_defect: float
    oof: BandPoint
    feasible: bool  # both error targets met within the review target
    target_review: float
    target_frr: float
    target_escape: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["oof"] = self.oof.as_dict()
        return d


def band_outcomes(
    defect_p: np.ndarray,
    top_defect_p: np.ndarray,
    threshold: float,
    auto_good: float,
    auto_defect: float,
    forced_review: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(automatic reject, automatic pass) per frame under a band; the rest are reviewed.
    ``forced_review`` marks frames ``decide`` reviews whatever the band (provisional class,
    anomaly without a class, audit)."""
    d = np.asarray(defect_p, np.float64)
    top = np.asarray(top_defect_p, np.float64)
    called = d >= threshold
    reject = called & (top >= auto_defect)
    accept = ~called & ((1.0 - d) >= auto_good)
    if forced_review is not None:
        f = np.asarray(forced_review, bool)
        reject &= ~f
        accept &= ~f
    return reject, accept


def _point(
    reject: np.ndarray,
    accept: np.ndarray,
    is_defect: np.ndarray,
    prevalence: float | None,
    a_g: float,
    a_d: float,
) -> BandPoint:
    good = ~is_defect
    frr = float(reject[good].mean()) if good.any() else 0.0
    esc = float(accept[is_defect].mean()) if is_defect.any() else 0.0
    review = ~(reject | accept)
    if prevalence is None:
        rr = float(review.mean())
    else:
        rg = float(review[good].mean()) if good.any() else 0.0
        rd = float(review[is_defect].mean()) if is_defect.any() else 0.0
        rr = (1.0 - prevalence) * rg + prevalence * rd
    return BandPoint(a_g, a_d, frr, esc, rr)


def tradeoff(
    defect_p: Sequence[float] | np.ndarray,
    top_defect_p: Sequence[float] | np.ndarray,
    is_defect: Sequence[bool] | np.ndarray,
    threshold: float,
    *,
    forced_review: np.ndarray | None = None,
    prevalence: float | None = None,
    grid: Iterable[float] = GRID,
) -> list[BandPoint]:
    """Every band of ``grid`` x ``grid`` with its three rates."""
    d = np.asarray(defect_p, np.float64)
    top = np.asarray(top_defect_p, np.float64)
    y = np.asarray(is_defect, bool)
    g = [float(v) for v in grid]
    out = []
    for a_g in g:
        for a_d in g:
            rej, acc = band_outcomes(d, top, threshold, a_g, a_d, forced_review)
            out.append(_point(rej, acc, y, prevalence, a_g, a_d))
    return out


def fit_review_band(
    defect_p: Sequence[float] | np.ndarray,
    top_defect_p: Sequence[float] | np.ndarray,
    is_defect: Sequence[bool] | np.ndarray,
    threshold: float,
    *,
    target_review: float = 0.05,
    target_frr: float = 0.02,
    target_escape: float = 0.02,
    prevalence: float | None = None,
    forced_review: np.ndarray | None = None,
) -> ReviewBand:
    """The band for a product (see the module docstring for the rule)."""
    points = tradeoff(
        defect_p, top_defect_p, is_defect, threshold, forced_review=forced_review, prevalence=prevalence
    )
    if not points:
        raise ValueError("no frames to fit a review band on")
    ok = [p for p in points if p.false_reject_rate <= target_frr and p.escape_rate <= target_escape]
    in_budget = [p for p in ok if p.review_rate <= target_review]
    if in_budget:
        # least review; among equals the widest band (the most frames a person would check)
        best = min(in_budget, key=lambda p: (p.review_rate, -p.auto_good - p.auto_defect))
        feasible = True
    else:
        within = [p for p in points if p.review_rate <= target_review]
        if not within:  # the budget cannot be met at all: the least review there is
            least = min(p.review_rate for p in points)
            within = [p for p in points if p.review_rate <= least + 1e-12]

        def excess(p: BandPoint) -> tuple[float, float]:
            e = max(p.false_reject_rate / target_frr, p.escape_rate / target_escape)
            return (round(e, 6), p.review_rate)

        best = min(within, key=excess)
        feasible = False
    return ReviewBand(
        best.auto_good, best.auto_defect, best, feasible, target_review, target_frr, target_escape
    )


_REASONS = (
    ("provisional", "only "),
    ("provisional", "too few training examples"),
    ("anomaly_without_class", "anomaly"),
    ("unknown_class", "not in taxonomy"),
    ("audit", "audit"),
    ("ambiguous_defect", "defect without a confident class"),
    ("low_confidence_defect", "looks like"),
    ("low_confidence_good", "looks good"),
)


def review_reason_code(reason: str | None) -> str:
    """A short code for ``Decision.review_reason`` (what a staffing report groups by)."""
    text = (reason or "").lower()
    for code, marker in _REASONS:
        if marker in text:
            return code
    return "other"


def review_breakdown(reasons: Sequence[str | None], true_labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per true class: how many of its frames went to review, and why (reason codes; frames
    decided automatically have reason None and are not counted)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for reason, label in zip(reasons, true_labels, strict=True):
        if reason is None:
            continue
        out[label][review_reason_code(reason)] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


_BAND_FREE = {"anomaly_without_class", "provisional", "unknown_class", "audit"}
REPORT_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


def review_report(
    predictions: Sequence[Any], true_labels: Sequence[str], taxonomy: Any, *, good: str = "good"
) -> dict[str, Any]:
    """What ``decide`` does with a test set: automatic false rejects, escapes and review load at
    the model's band, why frames went to review (per true class), and the trade-off over
    symmetric bands (frames reviewed whatever the band, e.g. an anomaly without a class, stay
    reviewed in every row)."""
    from linesight.vision.decide import decide

    if len(predictions) != len(true_labels):
        raise ValueError(f"{len(predictions)} predictions for {len(true_labels)} labels")
    decisions = [decide(p, taxonomy) for p in predictions]
    y = np.array([lab != good for lab in true_labels], bool)
    verdicts = np.array([d.verdict for d in decisions])
    reasons = [d.review_reason if d.verdict == "review" else None for d in decisions]
    point = _point(verdicts == "defect", verdicts == "pass", y, None, float("nan"), float("nan"))
    band = predictions[0].review_band if predictions else None
    d_p = np.array([float(p.defect_probability) for p in predictions])
    top = np.array(
        [max((v for c, v in p.class_probs.items() if c != good), default=0.0) for p in predictions]
    )
    thr = float(predictions[0].defect_threshold) if predictions else 0.5
    forced = np.array([review_reason_code(r) in _BAND_FREE if r else False for r in reasons])
    grid_rows = [
        _point(*band_outcomes(d_p, top, thr, a, a, forced), y, None, a, a).as_dict() for a in REPORT_GRID
    ]
    return {
        "band": list(band) if band else [taxonomy.confidence.auto_accept] * 2,
        "band_source": "fitted (out-of-fold)" if band else "taxonomy",
        "false_reject_rate": point.false_reject_rate,
        "escape_rate": point.escape_rate,
        "review_rate": point.review_rate,
        "band_independent_review_rate": float(forced.mean()) if len(forced) else 0.0,
        "reasons": dict(Counter(review_reason_code(r) for r in reasons if r)),
        "by_class": review_breakdown(reasons, true_labels),
        "tradeoff": grid_rows,
        "segmentation_veto": segmentation_veto(predictions, decisions, y, taxonomy),
    }


def segmentation_veto(
    predictions: Sequence[Any], decisions: Sequence[Any], y: np.ndarray, taxonomy: Any
) -> dict[str, Any] | None:
    """What-if, not what ``decide`` does: the frames reviewed only because PatchCore's score is
    over its threshold (the image head says good) decided as if it were not, when the
    segmentation head localises no defect (fused map < 1 everywhere); ``novelty`` also requires
    the frame's descriptor to lie within the training set's spread (novelty < 1), the guard for
    a defect type no head has seen. Automatic false rejects, escapes and review under each rule,
    so the cost of trusting the supervised evidence is measured before anyone adopts it. None
    without a segmentation head."""
    import dataclasses

    from linesight.vision.decide import decide

    if not predictions or getattr(predictions[0], "segmentation", None) is None:
        return None
    out: dict[str, Any] = {}
    for rule in ("segmentation", "novelty"):
        verdicts = []
        moved = {"good": 0, "defect": 0}
        for p, d, bad in zip(predictions, decisions, y, strict=True):
            v = d.verdict
            veto = (
                v == "review"
                and review_reason_code(d.review_reason) == "anomaly_without_class"
                and not p.is_defect
                and (p.heatmap.size == 0 or float(p.heatmap.max()) < 1.0)
                and (rule == "segmentation" or float(p.novelty) < 1.0)  # NaN: no veto
            )
            if veto:
                v = decide(dataclasses.replace(p, anomaly_score=0.0), taxonomy).verdict
                if v != "review":
                    moved["defect" if bad else "good"] += 1
            verdicts.append(v)
        vv = np.array(verdicts)
        pt = _point(vv == "defect", vv == "pass", y, None, float("nan"), float("nan"))
        out[rule] = {
            "false_reject_rate": pt.false_reject_rate,
            "escape_rate": pt.escape_rate,
            "review_rate": pt.review_rate,
            "left_review_good": moved["good"],
            "left_review_defect": moved["defect"],
        }
    return out
