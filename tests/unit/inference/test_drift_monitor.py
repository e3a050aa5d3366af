"""The inference drift monitor on synthetic camera frames, through the real inspection pipeline
(stand-in model): a clean stream stays quiet, a lighting change raises DriftAlerts with the
evidence and a "retrain recommended" record in GetModelInfo; every review routing has a reason."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linesight.common import subjects
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.inference.api.grpc import InferenceServicer
from linesight.inference.app import InferenceApp, InferenceConfig
from linesight.inference.app.drift import DriftMonitor, artifact_baseline
from linesight.vision import drift as vdrift
from linesight.vision.data.synth import BatchStyle, StationStyle, capture_part, render_part
from tests.unit.inference.standin import LOADER, StandInModel, make_export

WINDOW = 60


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, subject: str, message: Any, **_: Any) -> None:
        self.sent.append((subject, message))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """180 captures of 60 synthetic brushed parts under one station's light (64 px, seeded)."""
    rng = np.random.default_rng(7)
    batch, station = BatchStyle.draw(rng), StationStyle.draw(rng)
    parts = [render_part(64, "brushed", "good", seed, batch) for seed in range(60)]
    return [capture_part(parts[i % 60], station, 1000 + i)[0] for i in range(180)]


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return bytes(buf)


def _lit(img: np.ndarray) -> np.ndarray:
    """The same part under a brighter lamp: +30 % gain and a lifted black level."""
    return np.clip(img.astype(np.float32) * 1.3 + 12.0, 0, 255).astype(np.uint8)


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path, reference: list[np.ndarray] | None = None, **config: Any
) -> AsyncIterator[tuple[InferenceApp, _Publisher]]:
    publisher = _Publisher()
    settings = Settings(plant="p1", product="widget", state_dir=tmp_path / "state", log_json=False)
    config = {"drift_window": WINDOW, **config}
    cfg = InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "work", store_heatmaps=False, **config)
    app = InferenceApp(settings, store=None, publisher=publisher, config=cfg)  # type: ignore[arg-type]

    class _NoCalibrations:
        async def load(self, version: str) -> dict[str, Any]:
            return {}

    app.calibrations = _NoCalibrations()  # type: ignore[assignment]
    await app.start()
    try:
        export = make_export(tmp_path / "m", "v1", gain=1.0)
        if reference is not None:  # the release baseline the artifact carries
            model = StandInModel.load(export)
            baseline = vdrift.Baseline.from_predictions(reference, model.predict(reference))
            baseline.save(export / vdrift.DRIFT_REFERENCE_FILE)
        await app.install_directory(export)
        yield app, publisher
    finally:
        await app.stop()


async def _stream(
    app: InferenceApp, images: list[np.ndarray], start: int = 0
) -> list[events_pb2.InspectionResult]:
    out = []
    for i, img in enumerate(images):
        frame = events_pb2.FrameCaptured(frame_id=f"f{start + i}")
        frame.capture.station.CopyFrom(common_pb2.StationRef(plant="p1", line="l1", station="s1"))
        out.append((await app.inspect(frame, image=_png(img))).result)
    await asyncio.sleep(0.05)  # the alerts are published by background tasks
    return out


def _alerts(publisher: _Publisher) -> list[events_pb2.DriftAlert]:
    subject = subjects.plant_subject("p1", subjects.DRIFT_ALERT)
    return [m for s, m in publisher.sent if s == subject]


async def test_a_clean_stream_raises_no_drift_alert(tmp_path: Path, frames: list[np.ndarray]) -> None:
    async with _serving(tmp_path) as (app, publisher):
        await _stream(app, frames)  # the first window is the baseline, two more are compared
        assert _alerts(publisher) == []
        assert app.pipeline.drift.latest() == []
        gauges = app.pipeline.drift._gauges
        assert gauges[("p1/l1/s1", "psi_brightness")] < 0.25  # compared, and close


