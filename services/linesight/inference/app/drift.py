"""Drift monitor: per station and window, compare what the line sends with the release baseline.

Every production result feeds `DriftMonitor.observe` (input statistics of the frame, the anomaly
score and confidence the model gave it). When a station's window is full it is assessed with
`linesight.vision.drift.assess` against the serving release's baseline: the artifact's
`drift_reference.npz` when it has one, else the station's first full window under that release
(a commissioning baseline; the record says which). Audit outcomes (a person confirmed or overruled
an audited automatic call) feed the concept-drift rate.

A finding becomes a `DriftAlert` (published once when a kind starts drifting, not every window),
OpenTelemetry metrics, and the station's newest record per kind, which GetModelInfo lists: those
with `retrain_recommended` are the "retrain recommended" records with their evidence that a QA
owner acts on. Kept in the inference service because only it sees every frame and the serving
release; the alert is on the ALERTS stream for anything that wants to keep or act on it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from opentelemetry.metrics import CallbackOptions, Observation

from linesight.common import telemetry
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.vision import drift as vdrift

log = logging.getLogger(__name__)

PRODUCER = "inference"
WINDOW_STATS = (*vdrift.INPUT_STATS, *vdrift.MODEL_STATS)
MAX_AUDITS = 500  # audit outcomes kept per station (the concept-drift window)


@dataclass
class _Station:
    ref: common_pb2.StationRef
    model_version: str = ""
    baseline: vdrift.Baseline | None = None
    window: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in WINDOW_STATS})
    started: datetime | None = None
    audits: deque[bool] = field(default_factory=lambda: deque(maxlen=MAX_AUDITS))
    drifting: set[str] = field(default_factory=set)  # kinds alerted and not yet back to normal
    windows: int = 0


class DriftMonitor:
    """Windows per station; thread-safe (frames are decided on several threads)."""

    def __init__(
        self,
        *,
        window: int = 200,
        thresholds: vdrift.Thresholds | None = None,
        baseline_for: Callable[[str], vdrift.Baseline | None] | None = None,
    ) -> None:
        self.window = window
        self.thresholds = thresholds or vdrift.Thresholds()
        self.baseline_for = baseline_for or (lambda version: None)
        self._stations: dict[str, _Station] = {}
        self._lock = threading.Lock()
        self.records: dict[tuple[str, str], events_pb2.DriftAlert] = {}  # (station, kind) -> newest
        self._gauges: dict[tuple[str, str], float] = {}
        m = telemetry.meter("linesight.inference")
        self.alerts = m.create_counter(
            "linesight_inference_drift_alerts", description="drift alerts raised, by station and kind"
        )
        m.create_observable_gauge(
            "linesight_inference_drift_statistic",
            [self._observe],
            description="last window's drift statistics per station (psi_*, ks_*, audit_disagreement, ...)",
        )

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def observe(
        self,
        station: common_pb2.StationRef,
        model_version: str,
        stats: dict[str, float],
        *,
        anomaly_score: float,
        confidence: float,
        at: datetime | None = None,
    ) -> list[events_pb2.DriftAlert]:
        """Add one frame (its `vdrift.input_stats` and `vdrift.model_stats`); returns the alerts to
        publish (empty until a window completes)."""
        if not self.enabled:
            return []
        key = f"{station.plant}/{station.line}/{station.station}"
        now = at or datetime.now(UTC)
        with self._lock:
            st = self._stations.get(key)
            if st is None:
                st = self._stations[key] = _Station(
                    common_pb2.StationRef(plant=station.plant, line=station.line, station=station.station)
                )
            if st.model_version != model_version:  # a new release: its own baseline, fresh window
                st.model_version = model_version
                st.baseline = self.baseline_for(model_version)
                st.window = {k: [] for k in WINDOW_STATS}
                st.started = None
                st.drifting.clear()
            st.started = st.started or now
            for k in vdrift.INPUT_STATS:
                if k in stats:
                    st.window[k].append(float(stats[k]))
            st.window["anomaly_score"].append(float(anomaly_score))
            st.window["confidence"].append(float(confidence))
            if len(st.window["anomaly_score"]) < self.window:
                return []
            window, started = st.window, st.started
            st.window, st.started = {k: [] for k in WINDOW_STATS}, None
            st.windows += 1
            if st.baseline is None:
                st.baseline = vdrift.Baseline.from_records(window, source="first_window")
                log.info(
                    "station %s: drift baseline of %s from its first %d frames",
                    key,
                    model_version,
                    self.window,
                )
                return []
            report = vdrift.assess(st.baseline, window, self.thresholds, audit_outcomes=list(st.audits))
            return self._record(key, st, report, started, now)

    def audit_outcome(self, station: common_pb2.StationRef, overruled: bool) -> None:
        """A person checked an audited automatic call: ``overruled`` when they disagreed."""
        key = f"{station.plant}/{station.line}/{station.station}"
        with self._lock:
            st = self._stations.get(key)
            if st is None:
                st = self._stations[key] = _Station(
                    common_pb2.StationRef(plant=station.plant, line=station.line, station=station.station)
                )
            st.audits.append(bool(overruled))

    def _record(
        self, key: str, st: _Station, report: vdrift.DriftReport, started: datetime, ended: datetime
    ) -> list[events_pb2.DriftAlert]:
        for name, value in report.evidence.items():
            self._gauges[(key, name)] = value
        found = {f.kind: f for f in report.findings}
        for kind in list(st.drifting):
            if kind not in found:
                st.drifting.discard(kind)
                log.info("station %s: %s back within its baseline", key, kind)
        out: list[events_pb2.DriftAlert] = []
        for kind, finding in found.items():
            alert = events_pb2.DriftAlert(
                meta=new_meta(PRODUCER),
                station=st.ref,
                kind=kind,
                value=finding.value,
                baseline=finding.baseline,
                threshold=finding.threshold,
                message=f"{finding.message}; baseline: {st.baseline.source if st.baseline else '?'}"
                + (
                    "; retrain recommended"
                    if report.retrain_recommended
                    else "; check the camera and lighting"
                ),
                model_version=st.model_version,
                window_frames=report.frames,
                retrain_recommended=report.retrain_recommended,
            )
            alert.evidence.update(report.evidence)
            alert.window_start.FromDatetime(started)
            alert.window_end.FromDatetime(ended)
            self.records[(key, kind)] = alert
            if kind not in st.drifting:
                st.drifting.add(kind)
                self.alerts.add(1, {"station": key, "kind": kind})
                log.warning("station %s drift: %s", key, alert.message)
                out.append(alert)
        return out

    def latest(self) -> list[events_pb2.DriftAlert]:
        """The newest record per station and kind (GetModelInfo)."""
        with self._lock:
            return [self.records[k] for k in sorted(self.records)]

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._gauges.items())
        return [Observation(v, {"station": s, "statistic": n}) for (s, n), v in items if np.isfinite(v)]


def artifact_baseline(directory: Path | None) -> vdrift.Baseline | None:
    """The release's reference distributions from its artifact, None when it carries none."""
    if directory is None:
        return None
    path = Path(directory) / vdrift.DRIFT_REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        return vdrift.Baseline.load(path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("unreadable drift reference %s (%s); the first window is the baseline", path, exc)
        return None


__all__ = ["DriftMonitor", "artifact_baseline"]
