"""Which frames go to a human: the review-selection policy of the improvement loop.

Pure numpy, no I/O: the inference service routes live frames with it, ``linesight eval --loop``
and the benchmarks replay a stream through the same code, so what is measured is what runs.

A frame is a review candidate for one of four reasons (first that applies, in this order):

* ``disagreement``: the supervised head says good but PatchCore's anomaly score is far above its
  threshold, or the segmentation head finds a defect region (``region_score``: the fused map's
  peak, 1.0 = its threshold), or the head says defect while the anomaly score is far below it;
* ``uncertain``: the defect probability sits in the confidence band around the operating point
  (in logit units), or a defect verdict's type is unsure (top defect class below ``type_band``);
* ``novel``: the frame's pooled descriptor is farther from the training set than the threshold
  fitted on training-side held-out good images (``Prediction.novelty`` >= ``novelty_threshold``;
  1.0 is that threshold);
* ``audit``: a seeded random sample of automatic passes (``audit_pass_rate``) and rejects
  (``audit_reject_rate``), unbiased by any score: the only reason that sees confident mistakes;
* ``least_certain`` (only with ``fill``): any other frame, closest to the operating point first,
  so a review budget that the reasons above leave unspent is still used where it teaches most.

Candidates compete for a per-station allowance: a token bucket (``rate_cap`` tokens per frame
seen, at most ``burst``) and an optional hard ``budget`` of reviews in total. Within a batch the
highest-priority candidates are taken first (disagreement, then uncertain closest to the
threshold, then most novel, then audit, then least certain). Every routed frame carries its
reason.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Reason",
    "ReviewSelector",
    "Routing",
    "ScoreBatch",
    "SelectionConfig",
    "candidates",
    "region_score",
]


class Reason(StrEnum):
    """Why a frame goes to review (what the review queue shows the inspector)."""

    DISAGREEMENT = "disagreement"
    UNCERTAIN = "uncertain"
    NOVEL = "novel"
    AUDIT = "audit"
    LEAST_CERTAIN = "least_certain"


# rank of each reason when candidates compete for the allowance (lower first)
_RANK = {
    Reason.DISAGREEMENT: 0,
    Reason.UNCERTAIN: 1,
    Reason.NOVEL: 2,
    Reason.AUDIT: 3,
    Reason.LEAST_CERTAIN: 4,
}


class PredictionLike(Protocol):
    """The fields of ``linesight.vision.components.scoring.Prediction`` the policy reads."""

    defect_probability: float
    defect_threshold: float
    anomaly_score: float
    class_probs: dict[str, float]


@dataclass(frozen=True)
class SelectionConfig:
    """Where the policy draws its lines; every rate is per frame seen at the station.

    ``band_logit``: half-width of the confidence band around the defect threshold, in logits
    (1.0: probabilities from about 0.27 to 0.73 around a 0.5 threshold).
    ``type_band``: a defect verdict whose top defect class has less than this share of the
    defect probability is unsure of its type (0 disables).
    ``anomaly_high`` / ``anomaly_low``: disagreement when the head says good and
    ``anomaly_score`` >= high, or says defect and ``anomaly_score`` <= low (1.0 is PatchCore's
    threshold; 0 disables the second).
    ``region_high``: disagreement when the head says good and the segmentation map's peak
    (``region_score``, 1.0 = the segmentation head's threshold) is at or above it (inf: never).
    ``novelty_threshold``: ``Prediction.novelty`` at or above it is novel (NaN: never).
    ``audit_pass_rate`` / ``audit_reject_rate``: share of automatic passes / rejects sampled.
    ``rate_cap``: reviews per frame seen (token bucket refill), ``burst`` its depth;
    ``budget``: most reviews per station in total (None: unlimited).
    ``fill``: frames without a reason are candidates too (``least_certain``, last): a stream
    with a review budget spends it even where the reasons above run out.
    """

    band_logit: float = 1.0
    type_band: float = 0.0
    anomaly_high: float = 3.0
    anomaly_low: float = 0.0
    region_high: float = float("inf")
    novelty_threshold: float = 1.0
    audit_pass_rate: float = 0.01
    audit_reject_rate: float = 0.1
    rate_cap: float = 0.1
    burst: float = 10.0
    budget: int | None = None
    fill: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("audit_pass_rate", "audit_reject_rate", "rate_cap", "type_band"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.band_logit < 0 or self.burst < 0 or self.anomaly_high <= 0 or not self.region_high > 0:
            raise ValueError("band_logit and burst must be >= 0, anomaly_high and region_high > 0")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget must be >= 0 or None, got {self.budget}")


@dataclass(frozen=True)
class ScoreBatch:
    """The per-frame numbers the policy decides on (arrays of one length)."""

    defect_probability: np.ndarray
    defect_threshold: np.ndarray
    anomaly_score: np.ndarray
    novelty: np.ndarray  # NaN where the model has no novelty reference
    type_confidence: np.ndarray  # top defect class's share of the defect probability (NaN: n/a)
    region_score: np.ndarray  # peak of the segmentation head's fused map (NaN: no segmentation)

    def __len__(self) -> int:
        return len(self.defect_probability)

    @classmethod
    def of(
        cls,
        defect_probability: Sequence[float] | np.ndarray,
        defect_threshold: Sequence[float] | np.ndarray | float,
        anomaly_score: Sequence[float] | np.ndarray,
        novelty: Sequence[float] | np.ndarray | None = None,
        type_confidence: Sequence[float] | np.ndarray | None = None,
        region_score: Sequence[float] | np.ndarray | None = None,
    ) -> ScoreBatch:
        p = np.asarray(defect_probability, dtype=np.float64).ravel()
        n = len(p)

        def arr(v: Any) -> np.ndarray:
            if v is None:
                return np.full(n, np.nan)
            if np.ndim(v) == 0:
                return np.full(n, float(v))
            a = np.asarray(v, dtype=np.float64).ravel()
            if len(a) != n:
                raise ValueError(f"score arrays out of step: {len(a)} values for {n} frames")
            return a

        thr, anomaly, tc = arr(defect_threshold), arr(anomaly_score), arr(type_confidence)
        return cls(p, thr, anomaly, arr(novelty), tc, arr(region_score))

    @classmethod
    def from_predictions(cls, predictions: Sequence[PredictionLike]) -> ScoreBatch:
        """From ``Prediction`` objects (``novelty`` and the segmentation map read where present)."""
        type_conf = []
        for pr in predictions:
            defects = {c: v for c, v in pr.class_probs.items() if c != "good"}
            total = sum(defects.values())
            type_conf.append(max(defects.values()) / total if defects and total > 0 else math.nan)
        return cls.of(
            [pr.defect_probability for pr in predictions],
            [pr.defect_threshold for pr in predictions],
            [pr.anomaly_score for pr in predictions],
            [float(getattr(pr, "novelty", math.nan)) for pr in predictions],
            type_conf,
            [region_score(pr) for pr in predictions],
        )


def region_score(prediction: Any) -> float:
    """Image-level evidence of the segmentation head: the peak of the fused defect map (1.0 =
    the head's threshold). NaN without a segmentation head (the heatmap is then PatchCore's,
    which ``anomaly_score`` already carries)."""
    heat = getattr(prediction, "heatmap", None)
    if getattr(prediction, "segmentation", None) is None or heat is None or np.size(heat) == 0:
        return math.nan
    return float(np.max(heat))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.asarray(np.log(q / (1 - q)))


def _uniform(seed: int, station: str, keys: Sequence[str]) -> np.ndarray:
    """One reproducible uniform draw per frame key (same frame, same draw, on any replica)."""
    out = np.empty(len(keys))
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{seed}\x00{station}\x00{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def candidates(
    batch: ScoreBatch, config: SelectionConfig, audit_draw: np.ndarray
) -> tuple[list[Reason | None], np.ndarray]:
    """Each frame's reason to be reviewed (None: none) and its priority within its reason
    (higher first), before any rate cap. ``audit_draw``: one uniform [0, 1) per frame."""
    n = len(batch)
    is_defect = batch.defect_probability >= batch.defect_threshold
    margin = np.abs(_logit(batch.defect_probability) - _logit(batch.defect_threshold))
    anomaly = batch.anomaly_score
    region = batch.region_score
    region_hit = np.isfinite(region) & (region >= config.region_high)
    disagree = (~is_defect & ((anomaly >= config.anomaly_high) | region_hit)) | (
        is_defect & (anomaly <= config.anomaly_low) if config.anomaly_low > 0 else np.zeros(n, bool)
    )
    uncertain = margin <= config.band_logit
    if config.type_band > 0:
        tc = batch.type_confidence
        uncertain |= is_defect & np.isfinite(tc) & (tc < config.type_band)
    nov = batch.novelty
    novel = np.isfinite(nov) & (nov >= config.novelty_threshold)
    audit_rate = np.where(is_defect, config.audit_reject_rate, config.audit_pass_rate)
    audit = np.asarray(audit_draw) < audit_rate
    reasons: list[Reason | None] = []
    priority = np.zeros(n)
    for i in range(n):
        if disagree[i]:
            reasons.append(Reason.DISAGREEMENT)
            if is_defect[i]:
                priority[i] = -float(anomaly[i])
            else:  # the stronger of the two disagreeing signals, each in threshold units
                priority[i] = max(float(anomaly[i]), float(region[i]) if region_hit[i] else -math.inf)
        elif uncertain[i]:
            reasons.append(Reason.UNCERTAIN)
            priority[i] = -float(margin[i])
        elif novel[i]:
            reasons.append(Reason.NOVEL)
            priority[i] = float(nov[i])
        elif audit[i]:
            reasons.append(Reason.AUDIT)
            priority[i] = -float(audit_draw[i])
        elif config.fill:
            reasons.append(Reason.LEAST_CERTAIN)
            priority[i] = -float(margin[i])
        else:
            reasons.append(None)
    return reasons, priority


@dataclass(frozen=True)
class Routing:
    """The policy's answer for a batch: which frames go to review and why."""

    review: np.ndarray  # bool per frame
    reasons: list[str | None]  # the reason of each routed frame (None: not routed)
    candidates: list[str | None]  # the reason each frame would have had without the cap

    @property
    def routed(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.review)]


