"""Which model versions serve: the production model, an optional shadow candidate, hot swaps.

A new version is loaded beside the serving one and then swapped in with a single assignment; the
batcher picks the session when it forms a batch, so every frame is scored exactly once, by the
version its result names. A replaced session is retired only between batches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from linesight.inference.app.backends.base import Backend, BackendUnavailable, ScoringSession
from linesight.inference.app.bundle import ModelBundle
from linesight.inference.app.config import TritonDownPolicy

log = logging.getLogger(__name__)


class Role(StrEnum):
    PRODUCTION = "production"
    CANDIDATE = "candidate"  # shadow mode: scored too, results only on the shadow subject


@dataclass
class ModelInfo:
    """What serves and why the newest published version may not (GetModelInfo, the demo)."""

    backend: str
    model_version: str = ""
    candidate_version: str = ""
    taxonomy_version: str = ""
    classes: list[str] = field(default_factory=list)
    # the model's ("anomaly", "defect"), and per recalibrated station "station:<key>" (anomaly
    # scale) and "station_defect:<key>" (defect threshold, when moved)
    thresholds: dict[str, float] = field(default_factory=dict)
    last_load_error: str = ""  # production's, else the candidate's
    failed_version: str = ""
    fallback: bool = False  # model_version is an older production version that loads
    pending_version: str = ""  # a production version still loading or waiting for S3/Triton


class FailoverSession:
    """A Triton session that falls back to an in-process one while Triton is unreachable.

    With policy STOP it raises BackendUnavailable instead (frames stay on the bus) and reports it.
    """

    RETRY_PRIMARY_S = 5.0

    def __init__(
        self,
        bundle: ModelBundle,
        primary: ScoringSession | None,
        primary_loader: Callable[[], ScoringSession],
        fallback_loader: Callable[[], ScoringSession],
        policy: TritonDownPolicy,
        on_unavailable: Callable[[str], None],
    ) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self._primary = primary
        self._primary_loader = primary_loader
        self._fallback_loader = fallback_loader
        self._fallback: ScoringSession | None = None
        self._policy = policy
        self._on_unavailable = on_unavailable
        self._retry_at = 0.0 if primary is not None else time.monotonic() + self.RETRY_PRIMARY_S
        self._using_fallback = primary is None
        self._lock = threading.Lock()

    @property
    def backend_name(self) -> str:
        if self._using_fallback and self._fallback is not None:
            return "in_process"
        return self._primary.backend_name if self._primary is not None else "in_process"

    def predict(self, batch: np.ndarray) -> list[Any]:
        if self._using_fallback and time.monotonic() >= self._retry_at:
            self._try_primary()
        if not self._using_fallback and self._primary is not None:
            try:
                return self._primary.predict(batch)
            except BackendUnavailable as exc:
                self._on_unavailable(str(exc))
                if self._policy == TritonDownPolicy.STOP:
                    raise
                log.warning("Triton unreachable (%s); scoring %s in-process", exc, self.version)
                self._using_fallback = True
                self._retry_at = time.monotonic() + self.RETRY_PRIMARY_S
        if self._policy == TritonDownPolicy.STOP:
            raise BackendUnavailable(f"Triton has no session for {self.version}; policy is stop")
        if self._fallback is None:
            self._fallback = self._fallback_loader()
        return self._fallback.predict(batch)

    def load_fallback(self) -> None:
        if self._fallback is None:
            self._fallback = self._fallback_loader()

    def _try_primary(self) -> None:
        self._retry_at = time.monotonic() + self.RETRY_PRIMARY_S
        try:
            if self._primary is None:
                self._primary = self._primary_loader()
            else:
                self._primary.predict(np.zeros((1, *self.bundle.input_size, 3), dtype=np.uint8))
        except Exception as exc:
            log.info("Triton still unavailable for %s: %s", self.version, exc)
            return
        log.info("Triton is back; scoring %s on Triton again", self.version)
        self._using_fallback = False

    def close(self) -> None:
        for s in (self._primary, self._fallback):
            if s is not None:
                try:
                    s.close()
                except Exception as exc:
                    log.warning("closing %s: %s", self.version, exc)


@dataclass
class ServingModel:
    """A loaded version and when it started serving."""

    bundle: ModelBundle
    session: ScoringSession
    role: Role
    loaded_at: float

    @property
    def version(self) -> str:
        return self.bundle.version


class ModelManager:
    """Holds the serving sessions; swaps are atomic assignments, retirements happen between batches."""

    def __init__(self, load_session: Callable[[ModelBundle], ScoringSession]) -> None:
        self._load_session = load_session
        self._serving: dict[Role, ServingModel] = {}
        self._retired: list[ScoringSession] = []
        self._swap_lock = asyncio.Lock()
        # Why the newest wanted version does not serve (kept by InferenceApp; "" when it does).
        self.last_error: str = ""
        # role -> version being loaded, or waiting for S3/Triton: frames wait instead of erroring.
        self.pending: dict[Role, str] = {}
        self.listeners: list[Callable[[Role, ServingModel | None], None]] = []

    def get(self, role: Role) -> ServingModel | None:
        return self._serving.get(role)

    @property
    def production(self) -> ServingModel | None:
        return self._serving.get(Role.PRODUCTION)

    @property
    def candidate(self) -> ServingModel | None:
        return self._serving.get(Role.CANDIDATE)

    async def install(self, bundle: ModelBundle, role: Role = Role.PRODUCTION) -> ServingModel:
        """Load `bundle` beside what serves, then switch `role` to it; raises ModelLoadError."""
        async with self._swap_lock:
            current = self._serving.get(role)
            if current is not None and current.version == bundle.version:
                return current  # ModelPublished redelivered: nothing to do
            production = self._serving.get(Role.PRODUCTION)
            if role == Role.CANDIDATE and production is not None and production.version == bundle.version:
                # A promoted version is never its own shadow (replayed candidate event).
                log.info("not shadowing %s: it is the production model", bundle.version)
                return production
            promote = (
                role == Role.PRODUCTION
                and self.candidate is not None
                and (self.candidate.version == bundle.version)
            )
            if promote:
                assert self.candidate is not None
                new = ServingModel(self.candidate.bundle, self.candidate.session, role, time.monotonic())
                del self._serving[Role.CANDIDATE]
            else:
                session = await asyncio.to_thread(self._load_session, bundle)
                new = ServingModel(bundle, session, role, time.monotonic())
            old = self._serving.get(role)
            self._serving[role] = new  # the swap: the next batch formed uses `new`
            if old is not None:
                self._retired.append(old.session)
            log.info("%s model is now %s (was %s)", role, bundle.version, old.version if old else "none")
            for listener in self.listeners:
                listener(role, new)
            if promote:
                for listener in self.listeners:
                    listener(Role.CANDIDATE, None)
            return new

    def drop_candidate(self) -> None:
        old = self._serving.pop(Role.CANDIDATE, None)
        if old is not None:
            self._retired.append(old.session)
            for listener in self.listeners:
                listener(Role.CANDIDATE, None)

    def take_retired(self) -> list[ScoringSession]:
        """Sessions no longer serving; the batcher closes them when no batch is running."""
        out, self._retired = self._retired, []
        return out

    def close(self) -> None:
        for sm in self._serving.values():
            self._retired.append(sm.session)
        self._serving.clear()
        for s in self.take_retired():
            try:
                s.close()
            except Exception as exc:
                log.warning("closing session: %s", exc)


def session_loader(
    backend: Backend,
    fallback: Backend | None,
    policy: TritonDownPolicy,
    on_unavailable: Callable[[str], None],
) -> Callable[[ModelBundle], ScoringSession]:
    """How the manager loads a version: directly, or on Triton with in-process failover."""
    if fallback is None:
        return backend.load

    def load(bundle: ModelBundle) -> ScoringSession:
        primary: ScoringSession | None
        try:
            primary = backend.load(bundle)
        except BackendUnavailable as exc:
            on_unavailable(str(exc))
            if policy == TritonDownPolicy.STOP:
                raise
            log.warning("Triton unreachable while loading %s (%s); serving in-process", bundle.version, exc)
            primary = None
        session = FailoverSession(
            bundle,
            primary,
            lambda: backend.load(bundle),
            lambda: fallback.load(bundle),
            policy,
            on_unavailable,
        )
        if primary is None:
            session.load_fallback()  # a version that cannot load must fail here, not on the first frame
        return session

    return load