async def test_a_lighting_change_raises_drift_alerts_with_evidence(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    async with _serving(tmp_path) as (app, publisher):
        await _stream(app, frames[:WINDOW])
        await _stream(app, frames[WINDOW : 2 * WINDOW], start=WINDOW)
        assert _alerts(publisher) == []
        await _stream(app, [_lit(f) for f in frames[2 * WINDOW :]], start=2 * WINDOW)
        alerts = {a.kind: a for a in _alerts(publisher)}
        assert "brightness" in alerts and "anomaly_score" in alerts, alerts.keys()
        bright = alerts["brightness"]
        assert bright.station.station == "s1" and bright.model_version == "v1"
        assert bright.window_frames == WINDOW and bright.value > bright.threshold
        assert bright.evidence["median_brightness"] > bright.evidence["baseline_median_brightness"] + 0.1
        assert bright.evidence["ks_p_brightness"] < 1e-3
        assert all(a.retrain_recommended for a in alerts.values())  # the model's scores moved too
        assert "first_window" in bright.message
        # the record a QA owner reads: GetModelInfo lists it
        info = await InferenceServicer(app).GetModelInfo(None, None)  # type: ignore[arg-type]
        listed = {a.kind for a in info.drift if a.retrain_recommended}
        assert {"brightness", "anomaly_score"} <= listed
        # the same drift in the next window is not published again
        before = len(publisher.sent)
        await _stream(app, [_lit(f) for f in frames[:WINDOW]], start=3 * WINDOW)
        assert len(_alerts(publisher)) == len(alerts) and len(publisher.sent) == before


async def test_the_artifacts_baseline_judges_the_first_window(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    async with _serving(tmp_path, reference=frames[:WINDOW]) as (app, publisher):
        await _stream(app, frames[WINDOW:])  # two clean windows, both compared at once
        assert _alerts(publisher) == []
        await _stream(app, [_lit(f) for f in frames[:WINDOW]], start=1000)
        alerts = {a.kind: a for a in _alerts(publisher)}
        assert {"brightness", "anomaly_score"} <= set(alerts) and "artifact" in alerts["brightness"].message


async def test_results_carry_their_routing_reason(tmp_path: Path, frames: list[np.ndarray]) -> None:
    async with _serving(tmp_path, review_audit_rate=0.5, drift_window=0) as (app, _):
        results = await _stream(app, frames[:40])
        for r in results:
            if r.verdict in (common_pb2.VERDICT_REVIEW, common_pb2.VERDICT_ERROR):
                assert r.route_reason in ("uncertain", "error"), r
            assert r.route_reason in ("", "uncertain", "novel", "disagreement", "audit", "error")
        audited = [r for r in results if r.route_reason == "audit"]
        assert 8 <= len(audited) <= 32 and all(r.verdict == common_pb2.VERDICT_PASS for r in audited)
        # a person's confirmed label of an audited pass feeds the station's disagreement rate
        missed = events_pb2.LabelSubmitted(frame_id=audited[0].frame_id, label="scratch")
        held = events_pb2.LabelSubmitted(frame_id=audited[1].frame_id, label="good")
        other = next(r for r in results if r.route_reason != "audit")
        assert app.pipeline.label_confirmed(missed) is True
        assert app.pipeline.label_confirmed(held) is False
        app.label_submitted(
            events_pb2.LabelSubmitted(frame_id=other.frame_id, label="scratch")
        )  # not audited
        assert app.pipeline.label_confirmed(missed) is None  # counted once
        assert list(app.pipeline.drift._stations["p1/l1/s1"].audits) == [True, False]


def test_monitor_uses_the_artifacts_baseline_and_audit_outcomes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = {
        "brightness": rng.normal(0.5, 0.02, 300),
        "anomaly_score": rng.gamma(4, 0.1, 300),
        "confidence": rng.beta(20, 2, 300),
    }
    vdrift.Baseline.from_records(ref).save(tmp_path / vdrift.DRIFT_REFERENCE_FILE)
    baseline = artifact_baseline(tmp_path)
    assert baseline is not None and baseline.source == "artifact"
    assert artifact_baseline(tmp_path / "none") is None
    monitor = DriftMonitor(window=50, baseline_for=lambda v: baseline)
    st = common_pb2.StationRef(plant="p", line="l", station="s")
    for _ in range(30):
        monitor.audit_outcome(st, overruled=True)  # people overrule every audited call
    alerts: list[events_pb2.DriftAlert] = []
    for _ in range(50):  # no warm-up: the artifact's baseline compares the first window
        stats = {"brightness": float(rng.normal(0.5, 0.02))}
        alerts += monitor.observe(
            st, "v1", stats, anomaly_score=float(rng.gamma(4, 0.1)), confidence=float(rng.beta(20, 2))
        )
    assert [a.kind for a in alerts] == ["audit_disagreement"] and alerts[0].retrain_recommended
    assert alerts[0].evidence["audit_disagreement"] == 1.0
