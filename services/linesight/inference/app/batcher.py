"""Micro-batching across stations: frames from every station wait at most `max_wait` for company,
then go to the model together (up to `max_batch`). One batch runs at a time, on one worker thread,
so the model's own threads get the cores and a slow model shows up as queue depth, not as threads.

Waiting only pays when company is likely: frames arriving while a batch runs form the next batch
anyway, and a lone frame on a quiet line would wait for nothing. So the batcher waits only while
frames arrive faster than `max_wait` apart (moving average of the gaps between arrivals).

The session is chosen when a batch is formed: a hot swap takes effect between two batches, and each
frame is scored exactly once, by the version recorded with its prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linesight.inference.app.backends.base import BackendUnavailable, InferenceFailed
from linesight.inference.app.metrics import InferenceMetrics
from linesight.inference.app.models import ModelManager, Role, ServingModel

log = logging.getLogger(__name__)


class NoModel(RuntimeError):  # noqa: N818
    """No model version serves this role (none published yet, or the last one failed to load)."""


@dataclass
class Scored:
    """One frame's prediction and the serving model that produced it."""

    prediction: Any
    model: ServingModel
    batch_size: int
    queued_s: float
    model_s: float


@dataclass
class _Item:
    role: Role
    tensor: np.ndarray
    future: asyncio.Future[Scored]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(
        self,
        models: ModelManager,
        metrics: InferenceMetrics,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        oldest_alarm_s: float = 2.0,
        on_backlog: Callable[[float, int], None] | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.oldest_alarm_s = oldest_alarm_s
        self.on_backlog = on_backlog
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._space = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linesight-model")
        self._task: asyncio.Task[None] | None = None
        self._alarm_at = 0.0
        self._last_arrival = 0.0
        self._gap_s = float("inf")  # moving average of the time between two arrivals
        self.batches = 0
        self.busy_s = 0.0  # time spent running batches (model utilisation = its growth / wall time)
        metrics.set_queue(0, self.oldest_age)

    # --- queue state --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    def oldest_age(self) -> float:
        return time.monotonic() - self._queue[0].enqueued if self._queue else 0.0

    # --- public -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inference-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(BackendUnavailable("inference service stopping"))
        self._queue.clear()
        await asyncio.to_thread(self._close_retired)
        self._executor.shutdown(wait=True)

    async def score(self, tensor: np.ndarray, role: Role = Role.PRODUCTION) -> Scored:
        """Queue one preprocessed frame; waits for room when the queue is full (backpressure)."""
        if self.models.get(role) is None:
            raise NoModel(self.models.last_error or f"no {role} model loaded")
        async with self._space:
            await self._space.wait_for(lambda: len(self._queue) < self.max_queue)
        loop = asyncio.get_running_loop()
        item = _Item(role, tensor, loop.create_future())
        if self._last_arrival:
            gap = item.enqueued - self._last_arrival
            self._gap_s = gap if self._gap_s == float("inf") else 0.7 * self._gap_s + 0.3 * gap
        self._last_arrival = item.enqueued
        self._queue.append(item)
        self.metrics.set_queue(len(self._queue), self.oldest_age)
        self._arrived.set()
        return await item.future

    # --- loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for company when it is expected, but never past the head frame's deadline.
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch and self.company_expected():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            self._check_backlog()
            batch = self._take()
            async with self._space:
                self._space.notify_all()
            self.metrics.set_queue(len(self._queue), self.oldest_age)
            if batch:
                await self._execute(loop, batch)
            retired = self.models.take_retired()
            if retired:
                await loop.run_in_executor(self._executor, _close_all, retired)

    def company_expected(self) -> bool:
        """Do frames arrive closer together than max_wait (so waiting fills the batch)?"""
        return self._gap_s <= self.max_wait_s

    def _take(self) -> list[_Item]:
        """Up to max_batch frames of the head frame's role (production and shadow batch apart)."""
        role = self._queue[0].role
        batch: list[_Item] = []
        keep: deque[_Item] = deque()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.cancelled():
                continue
            (batch if item.role == role else keep).append(item)
        keep.extend(self._queue)
        self._queue = keep
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        role = batch[0].role
        serving = self.models.get(role)  # the swap point
        if serving is None:
            err = NoModel(self.models.last_error or f"no {role} model loaded")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        shapes = {item.tensor.shape for item in batch}
        groups = [[i for i in batch if i.tensor.shape == s] for s in shapes]
        for group in groups:
            t0 = time.monotonic()
            stacked = np.stack([i.tensor for i in group])
            try:
                preds = await loop.run_in_executor(self._executor, serving.session.predict, stacked)
                if len(preds) != len(group):
                    raise InferenceFailed(f"{len(preds)} predictions for {len(group)} frames")
            except Exception as exc:
                if isinstance(exc, BackendUnavailable):
                    self.metrics.backend_unavailable.add(1)
                elif not isinstance(exc, InferenceFailed):
                    log.exception("model %s failed on a batch of %d", serving.version, len(group))
                    exc = InferenceFailed(f"{type(exc).__name__}: {exc}")
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            dt = time.monotonic() - t0
            self.batches += 1
            self.busy_s += dt
            self.metrics.batch_size.record(len(group), {"role": str(role)})
            for item, pred in zip(group, preds, strict=True):
                if not item.future.done():
                    item.future.set_result(Scored(pred, serving, len(group), t0 - item.enqueued, dt))

    def _check_backlog(self) -> None:
        age = self.oldest_age()
        if age > self.oldest_alarm_s and self.on_backlog is not None:
            now = time.monotonic()
            if now >= self._alarm_at:
                self._alarm_at = now + 10.0  # at most one alarm per 10 s
                self.on_backlog(age, len(self._queue))

    def _close_retired(self) -> None:
        _close_all(self.models.take_retired())


def _close_all(sessions: list[Any]) -> None:
    for s in sessions:
        try:
            s.close()
        except Exception as exc:
            log.warning("closing retired session: %s", exc)
