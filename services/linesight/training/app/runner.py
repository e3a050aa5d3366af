"""The service side of training jobs: takes queued jobs from PostgreSQL, starts a worker process
for each (at most `max_workers` at once), relays their progress as TrainingProgress, registers
what they produce, stops cancelled ones, and after a restart requeues or fails the jobs whose
worker died. It also starts the automatic incremental update when enough confirmed labels of a
product have arrived.

Liveness is the worker's heartbeat in the job row, not the process handle, so the same rules
hold for a worker this process started, one a previous service process started, or a
Kubernetes Job: a running job whose heartbeat is older than `heartbeat_timeout_s` is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from linesight.training.app.job_config import JobsConfig
from linesight.training.app.jobs import IN_PROCESS, TrainingApp
from linesight.training.store import jobs as repo

log = logging.getLogger(__name__)

AUTO_REQUESTER = "auto-update"


class WorkerProcess(Protocol):
    """A started worker (asyncio.subprocess.Process fits)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


Spawn = Callable[[str], Awaitable[WorkerProcess]]  # job id -> started worker


def where(proc: WorkerProcess) -> str:
    """How logs and progress name a worker: a local process by its pid, a Kubernetes Job by its
    name (its own `where`)."""
    return str(getattr(proc, "where", "") or f"worker pid {proc.pid}")


def detached(proc: WorkerProcess) -> bool:
    """A worker that outlives this service (a Kubernetes Job): a shutdown leaves it running for
    the next service instance to adopt by its heartbeat, rather than killing and requeueing it."""
    return bool(getattr(proc, "detached", False))


@dataclass
class _Watched:
    job_id: str
    proc: WorkerProcess | None  # None: adopted from a previous service process
    task: asyncio.Task[Any] | None = None
    last: tuple[str, float] = ("", -1.0)


