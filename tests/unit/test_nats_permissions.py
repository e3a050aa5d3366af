"""The NATS permission table matches what the services really publish and consume (the same AST
reading that generates docs/messaging.md), so a new publish fails here instead of at the server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from linesight.common import subjects
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
