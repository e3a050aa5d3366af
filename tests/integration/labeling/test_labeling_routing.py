"""Inference's review routing reaches the labeling queues: a routed automatic call is queued with
its reason (NOVEL in review, AUDIT_SAMPLE_PASS / _REJECT in audit), one the station's rate cap held
back is not queued, an unrouted confident one is not queued."""

from __future__ import annotations

import pytest

from linesight.common.pb import common_pb2
from linesight.common.service import RunningService
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.routing import reason_words

from .conftest import make_result

pytestmark = pytest.mark.integration


async def test_routed_automatic_calls_are_queued_with_their_reason(
    labeling_svc: RunningService[LabelingApp],
) -> None:
    app = labeling_svc.app
    novel = make_result()
    novel.route_reason = "novel"
    audit_pass = make_result()
    audit_pass.route_reason = "audit"
    audit_reject = make_result(
        verdict=common_pb2.VERDICT_DEFECT, defect_class="scratch", disposition=common_pb2.DISPOSITION_REJECT
    )
    audit_reject.route_reason = "audit"
    capped = make_result()
    capped.route_reason, capped.route_capped = "novel", True
    plain = make_result()
    outcomes = {
        r.frame_id: await app.record_result(r) for r in (novel, audit_pass, audit_reject, capped, plain)
    }
    assert outcomes[novel.frame_id].queue == "review" and outcomes[audit_pass.frame_id].queue == "audit"
    assert not outcomes[capped.frame_id].queued and not outcomes[plain.frame_id].queued
    queued = {q.frame_id: q for q in await app.review_queue(limit=1000)}
    assert queued[novel.frame_id].reason == "NOVEL"
    assert queued[audit_pass.frame_id].reason == "AUDIT_SAMPLE_PASS"
    assert queued[audit_reject.frame_id].reason == "AUDIT_SAMPLE_REJECT"
    assert capped.frame_id not in queued and plain.frame_id not in queued
    assert reason_words("NOVEL") == "unlike anything the model was trained on"
