"""A label whose confirmation event would not fit the bus is refused before it is stored: it must
never commit and then block its frame when the confirmation cannot be published."""

from __future__ import annotations

from typing import Any

import pytest

from linesight.common.bus import Bus
from linesight.common.pb import common_pb2
from linesight.common.service import RunningService
from linesight.labeling.app.errors import FieldError
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import Box, LabelInput
from linesight.labeling.store import workflow

from .conftest import make_result, person

pytestmark = pytest.mark.integration

ANN = person("labeler", subject="ann-fits")


async def test_a_label_too_large_for_the_bus_is_refused_and_not_stored(
    labeling_svc: RunningService[LabelingApp], monkeypatch: Any
) -> None:
    app = labeling_svc.app
    result = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4)
    await app.record_result(result)
    frame = result.frame_id
    # A server that takes ~2 KB per message: 100 regions need more, one region much less.
    monkeypatch.setattr(Bus, "max_payload", property(lambda _self: 2048))
    many = LabelInput("scratch", "major", boxes=tuple(Box(i, i, i + 10, i + 10) for i in range(100)))
    with pytest.raises(FieldError) as err:
        await app.submit_label(ANN, frame, many)
    assert err.value.field == "label" and "max_payload" in str(err.value)
    async with app.db.connection() as conn, conn.transaction():
        entry = await workflow.lock_entry(conn, frame)
        assert entry is not None and entry.state == "open"
        assert await workflow.labels_for(conn, frame, entry.round) == []
    out = await app.submit_label(ANN, frame, LabelInput("scratch", "major", boxes=(Box(1, 1, 11, 11),)))
    assert out.state == "first_pass" and out.label_id
