"""Unit tests: golden-sample recalibration of a station's defect threshold in the inference service
(the engine's rule from the export's reference scores, the calibration store's two formats, the
decision path per station, RecalibrationPerformed applied by every replica) without servers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.common.storage import ObjectNotFound
from linesight.inference.app import InferenceApp, InferenceConfig
from linesight.inference.app.bundle import load_bundle
from linesight.inference.store.objects import CalibrationStore, StationCalibration
from linesight.vision.components.calibrate import recalibrated_threshold
from tests.integration.inference.helpers import png
from tests.unit.inference.standin import LOADER, make_export

# Training-side good frames: defect probabilities of 0.25 % to 1.8 %; the stand-in's frame of
# brightness 150 scores 0.125 (a brighter session), above the model's own threshold 0.05.
REFERENCE = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, -4.0, 200)))
MODEL_DEFECT = 0.05


class _Objects:
    """The two calls CalibrationStore makes, on a dict."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}

    async def aget_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self.data[(bucket, key)]
        except KeyError:
            raise ObjectNotFound(bucket, key) from None

    async def aput_bytes(self, bucket: str, key: str, body: bytes, content_type: str) -> Any:
        self.data[(bucket, key)] = body
        return common_pb2.ObjectRef(bucket=bucket, key=key)


class _Frames:
    """Golden frames by key: the brightness is the key."""

    async def fetch(self, ref: common_pb2.ObjectRef) -> bytes:
        return png(int(ref.key))


async def test_calibration_store_reads_the_old_format_and_writes_both_values() -> None:
    objects = _Objects()
    store = CalibrationStore(objects, "widget")  # type: ignore[arg-type]
    key = ("models", "widget/calibration/v1.json")
    objects.data[key] = json.dumps({"model_version": "v1", "stations": {"p/l1/s1": 1.3}}).encode()
    assert await store.load("v1") == {"p/l1/s1": StationCalibration(1.3, None)}
    assert await store.load("v2") == {}
    both = {"p/l1/s1": StationCalibration(1.3, 0.31), "p/l1/s2": StationCalibration(0.9, None)}
    await store.save("v1", both)
    written = json.loads(objects.data[key])
    # the anomaly scales stay floats under "stations": a replica of the previous release reads them
    assert written["stations"] == {"p/l1/s1": 1.3, "p/l1/s2": 0.9}
    assert written["defect_thresholds"] == {"p/l1/s1": 0.31}
    assert await store.load("v1") == both


def test_bundle_recalibrates_by_the_engines_rule_and_only_with_reference_scores(tmp_path: Path) -> None:
    bundle = load_bundle(
        make_export(tmp_path / "m", "v1", reference_good=REFERENCE, defect_threshold=MODEL_DEFECT)
    )
    assert bundle.defect_threshold == MODEL_DEFECT
    golden = [0.125, 0.13, 0.135, 0.141, 0.147]
    moved = bundle.recalibrated_defect_threshold(golden)
    assert moved is not None and moved == recalibrated_threshold(REFERENCE.astype(np.float32), golden, 0.05)
    assert 0.3 < moved.threshold < 0.4 and moved.n_frames == 5 and moved.quantile == 0.75
    assert 0.0 < moved.shift_logit < moved.observed_shift_logit  # less one s.d. of the quantile
    # a session that looks like the training side leaves the threshold where it is
    alike = bundle.recalibrated_defect_threshold([float(p) for p in REFERENCE[100:180:16]])
    assert alike is not None and alike.shift_logit == 0.0 and alike.threshold == pytest.approx(MODEL_DEFECT)
    # an export without reference scores (older, or classification only): nothing to move
    old = load_bundle(make_export(tmp_path / "old", "v0"))
    assert old.defect_threshold is None
    assert old.recalibrated_defect_threshold(golden, model_threshold=0.5) is None


def _app(tmp_path: Path) -> InferenceApp:
    settings = Settings(plant="p1", product="widget", state_dir=tmp_path / "state", log_json=False)
    app = InferenceApp(
        settings,
        store=None,  # type: ignore[arg-type]
        config=InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "work", store_heatmaps=False),
    )
    objects = _Objects()
    app.calibrations = CalibrationStore(objects, "widget")  # type: ignore[arg-type]
    app.pipeline.frames = _Frames()  # type: ignore[assignment]
    return app


def _frame(station: str) -> events_pb2.FrameCaptured:
    frame = events_pb2.FrameCaptured(frame_id=f"f-{station}")
    frame.capture.station.CopyFrom(common_pb2.StationRef(plant="p1", line="l1", station=station))
    return frame


async def _inspect(app: InferenceApp, station: str, value: int = 150) -> events_pb2.InspectionResult:
    return (await app.inspect(_frame(station), image=png(value))).result


