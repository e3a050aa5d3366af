"""A restarted inference replica takes frames only once its replayed production model serves:
a frame fetched while the model loads was nak'ed with a 1-2 s retry delay, which put the first
frames after a crash past the line's reject window. Left on the bus they go to a live replica."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import InferenceConfig, Role


class _Bus:
    """Records the consumers started; each runs until its stop event is set."""

    provisions = True

    def __init__(self) -> None:
        self.started: list[str] = []

    def consume_in_background(
        self, filters: list[str], durable: str, *args: Any, **kw: Any
    ) -> asyncio.Task[None]:
        self.started.append(durable)
        stop: asyncio.Event = kw["stop"]
        return asyncio.create_task(stop.wait(), name=f"consume:{durable}")  # type: ignore[arg-type]


def _worker(pending: str | None) -> tuple[InspectionWorker, Any, _Bus]:
    models = SimpleNamespace(production=None, pending={Role.PRODUCTION: pending} if pending else {})
    app = SimpleNamespace(
        settings=SimpleNamespace(plant="p1"), config=InferenceConfig(consumers=3), models=models
    )
    bus = _Bus()
    return InspectionWorker(app, bus), models, bus  # type: ignore[arg-type]


async def test_frames_wait_until_the_replayed_model_serves() -> None:
    worker, models, bus = _worker("v7")
    task = asyncio.create_task(worker._consume_frames())
    await asyncio.sleep(0.2)
    assert bus.started == []  # the model is loading: frames stay on the bus
    models.production = SimpleNamespace(version="v7")
    await asyncio.sleep(0.2)
    assert bus.started == ["inference-frame-captured-all"] * 3
    worker._stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_plant_without_a_model_takes_frames_at_once() -> None:
    """Nothing published yet: frames get their explicit error result (routed to review) as before."""
    worker, _, bus = _worker(None)
    task = asyncio.create_task(worker._consume_frames())
    await asyncio.sleep(0.1)
    assert len(bus.started) == 3
    worker._stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_model_that_fails_to_load_stops_the_wait() -> None:
    """The app clears `pending` when no production version loads: frames then get error results."""
    worker, models, bus = _worker("broken")
    task = asyncio.create_task(worker._consume_frames())
    await asyncio.sleep(0.1)
    assert bus.started == []
    models.pending.clear()
    await asyncio.sleep(0.2)
    assert len(bus.started) == 3
    worker._stop.set()
    await asyncio.wait_for(task, 2)


async def test_stopping_while_the_model_loads_starts_no_consumer() -> None:
    worker, _, bus = _worker("v7")
    task = asyncio.create_task(worker._consume_frames())
    await asyncio.sleep(0.1)
    worker._stop.set()
    await asyncio.wait_for(task, 2)
    assert bus.started == []
