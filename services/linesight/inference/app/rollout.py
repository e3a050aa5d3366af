"""Which model version each role should serve, and what to do when one does not load.

ModelPublished events arrive in stream order (also as a replay of the whole MODELS stream at
start); only the newest one per role is worth installing. A load that an outage puts off (S3 or
Triton down) is retried after a growing delay and never marks the version broken; a load that
fails for the artifact itself marks the version as not loadable until it is published again, and
production then falls back to the newest older version that loads. Each failure is one
`LoadFailure` record, shown per role in ModelInfo and kept per version for the fallback.

The state machine is pure (no bus, no clock, no installs): `InferenceApp` performs the installs
and the waiting, and tells the rollout what happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from linesight.common.backoff import Backoff
from linesight.common.pb import events_pb2
from linesight.inference.app.models import Role

STAGE_CANDIDATE = "candidate"
STAGE_SHADOW = "shadow"  # the registry's shadow stage: scored beside production, never dispatched
STAGE_PRODUCTION = "production"
SHADOWED = (STAGE_CANDIDATE, STAGE_SHADOW)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    """Why `version` does not serve: "<version> failed to load: <cause>" or "waits for ..."."""

    version: str
    message: str
    transient: bool = False


def role_of(event: events_pb2.ModelPublished) -> Role:
    """Shadow (and candidate, as older training services announce it) -> the shadow role;
    production (or no stage: events from before stages) -> production."""
    return Role.CANDIDATE if event.stage in SHADOWED else Role.PRODUCTION


def serves(event: events_pb2.ModelPublished) -> bool:
    """Whether the event's stage is one inference serves (an archived model is not)."""
    return event.stage in (*SHADOWED, STAGE_PRODUCTION, "")


@dataclass
class Rollout:
    """Version choice per role, outage retries, production fallback and the load failures."""

    product: str
    backoff: Backoff = field(default_factory=Backoff)
    # to install next, per role (the applier takes it)
    wanted: dict[Role, events_pb2.ModelPublished] = field(default_factory=dict)
    # newest event seen per role: what a retry after an outage installs
    latest: dict[Role, events_pb2.ModelPublished] = field(default_factory=dict)
    # one production event per version, oldest first: where a fallback looks
    production_history: list[events_pb2.ModelPublished] = field(default_factory=list)
    # versions that cannot load (not retried until published again)
    failed: dict[str, LoadFailure] = field(default_factory=dict)
    # per role, why its newest wanted version does not serve
    errors: dict[Role, LoadFailure] = field(default_factory=dict)
    # per version, loads put off by an outage (drives the retry delay)
    attempts: dict[str, int] = field(default_factory=dict)
    # production serves an older version because the newest cannot load
    fallback: bool = False

    def accepts(self, event: events_pb2.ModelPublished) -> bool:
        """Events for another product are not this service's business."""
        return not event.product or event.product == self.product

    def published(self, event: events_pb2.ModelPublished) -> Role | None:
        """Note `event` as the newest wanted version of its role; the role, or None when ignored.

        A production event for the version that was the candidate ends its candidacy (a
        promotion), so a replay never loads one version as both production and its own shadow.
        """
        if not self.accepts(event) or not serves(event):
            return None
        version = event.model_version
        self.failed.pop(version, None)  # published again (fixed artifact?): worth a new try
        self.attempts.pop(version, None)
        if event.stage in SHADOWED:
            latest = self.latest.get(Role.PRODUCTION)
            if latest is not None and latest.model_version == version:
                log.info("ignoring candidate %s: it is already the production version", version)
                return None
            self.latest[Role.CANDIDATE] = self.wanted[Role.CANDIDATE] = event
            return Role.CANDIDATE
        self.production_history = [e for e in self.production_history if e.model_version != version]
        self.production_history.append(event)
        self.latest[Role.PRODUCTION] = self.wanted[Role.PRODUCTION] = event
        for table in (self.latest, self.wanted):
            candidate = table.get(Role.CANDIDATE)
            if candidate is not None and candidate.model_version == version:
                del table[Role.CANDIDATE]  # promoted
        return Role.PRODUCTION

    def take(self, role: Role) -> events_pb2.ModelPublished | None:
        """The event of `role` to install now, if one is wanted."""
        return self.wanted.pop(role, None)

    def retry_delay(self, version: str) -> tuple[int, float]:
        """An outage put off loading `version`: (attempt, seconds to wait before the next one)."""
        attempt = self.attempts.get(version, 0) + 1
        self.attempts[version] = attempt
        return attempt, self.backoff.delay(attempt)

    def requeue(self, role: Role) -> bool:
        """After a retry delay: want the role's newest event again (unless a newer one is queued)."""
        event = self.latest.get(role)
        if event is None or role in self.wanted:
            return False
        self.wanted[role] = event
        return True

    def load_failed(self, role: Role, failure: LoadFailure) -> None:
        """`failure` is now what `role` shows until one of its versions serves."""
        self.errors[role] = failure

    def cannot_load(self, role: Role, version: str, message: str) -> LoadFailure:
        """`version` failed for its artifact, not an outage: no retries until published again."""
        shown = self.errors.get(role)
        failure = shown if shown is not None and shown.version == version else LoadFailure(version, message)
        self.failed[version] = failure
        return failure

    def fallback_order(self) -> list[events_pb2.ModelPublished]:
        """Production events to try when the newest cannot load, newest first."""
        return list(reversed(self.production_history))

    def fell_back(self, failure: LoadFailure) -> None:
        """An older production version serves; the newest one's failure stays shown."""
        self.fallback = True
        self.errors[Role.PRODUCTION] = failure

    def load_succeeded(self, role: Role) -> None:
        """The newest wanted version of `role` serves: no failure to show any more."""
        self.errors.pop(role, None)
        if role == Role.PRODUCTION:
            self.fallback = False

    def shown_failure(self) -> LoadFailure | None:
        """What ModelInfo reports: production's failure, else the candidate's."""
        return self.errors.get(Role.PRODUCTION) or self.errors.get(Role.CANDIDATE)
