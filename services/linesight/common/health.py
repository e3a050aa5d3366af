"""Liveness, readiness and metrics endpoints every service serves on its HTTP port.

`/healthz` answers while the event loop runs (Kubernetes restarts the pod otherwise).
`/readyz` runs every readiness check concurrently, each with a timeout, and answers 503 with the
failing checks named while any fails or the service is shutting down (traffic is drained).
`/metrics` renders the process's OpenTelemetry metrics as Prometheus text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from linesight.common import telemetry

# A check raises (or returns False) when the dependency is not usable; its message is shown.
ReadinessCheck = Callable[[], Awaitable[bool | None]]


class Health:
    """The set of readiness checks of one service, plus its shutting-down flag."""

    def __init__(self, service: str, *, timeout_s: float = 2.0) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.started_at = time.time()
        self.shutting_down = False
        self._checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} already registered for {self.service}")
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def _run(self, name: str, check: ReadinessCheck) -> tuple[str, str]:
        try:
            result = await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            return name, f"timeout after {self.timeout_s:g}s"
        except Exception as exc:
            return name, f"{type(exc).__name__}: {exc}"
        return name, "ok" if result is not False else "not ready"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        results = dict(await asyncio.gather(*(self._run(n, c) for n, c in self._checks.items())))
        if self.shutting_down:
            results["shutdown"] = "shutting down"
        return all(v == "ok" for v in results.values()), results


def health_router(health: Health) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "service": health.service,
            "uptime_s": round(time.time() - health.started_at, 1),
        }

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, checks = await health.readiness()
        return JSONResponse(
            {"ready": ready, "service": health.service, "checks": checks}, status_code=200 if ready else 503
        )

    @router.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(telemetry.render_prometheus(), media_type="text/plain; version=0.0.4")

    return router
