"""Unit tests: outage backoff, how handler failures are classified, station-group filters, and the
ModelPublished bookkeeping (promotion, fallback order) without servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from linesight.common.bus import BusUnavailable, Delivery, PoisonMessage, TransientError
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.inference.api.bus import InspectionWorker, frames_filters
from linesight.inference.app import InferenceApp, InferenceConfig, RetryLater, Role
from linesight.inference.store.objects import StationCalibration
from tests.unit.inference.standin import LOADER, make_export


def test_outage_backoff_grows_to_tens_of_seconds_and_lasts_minutes() -> None:
    cfg = InferenceConfig()
    delays = [cfg.retry_delay_s(n) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert cfg.outage_budget_s() >= 20 * 60  # an outage of 20 minutes loses nothing
    # the old behaviour (5 deliveries, 1 s x delivery) gave up after 10 s
    assert InferenceConfig(max_deliver=5, retry_max_s=4.0).outage_budget_s() < 15
    with pytest.raises(ValueError, match="retry_base_s"):
        InferenceConfig(retry_base_s=5.0, retry_max_s=1.0).validate()
    env = InferenceConfig.from_env(
        {"LINESIGHT_INFERENCE_RETRY_MAX_S": "60", "LINESIGHT_INFERENCE_MAX_DELIVER": "9"}
    )
    assert env.retry_max_s == 60.0 and env.max_deliver == 9


def test_station_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid station"):
        InferenceConfig(stations=("l1/s1/x",)).validate()
    with pytest.raises(ValueError, match="invalid station"):
        InferenceConfig(stations=("l1/s*",)).validate()


def _app_like(stations: tuple[str, ...], **cfg: Any) -> Any:
    metrics = SimpleNamespace(retries=SimpleNamespace(add=lambda *a, **k: None))
    return SimpleNamespace(
        settings=SimpleNamespace(plant="p1"),
        config=InferenceConfig(stations=stations, **cfg),
        metrics=metrics,
    )


def test_frames_filters_cover_exactly_the_group() -> None:
    assert frames_filters(_app_like(())) == ["linesight.p1.*.*.frame.captured"]
    assert frames_filters(_app_like(("l1/s1", "l1/s2", "l2/s1"))) == [
        "linesight.p1.l1.s1.frame.captured",
        "linesight.p1.l1.s2.frame.captured",
        "linesight.p1.l2.s1.frame.captured",
    ]
    # a bare station covers it on every line; no overlapping filters (JetStream refuses them)
    assert frames_filters(_app_like(("s3", "l1/s3", "l1/s1"))) == [
        "linesight.p1.*.s3.frame.captured",
        "linesight.p1.l1.s1.frame.captured",
    ]


def _delivery(n: int) -> Delivery:
    return Delivery(subject="linesight.p1.l1.s1.frame.captured", headers={}, num_delivered=n, event_id="e")


class _FailingApp:
    def __init__(self, exc: Exception, **cfg: Any) -> None:
        like = _app_like((), **cfg)
        self.settings, self.config, self.metrics = like.settings, like.config, like.metrics
        self.exc = exc

    async def inspect(self, frame: Any, **kw: Any) -> Any:
        raise self.exc


async def test_outages_are_retried_with_backoff_and_bugs_dead_lettered() -> None:
    frame = events_pb2.FrameCaptured(frame_id="f1")
    # a dependency down -> TransientError with the growing delay, on every delivery
    worker = InspectionWorker(_FailingApp(RetryLater("S3 down")), bus=None)  # type: ignore[arg-type]
    for n, expected in ((1, 1.0), (3, 4.0), (12, 30.0)):
        with pytest.raises(TransientError) as info:
            await worker.handle_frame(frame, _delivery(n))
        assert info.value.delay_s == expected
    # NATS refusing the result publish is an outage too
    worker = InspectionWorker(_FailingApp(BusUnavailable("nats down")), bus=None)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        await worker.handle_frame(frame, _delivery(7))
    # anything else is a bug: the bus retries it a few times, then it goes to the DLQ
    worker = InspectionWorker(_FailingApp(KeyError("oops"), max_failures=3), bus=None)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        await worker.handle_frame(frame, _delivery(2))
    with pytest.raises(PoisonMessage, match="failed 3 times"):
        await worker.handle_frame(frame, _delivery(3))


# --- ModelPublished bookkeeping -----------------------------------------------------------------
def _event(version: str, stage: str = "production") -> events_pb2.ModelPublished:
    return events_pb2.ModelPublished(
        model_version=version,
        product="widget",
        stage=stage,
        artifact=common_pb2.ObjectRef(bucket="models", key=f"widget/{version}.tar.gz"),
    )


class _Artifacts:
    """Stand-in for ModelArtifacts: versions are export directories made on the fly."""

    def __init__(self, root: Path, broken: set[str], down: set[str]) -> None:
        self.root, self.broken, self.down, self.fetched = root, broken, down, []

    async def fetch(self, ref: Any, *, product: str, model_version: str) -> Path:
        from linesight.common.storage import StorageUnavailable

        self.fetched.append(model_version)
        if model_version in self.down:
            raise StorageUnavailable("S3 down")
        return make_export(self.root / model_version, model_version, fail_load=model_version in self.broken)


class _Calibrations:
    async def load(self, version: str) -> dict[str, StationCalibration]:
        return {}


def _app(tmp_path: Path, broken: set[str] = frozenset(), down: set[str] = frozenset()) -> InferenceApp:  # type: ignore[assignment]
    settings = Settings(plant="p1", product="widget", state_dir=tmp_path / "state", log_json=False)
    app = InferenceApp(
        settings,
        store=None,  # type: ignore[arg-type]
        config=InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "work", retry_base_s=0.05),
    )
    app.artifacts = _Artifacts(tmp_path / "exports", set(broken), set(down))  # type: ignore[assignment]
    app.calibrations = _Calibrations()  # type: ignore[assignment]
    return app


async def _settle(app: InferenceApp, events: int) -> None:
    async with asyncio.timeout(20):
        while app.installed_events < events or app.rollout.wanted:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_replay_of_a_promotion_loads_the_version_once(tmp_path: Path) -> None:
    app = _app(tmp_path)
    await app.start()
    try:
        # the replay arrives before the applier runs: candidate, then its promotion
        for e in (_event("p0"), _event("c1", "candidate"), _event("c1")):
            app.model_published(e)
        await _settle(app, 1)
        assert app.models.production is not None and app.models.production.version == "c1"
        assert app.models.candidate is None and app.artifacts.fetched == ["c1"]  # type: ignore[attr-defined]
        # a replayed candidate event of the production version is ignored too
        app.model_published(_event("c1", "candidate"))
        assert Role.CANDIDATE not in app.rollout.wanted
    finally:
        await app.stop()


async def test_fallback_skips_broken_versions_and_waits_out_outages(tmp_path: Path) -> None:
    app = _app(tmp_path, broken={"v3", "v4"})
    await app.start()
    try:
        for v in ("v1", "v2", "v3", "v4"):
            app.model_published(_event(v))
        assert app.models.pending[Role.PRODUCTION] == "v4"  # frames wait while it loads
        await _settle(app, 1)
        info = app.model_info()
        assert info.model_version == "v2" and info.fallback and info.failed_version == "v4"
        assert "v4 failed to load" in info.last_load_error and info.pending_version == ""
        assert app.artifacts.fetched == ["v4", "v3", "v2"]  # type: ignore[attr-defined]
    finally:
        await app.stop()
    # S3 down while the newest loads: nothing is marked broken, the load is retried
    app = _app(tmp_path / "b", down={"v1"})
    await app.start()
    try:
        app.model_published(_event("v1"))
        async with asyncio.timeout(10):
            while app.artifacts.fetched.count("v1") < 2:  # type: ignore[attr-defined]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert app.models.pending[Role.PRODUCTION] == "v1" and app.model_info().pending_version == "v1"
        app.artifacts.down.clear()  # type: ignore[attr-defined]
        await app.wait_for_version("v1", timeout_s=10)
        assert app.model_info().last_load_error == "" and Role.PRODUCTION not in app.models.pending
    finally:
        await app.stop()
