"""The model rollout state machine alone: version choice per role, outage retries, fallback order
and the one failure record per version/role, without a bus, a model or a clock."""

from __future__ import annotations

from linesight.common.backoff import Backoff
from linesight.common.pb import events_pb2
from linesight.inference.app.models import Role
from linesight.inference.app.rollout import LoadFailure, Rollout, role_of


def _event(version: str, stage: str = "production", product: str = "widget") -> events_pb2.ModelPublished:
    return events_pb2.ModelPublished(model_version=version, stage=stage, product=product)


def _rollout() -> Rollout:
    return Rollout("widget", Backoff(base_s=1.0, cap_s=4.0))


def test_only_the_newest_event_per_role_is_wanted() -> None:
    r = _rollout()
    assert r.published(_event("v1")) == Role.PRODUCTION
    assert r.published(_event("v2")) == Role.PRODUCTION
    assert r.published(_event("c1", "candidate")) == Role.CANDIDATE
    assert role_of(_event("c1", "candidate")) == Role.CANDIDATE and role_of(_event("v1")) == Role.PRODUCTION
    production = r.take(Role.PRODUCTION)
    assert production is not None and production.model_version == "v2"
    assert r.take(Role.PRODUCTION) is None
    candidate = r.take(Role.CANDIDATE)
    assert candidate is not None and candidate.model_version == "c1"


def test_other_products_are_ignored() -> None:
    r = _rollout()
    assert r.published(_event("v1", product="gear")) is None
    assert not r.wanted and not r.latest and not r.production_history
    assert r.published(_event("v2", product="")) == Role.PRODUCTION  # no product: everyone's


def test_a_promotion_ends_the_candidacy_and_a_replayed_candidate_is_ignored() -> None:
    r = _rollout()
    r.published(_event("p0"))
    r.published(_event("c1", "candidate"))
    r.published(_event("c1"))  # promoted
    assert Role.CANDIDATE not in r.wanted and Role.CANDIDATE not in r.latest
    assert r.published(_event("c1", "candidate")) is None
    assert Role.CANDIDATE not in r.wanted
    assert [e.model_version for e in r.production_history] == ["p0", "c1"]


def test_republishing_moves_a_version_to_the_end_of_the_history_and_clears_its_failure() -> None:
    r = _rollout()
    for v in ("v1", "v2", "v3"):
        r.published(_event(v))
    r.cannot_load(Role.PRODUCTION, "v1", "model v1 failed to load: bad")
    r.retry_delay("v1")
    r.published(_event("v1"))
    assert [e.model_version for e in r.production_history] == ["v2", "v3", "v1"]
    assert "v1" not in r.failed and "v1" not in r.attempts


def test_outage_retries_back_off_and_requeue_the_newest_event() -> None:
    r = _rollout()
    r.published(_event("v1"))
    assert r.take(Role.PRODUCTION) is not None
    assert [r.retry_delay("v1") for _ in range(4)] == [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0)]
    r.published(_event("v2"))
    assert not r.requeue(Role.PRODUCTION)  # a newer event is queued already
    assert r.take(Role.PRODUCTION) is not None
    assert r.requeue(Role.PRODUCTION)
    again = r.take(Role.PRODUCTION)
    assert again is not None and again.model_version == "v2"
    assert not r.requeue(Role.CANDIDATE)  # nothing was ever published for it


def test_a_long_outage_keeps_the_capped_delay() -> None:
    r = _rollout()
    r.attempts["v1"] = 5000
    assert r.retry_delay("v1") == (5001, 4.0)


def test_one_failure_record_per_version_and_role() -> None:
    r = _rollout()
    failure = LoadFailure("v3", "model v3 failed to load: corrupt")
    r.load_failed(Role.PRODUCTION, failure)
    assert r.cannot_load(Role.PRODUCTION, "v3", "model v3 failed to load: corrupt") is failure
    assert r.failed["v3"] is r.errors[Role.PRODUCTION]
    # a version whose failure is not the role's shown one gets its own record
    other = r.cannot_load(Role.PRODUCTION, "v2", "model v2 failed to load: gone")
    assert other.version == "v2" and r.errors[Role.PRODUCTION] is failure


def test_fallback_order_and_shown_failure() -> None:
    r = _rollout()
    for v in ("v1", "v2", "v3", "v4"):
        r.published(_event(v))
    assert [e.model_version for e in r.fallback_order()] == ["v4", "v3", "v2", "v1"]
    newest = LoadFailure("v4", "model v4 failed to load: x")
    r.load_failed(Role.PRODUCTION, newest)
    r.cannot_load(Role.PRODUCTION, "v4", newest.message)
    r.load_failed(Role.PRODUCTION, LoadFailure("v3", "model v3 failed to load: y"))
    r.cannot_load(Role.PRODUCTION, "v3", "model v3 failed to load: y")
    r.fell_back(newest)  # v2 serves
    assert r.fallback and r.shown_failure() is newest and set(r.failed) == {"v3", "v4"}
    candidate = LoadFailure("c1", "model c1 waits for Triton", transient=True)
    r.load_failed(Role.CANDIDATE, candidate)
    assert r.shown_failure() is newest  # production's first
    r.load_succeeded(Role.PRODUCTION)
    assert not r.fallback and r.shown_failure() is candidate
    r.load_succeeded(Role.CANDIDATE)
    assert r.shown_failure() is None and not r.errors


def test_shadow_stage_is_scored_beside_production_and_archived_models_are_not_served() -> None:
    rollout = _rollout()
    assert role_of(_event("s1", "shadow")) == Role.CANDIDATE
    assert rollout.published(_event("s1", "shadow")) == Role.CANDIDATE
    assert rollout.take(Role.CANDIDATE).model_version == "s1"  # type: ignore[union-attr]
    assert rollout.published(_event("old", "archived")) is None
    assert Role.PRODUCTION not in rollout.wanted and rollout.production_history == []
