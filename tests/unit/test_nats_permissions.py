"""The NATS permission table matches what the services really publish and consume (the same AST
reading that generates docs/messaging.md), so a new publish fails here instead of at the server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from linesight.common import subjects
from linesight.common.bus import PROVISIONER_USER
from linesight.common.embedded.nats_auth import (
    CONSUMES,
    OPERATOR_USER,
    PUBLISHES,
    event_pattern,
    permissions,
)

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_messaging_doc_perm", ROOT / "tools" / "gen_messaging_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_permissions_cover_exactly_what_the_code_does() -> None:
    gen = _generator()
    calls = gen.Resolver(gen.PACKAGE_DIR).calls()
    published = {(c.service, getattr(subjects, c.event)) for c in calls if c.role == "producer"}
    consumed = {(c.service, getattr(subjects, c.event)) for c in calls if c.role == "consumer"}
    granted_pub = {(svc, e) for svc, events in PUBLISHES.items() for e in events}
    granted_sub = {(svc, e) for svc, events in CONSUMES.items() for e in events}
    assert published <= granted_pub, f"published without permission: {sorted(published - granted_pub)}"
    assert granted_pub == published, f"granted but never published: {sorted(granted_pub - published)}"
    # The CLI (`linesight demo` watching training progress) reads as the operator user.
    by_cli = {e for svc, e in consumed if svc == "cli"}
    assert by_cli and "linesight.>" in permissions(OPERATOR_USER)["subscribe"]["allow"]
    assert {(svc, e) for svc, e in consumed if svc != "cli"} == granted_sub


def test_each_result_subject_has_exactly_one_publisher() -> None:
    """Only inference may publish results, only capture frames: the measured forgery."""
    for event, only in (
        (subjects.INSPECTION_RESULT, "inference"),
        (subjects.INSPECTION_SHADOW, "inference"),
        (subjects.MODEL_RECALIBRATED, "inference"),
        (subjects.FRAME_CAPTURED, "capture"),
        (subjects.MODEL_PUBLISHED, "training"),
        (subjects.TAXONOMY_PUBLISHED, "taxonomy"),
        (subjects.LABEL_SUBMITTED, "labeling"),
        (subjects.MES_DISPATCHED, "mes"),
    ):
        allowed = [
            u
            for u in (*PUBLISHES, OPERATOR_USER)
            if event_pattern(event) in permissions(u)["publish"]["allow"]
        ]
        assert allowed == [only], (event, allowed)


def test_no_user_may_subscribe_to_events_or_publish_wildcards() -> None:
    """Services read events through JetStream consumers (replies to their own inbox), never by a
    plain subscription, and no service may publish to `>` or to another user's inbox."""
    for user in PUBLISHES:
        perms = permissions(user)
        assert perms["subscribe"]["allow"] == [f"_INBOX.{user}.>"]
        assert not any(p in (">", "linesight.>") or p.startswith("_INBOX") for p in perms["publish"]["allow"])
        assert "$JS.API.STREAM.DELETE.>" in perms["publish"]["deny"]
    assert permissions(OPERATOR_USER)["publish"]["allow"] and all(
        p.startswith("$JS.API.") for p in permissions(OPERATOR_USER)["publish"]["allow"]
    )


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def _may_publish(user: str, subject: str) -> bool:
    perms = permissions(user)["publish"]
    allowed = any(_matches(p, subject) for p in perms["allow"])
    return allowed and not any(_matches(p, subject) for p in perms.get("deny", []))


def test_only_the_provisioner_creates_or_updates_streams() -> None:
    """Stream layout is provisioned (embedded stack at `up`, the chart's Job); a service user
    may read stream info, bind to consumers and create unnamed (ordered) ones only on the streams
    it consumes; durable consumers are the provisioner's."""
    assert _matches("$JS.API.CONSUMER.CREATE.FRAMES.>", "$JS.API.CONSUMER.CREATE.FRAMES.x.linesight.>")
    assert not _matches("$JS.API.STREAM.INFO.*", "$JS.API.STREAM.INFO")
    for stream in [s.name for s in subjects.STREAMS]:
        for op in ("CREATE", "UPDATE"):
            assert _may_publish(PROVISIONER_USER, f"$JS.API.STREAM.{op}.{stream}")
            for user in (*PUBLISHES, OPERATOR_USER):
                assert not _may_publish(user, f"$JS.API.STREAM.{op}.{stream}"), (user, op, stream)
        for user in (*PUBLISHES, OPERATOR_USER, PROVISIONER_USER):
            assert not _may_publish(user, f"$JS.API.STREAM.DELETE.{stream}"), user
            assert not _may_publish(user, f"$JS.API.STREAM.PURGE.{stream}"), user
    for user, events in CONSUMES.items():
        mine = {subjects.stream_for_subject(event_pattern(e)).name for e in events}
        for stream in [s.name for s in subjects.STREAMS]:
            # durable consumers are the provisioner's: a service binds, never creates or rewrites
            for named in (f"{stream}.mes-x", f"{stream}.mes-x.linesight.*.frame.captured"):
                assert not _may_publish(user, f"$JS.API.CONSUMER.CREATE.{named}"), (user, named)
                assert not _may_publish(user, f"$JS.API.CONSUMER.DURABLE.CREATE.{named}"), (user, named)
                assert _may_publish(PROVISIONER_USER, f"$JS.API.CONSUMER.CREATE.{named}")
            # unnamed (ordered) consumers and reading, only on its own streams
            assert _may_publish(user, f"$JS.API.CONSUMER.CREATE.{stream}") == (stream in mine), (user, stream)
            assert _may_publish(user, f"$JS.API.CONSUMER.INFO.{stream}.{user}-x") == (stream in mine)
            assert _may_publish(user, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{user}-x") == (stream in mine)
            assert _may_publish(user, f"$JS.API.STREAM.INFO.{stream}")
    assert not any(_may_publish(PROVISIONER_USER, e) for e in ("linesight.p.l.s.inspection.result",))