@dataclass
class _Station:
    tokens: float
    seen: int = 0
    routed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class ReviewSelector:
    """The policy with its per-station state (token bucket, budget, audit stream).

    ``select`` is called with each batch as it is decided; the allowance refills by
    ``rate_cap`` per frame seen. Give ``keys`` (frame ids) for audit draws that do not depend on
    batching or order (a hash of seed, station and key); without keys a seeded generator per
    station draws them in arrival order.
    """

    def __init__(self, config: SelectionConfig | None = None) -> None:
        self.config = config or SelectionConfig()
        self._stations: dict[str, _Station] = {}
        self._rngs: dict[str, np.random.Generator] = {}

    def station_state(self, station: str) -> dict[str, Any]:
        """Frames seen, routed (by reason) and tokens left at a station (for metrics)."""
        st = self._station(station)
        return {"seen": st.seen, "routed": st.routed, "tokens": st.tokens, "by_reason": dict(st.by_reason)}

    @property
    def routed_total(self) -> int:
        return sum(s.routed for s in self._stations.values())

    def _station(self, station: str) -> _Station:
        if station not in self._stations:
            self._stations[station] = _Station(tokens=min(self.config.burst, max(self.config.rate_cap, 1.0)))
        return self._stations[station]

    def _draws(self, station: str, n: int, keys: Sequence[str] | None) -> np.ndarray:
        if keys is not None:
            if len(keys) != n:
                raise ValueError(f"{len(keys)} keys for {n} frames")
            return _uniform(self.config.seed, station, [str(k) for k in keys])
        if station not in self._rngs:
            digest = hashlib.blake2b(station.encode(), digest_size=4).digest()
            self._rngs[station] = np.random.default_rng([self.config.seed, int.from_bytes(digest, "big")])
        return self._rngs[station].random(n)

    def select(
        self,
        batch: ScoreBatch | Sequence[PredictionLike],
        *,
        station: str = "",
        keys: Sequence[str] | None = None,
    ) -> Routing:
        """Route one batch of frames of ``station`` (in arrival order)."""
        scores = batch if isinstance(batch, ScoreBatch) else ScoreBatch.from_predictions(batch)
        cfg = self.config
        n = len(scores)
        reasons, priority = candidates(scores, cfg, self._draws(station, n, keys))
        st = self._station(station)
        st.seen += n
        st.tokens = min(max(cfg.burst, 1.0), st.tokens + cfg.rate_cap * n)
        order = sorted(
            (i for i in range(n) if reasons[i] is not None),
            key=lambda i: (_RANK[reasons[i]], -priority[i], i),  # type: ignore[index]
        )
        review = np.zeros(n, dtype=bool)
        routed: list[str | None] = [None] * n
        for i in order:
            if st.tokens < 1.0:
                break
            if cfg.budget is not None and st.routed >= cfg.budget:
                break
            review[i] = True
            reason = str(reasons[i])
            routed[i] = reason
            st.tokens -= 1.0
            st.routed += 1
            st.by_reason[reason] = st.by_reason.get(reason, 0) + 1
        return Routing(review, routed, [None if r is None else str(r) for r in reasons])