class JobRunner:
    def __init__(
        self, app: TrainingApp, spawn: Spawn, config: JobsConfig | None = None, *, name: str
    ) -> None:
        self.app = app
        self.spawn = spawn
        self.config = config or JobsConfig()
        self.name = name  # this service instance, recorded as the job's worker until it reports
        self._wake = asyncio.Event()
        self._watched: dict[str, _Watched] = {}
        self._stopping = False
        self._task: asyncio.Task[Any] | None = None
        self._last_auto = 0.0
        app.on_queued = self.wake
        app.on_cancelled = self.stop_worker

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> asyncio.Task[Any]:
        self._task = asyncio.create_task(self.run(), name="training-job-runner")
        return self._task

    async def run(self) -> None:
        await self.recover()
        while not self._stopping:
            try:
                await self.dispatch()
                if time.monotonic() - self._last_auto >= self.config.auto_check_s:
                    self._last_auto = time.monotonic()
                    await self.auto_update()
            except Exception as exc:  # a database outage: try again on the next tick
                log.warning("training job runner: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)

    # ---- recovery --------------------------------------------------------------------------

    async def recover(self) -> dict[str, str]:
        """What a (re)started service does with running jobs it is not watching: register the
        model of a worker that finished meanwhile, keep watching one whose worker still beats,
        requeue (or, past `max_attempts`, fail) one whose worker died. Returns job id -> action."""
        async with self.app.db.connection() as conn:
            running = await repo.list_jobs(conn, ("running",))
        actions: dict[str, str] = {}
        for job in running:
            if job.job_id in self._watched:
                continue
            if job.result:
                await self._register(job)
                actions[job.job_id] = "registered"
            elif job.heartbeat_age_s is not None and job.heartbeat_age_s < self.config.heartbeat_timeout_s:
                self._watch(job.job_id, None)
                actions[job.job_id] = "adopted"
            else:
                actions[job.job_id] = await self._lost(job, "no heartbeat since the service restarted")
        return actions

    async def _lost(self, job: repo.JobRun, why: str) -> str:
        age = f"{job.heartbeat_age_s:.0f} s" if job.heartbeat_age_s is not None else "ever"
        reason = f"worker {job.worker or '?'} lost ({why}; last heartbeat {age} ago)"
        if job.options.get(IN_PROCESS):  # `linesight train` died: nothing here can run it again
            await self.app.fail_job(job.job_id, RuntimeError(f"{reason}; an in-process run is not requeued"))
            return "failed"
        if job.attempts < self.config.max_attempts:
            async with self.app.db.connection() as conn, conn.transaction():
                done = await repo.requeue(conn, job.job_id, f"{reason}; requeued (attempt {job.attempts + 1} "
                                                             f"of {self.config.max_attempts})")  # fmt: skip
            log.warning("training job %s: %s; requeued", job.job_id, reason)
            self.wake()
            return "requeued" if done else "unchanged"
        await self.app.fail_job(job.job_id, RuntimeError(f"{reason}; failed after {job.attempts} attempt(s)"))
        return "failed"

    # ---- dispatch and watch ----------------------------------------------------------------

    async def dispatch(self) -> None:
        """Start workers for queued jobs while there is room."""
        while not self._stopping and len(self._watched) < self.config.max_workers:
            async with self.app.db.connection() as conn, conn.transaction():
                job = await repo.claim_next(conn, self.name)
            if job is None:
                return
            try:
                proc = await self.spawn(job.job_id)
            except Exception as exc:
                await self.app.fail_job(job.job_id, RuntimeError(f"worker could not start: {exc}"))
                continue
            log.info("training job %s (%s) started in %s", job.job_id, job.mode, where(proc))
            await self.app.publish_progress(job.job_id, "starting", 0.0, where(proc), None)
            self._watch(job.job_id, proc)

    def _watch(self, job_id: str, proc: WorkerProcess | None) -> None:
        w = _Watched(job_id, proc)
        self._watched[job_id] = w
        w.task = asyncio.create_task(self._supervise(w), name=f"training-watch-{job_id}")

    async def _supervise(self, w: _Watched) -> None:
        try:
            await self._follow(w)
        except Exception as exc:
            log.error("training job %s: supervision failed: %s", w.job_id, exc)
            await self.app.fail_job(w.job_id, exc)
        finally:
            self._watched.pop(w.job_id, None)
            self.wake()

    async def _follow(self, w: _Watched) -> None:
        while True:
            exited = False
            if w.proc is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(w.proc.wait()), timeout=self.config.poll_s)
                    exited = True
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(self.config.poll_s)
            async with self.app.db.connection() as conn:
                job = await repo.get(conn, w.job_id)
            if job is None:
                return
            if job.state in repo.FINISHED:
                await self._reap(w)
                if job.state == "failed":  # the worker recorded its own failure
                    await self.app.announce_failure(job.job_id, job.error)
                return
            if job.state == "queued":  # requeued by another service instance
                return
            if (job.stage, job.percent) != w.last and not exited:
                w.last = (job.stage, job.percent)
                await self.app.publish_progress(job.job_id, job.stage, job.percent / 100, job.message,
                                                job.eta_seconds)  # fmt: skip
            if exited or (w.proc is None and job.result):
                if job.result:
                    await self._register(job)
                elif w.proc is not None:
                    code = w.proc.returncode
                    why = f"worker exited with code {code}: {job.message or 'no result'}"
                    await self.app.fail_job(job.job_id, RuntimeError(why))
                return
            stale = job.heartbeat_age_s is not None and job.heartbeat_age_s > self.config.heartbeat_timeout_s
            if stale:
                await self._reap(w)
                await self._lost(job, "heartbeat timed out")
                return

    async def _register(self, job: repo.JobRun) -> None:
        try:
            await self.app.register_result(job)
        except Exception as exc:
            log.error("training job %s: model not registered: %s", job.job_id, exc)
            await self.app.fail_job(job.job_id, exc)

    async def _reap(self, w: _Watched) -> None:
        """Stop a worker that should not run any more (cancelled, or declared dead)."""
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def stop_worker(self, job_id: str) -> None:
        """A cancelled job's worker is terminated now (its watcher sees the state and returns)."""
        w = self._watched.get(job_id)
        if w is not None and w.proc is not None and w.proc.returncode is None:
            w.proc.terminate()

    def running(self) -> list[str]:
        return sorted(self._watched)

    async def stop(self) -> None:
        """Shutdown: stop local workers this process started and requeue their jobs (the next
        start runs them again); adopted ones and Kubernetes Jobs keep running and are found again
        by `recover`."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for w in list(self._watched.values()):
            if w.task is not None:
                w.task.cancel()
            if w.proc is not None and w.proc.returncode is None and not detached(w.proc):
                await self._reap(w)
                async with self.app.db.connection() as conn, conn.transaction():
                    await repo.requeue(
                        conn, w.job_id, "the training service shut down while it ran; requeued"
                    )
        await asyncio.gather(*(w.task for w in self._watched.values() if w.task), return_exceptions=True)
        self._watched.clear()

    # ---- automatic incremental update ------------------------------------------------------

    async def auto_update(self, product: str = "") -> list[str]:
        """Start an incremental job for each product (or just `product`) whose confirmed labels
        since its newest model or job reached `auto_update_labels`, or that has had at least one
        new label for `auto_update_after_s`; returns the jobs started. Off with auto_update=False."""
        if not self.config.auto_update:
            return []
        async with self.app.db.connection() as conn:
            products = [product] if product else await repo.products_with_new_labels(conn)
        started = []
        for p in products:
            async with self.app.db.connection() as conn:
                if await repo.has_active_job(conn, p) or not await repo.newest_model(conn, p):
                    continue
                count, age = await repo.labels_since_last_model(conn, p)
            due = count >= self.config.auto_update_labels or (
                count >= 1 and age >= self.config.auto_update_after_s
            )
            if not due:
                continue
            job_id = await self.app.start(p, mode="incremental", requested_by=AUTO_REQUESTER)
            log.info("automatic incremental update of %s: %d new confirmed labels (oldest %.0f s): job %s",
                     p, count, age, job_id)  # fmt: skip
            started.append(job_id)
        return started
