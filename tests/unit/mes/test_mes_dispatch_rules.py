"""MES payload, backoff and the demo receiver's de-duplication (no servers needed)."""

from pathlib import Path

import httpx

from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.app.dispatch import DispatchConfig, disposition_payload


def test_payload_names_the_disposition_and_defaults_unspecified_to_review() -> None:
    r = events_pb2.InspectionResult(
        meta=new_meta("inference"), frame_id="f1", verdict=common_pb2.VERDICT_DEFECT, defect_class="crack",
        disposition=common_pb2.DISPOSITION_REWORK, severity=common_pb2.SEVERITY_MAJOR,
        capture=common_pb2.CaptureMeta(
            part_id="P1", station=common_pb2.StationRef(plant="p", line="l", station="s")
        ),
    )  # fmt: skip
    body = disposition_payload(r)
    assert (body["frame_id"], body["part_id"], body["disposition"], body["severity"]) == (
        "f1",
        "P1",
        "rework",
        "major",
    )
    assert body["decided_at"] is not None
    r.disposition = common_pb2.DISPOSITION_UNSPECIFIED
    assert disposition_payload(r)["disposition"] == "review"


def test_backoff_grows_and_is_capped() -> None:
    cfg = DispatchConfig(endpoint="http://x", base_backoff_s=1.0, max_backoff_s=8.0)
    assert 0.9 <= cfg.backoff_s(1) <= 1.1
    assert 3.6 <= cfg.backoff_s(3) <= 4.4
    assert cfg.backoff_s(20) <= 8.8


async def test_receiver_deduplicates_by_idempotency_key(tmp_path: Path) -> None:
    path = tmp_path / "received.jsonl"
    log = DispositionLog(path)
    app = create_receiver_app(log)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mes") as client:
        for _ in range(3):
            r = await client.post(
                "/dispositions", json={"disposition": "pass"}, headers={"Idempotency-Key": "f1"}
            )
            assert r.status_code == 200
        assert (await client.post("/dispositions", json={"disposition": "pass"})).status_code == 400
        summary = (await client.get("/dispositions")).json()
    assert summary["count"] == 1 and summary["duplicates"] == 2 and summary["by_disposition"] == {"pass": 1}
    assert set(DispositionLog(path).snapshot()) == {"f1"}  # a restarted receiver still knows the key
