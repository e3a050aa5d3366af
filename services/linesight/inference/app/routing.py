"""Which frames go to a human, and why: review routing with reasons, an audit sample, rate caps.

Every frame the inspection pipeline decides passes through `ReviewRouter.route` once. Three kinds
of frames reach the review queue, each with its reason on the result (`route_reason`):

* **hard** reasons - the verdict is not automatic (REVIEW: ``uncertain``; ERROR: ``error``) or the
  capture audit saw the same frame again (``repeated_frame``): always routed, a part waits on them;
* **soft** reasons - an automatic pass or reject the engine's selection wants a human to see for
  learning (``novel``, ``disagreement``, ``uncertain`` near the operating point) or the seeded
  ``audit`` sample of automatic calls: routed while the station's token bucket has a token, else
  counted as capped (``route_capped``) and left out of the queue, so a shifted session cannot
  flood the team.

The selection itself is the engine's (`linesight.vision.selection`, the same code the loop
benchmark replays); the router only adds what a service needs around it: the audit sample (a
pure function of seed and frame id, so a replay samples the same frames), hard/soft, per-station
caps in time, and metrics.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linesight.common import telemetry
from linesight.vision import selection

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
NOVEL = "novel"
DISAGREEMENT = "disagreement"
AUDIT = "audit"
REPEATED_FRAME = "repeated_frame"
ERROR = "error"
REASONS = (UNCERTAIN, NOVEL, DISAGREEMENT, AUDIT, REPEATED_FRAME, ERROR)

# Capture audit codes meaning the camera delivered the same image again (a stuck camera).
_REPEAT_CODES = frozenset({"REPEATED_FRAME", "DUPLICATE"})

# (prediction, station key) -> (route, reason): the engine's review selection for one frame.
Selector = Callable[[Any, str], tuple[bool, str]]


@dataclass(frozen=True)
class RoutingConfig:
    """Audit share and review rate caps; 0 rate = no cap. Per-station overrides by station name
    or ``line/station``."""

    audit_rate: float = 0.0
    audit_rate_by_station: dict[str, float] = field(default_factory=dict)
    audit_seed: str = "linesight"
    # sustained soft routings per station and minute, and the burst a quiet station may spend
    rate_per_min: float = 0.0
    rate_by_station: dict[str, float] = field(default_factory=dict)
    burst: int = 20
    # the engine's SelectionConfig fields (band_logit, anomaly_high, novelty_threshold, ...)
    selection: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """The routing of one frame: ``reason`` empty = not routed; ``capped`` = wanted but held back."""

    reason: str = ""
    capped: bool = False
    hard: bool = False

    @property
    def routed(self) -> bool:
        return bool(self.reason) and not self.capped


class TokenBucket:
    """`rate_per_s` tokens per second up to `burst`; ``take`` never blocks."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = max(1, int(burst))
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def spend(self) -> None:
        """A hard routing uses the team's time too: take a token if there is one, never refuse."""
        self.take()


def sampled(seed: str, frame_id: str, share: float) -> bool:
    """sha256(seed, frame id) < share: deterministic per frame, uncorrelated with order or station."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def engine_selector(config: RoutingConfig) -> Selector:
    """The engine's review selection (`linesight.vision.selection`: disagreement, uncertain,
    novel) for one frame; its audit sample and caps are the router's (per station, in time)."""
    try:
        cfg = selection.SelectionConfig(
            **{**config.selection, "audit_pass_rate": 0.0, "audit_reject_rate": 0.0}
        )
    except TypeError as exc:
        raise ValueError(f"review_selection: {exc}") from exc
    no_draw = np.ones(1)  # the router samples audits itself (per station, seeded per frame)

    def select(prediction: Any, station: str) -> tuple[bool, str]:
        reasons, _ = selection.candidates(selection.ScoreBatch.from_predictions([prediction]), cfg, no_draw)
        reason = reasons[0]
        return (reason is not None, "" if reason is None else str(reason))

    return select


class ReviewRouter:
    """Routes frames to review with a reason, within per-station rate caps; thread-safe."""

    def __init__(
        self,
        config: RoutingConfig | None = None,
        selector: Selector | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or RoutingConfig()
        self.selector = selector or engine_selector(self.config)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        m = telemetry.meter("linesight.inference")
        self.routed_counter = m.create_counter(
            "linesight_inference_review_routed", description="frames sent to review, by station and reason"
        )
        self.capped_counter = m.create_counter(
            "linesight_inference_review_capped",
            description="frames the selection wanted in review but the station's rate cap held back",
        )
        self.counts: dict[tuple[str, str, bool], int] = {}  # (station, reason, capped) -> frames

    def _override(self, table: dict[str, float], station: str, default: float) -> float:
        short = station.rsplit("/", 1)[-1]
        line_station = "/".join(station.split("/")[-2:])
        return table.get(line_station, table.get(short, default))

    def _bucket(self, station: str) -> TokenBucket | None:
        rate = self._override(self.config.rate_by_station, station, self.config.rate_per_min)
        if rate <= 0:
            return None
        bucket = self._buckets.get(station)
        if bucket is None:
            bucket = self._buckets[station] = TokenBucket(rate / 60.0, self.config.burst, self._clock)
        return bucket

    def route(
        self,
        *,
        frame_id: str,
        station: str,
        verdict: str,
        prediction: Any | None,
        audit_codes: tuple[str, ...] = (),
    ) -> Route:
        """The routing of one decided frame. ``verdict`` is pass / defect / review / error;
        ``station`` is ``plant/line/station``."""
        route = self._choose(frame_id, station, verdict, prediction, audit_codes)
        if not route.reason:
            return route
        with self._lock:
            bucket = self._bucket(station)
            if bucket is not None:
                if route.hard:
                    bucket.spend()
                elif not bucket.take():
                    route = Route(route.reason, capped=True, hard=False)
            key = (station, route.reason, route.capped)
            self.counts[key] = self.counts.get(key, 0) + 1
        attrs = {"station": station, "reason": route.reason}
        (self.capped_counter if route.capped else self.routed_counter).add(1, attrs)
        return route

    def _choose(
        self, frame_id: str, station: str, verdict: str, prediction: Any | None, audit_codes: tuple[str, ...]
    ) -> Route:
        if verdict == "error" or prediction is None:
            return Route(ERROR, hard=True)
        if _REPEAT_CODES & set(audit_codes):
            return Route(REPEATED_FRAME, hard=True)
        if verdict not in ("pass", "defect"):
            return Route(UNCERTAIN, hard=True)  # no automatic call: a part waits for a person
        try:
            wanted, reason = self.selector(prediction, station)
        except Exception:  # the selection is advisory; a bug in it must not cost the frame
            log.exception("review selection failed for frame %s", frame_id)
            wanted, reason = False, ""
        if wanted:
            return Route(reason or UNCERTAIN)
        share = self._override(self.config.audit_rate_by_station, station, self.config.audit_rate)
        if sampled(self.config.audit_seed, frame_id, share):
            return Route(AUDIT)
        return Route()


__all__ = [
    "AUDIT",
    "DISAGREEMENT",
    "ERROR",
    "NOVEL",
    "REASONS",
    "REPEATED_FRAME",
    "UNCERTAIN",
    "ReviewRouter",
    "Route",
    "RoutingConfig",
    "Selector",
    "TokenBucket",
    "engine_selector",
    "sampled",
]