def _station(name: str) -> common_pb2.StationRef:
    return common_pb2.StationRef(plant="p1", line="l1", station=name)


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, *, reference: bool = True) -> AsyncIterator[InferenceApp]:
    """A started app serving model v1 (its export with or without reference scores); stopped after."""
    app = _app(tmp_path)
    await app.start()
    try:
        export = make_export(tmp_path / "m", "v1", reference_good=REFERENCE, defect_threshold=MODEL_DEFECT)
        if not reference:
            (export / "reference_good.npy").unlink()
        await app.install_directory(export)
        yield app
    finally:
        await app.stop()


async def test_recalibration_sets_the_station_defect_threshold_for_that_station_only(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as app:
        before = await _inspect(app, "s1")
        assert before.verdict == common_pb2.VERDICT_REVIEW
        golden = [common_pb2.ObjectRef(bucket="frames", key=str(150 + i)) for i in range(5)]
        event = await app.recalibrate(_station("s1"), golden)
        assert event.defect_recalibrated and event.old_defect_threshold == pytest.approx(MODEL_DEFECT)
        assert 0.3 < event.new_defect_threshold < 0.4 and event.defect_quantile == 0.75
        assert event.defect_observed_shift_logit > event.defect_shift_logit > 0.0
        assert event.defect_noise_logit > 0.0 and event.new_threshold > 1.2
        info = app.model_info().thresholds
        assert info["station_defect:p1/l1/s1"] == pytest.approx(event.new_defect_threshold)
        assert "station_defect:p1/l1/s2" not in info and info["defect"] == MODEL_DEFECT
        # s1: the frame's 0.125 is below the station's threshold now -> a pass, by model v1
        after = await _inspect(app, "s1")
        assert after.verdict == common_pb2.VERDICT_PASS and after.model_version == "v1", after
        # s2 keeps the model's own 0.05: a defect without a confident class -> review
        other = await _inspect(app, "s2")
        assert other.verdict == common_pb2.VERDICT_REVIEW
        assert other.review_reason == "defect without a confident class"
        # the calibration store holds both values
        stored = await app.calibrations.load("v1")
        assert stored["p1/l1/s1"] == StationCalibration(event.new_threshold, event.new_defect_threshold)
        # a second recalibration starts from the station's threshold
        again = await app.recalibrate(_station("s1"), golden)
        assert again.old_defect_threshold == pytest.approx(event.new_defect_threshold)


async def test_an_export_without_reference_scores_keeps_the_models_defect_threshold(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path, reference=False) as app:
        golden = [common_pb2.ObjectRef(bucket="frames", key=str(150 + i)) for i in range(5)]
        event = await app.recalibrate(_station("s1"), golden)
        assert not event.defect_recalibrated and event.new_threshold > 1.2
        assert event.old_defect_threshold == event.new_defect_threshold == pytest.approx(MODEL_DEFECT)
        assert event.defect_shift_logit == 0.0
        assert "station_defect:p1/l1/s1" not in app.model_info().thresholds
        # the anomaly scale moved, the defect threshold did not: still a review
        result = await _inspect(app, "s1")
        assert result.verdict == common_pb2.VERDICT_REVIEW and result.anomaly_score < 1.0
        assert (await app.calibrations.load("v1"))["p1/l1/s1"].defect_threshold is None


async def test_every_replica_applies_both_values_and_old_events_leave_the_models_own(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as app:
        event = events_pb2.RecalibrationPerformed(
            model_version="v1",
            golden_frames=5,
            old_threshold=1.0,
            new_threshold=1.27,
            defect_recalibrated=True,
            old_defect_threshold=MODEL_DEFECT,
            new_defect_threshold=0.35,
        )
        event.station.CopyFrom(common_pb2.StationRef(line="l1", station="s1"))  # plant: the service's
        for _ in range(2):  # redelivered: the same state
            app.recalibration_performed(event)
            assert app.pipeline.station_thresholds["v1"] == {"p1/l1/s1": StationCalibration(1.27, 0.35)}
        assert (await _inspect(app, "s1")).verdict == common_pb2.VERDICT_PASS
        # an event of a producer before the defect fields existed: the model's own threshold
        old = events_pb2.RecalibrationPerformed(model_version="v1", new_threshold=1.27)
        old.station.CopyFrom(event.station)
        app.recalibration_performed(old)
        assert app.pipeline.station_thresholds["v1"]["p1/l1/s1"] == StationCalibration(1.27, None)
        assert (await _inspect(app, "s1")).verdict == common_pb2.VERDICT_REVIEW
        assert "station_defect:p1/l1/s1" not in app.model_info().thresholds
